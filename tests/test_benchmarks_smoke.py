"""The benchmark harness runs end to end at a micro size (pixcade only, no peers, no timings asserted)."""

import json
import sys
from pathlib import Path

import pytest

from pixcade.diffusion.precision import dtype_name

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def run_module():
    sys.path.insert(0, str(BENCH))
    try:
        import run

        yield run
    finally:
        sys.path.remove(str(BENCH))


def test_micro_run_produces_every_pixcade_number(run_module, tmp_path, capsys):
    out = tmp_path / "micro.json"
    tasks = "train-base,train-sr,sample-base,sample-sr,ddpm-step"
    code = run_module.main(["--suite", "micro", "--device", "cpu", "--impls", "pixcade", "--in-process",
                            "--repeats", "1", "--steps", "1", "--tasks", tasks, "--json", str(out)])
    assert code == 0
    res = json.loads(out.read_text())["results"]["pixcade"]
    assert not [t for t, r in res.items() if "error" in r]
    for task in ("train-base", "train-sr"):
        assert res[task]["images_per_s"] > 0
        assert res[task]["params"] > 0
    # Sampling is extrapolated from the steps run to the stage's default step count.
    base = res["sample-base"]
    assert base["steps_run"] == 1 and base["steps"] == 30
    assert base["s_per_image"] == pytest.approx(base["s_per_image_run"] * 30)
    assert res["cascade"]["s_per_image"] == pytest.approx(base["s_per_image"] + res["sample-sr"]["s_per_image"])
    table = capsys.readouterr().out
    assert "| base training, images/s" in table and "DPM-Solver++ at 30 steps" in table


def test_matched_specs_translate_to_valid_pixcade_configs(run_module):
    import impl_pixcade
    from specs import SUITES

    for suite in SUITES.values():
        for spec in (suite.base, suite.sr):
            cfg = impl_pixcade.unet_config(spec, suite.text_dim)
            assert cfg.level_channels == spec.level_channels
            assert cfg.lowres_cond == spec.is_sr


def test_batch_override_sets_every_batch_and_rejects_nonpositive(run_module, tmp_path, capsys):
    from specs import SUITES

    small = SUITES["gpu"].with_batch(1)
    assert (small.train_batch, small.sr_train_batch, small.sample_batch) == (1, 1, 1)
    assert small.base == SUITES["gpu"].base  # the models are unchanged
    assert SUITES["gpu"].with_batch(None) is SUITES["gpu"]

    out = tmp_path / "b.json"
    code = run_module.main(["--suite", "micro", "--device", "cpu", "--impls", "pixcade", "--in-process",
                            "--repeats", "1", "--tasks", "train-base", "--batch", "3", "--json", str(out)])
    assert code == 0
    saved = json.loads(out.read_text())
    assert saved["batch"] == 3 and saved["suite"]["train_batch"] == 3
    assert "every batch size set to 3" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run_module.main(["--suite", "micro", "--batch", "0"])
    assert "--batch must be >= 1" in capsys.readouterr().err


def test_shapes_speed_scores_every_step_count_against_one_ddpm_run(run_module, tmp_path, monkeypatch):
    import re

    import shapes_speed
    from tiny_cascade import save_tiny_cascade

    model = save_tiny_cascade(tmp_path / "model")
    monkeypatch.setattr(shapes_speed, "ANCESTRAL_STEPS", 3)
    lines = shapes_speed.compare(str(model), n=4, steps=[1, 2])
    assert len(lines) == 3 and "ancestral DDPM 3 steps" in lines[0]
    a_slow = float(re.search(r"steps: ([0-9.]+)", lines[0]).group(1))
    for k, line in zip((1, 2), lines[1:]):
        assert line.startswith(f"- DPM-Solver++ {k} steps:")
        a_fast, diff = (float(x) for x in re.search(r"steps: ([0-9.]+) .*difference ([-+0-9.]+)", line).groups())
        only_fast, only_slow = (int(x) for x in re.search(r"passed: (\d+), only DDPM: (\d+)", line).groups())
        # Paired counts and accuracies describe the same 4 prompts.
        assert diff == pytest.approx(a_fast - a_slow, abs=1e-3)
        assert (only_fast - only_slow) / 4 == pytest.approx(a_fast - a_slow, abs=1e-3)


def test_pixcade_steps_must_be_positive_integers(run_module, capsys):
    for bad in ("x", "0", ","):
        with pytest.raises(SystemExit):
            run_module.main(["--suite", "micro", "--pixcade-steps", bad])
        assert "--pixcade-steps takes" in capsys.readouterr().err


