"""DDIM's eta, added as a sampler argument (one keyword of `sample_ddim` and the check in its
registry row): right against theory, and reachable from the Python API, the generate CLI, a
saved model (`pixcade assemble --set`) and the server's JSON with no other edit."""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from serve_support import request, request_json, running_server

from diffusion_theory import gaussian_denoiser, moments, rel_err
from pixcade.cli import main as pixcade_main
from pixcade.diffusion.samplers import _ddim_step, generator_noise, sample
from pixcade.diffusion.schedules import alpha_sigma, get_schedule
from pixcade.errors import PixcadeError
from pixcade.pipeline.cascade import Cascade
from pixcade.serve.model import CascadeModel
from pixcade.serve.requests import Limits
from tiny_cascade import save_tiny_cascade

F64 = torch.float64
MEAN = torch.tensor([0.3, -0.5], dtype=F64)
COV = torch.tensor([[1.0, 0.4], [0.4, 0.5]], dtype=F64)
PROMPTS = ["a red square", "two blue circles"]


def px(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def _noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, 1, 1, generator=torch.Generator().manual_seed(seed), dtype=F64)


# -- theory ---------------------------------------------------------------------------------


def test_eta_zero_is_deterministic_ddim_and_eta_one_is_ddpm() -> None:
    schedule = get_schedule("linear")
    den = gaussian_denoiser(MEAN, COV, schedule)
    noise = _noise(64, 5)

    def run(sampler: str, **args: float) -> torch.Tensor:
        return sample(den, schedule, noise, sampler, steps=10,
                      noise_sampler=generator_noise(noise, torch.Generator().manual_seed(4)), **args)

    assert torch.equal(run("ddim", eta=0.0), run("ddim"))
    assert torch.equal(run("ddim", eta=1.0), run("ddpm"))
    assert not torch.allclose(run("ddim", eta=0.5), run("ddim"))


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_a_step_draws_eta_squared_of_the_posterior_variance(eta: float) -> None:
    """z_s | z_t, x0 has the posterior's mean direction and eta^2 times its variance
    sigma_s^2 (1 - exp(lam_t - lam_s)) = s_ts^2 s_s^2 / s_t^2 (Kingma et al. 2021), while
    the marginal variance of z_s is kept: the deterministic part shrinks to make room."""
    schedule = get_schedule("cosine")
    lam_t, lam_s = schedule.log_snr(torch.tensor([0.6, 0.55], dtype=F64)).tolist()
    (a_t, a_s), (s_t, s_s) = (v.tolist() for v in alpha_sigma(torch.tensor([lam_t, lam_s], dtype=F64)))
    var_post = (s_t**2 - (a_t / a_s) ** 2 * s_s**2) * s_s**2 / s_t**2
    z, x0 = torch.randn(3, 2, 4, 4, dtype=F64), torch.randn(3, 2, 4, 4, dtype=F64)
    fresh = torch.randn(z.shape, dtype=F64)
    zero = _ddim_step(z, x0, lam_t, lam_s, eta, torch.zeros_like(z))
    moved = _ddim_step(z, x0, lam_t, lam_s, eta, fresh)
    # The step is affine in the fresh draw with slope eta * sqrt(posterior variance).
    torch.testing.assert_close(moved - zero, eta * math.sqrt(var_post) * fresh)
    # Deterministic part: a_s x0 + sqrt(s_s^2 - eta^2 var_post) eps, so that with the
    # fresh noise the total noise variance stays s_s^2.
    eps = (z - a_t * x0) / s_t
    torch.testing.assert_close(zero, a_s * x0 + math.sqrt(s_s**2 - eta**2 * var_post) * eps)


@pytest.mark.parametrize("schedule_name", ["cosine", "linear"])
def test_every_eta_samples_the_data_distribution(schedule_name: str) -> None:
    """The DDIM family keeps the forward marginals for every eta: driven by the exact
    denoiser of Gaussian data, eta = 0.5 reproduces the data's mean and covariance (bounds
    as DDPM's: ~1% Monte-Carlo error per entry at 12k samples plus discretisation)."""
    schedule = get_schedule(schedule_name)
    noise = _noise(12000, 0)
    out = sample(gaussian_denoiser(MEAN, COV, schedule), schedule, noise, "ddim", steps=250, eta=0.5,
                 noise_sampler=generator_noise(noise, torch.Generator().manual_seed(1)))
    mean, cov = moments(out)
    assert (mean - MEAN).norm() < 0.04
    assert rel_err(cov, COV) < 0.06


def test_eta_outside_zero_one_is_refused() -> None:
    schedule = get_schedule("cosine")
    den = gaussian_denoiser(MEAN, COV, schedule)
    for eta in (-0.1, 1.5):
        with pytest.raises(PixcadeError, match=f"DDIM eta must be in \\[0, 1\\], got {eta}"):
            sample(den, schedule, _noise(1, 0), "ddim", steps=4, eta=eta)
    with pytest.raises(PixcadeError, match="sampler 'ddpm' takes no argument 'eta'"):
        sample(den, schedule, _noise(1, 0), "ddpm", steps=4, eta=1.0)


