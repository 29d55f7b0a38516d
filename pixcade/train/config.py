"""Training configuration: a cascade file naming the text encoder and every stage.

A config file (JSON, or TOML read with tomllib) looks like::

    {
      "text_encoder": "minilm", "max_length": 32,
      "embedding_cache": "cache/embeddings",
      "stages": [
        {"stage": {"name": "base", "resolution": 32,
                   "unet": {"preset": "tiny-base", "text_dim": 384}},
         "train": {"data": "data/shapes", "batch_size": 16, "max_steps": 200}}
      ]
    }

``stage`` is a `StageConfig` whose ``unet`` is either a full `UNetConfig` dict or
``{"preset": NAME, **overrides}``; ``train`` is a `TrainConfig`. Relative paths are
taken from the current directory. Unset training fields take the paper's recipe.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pixcade.errors import PixcadeError
from pixcade.limits import check_limit
from pixcade.schema import from_json

if TYPE_CHECKING:
    from pixcade.stage import StageConfig

OPTIMIZERS = ("adam", "adafactor")
LR_SCHEDULES = ("constant", "cosine")
PARALLEL = ("ddp", "fsdp")


@dataclass
class TrainConfig:
    """How one stage trains. Defaults follow Imagen's recipe (batch 2048, lr 1e-4, 10k warmup)."""

    # Training data: what `open_dataset` takes (image folder, JSONL/CSV manifest, tar shards).
    data: str = ""
    # Images per optimizer step over all ranks and accumulation steps, so a recipe means
    # the same on one GPU or many (per forward pass: batch_size / (world size x grad_accum)).
    batch_size: int = 2048
    # Forward/backward passes whose gradients are summed into one optimizer step.
    grad_accum: int = 1
    # Optimizer steps of the run (skipped non-finite steps count); `--max-steps` overrides.
    max_steps: int = 2_500_000
    # "adam", or "adafactor" (factored second moments: less optimizer memory).
    optimizer: str = "adam"
    # Peak learning rate, reached after the warmup.
    lr: float = 1e-4
    # Steps of linear warmup from 0 to lr.
    warmup_steps: int = 10_000
    # After warmup: "constant", or "cosine" from lr down to 0 at max_steps, for a run that
    # ends at a known step (its final weights come from the low-lr tail).
    lr_schedule: str = "constant"
    adam_betas: tuple[float, float] = (0.9, 0.999)
    # Gradient norm clipped to this before each update (0: no clipping); the logged
    # grad_norm is the norm before clipping.
    grad_clip: float = 1.0
    # Decay of the weights' exponential moving average, what sampling and exports use
    # (ramped up over the first updates, see train.ema.EMA).
    ema_decay: float = 0.9999
    # Probability that a sample's text is replaced by the null input (all-False mask), so
    # the model also learns the unconditional p(x) that classifier-free guidance needs.
    cond_drop_prob: float = 0.1
    # Min-SNR-gamma loss weighting (min(SNR, gamma) in x0 terms); None: the plain loss of
    # the parameterisation.
    min_snr_gamma: float | None = None
    # This share of the samples draws t from U[high_noise_from, 1] instead of U[0, 1], to
    # spend more training where layout (what goes where) is decided.
    high_noise_share: float = 0.0
    high_noise_from: float = 0.85  # = diffusion.losses.HIGH_NOISE_FROM (this module stays torch-free)
    # Forward and backward under bfloat16 autocast (weights and optimizer stay float32):
    # true, false, or "auto": on where the device computes bf16 natively (CUDA with bf16,
    # CPUs with avx512_bf16 or AMX; `pixcade.diffusion.precision`), off elsewhere, where it
    # is emulated: on an AVX2 CPU a base U-Net trained 21x slower in bf16 than in fp32.
    bf16: bool | str = "auto"
    # How ranks share the model under torchrun: "ddp" (each holds all of it, gradients
    # all-reduced) or "fsdp" (each holds 1/N of the weights, gradients, Adam state and EMA;
    # sharded checkpoints). docs/training.md has the memory each takes at the paper's sizes.
    parallel: str = "ddp"
    # Recompute each ResNet block's activations in the backward pass instead of keeping
    # them: less activation memory for about one more forward.
    checkpoint_res_blocks: bool = False
    # Seeds the initial weights, the data order, crops and every random draw of the loss.
    seed: int = 0
    # Data-loader worker processes per rank (0: load in the training process).
    num_workers: int = 4
    # Steps between metrics.jsonl rows (mean loss over the window, lr, grad norm, images/s).
    log_every: int = 50
    # Steps between checkpoints (one is also written at the end and when a run is stopped).
    checkpoint_every: int = 5_000
    # Newest checkpoints kept; older ones are deleted after each new one is complete.
    keep_checkpoints: int = 3
    # Steps between preview grids (RUN_DIR/samples/, from the EMA weights).
    sample_every: int = 5_000
    # Prompts for a base stage's preview grid; empty means the captions of the first
    # training samples. Super-resolution stages always preview the first samples' low-res
    # images with their captions.
    sample_prompts: list[str] = field(default_factory=list)
    # Images in a preview grid (when taken from the data).
    sample_count: int = 8
    # Sampling steps of a preview; None: the stage's sampling default.
    sample_steps: int | None = None
    # Start a new run from these weights (a stage export of `pixcade train export`, or its
    # ema.safetensors): fine-tuning, or growing a model. Parameters the file lacks keep their
    # initialisation and are listed when the run starts; any other mismatch is an error.
    # Ignored on --resume (the checkpoint has everything).
    init_from: str | None = None
    # Consecutive non-finite losses tolerated (their updates skipped) before the run stops.
    max_nonfinite: int = 20
    # Write each batch's sample keys to RUN_DIR/sample_keys/rank-R.jsonl (data audits).
    log_sample_keys: bool = False

    def __post_init__(self) -> None:
        self.adam_betas = tuple(float(b) for b in self.adam_betas)  # JSON gives a list
        if self.optimizer not in OPTIMIZERS:
            raise PixcadeError(
                f"unknown optimizer {self.optimizer!r} (choose from {', '.join(OPTIMIZERS)})"
            )
        if not (isinstance(self.bf16, bool) or self.bf16 == "auto"):
            raise PixcadeError(f"train.bf16 must be true, false or \"auto\", got {self.bf16!r}")
        if self.parallel not in PARALLEL:
            raise PixcadeError(f"unknown train.parallel {self.parallel!r} (choose from {', '.join(PARALLEL)})")
        if self.lr_schedule not in LR_SCHEDULES:
            raise PixcadeError(
                f"unknown train.lr_schedule {self.lr_schedule!r} (choose from {', '.join(LR_SCHEDULES)})"
            )
        positive = ("batch_size", "grad_accum", "max_steps", "log_every", "checkpoint_every",
                    "keep_checkpoints", "sample_every", "max_nonfinite", "sample_count")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise PixcadeError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        check_limit("batch", self.batch_size, "train.batch_size")
        check_limit("batch", self.sample_count, "train.sample_count")
        if self.warmup_steps < 0 or self.num_workers < 0:
            raise PixcadeError("train.warmup_steps and train.num_workers must be >= 0")
        if self.lr_schedule == "cosine" and self.warmup_steps >= self.max_steps:
            raise PixcadeError(
                f"train.lr_schedule 'cosine' decays between warmup_steps and max_steps, but warmup_steps "
                f"{self.warmup_steps} >= max_steps {self.max_steps}"
            )
        if not self.lr > 0:
            raise PixcadeError(f"train.lr must be positive, got {self.lr}")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise PixcadeError(f"train.cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise PixcadeError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise PixcadeError(f"train.adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if self.grad_clip < 0:
            raise PixcadeError(f"train.grad_clip must be >= 0 (0 disables), got {self.grad_clip}")
        if self.min_snr_gamma is not None and self.min_snr_gamma <= 0:
            raise PixcadeError(f"train.min_snr_gamma must be positive, got {self.min_snr_gamma}")
        if not 0.0 <= self.high_noise_share <= 1.0:
            raise PixcadeError(f"train.high_noise_share must be in [0, 1], got {self.high_noise_share}")
        if not 0.0 <= self.high_noise_from < 1.0:
            raise PixcadeError(f"train.high_noise_from must be in [0, 1), got {self.high_noise_from}")

    def micro_batch(self, world_size: int) -> int:
        """Images per forward pass on one rank."""
        per_step = world_size * self.grad_accum
        if self.batch_size % per_step:
            raise PixcadeError(
                f"batch_size {self.batch_size} is not divisible by world_size x grad_accum "
                f"= {world_size} x {self.grad_accum}"
            )
        return self.batch_size // per_step

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return from_json(cls, d, "train")


DISTILL_PHASES = ("guided", "halve")
GUIDED_TARGETS = ("output", "thresholded")


@dataclass
class DistillConfig:
    """What `pixcade distill` makes of a trained stage (the teacher): a student with its weights.

    ``guided`` (Meng et al. 2023): a student that takes the guidance weight as an input
    learns the teacher's guided output, one pass instead of two; each sample's weight is
    drawn uniformly from ``guidance_range``. ``halve`` (Salimans & Ho 2022): a student of
    ``steps`` DDIM steps learns ``factor`` (two: halving) DDIM steps of the teacher per step;
    ``steps`` defaults to a distilled teacher's divided by ``factor`` and must be given for a
    teacher not yet step-distilled. A teacher that guides with two passes is halved at its
    guidance weight, which the student keeps in its one pass (guidance and steps in one run).
    """

    # A stage export (RUN_DIR, RUN_DIR/final or an export directory) or a cascade
    # directory, whose stage of this entry's name is the teacher.
    teacher: str
    phase: str = "guided"
    guidance_range: tuple[float, float] = (1.0, 8.0)
    steps: int | None = None
    # Teacher DDIM steps per student step in phase 'halve': 2 halves; 4 or 8 reach a few
    # steps in fewer rounds (TRACT), each round's targets costing that many teacher passes.
    factor: int = 2
    # Phase 'guided': "output" is Meng et al.'s target (the guided raw output); "thresholded"
    # its x0 after the teacher's sampling threshold, so the student learns what sampling uses.
    guided_target: str = "output"

    def __post_init__(self) -> None:
        # Types are the schema's (pixcade.schema, when read from a file); ranges are checked here.
        if not self.teacher:
            raise PixcadeError("distill.teacher must name the trained stage to distil")
        if self.phase not in DISTILL_PHASES:
            raise PixcadeError(f"unknown distill.phase {self.phase!r} (choose from {', '.join(DISTILL_PHASES)})")
        low, high = self.guidance_range = tuple(float(w) for w in self.guidance_range)
        if not 0.0 <= low <= high:
            raise PixcadeError(f"distill.guidance_range must be [low, high] with 0 <= low <= high, got {[low, high]}")
        if self.steps is not None and self.steps < 1:
            raise PixcadeError(f"distill.steps must be a positive integer, got {self.steps!r}")
        if self.guided_target not in GUIDED_TARGETS:
            raise PixcadeError(f"unknown distill.guided_target {self.guided_target!r} (choose from "
                               f"{', '.join(GUIDED_TARGETS)})")
        if self.phase == "halve" and self.guided_target != "output":
            raise PixcadeError("distill.guided_target is for phase 'guided': a halving target is already the "
                               "teacher's thresholded steps")
        if self.factor < 2:
            raise PixcadeError(f"distill.factor (teacher steps per student step) must be at least 2, "
                               f"got {self.factor!r}")
        if self.phase == "guided" and (self.steps is not None or self.factor != 2):
            raise PixcadeError("distill.steps and distill.factor are for phase 'halve': the guided phase keeps the "
                               "teacher's sampler")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["guidance_range"] = list(self.guidance_range)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
        return from_json(cls, d, "distill")


@dataclass
class StageEntry:
    """One stage of the cascade file: its model (a `StageConfig` dict) and its training.

    A distillation entry has a ``distill`` section; its model is the teacher's (made into
    the student by `pixcade.train.distill`), so its ``stage`` holds only the name.
    """

    stage: dict[str, Any]
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig | None = None

    def __post_init__(self) -> None:
        if self.distill is not None and set(self.stage) != {"name"}:
            raise PixcadeError("a distilled stage's model is its teacher's: give its stage only a 'name'")

    def stage_config(self) -> StageConfig:
        from pixcade.stage import StageConfig  # here: it imports torch (see resolve_unet)

        if self.distill is not None:
            raise PixcadeError(f"stage {self.name!r} is distilled from a teacher: its model comes from there")
        return StageConfig.from_dict(resolve_unet(self.stage))

    @property
    def name(self) -> str:
        return str(self.stage.get("name", ""))

    def to_dict(self) -> dict[str, Any]:
        d = {"stage": self.stage, "train": self.train.to_dict()}
        if self.distill is not None:
            d["distill"] = self.distill.to_dict()
        return d


@dataclass
class CascadeTrainConfig:
    stages: list[StageEntry]
    text_encoder: str = "minilm"
    max_length: int = 128
    embedding_cache: str = "cache/embeddings"

    def __post_init__(self) -> None:
        if not self.stages:
            raise PixcadeError("config needs a non-empty list 'stages'")
        if self.max_length < 1:
            raise PixcadeError(f"max_length must be at least 1, got {self.max_length}")
        # Every stage's model config is checked now, before any data is read or model built.
        for i, entry in enumerate(self.stages):
            if entry.distill is not None:  # its model is its teacher's, checked when loaded
                continue
            try:
                stage = entry.stage_config()
            except PixcadeError as err:
                raise PixcadeError(f"config stages[{i}].stage: {err}") from None
            if stage.guidance_conditioned:  # the diffusion loss has no guidance weight to give it
                raise PixcadeError(f"config stages[{i}].stage: a guidance-conditioned U-Net is made by "
                                   "`pixcade distill` (phase 'guided'), not trained from data")

    def stage(self, name: str) -> StageEntry:
        for entry in self.stages:
            if entry.name == name:
                return entry
        names = ", ".join(e.name for e in self.stages) or "none"
        raise PixcadeError(f"no stage named {name!r} in the config (stages: {names})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "text_encoder": self.text_encoder,
            "max_length": self.max_length,
            "embedding_cache": self.embedding_cache,
            "stages": [e.to_dict() for e in self.stages],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CascadeTrainConfig":
        return from_json(cls, d, "config")


def resolve_unet(stage: dict[str, Any]) -> dict[str, Any]:
    """A stage dict whose ``unet`` may be ``{"preset": NAME, **overrides}`` -> full dict."""
    stage = dict(stage)
    unet = stage.get("unet")
    if isinstance(unet, str):
        unet = {"preset": unet}
    if isinstance(unet, dict) and "preset" in unet:
        # Here, not at the top: the pixcade.nn package imports the U-Net and so torch (~4 s);
        # this module stays torch-free so `pixcade train --help` and config errors are instant.
        from pixcade.nn.configs import get_preset

        if not isinstance(unet["preset"], str):
            raise PixcadeError(f"unet.preset must be a preset name (a string), got {unet['preset']!r}")
        overrides = {k: v for k, v in unet.items() if k != "preset"}
        stage["unet"] = get_preset(unet["preset"], **overrides)
    return stage


def load_config(path: str | Path) -> CascadeTrainConfig:
    """Read a cascade training config from JSON or TOML (by extension)."""
    path = Path(path)
    if not path.is_file():
        raise PixcadeError(f"config file not found: {path}")
    try:
        if path.suffix.lower() == ".toml":
            with path.open("rb") as f:
                data = tomllib.load(f)
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, tomllib.TOMLDecodeError) as err:  # ValueError: bad JSON, or not UTF-8
        raise PixcadeError(f"cannot parse config {path}: {err}") from None
    if not isinstance(data, dict):
        raise PixcadeError(f"config {path} must hold an object at the top level")
    return CascadeTrainConfig.from_dict(data)
