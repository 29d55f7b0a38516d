"""FSDP2 engine on CPU (gloo): two sharded processes train like one process on the same
global batch, sharded checkpoints load at any number of ranks, and a kill -9 in the middle
of a sharded save costs only the steps since the previous checkpoint."""

from __future__ import annotations

import importlib.util
import json
import signal
import time

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.testing._internal.distributed.fake_pg import FakeStore

from pixcade.errors import PixcadeError
from pixcade.nn.configs import get_preset
from pixcade.nn.unet import EfficientUNet
from pixcade.train import checkpoint as ckpt
from pixcade.train import fsdp, memory
from pixcade.train import sharded_checkpoint as sc
from pixcade.train.distributed import DistInfo
from pixcade.train.ema import EMA
from pixcade.train.export import export_checkpoint
from pixcade.train.parallel import Parallel, check_checkpoint
from train_support import REPO, RERUN_ON_RANK_CRASH, launch, wait_all

WORKER = str(REPO / "tests" / "fsdp_worker.py")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@RERUN_ON_RANK_CRASH
def test_two_process_fsdp_matches_one_process_and_resumes_at_any_world_size(tmp_path):
    one, two, r1, r2 = (tmp_path / n for n in ("one", "two", "resume1", "resume2"))
    for d in (one, two, r1, r2):
        d.mkdir()
    wait_all(launch([WORKER, str(one), "4"], 1))
    # Two ranks save at steps 2 and 4; the step-4 save is killed (-9) mid-write.
    procs = launch([WORKER, str(two), "4", "--save-at", "2", "4", "--pause-at", "4"], 2)
    marker = two / "checkpoints" / f"{ckpt.TMP_PREFIX}step-00000004" / "WRITING"
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no save in progress"
        time.sleep(0.2)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()

    # Same loss curve as one process on the same global batches (float32: summation order only).
    losses_one = json.loads((one / "losses-1.json").read_text())
    losses_two = json.loads((two / "losses-2.json").read_text())
    assert list(losses_two) == ["1", "2", "3", "4"]
    for step, loss in losses_one.items():
        assert losses_two[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step

    # The killed save left its temporary directory, which is not a checkpoint.
    latest = ckpt.latest_checkpoint(two / "checkpoints")
    assert latest.name == "step-00000002" and marker.parent.exists()
    wait_all(launch([WORKER, str(r2), "4", "--resume", str(latest), "--save-at", "4",
                     "--checkpoints", str(two / "checkpoints")], 2))
    wait_all(launch([WORKER, str(r1), "4", "--resume", str(latest)], 1))
    # Loaded at 1 rank and at 2 ranks: the same model, EMA and Adam moments, bit for bit.
    loaded1, loaded2 = load_file(r1 / "loaded-1.safetensors"), load_file(r2 / "loaded-2.safetensors")
    assert _max_diff(loaded1, loaded2) == 0.0
    assert any(k.startswith("adam/") for k in loaded1) and any(k.startswith("ema/") for k in loaded1)
    # `pixcade train export` gathers the two ranks' EMA shards into one safetensors stage.
    (two / "config.json").write_text(json.dumps({"config": {"text_encoder": "minilm", "max_length": 8}}))
    export = export_checkpoint(two, "2")
    exported = load_file(export / "ema.safetensors")
    assert _max_diff(exported, {k[4:]: v for k, v in loaded1.items() if k.startswith("ema/")}) == 0.0
    assert json.loads((export / "stage.json").read_text())["step"] == 2
    # Resumed and continued: nothing lost but steps 3-4, which were trained again.
    straight = load_file(one / "final-1.safetensors")
    assert _max_diff(load_file(r2 / "final-2.safetensors"), straight) < 2e-5
    assert _max_diff(load_file(r1 / "final-1.safetensors"), straight) < 2e-5
    resumed = json.loads((r2 / "losses-2.json").read_text())
    assert resumed["3"] == pytest.approx(losses_one["3"], rel=1e-5)
    # The next save cleared the debris and completed.
    assert [p.name for p in ckpt.list_checkpoints(two / "checkpoints")] == ["step-00000002", "step-00000004"]
    assert not list((two / "checkpoints").glob(ckpt.TMP_PREFIX + "*"))


def test_single_process_round_trip_and_whole_tensors_for_export(tmp_path):
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    torch.manual_seed(0)
    net = EfficientUNet(get_preset("tiny-base"))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    ema = {k: v.detach().clone() * 2 for k, v in net.state_dict().items()}
    path = sc.save_sharded(info, tmp_path, 7, model=net, optimizer=opt, ema=ema, state={"note": 1}, keep=1)
    assert sc.is_sharded_checkpoint(path) and not ckpt.list_checkpoints(tmp_path)[:-1]
    assert _max_diff(sc.read_full(path, "ema"), ema) == 0.0

    torch.manual_seed(1)
    other = EfficientUNet(get_preset("tiny-base"))
    other_opt = torch.optim.Adam(other.parameters(), lr=1e-3)
    other_ema = {k: torch.zeros_like(v) for k, v in ema.items()}
    state = sc.load_sharded(path, model=other, optimizer=other_opt, ema=other_ema)
    assert state["step"] == 7 and state["note"] == 1
    assert _max_diff(other.state_dict(), net.state_dict()) == 0.0 and _max_diff(other_ema, ema) == 0.0
    moments = [(opt.state[p]["exp_avg"], other_opt.state[q]["exp_avg"]) for p, q in zip(net.parameters(), other.parameters())]
    assert all(torch.equal(a, b) for a, b in moments)

    wrong = EfficientUNet(get_preset("tiny-base", channels=8))
    with pytest.raises(PixcadeError, match="does not fit"):
        sc.load_sharded(path, model=wrong, optimizer=torch.optim.Adam(wrong.parameters()),
                        ema=dict(wrong.state_dict()))


def test_paper_base_sharded_over_8_fake_ranks_matches_the_memory_model():
    cfg = get_preset("base64")
    shapes = [p.shape for p in memory.meta_unet(cfg).parameters()]
    per_rank = []
    for rank in range(8):
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=8)
        try:
            net = memory.meta_unet(cfg)
            fsdp.checkpoint_res_blocks_of(net)
            fsdp.shard_unet(net, fsdp.device_mesh(torch.device("cpu"), 8), bf16=True)
            assert all(p.is_meta for p in net.parameters())  # nothing materialised
            per_rank.append(fsdp.local_bytes(net))
            assert per_rank[-1] == 4 * memory.shard_elements(shapes, 8, rank)
        finally:
            dist.destroy_process_group()
    total = sum(4 * s.numel() for s in shapes)
    assert sum(per_rank) == total and total > 8e9  # 2B parameters, fp32
    # The memory table's FSDP-over-8 weights are rank 0's, the largest shard.
    row = next(r for r in memory.memory_rows(memory.PAPER_STAGES[0], 1.0, gpus=(8,)) if r.mode == "FSDP")
    assert row.weights == per_rank[0] == max(per_rank)