# -- every route ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_cascade(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def ddpm_images(model: Path) -> dict[str, np.ndarray]:
    """What ancestral DDPM draws: DDIM with eta = 1 must draw the same, noise for noise."""
    out = Cascade.from_pretrained(model).generate(PROMPTS, seed=3, sampler="ddpm", steps=3, return_stages=True,
                                                  progress=False)
    return {name: px(images) for name, images in out.items()}


@pytest.fixture
def no_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def test_python_api(model: Path, ddpm_images: dict[str, np.ndarray]) -> None:
    cascade = Cascade.from_pretrained(model)
    kw = dict(seed=3, sampler="ddim", steps=3, return_stages=True, progress=False)
    eta1 = cascade.generate(PROMPTS, sampler_args={"eta": 1.0}, **kw)
    assert all(np.array_equal(px(eta1[name]), ddpm_images[name]) for name in eta1)
    half = cascade.generate(PROMPTS, sampler_args={"base": {"eta": 0.5}}, **kw)
    plain = cascade.generate(PROMPTS, **kw)
    assert np.abs(px(half["base"]) - px(plain["base"])).max() > 1
    with pytest.raises(PixcadeError, match="stage 'sr': DDIM eta must be in \\[0, 1\\], got 2.0"):
        cascade.generate(PROMPTS, sampler_args={"sr": {"eta": 2}}, **kw)


def test_generate_cli(model: Path, tmp_path: Path, ddpm_images: dict[str, np.ndarray], no_shard: None,
                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert pixcade_main(["generate", *PROMPTS, "--model", str(model), "--out", str(out), "--seed", "3",
                         "--save-stages", "--sampler", "ddim", "--steps", "3", "--set", "sampler_args.eta=1"]) == 0
    base = px([Image.open(out / "stages" / "base" / f"p000{p}_i00.png") for p in range(2)])
    final = px([Image.open(out / f"p000{p}_i00.png") for p in range(2)])
    assert np.array_equal(base, ddpm_images["base"]) and np.array_equal(final, ddpm_images["sr"])
    assert json.loads((out / "run.json").read_text())["options"]["base"]["sampler_args"] == {"eta": 1.0}
    capsys.readouterr()
    assert pixcade_main(["generate", "x", "--model", str(model), "--out", str(tmp_path / "bad"),
                         "--set", "base.sampler_args.eta=lots"]) == 2
    assert "stage 'base': sampler_args.eta: cannot read 'lots' as float" in capsys.readouterr().err


def test_saved_model(model: Path, tmp_path: Path, ddpm_images: dict[str, np.ndarray],
                     capsys: pytest.CaptureFixture[str]) -> None:
    tuned = tmp_path / "tuned"
    stages = [f"{model}:base", f"{model}:sr"]
    assert pixcade_main(["assemble", *stages, "--out", str(tuned), "--set", "base.sampler_args.eta=1",
                         "--set", "sr.sampler=ddim", "--set", "sr.sampler_args.eta=1"]) == 0
    saved = json.loads((tuned / "cascade.json").read_text())["stages"]
    assert [s["sampling"]["sampler_args"] for s in saved] == [{"eta": 1.0}, {"eta": 1.0}]
    out = Cascade.from_pretrained(tuned).generate(PROMPTS, seed=3, steps=3, return_stages=True, progress=False)
    assert all(np.array_equal(px(out[name]), ddpm_images[name]) for name in out)
    capsys.readouterr()
    assert pixcade_main(["assemble", *stages, "--out", str(tmp_path / "bad"), "--set", "base.sampler_args.eta=2"]) == 2
    assert "stage 'base': DDIM eta must be in [0, 1], got 2.0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_serve_json(model: Path) -> None:
    cascade = Cascade.from_pretrained(model)
    body = {"prompt": PROMPTS[1], "seed": 3, "steps": 3,
            "sampling": {"sampler": "ddim", "sampler_args": {"eta": 1}}}
    with running_server(CascadeModel(cascade), Limits(max_steps=3)) as server:
        status, data = request_json(server, "POST", "/api/jobs", {**body, "sampling": {"sampler_args": {"eta": 1}}})
        assert status == 422 and "sampler 'dpm++' takes no argument 'eta'" in data["error"]  # sr's saved sampler
        status, data = request_json(server, "POST", "/api/jobs", {**body, "sampling": {
            "sampler": "ddim", "sampler_args": {"base": {"eta": 1.5}}}})
        assert status == 422 and "stage 'base': DDIM eta must be in [0, 1], got 1.5" in data["error"]
        status, job = request_json(server, "POST", "/api/jobs", body)
        assert status == 202, job
        deadline = time.monotonic() + 120
        while (state := request_json(server, "GET", job["status_url"])[1])["state"] not in ("done", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert state["state"] == "done", state
        served = {s["name"]: px([Image.open(io.BytesIO(request(server, "GET", i["url"])[2])) for i in s["images"]])
                  for s in state["stages"]}
    # A served job is one prompt, sampled as `generate(prompt)` samples it.
    expected = cascade.generate(PROMPTS[1], seed=3, sampler="ddpm", steps=3, return_stages=True, progress=False)
    assert all(np.array_equal(served[name], px(expected[name])) for name in expected)
