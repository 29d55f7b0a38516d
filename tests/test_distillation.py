"""Guided and progressive distillation: the w-conditioned student, the two objectives against
their defining identities, one halving round learning, and the inputs that cannot be distilled."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from pixcade.diffusion.distillation import halving_loss, halving_target, thresholded_output
from pixcade.diffusion.guidance import guided_denoiser, guided_output, static_threshold
from pixcade.diffusion.samplers import sample
from pixcade.diffusion.settings import SamplingSettings
from pixcade.diffusion.schedules import get_schedule
from pixcade.errors import PixcadeError
from pixcade.nn.configs import get_preset
from pixcade.nn.unet import EfficientUNet
from pixcade.stage import Stage, StageConfig
from pixcade.train.config import DistillConfig
from pixcade.train.distill import Distillation, init_student, student_config
from random_weights import perturb

F64 = torch.float64


def _randomise(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    return perturb(net, torch.Generator().manual_seed(seed))


def _teacher(sr: bool = False, guidance_weight: float = 3.0, param: str = "v") -> Stage:
    if sr:
        config = StageConfig(name="sr", resolution=16, lowres_resolution=8, unet=get_preset("tiny-sr"),
                             parameterization=param,
                             sampling=SamplingSettings(guidance_weight=guidance_weight, threshold="static"))
    else:
        config = StageConfig(name="base", resolution=16, unet=get_preset("tiny-base"), parameterization=param,
                             sampling=SamplingSettings(guidance_weight=guidance_weight, threshold="static"))
    torch.manual_seed(1 if sr else 0)  # the initial weights too: every run tests the same model
    stage = Stage(config)
    _randomise(stage.net, 1 if sr else 0)
    stage.net.eval().requires_grad_(False)
    return stage


def _student(teacher: Stage, cfg: DistillConfig) -> Stage:
    student = Stage(student_config(teacher.config, cfg))
    init_student(student.net, teacher.net)
    return student


def _batch(b: int, sr: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, 16, 16, generator=g) * 2 - 1
    emb = torch.randn(b, 3, 32, generator=g)
    mask = torch.ones(b, 3, dtype=torch.bool)
    lowres = torch.rand(b, 3, 8, 8, generator=g) * 2 - 1 if sr else None
    return images, emb, mask, lowres


# -- the w-conditioned U-Net -------------------------------------------------------------------


def test_student_at_init_is_the_teachers_conditional_output_for_every_weight():
    teacher = _randomise(EfficientUNet(get_preset("tiny-base")), 0).eval()
    student = EfficientUNet(dataclasses.replace(get_preset("tiny-base"), guidance_conditioned=True)).eval()
    assert init_student(student, teacher) == [k for k in student.state_dict() if k.startswith("guidance_emb.")]
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(4, 3, 16, 16, generator=g), torch.rand(4, generator=g)
    emb, mask = torch.randn(4, 3, 32, generator=g), torch.tensor([[1, 1, 0]] * 3 + [[0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        cond = teacher(z, t, emb, mask)
        for w in (0.0, 1.0, 4.5, torch.tensor([1.0, 2.0, 8.0, 30.0])):
            assert torch.equal(student(z, t, emb, mask, guidance=w), cond)
        # Once the projection is not zero, the weight is read: other weights, other outputs.
        _randomise(student.guidance_emb, 3)
        a, b = student(z, t, emb, mask, guidance=1.0), student(z, t, emb, mask, guidance=5.0)
    assert (a - b).abs().max() > 1e-3


def test_guidance_input_is_required_exactly_by_a_guidance_conditioned_unet():
    plain = EfficientUNet(get_preset("tiny-base"))
    cond = EfficientUNet(dataclasses.replace(get_preset("tiny-base"), guidance_conditioned=True))
    z, t = torch.randn(2, 3, 16, 16), torch.rand(2)
    emb, mask = torch.randn(2, 1, 32), torch.ones(2, 1, dtype=torch.bool)
    with pytest.raises(PixcadeError, match="not guidance-conditioned"):
        plain(z, t, emb, mask, guidance=torch.ones(2))
    with pytest.raises(PixcadeError, match="needs the guidance weight"):
        cond(z, t, emb, mask)
    with pytest.raises(PixcadeError, match=r"guidance must have shape \[2\]"):
        cond(z, t, emb, mask, guidance=torch.ones(3))


def test_guidance_conditioned_stage_samples_with_one_pass_per_step_and_reads_the_weight():
    teacher = _teacher()
    student = _student(teacher, DistillConfig(teacher="-", phase="guided"))
    _randomise(student.net.guidance_emb, 5)
    seen: list[int] = []
    student.net.register_forward_hook(lambda m, args, out: seen.append(out.shape[0]))
    _, emb, mask, _ = _batch(2, False)
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    a = student.sample(emb, mask, sampler="ddim", steps=3, guidance_weight=1.0, noise=noise)
    b = student.sample(emb, mask, sampler="ddim", steps=3, guidance_weight=6.0, noise=noise)
    assert seen == [2] * 6  # one pass of the batch per step, whatever the weight
    assert (a - b).abs().max() > 1e-3


# -- guided distillation (Meng et al. 2023, stage one) --------------------------------------------


def test_guided_output_is_uncond_plus_w_times_the_difference_per_sample():
    torch.manual_seed(0)
    net = _randomise(EfficientUNet(get_preset("tiny-base")), 0).eval()
    g = torch.Generator().manual_seed(2)
    z, t = torch.randn(3, 3, 16, 16, generator=g), torch.rand(3, generator=g)
    cond = {"text_emb": torch.randn(3, 2, 32, generator=g), "text_mask": torch.ones(3, 2, dtype=torch.bool)}
    uncond = {"text_emb": torch.zeros(3, 2, 32), "text_mask": torch.zeros(3, 2, dtype=torch.bool)}
    w = torch.tensor([1.0, 2.5, 7.0])
    with torch.no_grad():
        out_c, out_u = net(z, t, **cond), net(z, t, **uncond)
        got = guided_output(net, cond, uncond, w)(z, t)
    expected = out_u + w.view(-1, 1, 1, 1) * (out_c - out_u)
    # One batch of 2B against two of B rounds differently (up to ~2e-5 here, with w = 7); a
    # wrong convention would be off by about |c - u| ~ 0.8.
    assert (out_c - out_u).abs().max() > 0.1
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(got[0], out_c[0], rtol=0, atol=1e-4)  # w = 1: the conditional output


@pytest.mark.parametrize("sr", [False, True])
def test_guided_loss_of_the_initial_student_is_the_guidance_identity(sr: bool):
    """At init the student is the teacher's conditional output c, the target u + w (c - u):
    the loss is (w - 1)^2 |c - u|^2 per sample, 0 at w = 1. The same draws (t, noise, SR
    augmentation) for every range, since only the weight's scale changes."""
    teacher = _teacher(sr=sr)
    images, emb, mask, lowres = _batch(6, sr)
    losses = {}
    for w in (1.0, 3.0, 5.0):
        cfg = DistillConfig(teacher="-", phase="guided", guidance_range=(w, w))
        student = _student(teacher, dataclasses.replace(cfg, guidance_range=(1.0, 8.0)))
        with torch.no_grad():
            losses[w] = Distillation(teacher, student, cfg).loss(
                images, emb, mask, lowres, generator=torch.Generator().manual_seed(9))
    # 0 up to the rounding of u + 1 (c - u); also says the teacher and student saw the same low-res image.
    assert (losses[3.0] > 1e-6).all() and (losses[1.0] < 1e-9 * losses[3.0]).all()
    torch.testing.assert_close(losses[5.0] / losses[3.0], torch.full((6,), 4.0), rtol=1e-4, atol=0)