def test_training_targets_report_best_and_median_ratios(run_module):
    from types import SimpleNamespace

    def train(best, runs):
        return {"train-base": {"images_per_s": best, "images_per_s_all": runs}}

    res = {"pixcade@fp32": train(18.0, [16.0, 18.0, 15.0]), "imagen-pytorch": train(12.0, [10.0, 12.0, 9.0])}
    args = SimpleNamespace(pixcade_opts="bf16", model=None, peak_flops=None)
    (line,) = run_module.summary(res, args)
    assert "both fp32: 1.50x (met; best of each)" in line  # 18 / 12
    assert "medians of 3 runs: 1.60x" in line  # 16 / 10
    res["pixcade@fp32"] = train(17.0, [17.0])
    (line,) = run_module.summary(res, args)
    assert "1.42x (MISSED; best of each)." in line and "median" not in line  # one run has no median


def test_distill_cost_times_every_phase_of_a_saved_stage(tmp_path):
    """benchmarks/distill_cost.py on a tiny v cascade: the guided base (guided phase and
    halving its student) and the unguided SR stage (halving only), ratios to training."""
    import dataclasses

    from tiny_cascade import build_tiny_cascade

    sys.path.insert(0, str(BENCH))
    try:
        import distill_cost

        cascade = build_tiny_cascade(seed=0)
        for stage, w in zip(cascade.stages, (3.0, 1.0)):
            stage.config = dataclasses.replace(stage.config, parameterization="v",
                                               sampling=stage.config.sampling.replace(guidance_weight=w))
        cascade.save_pretrained(tmp_path / "model")
        assert distill_cost.main(["--model", str(tmp_path / "model"), "--stage", "base", "--batch", "2",
                                  "--repeats", "1", "--json", str(tmp_path / "base.json")]) == 0
        base = json.loads((tmp_path / "base.json").read_text())
        sr = distill_cost.measure(str(tmp_path / "model"), "sr", batch=2, repeats=1, bf16=False, device="cpu")
    finally:
        sys.path.remove(str(BENCH))
    assert set(base["seconds_per_step"]) == {"train", "guided", "halve"} and set(sr["seconds_per_step"]) == {
        "train", "halve"}
    assert base["ratio_to_training"]["train"] == 1.0 and all(v > 0 for v in base["seconds_per_step"].values())


def test_cascade_speed_times_each_cascade_with_accuracy_beside(run_module, tmp_path, capsys):
    import cascade_speed
    from tiny_cascade import save_tiny_cascade

    ref, other = save_tiny_cascade(tmp_path / "ref"), save_tiny_cascade(tmp_path / "other", seed=1)
    report = {"overall": {"n": 300, "passed": 255, "accuracy": 0.85}, "results": []}
    (tmp_path / "shapes.json").write_text(json.dumps(report))
    out = tmp_path / "speed.json"
    code = cascade_speed.main([str(ref), f"fast={other}", "--prompts", "3", "--batch-size", "2", "--repeats", "2",
                               "--score", "--accuracy", f"fast={tmp_path / 'shapes.json'}", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["command"].startswith(f"python benchmarks/cascade_speed.py {ref} fast={other} --prompts 3")
    rows = {r["label"]: r for r in report["rows"]}
    assert list(rows) == ["ref", "fast"]
    for r in rows.values():
        assert len(r["s_per_image_all"]) == 2 and r["s_per_image"] == min(r["s_per_image_all"])
        # The stages' own seconds and the rest add up to the whole run.
        assert sum(r["stage_s_per_image"].values()) == pytest.approx(r["s_per_image"], rel=1e-6)
        # Tiny cascade: base guided (weight 3), SR guided (weight 2), 2 steps each.
        assert r["stages"]["base"]["network_evaluations"] == 4 and r["network_evaluations"] == 8
        assert r["scored"]["n"] == 3
        # The precision each stage ran in is recorded resolved, not as the setting "auto".
        assert {st["precision"] for st in r["stages"].values()} == {dtype_name("auto", "cpu")} <= {"fp32", "bf16"}
    assert rows["ref"]["speedup"] == 1.0 and rows["ref"]["accuracy"] is None
    assert rows["fast"]["accuracy"] == {"metric": "shapes accuracy", "value": 0.85, "n": 300,
                                        "file": str(tmp_path / "shapes.json")}
    assert "| fast | ddim 2, 4 | dpm++ 2, 4 | 8 |" in capsys.readouterr().out


def test_cascade_speed_rejects_bad_arguments_in_one_line(run_module, tmp_path, capsys):
    import cascade_speed

    assert cascade_speed.main(["a=x", "a=y"]) == 2
    assert "labels must differ" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert cascade_speed.main(["shapes", "--accuracy", f"shapes={tmp_path / 'bad.json'}", "--repeats", "1",
                               "--prompts", "1"]) == 2
    assert "neither a shapes benchmark report" in capsys.readouterr().err
