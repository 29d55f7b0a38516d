"""`SamplingSettings`: every option that shapes how a stage samples, in one frozen object.

A stage's config stores one (its saved defaults); every caller (`Stage.sample`,
`Cascade.generate`, the generate CLI, the server, the sweep, `pixcade assemble --set`)
derives the settings it runs by `replace(**overrides)`, so each option is declared,
typed and checked here once. Values are plain Python (JSON-ready: no tensors, dtypes or
devices); names are checked against the sampler, spacing and threshold registries.

To add an option: add a field with its default below, check it in `__post_init__`, read it
where it takes effect (`Stage.sample`). Saved models, `Cascade.generate(name=...)`,
`pixcade generate/assemble --set STAGE.name=VALUE` and the server's ``sampling`` object
then carry it with no other edit. A sampler's own keyword arguments are not fields: they
go in ``sampler_args`` and are checked against the sampler function's signature.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from pixcade.diffusion import guidance, samplers
from pixcade.diffusion.samplers import check_steps
from pixcade.errors import PixcadeError
from pixcade.schema import check_known_keys, from_json

# The precisions a stage can sample in (torch dtypes in pixcade.diffusion.precision): "auto"
# is bf16 where the device computes it natively and fp32 elsewhere (why: precision's doc).
DTYPE_NAMES = ("auto", "fp32", "bf16", "fp16")


def _real(value: Any, name: str) -> float:
    """``value`` as a float if it is a finite int or float (not bool), else PixcadeError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PixcadeError(f"{name} must be a finite number, got {value!r}")
    return float(value)