@pytest.mark.parametrize("param", ["v", "x0", "eps"])
def test_a_network_giving_the_thresholded_output_samples_unthresholded_as_the_net_thresholded(param: str):
    """`thresholded_output` moves the sampler's threshold into the output: sampled with no
    threshold it steps exactly as the original net does with one, whatever the parameterisation."""
    schedule = get_schedule("cosine")
    a = torch.randn(3, 3, generator=torch.Generator().manual_seed(4), dtype=F64) * 3  # |x0| >> 1: clipping bites

    def net(z, t):
        return torch.einsum("ij,bjhw->bihw", a, z) + 2 * t.view(-1, 1, 1, 1)

    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5), dtype=F64)
    clipped = guided_denoiser(net, schedule, param, {}, None, 1.0, "static")
    moved = guided_denoiser(thresholded_output(net, schedule, param, static_threshold), schedule, param, {}, None,
                            1.0, "none")
    raw = guided_denoiser(net, schedule, param, {}, None, 1.0, "none")
    for sampler in ("ddim", "dpm++"):
        want = sample(clipped, schedule, noise, sampler, steps=6)
        torch.testing.assert_close(sample(moved, schedule, noise, sampler, steps=6), want, rtol=0, atol=1e-9)
        assert (sample(raw, schedule, noise, sampler, steps=6) - want).abs().max() > 0.1  # the threshold mattered


