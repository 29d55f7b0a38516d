"""Per-stage sampling options: how a user names them, and checking them before any work.

Every option can be given once for all stages or per stage by name. The CLI spelling is
``30`` (all stages), ``base=30,sr=20`` (named stages; the rest keep their saved
defaults) or ``30,sr=20`` (all stages 30 except ``sr``). The Python API takes a plain
value or a ``{stage name: value}`` mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

from pixcade.errors import PixcadeError
from pixcade.stage import StageConfig

V = TypeVar("V")
PerStage = Any  # a value, or a Mapping[str, value] keyed by stage name

# Options the user may set per stage, in the order Stage.sample takes them.
OPTION_NAMES = ("sampler", "steps", "guidance_weight", "threshold", "aug_level")


@dataclass(frozen=True)
class StageOptions:
    """The fully resolved sampling options of one stage (what Stage.sample is given)."""

    sampler: str
    steps: int
    guidance_weight: float
    threshold: str
    aug_level: float

    def as_kwargs(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in OPTION_NAMES}


def _samplers() -> Sequence[str]:
    from pixcade.diffusion.samplers import SAMPLERS

    return tuple(SAMPLERS)


def check_steps(steps: Any, name: str = "steps") -> None:
    """Raise PixcadeError unless ``steps`` is an integer >= 1 (``name``: the caller's spelling)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise PixcadeError(f"{name} must be an integer >= 1, got {steps!r}")


def check_guidance_weight(weight: float, name: str = "guidance weight") -> None:
    """Raise PixcadeError unless ``weight`` >= 0 (``name``: the caller's spelling)."""
    if not weight >= 0:  # also rejects NaN
        raise PixcadeError(f"{name} must be >= 0, got {weight}")


def check_stage_names(option: str, setting: PerStage, names: Sequence[str]) -> None:
    """A ``{stage: value}`` setting of ``option`` may name only the stages run, ``names``."""
    if isinstance(setting, Mapping):
        stray = [k for k in setting if k not in names]
        if stray:
            raise PixcadeError(
                f"{option} names stage(s) {', '.join(map(repr, stray))} that are not run "
                f"(stages: {', '.join(names)})"
            )


def validate_options(stage: str, opts: StageOptions, is_sr: bool) -> None:
    """Raise PixcadeError naming the stage and the bad option."""
    samplers = _samplers()
    if opts.sampler not in samplers:
        raise PixcadeError(
            f"stage {stage!r}: unknown sampler {opts.sampler!r} (choose from {', '.join(samplers)})"
        )
    from pixcade.diffusion.guidance import parse_threshold

    try:
        check_steps(opts.steps)
        check_guidance_weight(opts.guidance_weight)
        parse_threshold(opts.threshold)
    except PixcadeError as err:
        raise PixcadeError(f"stage {stage!r}: {err}") from None
    if not 0.0 <= opts.aug_level <= 1.0:
        raise PixcadeError(
            f"stage {stage!r}: noise-augmentation level must be in [0, 1], got {opts.aug_level}"
        )
    if not is_sr and opts.aug_level != 0.0:
        raise PixcadeError(
            f"stage {stage!r} is not a super-resolution stage: it takes no noise-augmentation level"
        )


def _pick(setting: PerStage, stage: str, default: Any) -> Any:
    if setting is None:
        return default
    if isinstance(setting, Mapping):
        return setting.get(stage, default)
    return setting


def resolve_options(configs: Sequence[StageConfig], **settings: PerStage) -> dict[str, StageOptions]:
    """Each stage's options: the user's setting where given, else the stage's saved default.

    A plain ``aug_level`` applies to the super-resolution stages only (the base has none).
    Mappings must only name stages in ``configs``.
    """
    unknown_opts = set(settings) - set(OPTION_NAMES)
    if unknown_opts:
        raise PixcadeError(f"unknown sampling option(s): {', '.join(sorted(unknown_opts))}")
    names = [c.name for c in configs]
    for opt, setting in settings.items():
        check_stage_names(opt, setting, names)
    resolved = {}
    for c in configs:
        aug_setting = settings.get("aug_level")
        if not c.is_super_resolution and not isinstance(aug_setting, Mapping):
            aug_setting = None
        opts = StageOptions(
            sampler=_pick(settings.get("sampler"), c.name, c.sampler),
            steps=_pick(settings.get("steps"), c.name, c.steps),
            guidance_weight=float(_pick(settings.get("guidance_weight"), c.name, c.guidance_weight)),
            threshold=str(_pick(settings.get("threshold"), c.name, c.threshold)),
            aug_level=float(_pick(aug_setting, c.name, c.aug_level if c.is_super_resolution else 0.0)),
        )
        validate_options(c.name, opts, c.is_super_resolution)
        resolved[c.name] = opts
    return resolved


def parse_per_stage(
    text: str, option: str, convert: Callable[[str], V], stage_names: Sequence[str]
) -> dict[str, V]:
    """Parse the CLI spelling (``30``, ``base=30,sr=20``, ``30,sr=20``) into {stage: value}.

    A bare value applies to every stage in ``stage_names``; ``name=value`` items override it
    and must name one of ``stage_names``.
    """
    out: dict[str, V] = {}
    overrides: dict[str, V] = {}
    items = [s.strip() for s in text.split(",")]
    if not text.strip() or any(not s for s in items):
        raise PixcadeError(f"--{option}: empty value in {text!r}")
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep:
            raw, name = name, ""
        name, raw = name.strip(), raw.strip()
        try:
            value = convert(raw)
        except ValueError:
            raise PixcadeError(f"--{option}: cannot read {raw!r} in {text!r}") from None
        if not name:
            if out:
                raise PixcadeError(f"--{option}: more than one value for all stages in {text!r}")
            out = {s: value for s in stage_names}
            continue
        if name not in stage_names:
            raise PixcadeError(
                f"--{option}: unknown stage {name!r} (stages: {', '.join(stage_names) or 'none'})"
            )
        if name in overrides:
            raise PixcadeError(f"--{option}: stage {name!r} given twice in {text!r}")
        overrides[name] = value
    out.update(overrides)
    return out

