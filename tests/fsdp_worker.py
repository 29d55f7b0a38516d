"""One process of the FSDP engine tests, started like torchrun starts it (RANK, WORLD_SIZE, ...).

    fsdp_worker.py OUT_DIR STEPS [--save-at K ...] [--pause-at K] [--resume CKPT] [--checkpoints DIR] [--bf16]

Trains the tiny base U-Net on a fixed sequence of global batches (batch i is a function of i
alone, 8 images) with Adam, grad clipping and EMA: each of W ranks takes its 8/W rows, through
`Parallel(kind="fsdp")`: at W > 1 the net is FSDP-sharded, at W = 1 it is a plain module;
checkpoints are sharded (DCP) either way. Rank 0 writes OUT_DIR/losses-W.json (the global mean loss per step, as it goes) and
OUT_DIR/final-W.safetensors (whole model, EMA and Adam moments, gathered).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pixcade.nn.configs import get_preset
from pixcade.nn.unet import EfficientUNet
from pixcade.stage import StageConfig
from pixcade.train import distributed as dist
from pixcade.train import fsdp
from pixcade.train.checkpoint import WRITE_SLEEP_ENV
from pixcade.train.config import TrainConfig
from pixcade.train.ema import EMA
from pixcade.train.parallel import Parallel
from pixcade.train.setup import build_optimizer

GLOBAL_BATCH = 8


def global_batch(step: int, text_dim: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.rand(GLOBAL_BATCH, 3, 16, 16, generator=g) * 2 - 1
    t = torch.rand(GLOBAL_BATCH, generator=g)
    eps = torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g)
    emb = torch.randn(GLOBAL_BATCH, 5, text_dim, generator=g)
    mask = torch.arange(5)[None, :] < torch.randint(1, 6, (GLOBAL_BATCH, 1), generator=g)
    return x, t, eps, emb, mask


def gathered(net, optimizer, ema: EMA) -> dict[str, torch.Tensor]:
    out = {f"model/{k}": v for k, v in fsdp.full_tensors(net.state_dict()).items()}
    out.update({f"ema/{k}": v for k, v in fsdp.full_tensors(ema.state_dict()).items()})
    names = {p: n for n, p in net.named_parameters()}
    for p, s in optimizer.state.items():
        for key in ("exp_avg", "exp_avg_sq"):
            out[f"adam/{names[p]}/{key}"] = fsdp.full_tensors({"x": s[key]})["x"]
    return {k: v.contiguous() for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("steps", type=int)
    p.add_argument("--save-at", type=int, nargs="*", default=[])
    p.add_argument("--pause-at", type=int, help="this save sleeps mid-write (for a kill -9)")
    p.add_argument("--resume")
    p.add_argument("--checkpoints", help="checkpoint directory (default OUT_DIR/checkpoints)")
    p.add_argument("--bf16", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    info = dist.setup("cpu")
    torch.manual_seed(0)
    cfg = get_preset("tiny-base")
    stage = StageConfig(name="base", resolution=16, unet=cfg).to_dict()
    net = EfficientUNet(cfg)
    par = Parallel(net, info, kind="fsdp", bf16=args.bf16, checkpoint_res_blocks=True)
    tcfg = TrainConfig(lr=1e-3, warmup_steps=0, ema_decay=0.9)
    optimizer = build_optimizer(net.parameters(), tcfg, info.device)
    ema = EMA(net, tcfg.ema_decay)
    step = 0
    if args.resume:
        step = par.load(Path(args.resume), optimizer=optimizer, ema=ema)["step"]
        if info.is_main:
            save_file(gathered(net, optimizer, ema), str(out / f"loaded-{info.world_size}.safetensors"))
        else:
            gathered(net, optimizer, ema)  # collective
    rows = slice(info.rank * GLOBAL_BATCH // info.world_size, (info.rank + 1) * GLOBAL_BATCH // info.world_size)
    losses = {}
    while step < args.steps:
        x, t, eps, emb, mask = (v[rows] for v in global_batch(step + 1, cfg.text_dim))
        a = torch.cos(t * math.pi / 2)[:, None, None, None]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            pred = par.forward_net(a * x + (1 - a * a).sqrt() * eps, t, emb, mask)
        loss = F.mse_loss(pred.float(), eps)
        with par.micro_batch(last=True):
            loss.backward()
        par.clip_grad_norm(1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(net)
        step += 1
        losses[step] = dist.mean(info, float(loss.item()))
        if info.is_main:
            (out / f"losses-{info.world_size}.json").write_text(json.dumps(losses))
        if step in args.save_at:
            if step == args.pause_at:
                os.environ[WRITE_SLEEP_ENV] = "120"
            par.save(Path(args.checkpoints or out / "checkpoints"), step, optimizer=optimizer, ema=ema,
                     state={"ema_updates": ema.num_updates, "stage": stage}, keep=5)
    tensors = gathered(net, optimizer, ema)
    if info.is_main:
        save_file(tensors, str(out / f"final-{info.world_size}.safetensors"))
    dist.teardown(info)


if __name__ == "__main__":
    main()