def test_thresholded_guided_target_needs_a_teacher_threshold_and_the_guided_phase():
    teacher = _teacher()
    cfg = DistillConfig(teacher="-", phase="guided", guided_target="thresholded")
    assert student_config(teacher.config, cfg).guidance_conditioned
    unclipped = dataclasses.replace(teacher.config, sampling=teacher.config.sampling.replace(threshold="none"))
    with pytest.raises(PixcadeError, match="samples without a threshold: .*'thresholded' would be its plain output"):
        student_config(unclipped, cfg)
    # The loss: the student at init (the conditional output) against the clipped guided output.
    images, emb, mask, lowres = _batch(4, False)
    student = _student(teacher, cfg)
    with torch.no_grad():
        plain, clipped = (Distillation(teacher, student, dataclasses.replace(cfg, guided_target=t)).loss(
            images, emb, mask, lowres, generator=torch.Generator().manual_seed(9)) for t in ("output", "thresholded"))
    assert torch.isfinite(clipped).all() and not torch.allclose(plain, clipped)


# -- progressive distillation (Salimans & Ho 2022) -------------------------------------------------


def _analytic_teacher():
    a = torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=F64) * 0.5
    return lambda z, t: torch.tanh(torch.einsum("ij,bjhw->bihw", a, z) + t.view(-1, 1, 1, 1))


@pytest.mark.parametrize("steps", [1, 2, 4, 7])
def test_a_student_predicting_the_halving_target_samples_as_the_teacher_at_twice_the_steps(steps: int):
    """The defining property, through the real sampler: N DDIM steps of a student that
    predicts the target equal 2N DDIM steps of the teacher, to float64 rounding."""
    teacher, schedule = _analytic_teacher(), get_schedule("cosine")

    def student(z, t):
        return halving_target(teacher, z, torch.round(t * steps).long(), steps, schedule)

    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    fast = sample(student, schedule, noise, "ddim", steps=steps)
    slow = sample(teacher, schedule, noise, "ddim", steps=2 * steps)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)


@pytest.mark.parametrize("steps, factor", [(1, 4), (2, 3), (4, 8)])
def test_a_student_predicting_the_factor_target_samples_as_the_teacher_at_factor_times_the_steps(steps, factor):
    """TRACT's generalisation: N student steps equal factor * N DDIM steps of the teacher."""
    teacher, schedule = _analytic_teacher(), get_schedule("cosine")

    def student(z, t):
        return halving_target(teacher, z, torch.round(t * steps).long(), steps, schedule, factor)

    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    fast = sample(student, schedule, noise, "ddim", steps=steps)
    slow = sample(teacher, schedule, noise, "ddim", steps=factor * steps)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
    for bad in (1, 0, 2.0, True):
        with pytest.raises(PixcadeError, match="teacher steps per student step must be a whole number >= 2"):
            halving_target(teacher, noise, torch.ones(2, dtype=torch.long), steps, schedule, bad)


def test_halving_target_of_an_exact_denoiser_for_one_image_is_that_image():
    """Data = one image x*: the exact denoiser returns x* everywhere, DDIM is exact, and so
    the target at every step is x* (and the loss of a student predicting it is 0)."""
    x_star = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(3), dtype=F64) * 2 - 1
    schedule = get_schedule("cosine")
    z = torch.randn(2, 3, 4, 4, dtype=F64)
    for i in (1, 3, 4):
        target = halving_target(lambda z, t: x_star, z, torch.full((2,), i), 4, schedule)
        torch.testing.assert_close(target, x_star, rtol=0, atol=1e-9)
    for param in ("v", "x0"):
        from pixcade.diffusion.parameterization import model_target, to_eps

        def student(z, t, param=param):
            from pixcade.diffusion.schedules import alpha_sigma

            alpha, sigma = alpha_sigma(schedule.log_snr(t).view(-1, 1, 1, 1))
            return model_target(x_star, to_eps(x_star, z, alpha, sigma, "x0"), alpha, sigma, param)

        loss = halving_loss(student, lambda z, t: x_star, x_star, schedule, param, 4)
        assert loss.abs().max() < 1e-12


