"""Per-stage sampling overrides: how a user names them, and resolving them over each
stage's saved `SamplingSettings` before any work.

Every `SamplingSettings` field can be given once for all stages run or per stage. The
Python API takes a plain value or a ``{stage name: value}`` mapping (for ``sampler_args``,
itself a mapping, per stage means ``{stage: {arg: value}}``). On the command line,
``--set [STAGE.]KEY=VALUE`` sets any field (``KEY`` may be ``sampler_args.NAME``), and the
flags for the common fields take ``30`` (all stages), ``base=30,sr=20`` (named stages; the
rest keep their saved settings) or ``30,sr=20`` (all stages 30 except ``sr``).

A value for all stages sets ``aug_level`` on the super-resolution stages only (the base
has none).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence, TypeVar

from pixcade.diffusion.settings import FIELD_NAMES, MAPPING_FIELDS, SamplingSettings
from pixcade.errors import PixcadeError
from pixcade.stage import StageConfig

V = TypeVar("V")
PerStage = Any  # a value, or a Mapping[str, value] keyed by stage name


def is_per_stage(option: str, setting: Any) -> bool:
    """Whether ``setting`` of ``option`` is a ``{stage: value}`` mapping."""
    if not isinstance(setting, Mapping):
        return False
    if option in MAPPING_FIELDS:  # itself a mapping: per stage when its values are mappings
        return bool(setting) and all(isinstance(v, Mapping) for v in setting.values())
    return True


def check_stage_names(option: str, setting: PerStage, names: Sequence[str]) -> None:
    """A ``{stage: value}`` setting of ``option`` may name only the stages run, ``names``."""
    if is_per_stage(option, setting):
        stray = [k for k in setting if k not in names]
        if stray:
            raise PixcadeError(
                f"{option} names stage(s) {', '.join(map(repr, stray))} that are not run "
                f"(stages: {', '.join(names)})"
            )


def split_per_stage(
    configs: Sequence[StageConfig], overrides: Mapping[str, PerStage]
) -> dict[str, dict[str, Any]]:
    """``{option: value or {stage: value}}`` -> ``{stage: {option: value}}``; None is unset."""
    unknown = sorted(set(overrides) - set(FIELD_NAMES))
    if unknown:
        raise PixcadeError(f"unknown sampling option(s): {', '.join(unknown)} (options: {', '.join(FIELD_NAMES)})")
    names = [c.name for c in configs]
    changes: dict[str, dict[str, Any]] = {c.name: {} for c in configs}
    for option, setting in overrides.items():
        if setting is None:
            continue
        check_stage_names(option, setting, names)
        for c in configs:
            if is_per_stage(option, setting):
                if c.name in setting:
                    changes[c.name][option] = setting[c.name]
            elif _for_all_applies(option, c):
                changes[c.name][option] = setting
    return changes


def _for_all_applies(option: str, config: StageConfig) -> bool:
    """Whether a value of ``option`` given for all stages sets it on this stage."""
    return option != "aug_level" or config.is_super_resolution


def _derive(
    configs: Sequence[StageConfig], derive: Callable[[StageConfig], SamplingSettings]
) -> dict[str, SamplingSettings]:
    """``{stage: derive(config)}``, each checked against its stage; errors name the stage."""
    resolved = {}
    for c in configs:
        try:
            settings = derive(c)
        except PixcadeError as err:
            raise PixcadeError(f"stage {c.name!r}: {err}") from None
        c.check_sampling(settings)
        resolved[c.name] = settings
    return resolved


def resolve(configs: Sequence[StageConfig], **overrides: PerStage) -> dict[str, SamplingSettings]:
    """Each stage's settings: its saved ones with the overrides applied, all checked."""
    changes = split_per_stage(configs, overrides)
    return _derive(configs, lambda c: c.sampling.replace(**changes[c.name]))


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


def parse_assignment(text: str, stage_names: Sequence[str], need_stage: bool = False) -> tuple[str | None, str, str]:
    """``[STAGE.]KEY=VALUE`` -> (stage or None for all stages, KEY, VALUE).

    KEY is a `SamplingSettings` field or ``sampler_args.NAME``; a leading ``STAGE.`` must
    name one of ``stage_names`` (required when ``need_stage``).
    """
    key, eq, value = text.partition("=")
    first, dot, rest = key.strip().partition(".")
    stage: str | None = None
    if dot and first in stage_names:
        stage, key = first, rest
    elif dot and first not in FIELD_NAMES:
        raise PixcadeError(f"--set {text}: unknown stage {first!r} (stages: {', '.join(stage_names)})")
    if not eq or not key.strip() or not value.strip() or (need_stage and stage is None):
        spelling = "STAGE.KEY=VALUE" if need_stage else "[STAGE.]KEY=VALUE"
        raise PixcadeError(f"--set: expected {spelling}, got {text!r}")
    return stage, key.strip(), value


def settings_from_text(
    configs: Sequence[StageConfig], assignments: Sequence[tuple[str | None, str, str]]
) -> dict[str, SamplingSettings]:
    """Each stage's saved settings with command-line ``(stage or None, KEY, VALUE)``
    assignments applied (a value for all stages: see the module doc), checked."""
    per_stage: dict[str, dict[str, str]] = {c.name: {} for c in configs}
    for stage, key, value in assignments:
        for c in configs:
            if stage == c.name or (stage is None and _for_all_applies(key, c)):
                if key in per_stage[c.name]:
                    raise PixcadeError(f"stage {c.name!r}: {key} is set twice")
                per_stage[c.name][key] = value
    return _derive(configs, lambda c: c.sampling.replace_text(per_stage[c.name]))


def as_overrides(settings: Mapping[str, SamplingSettings]) -> dict[str, dict[str, Any]]:
    """``{stage: settings}`` as `Cascade.generate` overrides, ``{field: {stage: value}}``: how
    settings read from text (`settings_from_text`) reach the Python API unchanged."""
    return {name: {stage: (dict(value) if name in MAPPING_FIELDS else value)
                   for stage, s in settings.items() for value in [getattr(s, name)]}
            for name in FIELD_NAMES}
