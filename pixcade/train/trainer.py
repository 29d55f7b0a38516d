"""The training loop for one stage of the cascade, single process or under torchrun.

`train` reads top to bottom: join the process group, build every part (network, its
data-parallel wrapper, optimizer, EMA, random streams), restore or start the run's state,
open the logs and the data, then loop. Everything a step consumes (data position, every
random generator, optimizer state, EMA) is in the checkpoint, so N straight steps and
N/2 + resume + N/2 give the same weights.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from pixcade.data.transforms import collate
from pixcade.errors import PixcadeError
from pixcade.io import atomic_write_text, remove_stale_temps
from pixcade.nn.unet import EfficientUNet
from pixcade.pipeline.saving import load_weights
from pixcade.stage import Stage, StageConfig
from pixcade.train import checkpoint as ckpt
from pixcade.train import distill
from pixcade.train import distributed as dist
from pixcade.train import setup
from pixcade.train.config import CascadeTrainConfig, TrainConfig
from pixcade.train.data import Batches, BatchStream, DataPosition
from pixcade.train.ema import EMA
from pixcade.train.export import write_stage_export
from pixcade.train.metrics import MetricsLog
from pixcade.train.parallel import Parallel, check_checkpoint
from pixcade.train.preview import Previewer
from pixcade.train.rng import capture_rng, restore_rng
from pixcade.train.signals import StopRequest


class NonFiniteLossError(PixcadeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclass
class TrainResult:
    step: int
    stopped_by: str | None  # "SIGINT" / "SIGTERM" when interrupted, None when finished
    last_checkpoint: Path | None
    final_dir: Path | None
    skipped_nonfinite: int
    net: nn.Module = field(repr=False)  # this rank's network after the last step
    ema: EMA = field(repr=False)


@dataclass(frozen=True)
class Parts:
    """Everything a step uses, built once by `build_parts` before the loop."""

    net: nn.Module  # the U-Net (sharded in place under FSDP): what the optimizer, EMA and checkpoints hold
    model: nn.Module  # what runs forward and backward: `net`, or its DDP wrapper
    parallel: Parallel  # how the ranks share `net`: gradient sync, clipping, whole weights, checkpoints
    stage: Stage  # conditions `model` (previews sample it)
    # (micro-batch, generator) -> per-sample loss: the stage's diffusion loss, or a
    # distillation objective (`pixcade distill`).
    loss: Callable[[dict[str, Any], torch.Generator], torch.Tensor]
    optimizer: torch.optim.Optimizer
    ema: EMA
    gen: torch.Generator  # this rank's draws of the loss: timesteps, noise, augmentation, caption dropout


@dataclass
class Progress:
    """What the loop advances and a checkpoint records besides the weights."""

    step: int = 0  # optimizer steps taken, skipped ones included
    skipped: int = 0  # steps whose update was skipped for a non-finite loss or gradient
    position: DataPosition = field(default_factory=DataPosition)


def train(
    config: CascadeTrainConfig,
    stage_name: str,
    run_dir: str | Path,
    *,
    resume: bool = False,
    resume_from: str | Path | None = None,
    device: str | None = None,
    max_steps: int | None = None,
) -> TrainResult:
    """Train stage ``stage_name`` of ``config`` into ``run_dir`` (checkpoints, metrics,
    previews, and ``final/`` when it finishes). Joins the torchrun process group if there
    is one; Ctrl-C / SIGTERM stop at a step boundary with a checkpoint. ``resume_from``: a
    checkpoint directory to resume from instead of the newest in ``run_dir``."""
    info = dist.setup(device)
    try:
        return _train(config, stage_name, Path(run_dir), info, resume or resume_from is not None,
                      max_steps, resume_from)
    finally:
        dist.teardown(info)


def _train(config: CascadeTrainConfig, stage_name: str, run_dir: Path, info: dist.DistInfo,
           resume: bool, max_steps: int | None, resume_from: str | Path | None = None) -> TrainResult:
    entry = config.stage(stage_name)
    # "auto" precision is decided here, once, for this device; every part below reads the bool.
    opts = dataclasses.replace(entry.train, bf16=setup.autocast_bf16(entry.train, info.device))
    # A distillation entry's model is its teacher's, made into the student.
    distilling = distill.prepare(config, entry, info.device) if entry.distill is not None else None
    stage_config = distilling.student if distilling is not None else entry.stage_config()
    max_steps = opts.max_steps if max_steps is None else max_steps
    ckpt_dir = run_dir / "checkpoints"
    micro_batch = opts.micro_batch(info.world_size)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(run_dir)  # debris of a run killed mid-write

    # -- build: network, data-parallel wrapper, optimizer, EMA, random streams -------------
    parts = build_parts(stage_config, opts, info, distilling)

    # -- state: the newest checkpoint, or a fresh start (perhaps from other weights) -------
    notes = [setup.precision_note(entry.train, info.device)]
    progress = Progress()
    if resume:
        progress = _resume(ckpt_dir, parts, info, notes, resume_from)
    elif ckpt.list_checkpoints(ckpt_dir):
        raise PixcadeError(f"{run_dir} already has checkpoints: pass --resume to continue, or choose another --out")
    if progress.step == 0 and opts.init_from:
        parts = _init_from(parts, opts, entry.name, notes)

    with ExitStack() as cleanup:
        # -- logs: metrics, what happened so far, the config this run trains with ----------
        log = MetricsLog(run_dir, start_step=progress.step, total_steps=max_steps, enabled=info.is_main)
        cleanup.callback(log.close)
        for note in notes:
            log.message(note)
        if info.is_main:
            recorded = _recorded_config(config, entry.name, run_dir, progress.step)
            atomic_write_text(run_dir / "config.json", json.dumps({"stage": entry.name, "config": recorded}, indent=1))

        # -- data: this rank's share, captions embedded once, preview inputs ----------------
        dataset = setup.open_training_data(opts.data, stage_config, opts, info.rank, info.world_size)
        if info.is_main:
            setup.ensure_cached(config, setup.open_cache(config), setup.dataset_captions(dataset))
        dist.barrier(info)
        stream = BatchStream(dataset, batch_size=micro_batch, collate=collate, seed=opts.seed,
                             num_workers=opts.num_workers, position=progress.position)
        keys_log = None
        if opts.log_sample_keys:
            (run_dir / "sample_keys").mkdir(exist_ok=True)
            keys_log = cleanup.enter_context((run_dir / "sample_keys" / f"rank-{info.rank}.jsonl").open("a"))
        batches = Batches(stream, setup.open_cache(config), info.device, keys_log)
        cleanup.callback(batches.close, log)
        previewer = None
        if info.is_main:
            emb, mask, lowres = setup.preview_conditioning(config, stage_config, opts, opts.data, batches.cache)
            previewer = Previewer(parts.stage, info.device, emb, mask, lowres, run_dir / "samples",
                                  steps=opts.sample_steps, seed=opts.seed)

        # -- loop --------------------------------------------------------------------------
        def save(rank_state: dict[str, Any] | None = None) -> Path | None:
            return _save(ckpt_dir, parts, progress, info, stage_config, opts.keep_checkpoints,
                         rank_state or _rank_state(stream.position, parts.gen))

        last_ckpt = ckpt.latest_checkpoint(ckpt_dir) if info.is_main else None
        consecutive, window_loss, window_n, window_images = 0, 0.0, 0, 0
        window_start = time.perf_counter()
        with StopRequest() as stop:
            while progress.step < max_steps:
                # What a checkpoint holds if a signal breaks into the step before its update.
                before = _rank_state(stream.position, parts.gen)
                try:
                    loss, grad_norm, images = optimizer_step(parts, batches, opts, info, progress.step + 1)
                except Exception:
                    if not stop.requested:
                        raise
                    parts.optimizer.zero_grad(set_to_none=True)
                    last_ckpt = save(before) or last_ckpt
                    break
                # A skipped step still counts (its batch is consumed, the schedule moves on).
                progress.step += 1
                window_images += images
                if loss is None:
                    consecutive += 1
                    progress.skipped += 1
                    log.message(f"pixcade train: non-finite loss at step {progress.step}: update skipped "
                                f"({consecutive} in a row, {progress.skipped} in all)")
                    if consecutive >= opts.max_nonfinite:
                        raise _nonfinite_error(progress, consecutive, last_ckpt)
                else:
                    consecutive = 0
                    window_loss += loss
                    window_n += 1
                if progress.step % opts.log_every == 0 or progress.step == max_steps:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    # Ranks skip steps together, so window_n agrees and None means "all skipped".
                    mean_loss = dist.mean(info, window_loss / window_n) if window_n else None
                    ips = window_images * info.world_size / elapsed
                    log.log(progress.step, {
                        "loss": mean_loss, "lr": setup.lr_at(opts, progress.step), "grad_norm": grad_norm,
                        "images_per_s": ips, "epoch": stream.position.epoch,
                        "skipped_nonfinite": progress.skipped, "ema_decay": parts.ema.current_decay(),
                    })
                    log.progress(progress.step, mean_loss, ips)
                    window_loss, window_n, window_images = 0.0, 0, 0
                    window_start = time.perf_counter()
                if progress.step % opts.checkpoint_every == 0:
                    last_ckpt = save() or last_ckpt
                if progress.step % opts.sample_every == 0 or progress.step == max_steps:
                    ema = parts.parallel.full(parts.ema.state_dict())  # collective under FSDP
                    if previewer is not None:
                        _preview(previewer, ema, progress.step, log)
                if dist.any_true(info, stop.requested):
                    break
            stopped_by = stop.reason
            last_ckpt = save() or last_ckpt

        # -- end: a checkpoint to resume from, or the export `Cascade` loads ----------------
        final = None
        if stopped_by is not None:
            log.message(f"pixcade train: stopped by {stopped_by} at step {progress.step}; "
                        f"checkpoint {last_ckpt}; continue with --resume")
        else:
            ema = parts.parallel.full(parts.ema.state_dict())
            if info.is_main:
                final = write_stage_export(run_dir / "final", stage_config.to_dict(), config.text_encoder,
                                           config.max_length, ema, progress.step)
            log.message(f"pixcade train: done at step {progress.step}; EMA weights in {final}")
        return TrainResult(progress.step, stopped_by, last_ckpt, final, progress.skipped, parts.net, parts.ema)


# -- build ---------------------------------------------------------------------------------


def build_parts(stage_config: StageConfig, opts: TrainConfig, info: dist.DistInfo,
                distilling: distill.DistillSetup | None = None) -> Parts:
    """The network and everything that updates it. How the ranks share it (DDP or FSDP,
    `Parallel`) is chosen here and nowhere else. With ``distilling``, the network starts
    from the teacher's weights and learns the distillation objective."""
    # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
    torch.manual_seed(opts.seed)
    net = EfficientUNet(stage_config.unet).to(info.device)
    if distilling is not None:
        distill.init_student(net, distilling.teacher.net)
    parallel = Parallel(net, info, kind=opts.parallel, bf16=opts.bf16,
                        checkpoint_res_blocks=opts.checkpoint_res_blocks)
    model = parallel.forward_net
    stage = Stage(stage_config, net=model)
    if distilling is not None:
        objective = distill.Distillation(distilling.teacher, stage, distilling.cfg)

        def loss(batch: dict[str, Any], gen: torch.Generator) -> torch.Tensor:
            return objective.loss(**batch, generator=gen)
    else:
        def loss(batch: dict[str, Any], gen: torch.Generator) -> torch.Tensor:
            return stage.loss(**batch, cond_drop_prob=opts.cond_drop_prob, min_snr_gamma=opts.min_snr_gamma,
                              high_noise_share=opts.high_noise_share, high_noise_from=opts.high_noise_from,
                              generator=gen)
    optimizer = setup.build_optimizer(net.parameters(), opts, info.device)
    ema = EMA(net, opts.ema_decay)
    # Per-rank streams: the global ones (dropout layers) and the loss's generator.
    torch.manual_seed(_mix(opts.seed, info.rank, 0))
    np.random.seed(_mix(opts.seed, info.rank, 2) % 2**32)
    random.seed(_mix(opts.seed, info.rank, 3))
    gen = torch.Generator(device=info.device).manual_seed(_mix(opts.seed, info.rank, 1))
    return Parts(net, model, parallel, stage, loss, optimizer, ema, gen)


