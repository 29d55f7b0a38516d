"""`SamplingSettings`: one checked, frozen object for every sampling option, stored on the
stage config, overridden by every caller; the sampler and spacing registries behind it."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import pixcade
from diffusion_theory import gaussian_denoiser, moments, rel_err, whitened_noise
from pixcade.cli import main as pixcade_main
from pixcade.diffusion import samplers
from pixcade.diffusion.samplers import SAMPLERS, SPACINGS, Sampler, sample
from pixcade.diffusion.schedules import get_schedule
from pixcade.diffusion.settings import SamplingSettings
from pixcade.errors import PixcadeError
from pixcade.limits import limit
from pixcade.nn.configs import get_preset
from pixcade.pipeline.cascade import Cascade
from pixcade.pipeline.saving import load_cascade_config
from pixcade.diffusion.precision import dtype_name
from pixcade.serve.model import CascadeModel, StagePlan
from pixcade.serve.requests import Limits, parse_request
from pixcade.stage import StageConfig
from tiny_cascade import build_tiny_cascade, save_tiny_cascade

SHIPPED = Path(pixcade.__file__).parent / "weights" / "shapes"


@pytest.fixture(scope="module")
def cascade() -> Cascade:
    return build_tiny_cascade()


@pytest.fixture
def no_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def px(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


# -- the object --------------------------------------------------------------------------


@pytest.mark.parametrize("changes, words", [
    (dict(sampler="euler"), "unknown sampler 'euler' (choose from ddpm, ddim, dpm++)"),
    (dict(sampler=3), "sampler must be a string, got 3"),
    (dict(steps=0), "steps must be an integer >= 1, got 0"),
    (dict(steps=2.5), "steps must be an integer >= 1, got 2.5"),
    (dict(steps=True), "steps must be an integer >= 1, got True"),
    (dict(guidance_weight=-3), "guidance weight must be >= 0, got -3"),
    (dict(guidance_weight=math.nan), "guidance weight must be a finite number, got nan"),
    (dict(guidance_weight=math.inf), "guidance weight must be a finite number, got inf"),
    (dict(guidance_weight="5"), "guidance weight must be a finite number, got '5'"),
    (dict(threshold="clip"), "bad threshold 'clip'"),
    (dict(threshold=None), "threshold must be a string, got None"),
    (dict(aug_level=1.5), "noise-augmentation level must be in [0, 1], got 1.5"),
    (dict(aug_level=math.nan), "noise-augmentation level must be a finite number, got nan"),
    (dict(spacing="cubic"), "unknown spacing 'cubic' (choose from uniform-t, log-snr)"),
    (dict(sampler_args={"eta": 0.5}), "sampler 'dpm++' takes no argument 'eta' (its arguments: none)"),
    (dict(sampler_args=[("eta", 0.5)]), "sampler_args must be a mapping"),
])
def test_bad_values_are_refused_when_made(changes: dict, words: str) -> None:
    with pytest.raises(PixcadeError) as err:
        SamplingSettings(**changes)
    assert words in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(PixcadeError):  # and when derived from good settings
        SamplingSettings().replace(**changes)


def test_values_are_normalised_and_frozen() -> None:
    s = SamplingSettings(guidance_weight=3, aug_level=1)
    assert type(s.guidance_weight) is float and type(s.aug_level) is float
    with pytest.raises(AttributeError):
        s.steps = 5  # type: ignore[misc]
    with pytest.raises(TypeError, match="frozen"):
        s.sampler_args["eta"] = 1.0  # type: ignore[index]
    # Equal settings are equal and hash alike; copies survive pickling (DataLoader workers,
    # torch.distributed) and JSON.
    assert s == SamplingSettings(guidance_weight=3.0, aug_level=1.0)
    assert hash(s) == hash(SamplingSettings(guidance_weight=3.0, aug_level=1.0))
    assert pickle.loads(pickle.dumps(s)) == s
    assert SamplingSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(PixcadeError, match=r"unknown keys: \['stepz'\]"):
        SamplingSettings.from_dict({"stepz": 3})
    with pytest.raises(PixcadeError, match=r"unknown keys: \['stepz'\]"):
        s.replace(stepz=3)


def test_replace_keeps_args_for_the_same_sampler_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def toy(denoiser, schedule, noise, ts, *, noise_sampler=None, callback=None, a: float = 0.0, b: int = 1):
        return noise

    monkeypatch.setitem(SAMPLERS, "toy", Sampler(toy, "uniform-t"))
    s = SamplingSettings(sampler="toy", sampler_args={"a": 1})
    assert s.sampler_args == {"a": 1.0} and type(s.sampler_args["a"]) is float
    assert s.replace(sampler_args={"b": 3}).sampler_args == {"a": 1.0, "b": 3}  # merged
    assert s.replace(steps=4).sampler_args == {"a": 1.0}
    assert s.replace(sampler="ddim").sampler_args == {}  # arguments belong to their sampler
    for bad, words in [({"a": "x"}, "a must be a finite float, got 'x'"), ({"b": 1.5}, "b must be a finite int"),
                       ({"a": math.inf}, "finite float"), ({"b": True}, "finite int")]:
        with pytest.raises(PixcadeError, match=words):
            s.replace(sampler_args=bad)


def test_replace_text_reads_each_field_as_its_type(monkeypatch: pytest.MonkeyPatch) -> None:
    s = SamplingSettings()
    got = s.replace_text({"steps": "12", "guidance_weight": "2", "threshold": "static", "spacing": "uniform-t"})
    assert got == SamplingSettings(steps=12, guidance_weight=2.0, threshold="static", spacing="uniform-t")
    assert got.replace_text({"spacing": "none"}).spacing is None
    for changes, words in [({"steps": "2.5"}, "steps: cannot read '2.5' as int"),
                           ({"guidance_weight": "inf"}, "guidance weight must be a finite number, got inf"),
                           ({"guidance_weight": "nan"}, "finite"), ({"sampler_args": "x"}, "sampler_args.NAME"),
                           ({"steps.x": "1"}, "expected a settings field"), ({"nope": "1"}, "unknown keys")]:
        with pytest.raises(PixcadeError, match=words):
            s.replace_text(changes)

    def toy(denoiser, schedule, noise, ts, *, noise_sampler=None, callback=None, a: float = 0.0, on: bool = False):
        return noise

    monkeypatch.setitem(SAMPLERS, "toy", Sampler(toy, "uniform-t"))
    # A sampler argument is read as the type of its default in the sampler that will run.
    toy_s = s.replace_text({"sampler": "toy", "sampler_args.a": "2", "sampler_args.on": "true"})
    assert toy_s.sampler_args == {"a": 2.0, "on": True}


# -- the step limit ----------------------------------------------------------------------


def test_steps_are_bounded_and_the_bound_can_be_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIXCADE_MAX_STEPS", raising=False)
    assert limit("steps") == 10_000
    SamplingSettings(steps=10_000)
    with pytest.raises(PixcadeError, match="steps is 1000000000, above the limit of 10000 sampling steps per stage; "
                                           "if you mean it, raise the limit with PIXCADE_MAX_STEPS=1000000000"):
        SamplingSettings(steps=10**9)
    # The samplers check it too, before the time grid is allocated.
    schedule = get_schedule("cosine")
    with pytest.raises(PixcadeError, match="above the limit"):
        sample(lambda z, t: z, schedule, torch.zeros(1, 1, 1, 1), "ddim", steps=10**9)
    monkeypatch.setenv("PIXCADE_MAX_STEPS", "2000000000")
    assert SamplingSettings(steps=10**9).steps == 10**9
    monkeypatch.setenv("PIXCADE_MAX_STEPS", "lots")
    with pytest.raises(PixcadeError, match="PIXCADE_MAX_STEPS must be a positive integer, got 'lots'"):
        SamplingSettings()


def test_generate_cli_refuses_huge_steps_and_infinite_guidance(
    tmp_path: Path, no_shard: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = save_tiny_cascade(tmp_path / "model")
    monkeypatch.delenv("PIXCADE_MAX_STEPS", raising=False)
    for flags, words in [(["--steps", "1000000000"], "stage 'base': steps is 1000000000, above the limit of 10000"),
                         (["--guidance", "inf"], "stage 'base': guidance weight must be a finite number, got inf"),
                         (["--guidance", "sr=nan"], "stage 'sr': guidance weight must be a finite number, got nan"),
                         (["--set", "sr.steps=2.5"], "stage 'sr': steps: cannot read '2.5' as int"),
                         (["--steps", "3", "--set", "steps=4"], "steps is set twice"),
                         (["--set", "up.steps=3"], "unknown stage 'up'"),
                         (["--set", "steps"], "expected [STAGE.]KEY=VALUE")]:
        out = tmp_path / "out"
        assert pixcade_main(["generate", "x", "--model", str(model), "--out", str(out), *flags]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


# -- on the stage config -------------------------------------------------------------------


def test_stage_sample_refuses_nan_guidance(cascade: Cascade) -> None:
    stage = cascade.stage("base")
    emb, mask = torch.randn(1, 4, 384), torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(PixcadeError, match="guidance weight must be a finite number, got nan"):
        stage.sample(emb, mask, guidance_weight=math.nan)
    with pytest.raises(PixcadeError, match="not a super-resolution stage"):
        stage.sample(emb, mask, aug_level=0.5)
    out = stage.sample(emb, mask, steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()


def test_flat_fields_of_old_configs_still_load_and_are_checked_at_once() -> None:
    unet = get_preset("tiny-base", text_dim=384).to_dict()
    old = {"name": "base", "resolution": 16, "unet": unet, "sampler": "ddim", "steps": 7, "guidance_weight": 2,
           "threshold": "static", "aug_level": 0.0}
    config = StageConfig.from_dict(old)
    assert config.sampling == SamplingSettings(sampler="ddim", steps=7, guidance_weight=2.0, threshold="static")
    # Written back nested; reads back equal.
    saved = config.to_dict()
    assert saved["sampling"]["steps"] == 7 and "steps" not in saved
    assert StageConfig.from_dict(json.loads(json.dumps(saved))) == config
    with pytest.raises(PixcadeError, match="stage config.sampling.steps must be an integer, got 2.5"):
        StageConfig.from_dict({**old, "steps": 2.5})
    with pytest.raises(PixcadeError, match="both 'sampling' and flat sampling keys"):
        StageConfig.from_dict({**saved, "steps": 3})
    with pytest.raises(PixcadeError, match="guidance weight must be >= 0, got -3"):
        StageConfig.from_dict({**old, "guidance_weight": -3})


def test_shipped_cascade_json_loads_with_its_saved_settings(tmp_path: Path) -> None:
    raw = json.loads((SHIPPED / "cascade.json").read_text())
    assert "sampling" not in raw["stages"][0]  # written before SamplingSettings existed
    config = load_cascade_config(SHIPPED)
    base, sr = config.stages
    assert base.sampling == SamplingSettings(sampler="dpm++", steps=25, guidance_weight=5.0, threshold="static")
    assert sr.sampling == SamplingSettings(sampler="dpm++", steps=10, guidance_weight=1.0, threshold="static",
                                           aug_level=0.1)
    # Saved again, it is the same model.
    Cascade.from_pretrained(SHIPPED).save_pretrained(tmp_path / "again")
    assert load_cascade_config(tmp_path / "again").stages == config.stages


# -- registries -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SPACINGS))
@pytest.mark.parametrize("schedule_name", ["cosine", "linear"])
def test_spacings_fall_from_one_to_zero(name: str, schedule_name: str) -> None:
    for steps in (1, 2, 7, 50):
        ts = SPACINGS[name](get_schedule(schedule_name), steps)
        assert ts.dtype == torch.float64 and ts.shape == (steps + 1,)
        assert ts[0] == 1.0 and ts[-1] == 0.0 and bool((ts[1:] < ts[:-1]).all())


@pytest.mark.parametrize("sampler", ["dpm++", "ddim"])
def test_solvers_converge_on_either_spacing(sampler: str) -> None:
    """Any grid from 1 to 0 discretises the same ODE: on the analytic Gaussian denoiser each
    solver reaches the data covariance on the other solver's grid too."""
    mean = torch.tensor([0.3, -0.5], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.4], [0.4, 0.5]], dtype=torch.float64)
    schedule = get_schedule("cosine")
    noise = whitened_noise(2000, 2, 0)
    den = gaussian_denoiser(mean, cov, schedule)
    other = {"dpm++": "uniform-t", "ddim": "log-snr"}[sampler]
    errs = [rel_err(moments(sample(den, schedule, noise, sampler, steps=n, spacing=other))[1], cov)
            for n in (25, 100)]
    assert errs[1] < errs[0] and errs[1] < 0.05, errs