def _train(objective: Distillation, batch, steps: int) -> None:
    objective.student.net.train()
    opt = torch.optim.Adam(objective.student.net.parameters(), lr=5e-4)
    g = torch.Generator().manual_seed(7)
    for _ in range(steps):
        loss = objective.loss(*batch, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_a_short_guided_round_brings_one_pass_samples_towards_the_guided_teachers():
    teacher = _teacher()
    cfg = DistillConfig(teacher="-", phase="guided")
    objective = Distillation(teacher, _student(teacher, cfg), cfg)
    batch, (_, emb, mask, _) = _batch(8, False, seed=4), _batch(8, False, seed=5)
    noise = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(11))

    def samples(stage: Stage) -> torch.Tensor:
        """DDIM, 8 steps at w = 4: two passes a step for the teacher, one for the student."""
        stage.net.eval()
        return stage.sample(emb, mask, settings=stage.config.sampling.replace(sampler="ddim", steps=8,
                                                                               guidance_weight=4.0), noise=noise)

    target = samples(teacher)
    before = (samples(objective.student) - target).square().mean().item()  # the teacher's conditional model
    _train(objective, batch, 30)
    after = (samples(objective.student) - target).square().mean().item()
    assert after < 0.8 * before, (before, after)  # measured: 0.229 -> 0.145, for captions it did not train on


def test_one_halving_round_on_a_tiny_model_reduces_its_two_step_target_loss():
    teacher = _teacher(guidance_weight=1.0)  # unguided: halved directly
    cfg = DistillConfig(teacher="-", phase="halve", steps=2)
    student = _student(teacher, cfg)
    objective = Distillation(teacher, student, cfg)
    batch, held_out = _batch(8, False, seed=4), _batch(8, False, seed=5)

    def loss_on(b) -> float:  # the same draws (steps, noise) before and after
        with torch.no_grad():
            return objective.loss(*b, generator=torch.Generator().manual_seed(6)).mean().item()

    before = loss_on(batch), loss_on(held_out)
    _train(objective, batch, 30)
    after = loss_on(batch), loss_on(held_out)
    # Measured: 0.0448 -> 0.0364 on the batch, 0.0467 -> 0.0380 on other images.
    assert after[0] < 0.9 * before[0] and after[1] < 0.9 * before[1], (before, after)
    # And through the sampler, for captions it did not train on: its 2 DDIM steps land nearer
    # the teacher's 4 than the teacher's own 2 do (it started equal to them; mean squared
    # pixel distance 0.0251 -> 0.0182 after these 30 steps, 0.0140 after 80 at batch 16).
    _, emb, mask, _ = held_out
    noise = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(11))
    student.net.eval()

    def ddim(stage: Stage, steps: int) -> torch.Tensor:
        settings = stage.config.sampling.replace(sampler="ddim", steps=steps, threshold="none")
        return stage.sample(emb, mask, settings=settings, noise=noise)

    target = ddim(teacher, 4)
    gap_teacher, gap_student = ((ddim(s, 2) - target).square().mean().item() for s in (teacher, student))
    assert gap_student < 0.85 * gap_teacher, (gap_teacher, gap_student)