def test_activation_extrapolation_matches_a_direct_measurement():
    cfg = get_preset("tiny-base")
    direct = (memory.measure_activation_bytes(cfg, 16, batch=2, text_tokens=8)
              - memory.measure_activation_bytes(cfg, 16, batch=1, text_tokens=8))
    assert memory.activation_bytes_per_image(cfg, 16, divisors=(2, 4), text_tokens=8) == pytest.approx(direct, rel=0.01)
    # And the bytes grow with the batch and the width (the measurement sees activations).
    assert direct > 0.5 * memory.measure_activation_bytes(cfg, 16, batch=1, text_tokens=8)


def test_docs_hold_the_current_memory_table():
    spec = importlib.util.spec_from_file_location("memory_model", REPO / "scripts" / "memory_model.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    table = script.table(json.loads(script.MEASURED.read_text()))
    assert table in (REPO / "docs" / "training.md").read_text()


def test_parallel_picks_the_checkpoint_format_and_reads_either(tmp_path):
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    saved = {}
    for kind in ("ddp", "fsdp"):
        torch.manual_seed(0)
        net = EfficientUNet(get_preset("tiny-base"))
        par = Parallel(net, info, kind=kind, bf16=False, checkpoint_res_blocks=False)
        opt = torch.optim.Adam(net.parameters())
        for p in net.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        ema = EMA(net, 0.9)
        ema.update(net)
        saved[kind] = par.save(tmp_path / kind, 3, optimizer=opt, ema=ema, state={"ema_updates": 1}, keep=2)
    assert sc.is_sharded_checkpoint(saved["fsdp"]) and not sc.is_sharded_checkpoint(saved["ddp"])
    for path in saved.values():  # a ddp run resumes either format
        torch.manual_seed(1)
        net = EfficientUNet(get_preset("tiny-base"))
        par = Parallel(net, info, kind="ddp", bf16=False, checkpoint_res_blocks=True)
        ema = EMA(net, 0.9)
        state = par.load(path, optimizer=torch.optim.Adam(net.parameters()), ema=ema)
        assert state["step"] == 3 and ema.num_updates == 1
        torch.manual_seed(0)
        reference = EfficientUNet(get_preset("tiny-base"))
        assert _max_diff(net.state_dict(), reference.state_dict()) == pytest.approx(1e-3, rel=1e-3)  # one Adam step
    with pytest.raises(PixcadeError, match="unknown train.parallel"):
        Parallel(net, info, kind="zero", bf16=False, checkpoint_res_blocks=False)


def test_a_damaged_sharded_checkpoint_is_named_and_older_ones_offered(tmp_path):
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    net = EfficientUNet(get_preset("tiny-base"))
    opt = torch.optim.Adam(net.parameters())
    for step in (1, 2):
        sc.save_sharded(info, tmp_path, step, model=net, optimizer=opt, ema=dict(net.state_dict()), state={},
                        keep=5)
    newest = tmp_path / "step-00000002"
    (newest / "state.json").write_text("[1, 2")
    with pytest.raises(PixcadeError, match="cannot read checkpoint"):
        check_checkpoint(newest)
    (newest / "state.json").write_text("[]")
    with pytest.raises(PixcadeError, match="not a sharded checkpoint"):
        check_checkpoint(newest)
    assert ckpt.intact_checkpoints(tmp_path, but=newest, check=check_checkpoint) == [tmp_path / "step-00000001"]
    (tmp_path / "step-00000001" / ".metadata").write_bytes(b"not a pickle")
    assert ckpt.intact_checkpoints(tmp_path, check=check_checkpoint) == []