def test_a_new_sampler_is_one_function_and_one_row(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_shard: None, cascade: Cascade
) -> None:
    """Registered here and nowhere else, a sampler with its own argument and a spacing reach
    the Python API, the CLI, a saved model and the server."""
    seen: list[tuple[float, list[float]]] = []

    def scaled_ddim(denoiser, schedule, noise, ts, *, noise_sampler=None, callback=None, scale: float = 1.0):
        seen.append((scale, ts.tolist()))
        return samplers.sample_ddim(denoiser, schedule, noise * scale, ts, callback=callback)

    def halves(schedule, steps, t_max=1.0):
        return t_max * torch.tensor([1.0] + [0.5**k for k in range(1, steps)] + [0.0], dtype=torch.float64)

    monkeypatch.setitem(SAMPLERS, "scaled", Sampler(scaled_ddim, "halves"))
    monkeypatch.setitem(SPACINGS, "halves", halves)

    # Python API
    cascade.generate("x", sampler="scaled", sampler_args={"base": {"scale": 0.5}}, steps=3, stop_after="base",
                     progress=False)
    assert seen == [(0.5, [1.0, 0.5, 0.25, 0.0])]
    # CLI
    seen.clear()
    model = save_tiny_cascade(tmp_path / "model")
    assert pixcade_main(["generate", "x", "--model", str(model), "--out", str(tmp_path / "o"), "--stop-after",
                         "base", "--set", "base.sampler=scaled", "--set", "base.sampler_args.scale=2",
                         "--set", "steps=2"]) == 0
    assert seen == [(2.0, [1.0, 0.5, 0.0])]
    # A saved model
    seen.clear()
    stage = cascade.stage("base")
    monkeypatch.setattr(stage.config, "sampling",
                        stage.config.sampling.replace(sampler="scaled", sampler_args={"scale": 3}, steps=2))
    cascade.save_pretrained(tmp_path / "saved")
    assert load_cascade_config(tmp_path / "saved").stages[0].sampling.sampler_args == {"scale": 3.0}
    Cascade.from_pretrained(tmp_path / "saved").generate("x", stop_after="base", progress=False)
    assert seen == [(3.0, [1.0, 0.5, 0.0])]
    # The server: a request's "sampling" object
    seen.clear()
    served = CascadeModel(Cascade.from_pretrained(tmp_path / "saved"))
    request = parse_request({"prompt": "x", "stages": ["base"], "sampling": {"sampler_args": {"scale": 4}}},
                            Limits(), ["base", "sr"])
    assert served.check(request) == {"base": StagePlan(2, dtype_name("auto", served.cascade.device))}
    fp32 = parse_request({"prompt": "x", "stages": ["base"], "sampling": {"dtype": "fp32"}}, Limits(), ["base", "sr"])
    assert served.check(fp32) == {"base": StagePlan(2, "fp32")}
    served.generate(request, lambda *a: None, lambda *a: None)
    assert seen == [(4.0, [1.0, 0.5, 0.0])]
    with pytest.raises(PixcadeError, match="sampler 'scaled': scale must be a finite float"):
        served.check(parse_request({"prompt": "x", "sampling": {"sampler_args": {"base": {"scale": "big"}}}},
                                   Limits(), ["base", "sr"]))


def test_the_same_settings_give_the_same_images_by_every_route(cascade: Cascade) -> None:
    """Overrides through generate and the same values saved on the stage draw one image."""
    kw = dict(seed=3, stop_after="base", progress=False)
    a = cascade.generate("x", sampler="dpm++", steps=3, spacing="uniform-t", **kw)
    b = cascade.generate("x", sampler="dpm++", steps=3, **kw)
    assert not np.array_equal(px(a), px(b))  # the spacing is really used
    stage = cascade.stage("base")
    saved = stage.config.sampling
    try:
        stage.config.sampling = saved.replace(sampler="dpm++", steps=3, spacing="uniform-t")
        assert np.array_equal(px(cascade.generate("x", **kw)), px(a))
    finally:
        stage.config.sampling = saved
