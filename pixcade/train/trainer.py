"""The training loop for one stage of the cascade, single process or under torchrun.

Everything a step consumes (data position, every random generator, optimizer state, EMA)
is in the checkpoint, so N straight steps and N/2 + resume + N/2 give the same weights.
"""

from __future__ import annotations

import json
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from pixcade.data.samples import SkipStats
from pixcade.data.transforms import collate
from pixcade.errors import PixcadeError
from pixcade.io import atomic_write_text, remove_stale_temps
from pixcade.stage import Stage
from pixcade.nn.unet import EfficientUNet
from pixcade.train import checkpoint as ckpt
from pixcade.train import distributed as dist
from pixcade.train import setup
from pixcade.train.config import CascadeTrainConfig
from pixcade.train.data import BatchStream, DataPosition
from pixcade.train.ema import EMA
from pixcade.train.export import write_stage_export
from pixcade.train.metrics import MetricsLog
from pixcade.train.preview import Previewer
from pixcade.train.rng import capture_rng, restore_rng
from pixcade.train.signals import StopRequest

# Test hook: comma-separated step numbers whose loss is replaced by NaN.
_NAN_STEPS_ENV = "PIXCADE_TEST_NAN_STEPS"


class NonFiniteLossError(PixcadeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclass
class TrainResult:
    step: int
    stopped_by: str | None  # "SIGINT" / "SIGTERM" when interrupted, None when finished
    last_checkpoint: Path | None
    final_dir: Path | None
    skipped_nonfinite: int


class Trainer:
    def __init__(
        self,
        config: CascadeTrainConfig,
        stage: str,
        run_dir: str | Path,
        *,
        resume: bool = False,
        device: str | None = None,
    ):
        self.config = config
        self.entry = config.stage(stage)
        self.stage_config = self.entry.stage_config()
        self.tcfg = self.entry.train
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.resume = resume
        self.device_name = device
        self._nan_steps = {int(s) for s in os.environ.get(_NAN_STEPS_ENV, "").split(",") if s.strip()}

    # -- setup ---------------------------------------------------------------------------

    def _build(self) -> None:
        t, info = self.tcfg, self.info
        self.micro = t.micro_batch(info.world_size)
        # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
        torch.manual_seed(t.seed)
        net = EfficientUNet(self.stage_config.unet).to(info.device)
        self.net = net
        self.ddp = DistributedDataParallel(net, device_ids=[info.device.index] if info.device.type == "cuda" else None) \
            if info.enabled else None
        self.stage = Stage(self.stage_config, net=self.ddp or net)
        self.optimizer = setup.build_optimizer(net.parameters(), t, info.device)
        self.ema = EMA(net, t.ema_decay)
        # Per-rank streams of randomness: noise, timesteps, text dropout (and dropout layers).
        self._seed_rank(t.seed, info.rank)
        self.gen = torch.Generator(device=info.device).manual_seed(_mix(t.seed, info.rank, 1))
        self.step = 0
        self.skipped_total = 0
        self.position = DataPosition()
        self.notes: list[str] = []
        if self.resume:
            self._load_latest()
        elif ckpt.list_checkpoints(self.ckpt_dir):
            raise PixcadeError(
                f"{self.run_dir} already has checkpoints: pass --resume to continue, or choose another --out"
            )
        if self.step == 0 and t.init_from:
            self._init_from(t.init_from)

    def _recorded_config(self) -> dict[str, Any]:
        """The config for RUN_DIR/config.json. A resumed run keeps the init_from it started
        from (it is given on the command line once, and the weights still descend from it)."""
        config = self.config.to_dict()
        previous = self.run_dir / "config.json"
        if self.step == 0 or self.tcfg.init_from or not previous.is_file():
            return config
        try:
            old = json.loads(previous.read_text())["config"]["stages"]
            init = next(e["train"].get("init_from") for e in old if e["stage"]["name"] == self.entry.name)
        except (ValueError, KeyError, TypeError, StopIteration):
            return config
        if init:
            next(e for e in config["stages"] if e["stage"]["name"] == self.entry.name)["train"]["init_from"] = init
        return config

    def _init_from(self, source: str) -> None:
        """Load ``source``'s weights into the fresh network and restart its EMA from them."""
        new = load_init_weights(self.net, source, self.entry.name)
        self.ema = EMA(self.net, self.tcfg.ema_decay)
        self.notes.append(f"pixcade train: initialised from {source}"
                          + (f"; new, at their initialisation: {', '.join(new)}" if new else ""))

    def _seed_rank(self, seed: int, rank: int) -> None:
        torch.manual_seed(_mix(seed, rank, 0))
        np.random.seed(_mix(seed, rank, 2) % 2**32)
        random.seed(_mix(seed, rank, 3))

    def _load_latest(self) -> None:
        path = dist.broadcast_object(self.info, str(ckpt.latest_checkpoint(self.ckpt_dir) or ""))
        if not path:
            self.notes.append(f"pixcade train: no checkpoint in {self.ckpt_dir}; starting from scratch")
            return
        c = ckpt.load_checkpoint(path)
        try:
            self.net.load_state_dict(c.model)
            self.optimizer.load_state_dict(c.optimizer)
            self.ema.load_state_dict(c.ema, c.state["ema_updates"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise PixcadeError(f"checkpoint {path} does not fit this stage's config: {str(err)[:200]}") from None
        self.step = c.step
        self.skipped_total = int(c.state.get("skipped_nonfinite", 0))
        ranks = c.state["ranks"]
        if len(ranks) == self.info.world_size:
            mine = ranks[self.info.rank]
            self.position = DataPosition.from_dict(mine["data"])
            restore_rng(mine["rng"], {"noise": self.gen})
        else:  # each rank now reads another share: restart the epoch, keep the schedule
            self.notes.append(f"pixcade train: checkpoint was written by {len(ranks)} process(es), now "
                             f"{self.info.world_size}; restarting epoch {ranks[0]['data']['epoch']}")
            self.position = DataPosition(int(ranks[0]["data"]["epoch"]), 0)
        self.notes.append(f"pixcade train: resumed from {path} at step {self.step}")

    # -- checkpoints -------------------------------------------------------------------------

    def _rank_state(self, position: DataPosition) -> dict[str, Any]:
        return {"data": position.to_dict(), "rng": capture_rng({"noise": self.gen})}

    def save(self, rank_state: dict[str, Any] | None = None) -> Path | None:
        """Collective: every rank calls it; rank 0 writes. Returns the checkpoint path."""
        mine = rank_state or self._rank_state(self.stream.position)
        ranks = dist.gather_objects(self.info, mine)
        path = None
        if self.info.is_main:
            state = {
                "ranks": ranks, "ema_updates": self.ema.num_updates, "world_size": self.info.world_size,
                "skipped_nonfinite": self.skipped_total, "stage": self.stage_config.to_dict(),
            }
            path = ckpt.save_checkpoint(
                self.ckpt_dir, self.step, model=self.net.state_dict(), ema=self.ema.state_dict(),
                optimizer=self.optimizer.state_dict(), state=state, keep=self.tcfg.keep_checkpoints,
            )
        dist.barrier(self.info)
        return path

    def export_final(self) -> Path:
        """RUN_DIR/final/: stage.json + ema.safetensors, what `Cascade` loads."""
        return write_stage_export(self.run_dir / "final", self.stage_config.to_dict(), self.config.text_encoder,
                                  self.config.max_length, self.ema.state_dict(), self.step)

    # -- one optimizer step --------------------------------------------------------------------

    def _next_batch(self) -> dict[str, Any]:
        while True:
            batch = next(self.stream)
            self.skips.update(batch)
            if batch["key"]:
                return batch

    def _train_step(self) -> tuple[float | None, float | None, int]:
        """(mean loss, grad norm, images) for one optimizer step; None, None when skipped."""
        t, dev = self.tcfg, self.info.device
        losses, images = [], 0
        for i in range(t.grad_accum):
            batch = self._next_batch()
            if self.keys_log is not None:
                self.keys_log.write(json.dumps({"step": self.step + 1, "epoch": self.stream.position.epoch,
                                                "keys": batch["key"]}) + "\n")
            x = batch["image"].to(dev, non_blocking=True)
            lowres = batch["lowres"].to(dev, non_blocking=True) if "lowres" in batch else None
            emb, mask = setup.embed_batch(self.cache, batch["caption"], dev)
            # Classifier-free guidance: some rows get the null text (all-False mask).
            drop = torch.rand(x.shape[0], generator=self.gen, device=dev) < t.cond_drop_prob
            mask = mask & ~drop[:, None]
            emb = emb * (~drop).to(emb.dtype)[:, None, None]
            sync = nullcontext() if self.ddp is None or i == t.grad_accum - 1 else self.ddp.no_sync()
            with sync:
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=t.bf16):
                    loss = self.stage.loss(x, emb, mask, lowres, min_snr_gamma=t.min_snr_gamma,
                                           high_noise_share=t.high_noise_share,
                                           high_noise_from=t.high_noise_from,
                                           generator=self.gen).float().mean()
                if self.step + 1 in self._nan_steps:  # test hook
                    loss = loss * float("nan")
                (loss / t.grad_accum).backward()
            losses.append(loss.detach())
            images += x.shape[0]
        loss = torch.stack(losses).mean()
        clip = t.grad_clip if t.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), clip)
        bad = dist.any_true(self.info, not (torch.isfinite(loss) and torch.isfinite(grad_norm)))
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            return None, None, images
        lr = setup.lr_at(t, self.step + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.net)
        return float(loss.item()), float(grad_norm.item()), images

    # -- the run ---------------------------------------------------------------------------

    def run(self, max_steps: int | None = None) -> TrainResult:
        self.info = dist.setup(self.device_name)
        try:
            return self._run(max_steps if max_steps is not None else self.tcfg.max_steps)
        finally:
            dist.teardown(self.info)

    def _run(self, max_steps: int) -> TrainResult:
        info = self.info
        self.run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.run_dir)  # debris of a run killed mid-write
        self._build()
        self.log = MetricsLog(self.run_dir, start_step=self.step, total_steps=max_steps, enabled=info.is_main)
        try:
            for note in self.notes:
                self.log.message(note)
            if info.is_main:
                atomic_write_text(self.run_dir / "config.json", json.dumps(
                    {"stage": self.entry.name, "config": self._recorded_config()}, indent=1))
            self._open_data()
            try:
                return self._loop(max_steps)
            finally:
                self.stream.close()
                if self.keys_log is not None:
                    self.keys_log.close()
                if self.skips.count:
                    self.log.message(f"pixcade train: {self.skips.summary()}")
        finally:
            self.log.close()

    def _open_data(self) -> None:
        t, info = self.tcfg, self.info
        dataset = setup.open_training_data(t.data, self.stage_config, t, info.rank, info.world_size)
        if info.is_main:
            setup.ensure_cached(self.config, setup.open_cache(self.config), setup.dataset_captions(dataset))
        dist.barrier(info)
        self.cache = setup.open_cache(self.config)
        self.stream = BatchStream(dataset, batch_size=self.micro, collate=collate, seed=t.seed,
                                  num_workers=t.num_workers, position=self.position)
        self.skips = SkipStats()
        self.keys_log = None
        if t.log_sample_keys:
            (self.run_dir / "sample_keys").mkdir(exist_ok=True)
            self.keys_log = (self.run_dir / "sample_keys" / f"rank-{info.rank}.jsonl").open("a")
        self.previewer = None
        if info.is_main:
            emb, mask, lowres = setup.preview_conditioning(self.config, self.stage_config, t, t.data, self.cache)
            self.previewer = Previewer(self.stage, self.net, emb, mask, lowres, self.run_dir / "samples",
                                       steps=t.sample_steps, seed=t.seed)

    def _preview(self) -> None:
        # Sampling draws from its own generator; the global state is kept anyway so that
        # a preview (e.g. at the end of a resumed half) can never change the training.
        rng = torch.get_rng_state()
        _, chw = self.previewer.render(self.ema, self.step)
        torch.set_rng_state(rng)
        self.log.add_image("samples", chw, self.step)

    def _loop(self, max_steps: int) -> TrainResult:
        t, info = self.tcfg, self.info
        last_ckpt = ckpt.latest_checkpoint(self.ckpt_dir) if info.is_main else None
        consecutive, window_loss, window_n, window_images = 0, 0.0, 0, 0
        window_start = time.perf_counter()
        with StopRequest() as stop:
            while self.step < max_steps:
                # What a checkpoint holds if a signal breaks into the step before its update.
                before = self._rank_state(self.stream.position)
                try:
                    loss, grad_norm, images = self._train_step()
                except Exception:
                    if not stop.requested:
                        raise
                    self.optimizer.zero_grad(set_to_none=True)
                    last_ckpt = self.save(before) or last_ckpt
                    break
                # A skipped step still counts (its batch is consumed, the schedule moves on).
                self.step += 1
                window_images += images
                if loss is None:
                    consecutive += 1
                    self.skipped_total += 1
                    self.log.message(f"pixcade train: non-finite loss at step {self.step}: update skipped "
                                     f"({consecutive} in a row, {self.skipped_total} in all)")
                    if consecutive >= t.max_nonfinite:
                        self._nonfinite_stop(consecutive, last_ckpt)
                else:
                    consecutive = 0
                    window_loss += loss
                    window_n += 1
                if self.step % t.log_every == 0 or self.step == max_steps:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    # Ranks skip steps together, so window_n agrees and None means "all skipped".
                    mean_loss = dist.mean(info, window_loss / window_n) if window_n else None
                    ips = window_images * info.world_size / elapsed
                    self.log.log(self.step, {
                        "loss": mean_loss, "lr": setup.lr_at(t, self.step), "grad_norm": grad_norm,
                        "images_per_s": ips, "epoch": self.stream.position.epoch,
                        "skipped_nonfinite": self.skipped_total, "ema_decay": self.ema.current_decay(),
                    })
                    self.log.progress(self.step, mean_loss, ips)
                    window_loss, window_n, window_images = 0.0, 0, 0
                    window_start = time.perf_counter()
                if self.step % t.checkpoint_every == 0:
                    last_ckpt = self.save() or last_ckpt
                if self.previewer is not None and (self.step % t.sample_every == 0 or self.step == max_steps):
                    self._preview()
                if dist.any_true(info, stop.requested):
                    break
            stopped_by = stop.reason
            last_ckpt = self.save() or last_ckpt
        if stopped_by is not None:
            self.log.message(f"pixcade train: stopped by {stopped_by} at step {self.step}; "
                             f"checkpoint {last_ckpt}; continue with --resume")
            return TrainResult(self.step, stopped_by, last_ckpt, None, self.skipped_total)
        final = self.export_final() if info.is_main else None
        self.log.message(f"pixcade train: done at step {self.step}; EMA weights in {final}")
        return TrainResult(self.step, None, last_ckpt, final, self.skipped_total)

    def _nonfinite_stop(self, consecutive: int, last_ckpt: Path | None) -> None:
        # Checkpoints written during the streak hold the same (finite) weights as the
        # last update: no step of the streak changed them.
        where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
        raise NonFiniteLossError(
            f"stopped: {consecutive} consecutive steps had a non-finite loss or gradient "
            f"(steps {self.step - consecutive + 1}..{self.step}, no update made; "
            f"{self.skipped_total} skipped in all; last update at step {self.step - consecutive}); {where} "
            "(resume from it with --resume, perhaps with a lower lr or bf16 off)"
        )


def load_init_weights(net: torch.nn.Module, source: str | Path, stage: str) -> list[str]:
    """Load a stage export's (or a safetensors file's) weights into ``net``; returns the names
    of the tensors ``net`` has and the file lacks, which keep their initialisation."""
    from pixcade.pipeline.saving import load_weights

    path = Path(source)
    file = path / "ema.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise PixcadeError(f"train.init_from: no weights at {file} (a stage export directory or a .safetensors file)")
    try:
        return load_weights(net, file, stage, allow_missing=True)
    except PixcadeError as err:
        raise PixcadeError(f"train.init_from: {err}") from None


def _mix(seed: int, rank: int, stream: int) -> int:
    """Distinct 63-bit seeds per (seed, rank, stream)."""
    return (seed * 1_000_003 + rank * 7_919 + stream * 104_729 + 0x5EED) % (2**63 - 1)
