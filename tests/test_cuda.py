"""The CUDA paths, on a GPU only (marker `cuda`; benchmarks/gpu_check.sh runs them):
bf16 autocast training with fused Adam, FSDP over nccl with a sharded checkpoint, the
text encoder in bf16, cascade sampling. Skipped without CUDA."""

from __future__ import annotations

import socket

import pytest
import torch

from pixcade.nn.configs import get_preset
from pixcade.nn.unet import EfficientUNet
from pixcade.text.encoders import load_text_encoder
from pixcade.train import fsdp
from pixcade.train import sharded_checkpoint as sc
from pixcade.train.config import TrainConfig
from pixcade.train.distributed import DistInfo
from pixcade.train.setup import build_optimizer
from tiny_cascade import build_tiny_cascade

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _inputs(device, text_dim=32, batch=4):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 16, 16, generator=g) * 2 - 1
    t = torch.rand(batch, generator=g)
    emb = torch.randn(batch, 5, text_dim, generator=g)
    mask = torch.ones(batch, 5, dtype=torch.bool)
    return [v.to(device) for v in (x, t, emb, mask)]


def _step(net, device, bf16):
    opt = build_optimizer(net.parameters(), TrainConfig(lr=1e-3), device)
    x, t, emb, mask = _inputs(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = (net(x, t, emb, mask).float() - x).pow(2).mean()
    loss.backward()
    opt.step()
    return float(loss), opt


def test_bf16_training_step_with_fused_adam_matches_cpu_fp32():
    torch.manual_seed(0)
    cpu = EfficientUNet(get_preset("tiny-base"))
    gpu = EfficientUNet(get_preset("tiny-base")).cuda()
    gpu.load_state_dict(cpu.state_dict())
    loss_cpu, _ = _step(cpu, torch.device("cpu"), bf16=False)
    loss_gpu, opt = _step(gpu, torch.device("cuda"), bf16=True)
    assert opt.defaults["fused"] is True
    assert loss_gpu == pytest.approx(loss_cpu, rel=2e-2)
    for (name, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values()):
        # One Adam step moves each weight by about lr; bf16 gradients may flip a tiny one's sign.
        assert torch.allclose(a, b.cpu(), atol=2.5e-3), name


def test_fsdp_over_nccl_and_a_sharded_checkpoint_round_trip(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        device = torch.device("cuda", torch.cuda.current_device())
        info = DistInfo(rank=0, world_size=1, local_rank=0, device=device)
        nets = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            net = EfficientUNet(get_preset("tiny-base")).cuda()
            fsdp.checkpoint_res_blocks_of(net)
            fsdp.shard_unet(net, fsdp.device_mesh(device, 1), bf16=True)
            nets.append(net)
        loss, opt = _step(nets[0], device, bf16=True)
        assert loss == loss  # finite, not NaN
        ema = {k: v.detach().clone() for k, v in nets[0].state_dict().items()}
        path = sc.save_sharded(info, tmp_path, 1, model=nets[0], optimizer=opt, ema=ema, state={}, keep=1)
        opt1 = build_optimizer(nets[1].parameters(), TrainConfig(lr=1e-3), device)
        ema1 = {k: torch.zeros_like(v) for k, v in ema.items()}
        sc.load_sharded(path, model=nets[1], optimizer=opt1, ema=ema1)
        a, b = fsdp.full_tensors(nets[0].state_dict()), fsdp.full_tensors(nets[1].state_dict())
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert all(torch.equal(v, sc.read_full(path, "ema")[k]) for k, v in fsdp.full_tensors(ema).items())
    finally:
        torch.distributed.destroy_process_group()


def test_text_encoder_in_bf16_on_cuda(t5_dir, t5):
    enc = load_text_encoder(str(t5_dir), max_length=32, device="cuda", dtype="bfloat16")
    assert {p.dtype for p in enc.model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in enc.model.parameters()} == {"cuda"}
    emb, mask = enc.encode(["a red cube", "two blue spheres"])
    ref, ref_mask = t5.encode(["a red cube", "two blue spheres"])
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(emb, ref, atol=5e-2, rtol=5e-2)


def test_the_cascade_samples_on_cuda():
    cascade = build_tiny_cascade().to("cuda")
    images = cascade.generate(["a red cube", "two blue spheres"], seed=0, progress=False)
    assert len(images) == 2 and images[0].size == (32, 32)
    assert len(set(im.tobytes() for im in images)) == 2