def _resume(ckpt_dir: Path, parts: Parts, info: dist.DistInfo, notes: list[str],
            chosen: str | Path | None = None) -> Progress:
    """Load the newest checkpoint (or ``chosen``) into ``parts``; the progress it records.
    A damaged one is a one-line error naming the intact older ones."""
    if chosen is not None and not Path(chosen).is_dir():
        raise PixcadeError(f"--resume-from {chosen}: no such checkpoint directory")
    path = dist.broadcast_object(info, str(chosen or ckpt.latest_checkpoint(ckpt_dir) or ""))
    if not path:
        notes.append(f"pixcade train: no checkpoint in {ckpt_dir}; starting from scratch")
        return Progress()
    try:
        state = parts.parallel.load(Path(path), optimizer=parts.optimizer, ema=parts.ema)
        progress = Progress(step=int(state["step"]), skipped=int(state.get("skipped_nonfinite", 0)))
        ranks = state["ranks"]
        if len(ranks) == info.world_size:
            mine = ranks[info.rank]
            progress.position = DataPosition.from_dict(mine["data"])
            restore_rng(mine["rng"], {"noise": parts.gen})
        else:  # each rank now reads another share: restart the epoch, keep the schedule
            notes.append(f"pixcade train: checkpoint was written by {len(ranks)} process(es), now "
                         f"{info.world_size}; restarting epoch {ranks[0]['data']['epoch']}")
            progress.position = DataPosition(int(ranks[0]["data"]["epoch"]), 0)
    except PixcadeError as err:
        raise PixcadeError(f"{err}{_alternatives(Path(path).parent, path)}") from None
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise PixcadeError(f"checkpoint {path} has damaged state ({type(err).__name__}: {str(err)[:120]})"
                           f"{_alternatives(Path(path).parent, path)}") from None
    if chosen is not None and info.rank == 0:
        _set_aside_newer(ckpt_dir, progress.step, notes)
    dist.barrier(info)
    notes.append(f"pixcade train: resumed from {path} at step {progress.step}")
    return progress