def test_halving_a_two_pass_guided_teacher_distils_its_guidance_into_a_one_pass_student():
    """Guidance and steps at once, at the teacher's weight (3): the student samples with
    guidance_weight 1 (one pass) and its 2 DDIM steps move towards the teacher's 4 guided,
    thresholded steps of two passes each."""
    teacher = _teacher(guidance_weight=3.0)
    cfg = DistillConfig(teacher="-", phase="halve", steps=2)
    student = _student(teacher, cfg)
    assert (student.config.distilled_guidance, student.config.sampling.guidance_weight) == (3.0, 1.0)
    assert student.config.network_evaluations() == 2 and not student.config.two_passes()
    objective = Distillation(teacher, student, cfg)
    _, emb, mask, _ = _batch(8, False, seed=5)
    noise = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(11))
    target = teacher.sample(emb, mask, settings=teacher.config.sampling.replace(sampler="ddim", steps=4), noise=noise)

    def gap() -> float:
        student.net.eval()
        return (student.sample(emb, mask, noise=noise) - target).square().mean().item()

    before = gap()  # the teacher's conditional model in 2 steps, unguided
    _train(objective, _batch(8, False, seed=4), 30)
    after = gap()
    assert after < 0.8 * before, (before, after)  # measured: 0.127 -> 0.073, for captions it did not train on


def test_a_stage_with_its_guidance_distilled_in_keeps_it_and_is_not_guided_again():
    baked = student_config(_teacher(guidance_weight=3.0).config, DistillConfig(teacher="-", phase="halve", steps=4))
    again = student_config(baked, DistillConfig(teacher="-", phase="halve"))
    assert (again.distilled_steps, again.distilled_guidance, again.sampling.guidance_weight) == (2, 3.0, 1.0)
    assert StageConfig.from_dict(baked.to_dict()) == baked
    with pytest.raises(PixcadeError, match="guidance weight 3 distilled into its one pass: it samples with "
                                           "guidance_weight 1, not 5"):
        baked.check_sampling(baked.sampling.replace(guidance_weight=5.0))
    with pytest.raises(PixcadeError, match="no guidance left to distil"):
        student_config(baked, DistillConfig(teacher="-", phase="guided"))
    with pytest.raises(PixcadeError, match="distilled_guidance must be a guidance weight above 1, got 0.5"):
        dataclasses.replace(baked, distilled_guidance=0.5)


# -- what cannot be distilled --------------------------------------------------------------------


@pytest.mark.parametrize("teacher_changes, cfg, message", [
    ({"guidance_weight": 1.0}, {"phase": "guided"}, "samples unguided.*no guidance to distil"),
    ({"guidance_weight": 9.0}, {"phase": "guided"}, r"guidance weight 9 by default, outside .*\[1, 8\]"),
    ({"distilled_steps": 8, "guidance_weight": 1.0}, {"phase": "guided"}, "step-distilled"),
    ({"guidance_weight": 1.0}, {"phase": "halve"}, "not step-distilled: set distill.steps"),
    ({"guidance_weight": 1.0, "distilled_steps": 5}, {"phase": "halve"}, "5 steps, an odd count"),
    ({"guidance_weight": 1.0, "distilled_steps": 1}, {"phase": "halve"}, "already samples in 1 step"),
    ({"guidance_weight": 1.0, "distilled_steps": 8}, {"phase": "halve", "steps": 2}, "halving gives 4, not 2"),
    ({"guidance_weight": 1.0, "distilled_steps": 8}, {"phase": "halve", "factor": 3}, "8 steps, not a multiple of 3"),
    ({"guidance_weight": 1.0, "distilled_steps": 8}, {"phase": "halve", "factor": 4, "steps": 4},
     "dividing by distill.factor 4 gives 2, not 4"),
    ({"guidance_weight": 1.0, "parameterization": "eps"}, {"phase": "halve", "steps": 4},
     "needs a v or x0 parameterisation"),
])
def test_inputs_that_cannot_be_distilled_are_named(teacher_changes, cfg, message):
    config = _teacher().config
    weight = teacher_changes.pop("guidance_weight", None)
    if weight is not None:
        teacher_changes["sampling"] = config.sampling.replace(guidance_weight=weight)
    teacher = dataclasses.replace(config, **teacher_changes)
    with pytest.raises(PixcadeError, match=message):
        student_config(teacher, DistillConfig(teacher="-", **cfg))