class FrozenArgs(dict):
    """A read-only dict (a sampler's keyword arguments inside frozen settings): it hashes,
    compares, copies, pickles and serialises as a dict, but cannot be changed in place."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("sampling settings are frozen: use SamplingSettings.replace(sampler_args=...)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]
    __ior__ = _refuse  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self) -> tuple[Any, ...]:
        return FrozenArgs, (dict(self),)


@dataclass(frozen=True)
class SamplingSettings:
    """How one stage samples. Checked when made; change with `replace`, never in place."""

    # A name in pixcade.diffusion.samplers.SAMPLERS.
    sampler: str = "dpm++"
    # Denoiser calls (U-Net evaluations, twice the batch under guidance), at most the
    # "steps" limit of pixcade.limits (10000 unless $PIXCADE_MAX_STEPS raises it).
    steps: int = 30
    # Classifier-free guidance weight w >= 0: 0 unconditional, 1 conditional, > 1 guided.
    guidance_weight: float = 5.0
    # x0 thresholding: none, static, dynamic (Imagen's, at the 99.5th percentile) or dynamic:P.
    threshold: str = "dynamic:99.5"
    # Super-resolution stages: the noise-augmentation level of the low-res input, in [0, 1].
    aug_level: float = 0.0
    # Super-resolution stages: the time sampling starts at, in (0, 1]. 1 (the paper's): from
    # pure noise. Below 1: from the upsampled low-res input noised to that time, with all
    # `steps` calls spread over [0, start] (Chung et al. 2022, "Come-Closer-Diffuse-Faster":
    # the input already holds the coarse image, so a short run from near it needs far fewer
    # steps). Measured choice for the shapes SR stage: docs/distillation-notes.md.
    start: float = 1.0
    # The time grid, a name in pixcade.diffusion.samplers.SPACINGS; None: the sampler's own.
    spacing: str | None = None
    # The sampler's own keyword arguments (e.g. DDIM's eta), checked against its signature.
    sampler_args: dict[str, Any] = field(default_factory=FrozenArgs)
    # The precision the network runs in (pixcade.diffusion.precision): a per-stage choice,
    # since what a stage tolerates depends on it. "auto" is resolved, and fp16's need of an
    # accelerator checked, where the device is known (Cascade.check_precision, Stage.sample).
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.sampler, str):
            raise PixcadeError(f"sampler must be a string, got {self.sampler!r}")
        if not isinstance(self.sampler_args, Mapping):
            raise PixcadeError(f"sampler_args must be a mapping, got {self.sampler_args!r}")
        args = samplers.check_sampler(self.sampler, self.sampler_args)
        check_steps(self.steps)
        weight = _real(self.guidance_weight, "guidance weight")
        if weight < 0:
            raise PixcadeError(f"guidance weight must be >= 0, got {self.guidance_weight!r}")
        if not isinstance(self.threshold, str):
            raise PixcadeError(f"threshold must be a string, got {self.threshold!r}")
        guidance.parse_threshold(self.threshold)
        aug = _real(self.aug_level, "noise-augmentation level")
        if not 0.0 <= aug <= 1.0:
            raise PixcadeError(f"noise-augmentation level must be in [0, 1], got {self.aug_level!r}")
        start = samplers.check_start(self.start, "start")  # a number in (0, 1]: NaN, inf and bools fail
        if self.spacing is not None:
            samplers.check_spacing(self.spacing)
        if self.dtype not in DTYPE_NAMES:
            raise PixcadeError(f"unknown dtype {self.dtype!r} (choose from {', '.join(DTYPE_NAMES)})")
        object.__setattr__(self, "guidance_weight", weight)
        object.__setattr__(self, "aug_level", aug)
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "sampler_args", FrozenArgs(args))

    def replace(self, **changes: Any) -> "SamplingSettings":
        """These settings with ``changes`` (field names) applied, checked.

        ``sampler_args`` given are merged over the current ones; a change of sampler starts
        from the new sampler's defaults instead (arguments belong to their sampler).
        """
        check_known_keys(SamplingSettings, changes, "sampling settings")
        if "sampler_args" in changes:
            new_args = changes["sampler_args"]
            if not isinstance(new_args, Mapping):
                raise PixcadeError(f"sampler_args must be a mapping, got {new_args!r}")
            changes = {**changes, "sampler_args": {**self._kept_args(changes), **new_args}}
        elif "sampler" in changes:
            changes = {**changes, "sampler_args": self._kept_args(changes)}
        return dataclasses.replace(self, **changes)

    def _kept_args(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        same = changes.get("sampler", self.sampler) == self.sampler
        return dict(self.sampler_args) if same else {}

    def replace_text(self, changes: Mapping[str, str]) -> "SamplingSettings":
        """`replace` from command-line text: ``{"steps": "30", "sampler_args.eta": "0.5"}``.

        Each value is read as its field's type (a sampler argument's as its default's type
        in the sampler that will run); ``none`` is None for an optional field.
        """
        fields: dict[str, Any] = {}
        args: dict[str, str] = {}
        for key, raw in changes.items():
            head, dot, arg = key.partition(".")
            if head == "sampler_args" and dot and arg:
                args[arg] = raw
            elif head == "sampler_args" or dot:
                raise PixcadeError(f"{key!r}: expected a settings field or sampler_args.NAME")
            else:
                check_known_keys(SamplingSettings, {key: raw}, "sampling settings")
                fields[key] = _from_text(key, raw, _FIELD_TYPES[key])
        if not args:
            return self.replace(**fields)
        sampler = fields.get("sampler", self.sampler)
        defaults = samplers.sampler_arg_defaults(sampler) if isinstance(sampler, str) else {}
        typed = {
            name: _from_text(f"sampler_args.{name}", raw, type(defaults[name])) if name in defaults else raw
            for name, raw in args.items()
        }  # an unknown name is refused, with the choices, by the check
        return self.replace(**fields, sampler_args=typed)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["sampler_args"] = dict(self.sampler_args)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SamplingSettings":
        return from_json(cls, dict(d) if isinstance(d, Mapping) else d, "sampling settings")


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(SamplingSettings))
_FIELD_TYPES = typing.get_type_hints(SamplingSettings)
# The fields whose values are themselves mappings (``{stage: value}`` is then a mapping of them).
MAPPING_FIELDS = tuple(name for name, kind in _FIELD_TYPES.items() if typing.get_origin(kind) is dict)


def _from_text(name: str, raw: str, kind: Any) -> Any:
    """Command-line text as type ``kind`` (int, float, bool, str, or one of them | None)."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if type(None) in options:
        if raw.strip().lower() == "none":
            return None
        kind = next(k for k in options if k is not type(None))
    text = raw.strip()
    if kind is bool:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
    elif kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    elif kind is str:
        return text
    raise PixcadeError(f"{name}: cannot read {raw!r} as {getattr(kind, '__name__', kind)}")