def _set_aside_newer(ckpt_dir: Path, step: int, notes: list[str]) -> None:
    """A run resumed from an older checkpoint rewrites the steps after it, so the newer
    checkpoints (damaged or not) must not stand in for them: move them to ``set-aside/``.
    Never deleted: they may be the only copy of work the user wants back."""
    newer = [p for p in ckpt.list_checkpoints(ckpt_dir) if ckpt.checkpoint_step(p) > step]
    if not newer:
        return
    aside = ckpt_dir / "set-aside"
    aside.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for path in newer:
        path.rename(aside / f"{path.name}-{stamp}")
    notes.append(f"pixcade train: moved {len(newer)} newer checkpoint(s) to {aside} "
                 f"(the run continues from step {step})")


def _alternatives(directory: Path, damaged: str | Path) -> str:
    """"; intact: ... - resume from one with --resume-from DIR" (or that there is none)."""
    intact = ckpt.intact_checkpoints(directory, but=damaged, check=check_checkpoint)
    if not intact:
        return "; no older intact checkpoint to resume from"
    return (f"; intact older checkpoint(s): {', '.join(str(p) for p in intact)} - resume from one "
            f"with --resume-from {intact[0]}")


def _init_from(parts: Parts, opts: TrainConfig, stage_name: str, notes: list[str]) -> Parts:
    """Load ``opts.init_from``'s weights into the fresh network and restart its EMA from them."""
    new = parts.parallel.edit_whole(lambda net: load_init_weights(net, opts.init_from, stage_name))
    notes.append(f"pixcade train: initialised from {opts.init_from}"
                 + (f"; new, at their initialisation: {', '.join(new)}" if new else ""))
    return dataclasses.replace(parts, ema=EMA(parts.net, opts.ema_decay))