def test_guided_student_of_a_guided_student_is_refused_and_halving_it_works():
    guided = student_config(_teacher().config, DistillConfig(teacher="-", phase="guided"))
    assert guided.guidance_conditioned and guided.distilled_steps is None
    with pytest.raises(PixcadeError, match="already takes the guidance weight"):
        student_config(guided, DistillConfig(teacher="-", phase="guided"))
    halved = student_config(guided, DistillConfig(teacher="-", phase="halve", steps=16))
    s = halved.sampling
    assert (halved.distilled_steps, s.steps, s.sampler, s.threshold, s.spacing) == (16, 16, "ddim", "none", "uniform-t")
    assert student_config(halved, DistillConfig(teacher="-", phase="halve")).distilled_steps == 8
    assert student_config(halved, DistillConfig(teacher="-", phase="halve", factor=4)).distilled_steps == 4


@pytest.mark.parametrize("d, message", [
    ({"teacher": "t", "phase": "shrink"}, "unknown distill.phase 'shrink'"),
    ({"teacher": "t", "phase": "halve", "steps": 0}, "distill.steps must be a positive integer"),
    ({"teacher": "t", "phase": "halve", "steps": 2.5}, "distill.steps must be an integer or null, got 2.5"),
    ({"teacher": "t", "guidance_range": [8, 1]}, "0 <= low <= high"),
    ({"teacher": "t", "guidance_range": [1]}, "distill.guidance_range must be"),
    ({"teacher": "t", "phase": "guided", "steps": 4}, "distill.steps and distill.factor are for phase 'halve'"),
    ({"teacher": "t", "phase": "guided", "factor": 4}, "distill.steps and distill.factor are for phase 'halve'"),
    ({"teacher": "t", "phase": "halve", "factor": 1}, r"distill.factor .* must be at least 2, got 1"),
    ({"teacher": "t", "guided_target": "clipped"}, "unknown distill.guided_target 'clipped'"),
    ({"teacher": "t", "phase": "halve", "guided_target": "thresholded"}, "guided_target is for phase 'guided'"),
    ({"teacher": "t", "phase": "halve", "factor": 2.5}, "distill.factor must be an integer"),
    ({"phase": "guided"}, "distill lacks the required field 'teacher'"),
    ({"teacher": ""}, "distill.teacher must name"),
    ({"teacher": "t", "weights": 1}, r"distill has unknown keys: \['weights'\]"),
])
def test_bad_distill_config_is_named(d, message):
    with pytest.raises(PixcadeError, match=message):
        DistillConfig.from_dict(d)


def test_halving_step_counts_and_indices_are_checked():
    schedule = get_schedule("cosine")
    z = torch.zeros(2, 3, 4, 4)
    with pytest.raises(PixcadeError, match="positive whole number of steps"):
        halving_target(lambda z, t: z, z, torch.ones(2, dtype=torch.long), 0, schedule)
    with pytest.raises(PixcadeError, match=r"integers in 1\.\.4"):
        halving_target(lambda z, t: z, z, torch.tensor([0, 1]), 4, schedule)


def test_the_shipped_cascade_is_distillable_with_the_shipped_distill_config():
    """configs/shapes-distill.json against the shipped weights: the base stage's guidance
    distils (its weight 5 inside the range), the SR stage (v, unguided) halves to 16 steps."""
    from pixcade.train.config import load_config
    from pixcade.train.distill import load_teacher

    repo = Path(__file__).resolve().parents[1]
    config = load_config(repo / "configs" / "shapes-distill.json")
    for name, expect in (("base", (True, None)), ("sr", (False, 16))):
        entry = config.stage(name)
        teacher = load_teacher(repo / entry.distill.teacher, name)
        assert (teacher.text_encoder, teacher.max_length) == (config.text_encoder, config.max_length)
        student = student_config(teacher.stage.config, entry.distill)
        assert (student.guidance_conditioned, student.distilled_steps) == expect


def test_a_training_entry_cannot_ask_for_a_guidance_conditioned_unet():
    from pixcade.train.config import CascadeTrainConfig

    stage = {"name": "base", "resolution": 16, "unet": {"preset": "tiny-base", "guidance_conditioned": True}}
    with pytest.raises(PixcadeError, match=r"stages\[0\].stage: a guidance-conditioned U-Net is made by `pixcade"):
        CascadeTrainConfig.from_dict({"stages": [{"stage": stage}]})
    with pytest.raises(PixcadeError, match="give its stage only a 'name'"):
        CascadeTrainConfig.from_dict({"stages": [{"stage": {"name": "base", "resolution": 16},
                                                  "distill": {"teacher": "t"}}]})