def load_init_weights(net: nn.Module, source: str | Path, stage: str) -> list[str]:
    """Load a stage export's (or a safetensors file's) weights into ``net``; returns the names
    of the tensors ``net`` has and the file lacks, which keep their initialisation."""
    path = Path(source)
    file = path / "ema.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise PixcadeError(f"train.init_from: no weights at {file} (a stage export directory or a .safetensors file)")
    try:
        return load_weights(net, file, stage, allow_missing=True)
    except PixcadeError as err:
        raise PixcadeError(f"train.init_from: {err}") from None


def _recorded_config(config: CascadeTrainConfig, stage_name: str, run_dir: Path, step: int) -> dict[str, Any]:
    """The config for RUN_DIR/config.json. A resumed run keeps the init_from it started
    from (it is given on the command line once, and the weights still descend from it)."""
    recorded = config.to_dict()
    previous = run_dir / "config.json"
    if step == 0 or config.stage(stage_name).train.init_from or not previous.is_file():
        return recorded
    try:
        old = json.loads(previous.read_text())["config"]["stages"]
        init = next(e["train"].get("init_from") for e in old if e["stage"]["name"] == stage_name)
    except (ValueError, KeyError, TypeError, StopIteration):
        return recorded
    if init:
        next(e for e in recorded["stages"] if e["stage"]["name"] == stage_name)["train"]["init_from"] = init
    return recorded


# -- one optimizer step --------------------------------------------------------------------


def optimizer_step(parts: Parts, batches: Batches, opts: TrainConfig, info: dist.DistInfo,
                   step: int) -> tuple[float | None, float | None, int]:
    """Optimizer step ``step`` (1-based) over ``opts.grad_accum`` micro-batches: (mean loss,
    gradient norm before clipping, images). Loss and norm are None, and the update is
    skipped, when either is non-finite on any rank."""
    losses, images = [], 0
    for i in range(opts.grad_accum):
        batch = batches.next(step)
        # Gradients are synchronised on the last micro-batch only.
        with parts.parallel.micro_batch(last=i == opts.grad_accum - 1):
            with torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=opts.bf16):
                loss = parts.loss(batch, parts.gen).float().mean()
            (loss / opts.grad_accum).backward()
        losses.append(loss.detach())
        images += batch["images"].shape[0]
    loss = torch.stack(losses).mean()
    clip = opts.grad_clip if opts.grad_clip > 0 else float("inf")
    grad_norm = parts.parallel.clip_grad_norm(clip)
    if dist.any_true(info, not (torch.isfinite(loss) and torch.isfinite(grad_norm))):
        parts.optimizer.zero_grad(set_to_none=True)
        return None, None, images
    for group in parts.optimizer.param_groups:
        group["lr"] = setup.lr_at(opts, step)
    parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    parts.ema.update(parts.net)
    return float(loss.item()), float(grad_norm.item()), images


# -- checkpoints, previews, stopping ---------------------------------------------------------


def _rank_state(position: DataPosition, gen: torch.Generator) -> dict[str, Any]:
    return {"data": position.to_dict(), "rng": capture_rng({"noise": gen})}


def _save(ckpt_dir: Path, parts: Parts, progress: Progress, info: dist.DistInfo, stage_config: StageConfig,
          keep: int, rank_state: dict[str, Any]) -> Path | None:
    """Collective: every rank calls it with its own state (and, under FSDP, writes its
    shards); rank 0 writes the rest. The checkpoint's path on rank 0."""
    state = {
        "ranks": dist.gather_objects(info, rank_state), "ema_updates": parts.ema.num_updates,
        "world_size": info.world_size, "skipped_nonfinite": progress.skipped, "stage": stage_config.to_dict(),
    }
    return parts.parallel.save(ckpt_dir, progress.step, optimizer=parts.optimizer, ema=parts.ema, state=state,
                               keep=keep)


def _preview(previewer: Previewer, ema: dict[str, torch.Tensor], step: int, log: MetricsLog) -> None:
    # Sampling draws from its own generator; the global state is kept anyway so that
    # a preview (e.g. at the end of a resumed half) can never change the training.
    rng = torch.get_rng_state()
    _, chw = previewer.render(ema, step)
    torch.set_rng_state(rng)
    log.add_image("samples", chw, step)


def _nonfinite_error(progress: Progress, consecutive: int, last_ckpt: Path | None) -> NonFiniteLossError:
    # Checkpoints written during the streak hold the same (finite) weights as the
    # last update: no step of the streak changed them.
    where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
    step = progress.step
    return NonFiniteLossError(
        f"stopped: {consecutive} consecutive steps had a non-finite loss or gradient "
        f"(steps {step - consecutive + 1}..{step}, no update made; "
        f"{progress.skipped} skipped in all; last update at step {step - consecutive}); {where} "
        "(resume from it with --resume, perhaps with a lower lr or bf16 off)"
    )


def _mix(seed: int, rank: int, stream: int) -> int:
    """Distinct 63-bit seeds per (seed, rank, stream)."""
    return (seed * 1_000_003 + rank * 7_919 + stream * 104_729 + 0x5EED) % (2**63 - 1)
