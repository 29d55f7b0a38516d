"""scripts/distilled_card.py: a distilled variant's card from its files, its runs and the
evaluation reports, every number read from them and every verdict computed."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys

from pixcade.pipeline.cascade import assemble
from pixcade.stage import Stage
from pixcade.train.config import DistillConfig
from pixcade.train.distill import student_config
from pixcade.train.export import write_stage_export
from tiny_cascade import save_tiny_cascade, tiny_configs
from train_support import REPO

sys.path.insert(0, str(REPO / "scripts"))  # distilled_card imports model_card's helpers
spec = importlib.util.spec_from_file_location("distilled_card", REPO / "scripts" / "distilled_card.py")
distilled_card = importlib.util.module_from_spec(spec)
spec.loader.exec_module(distilled_card)


def _shapes_report(model: str, passed: list[bool]) -> dict:
    n = len(passed)
    table = {"n": n, "passed": sum(passed), "accuracy": sum(passed) / n}
    return {"command": f"pixcade eval shapes --model {model}", "model": model, "prompts": n, "images_per_prompt": 1,
            "resolution": 32, "overall": table, "held_out": table,
            "seen": table, "by_kind": {}, "results": [{"caption": f"c{i}", "index": 0, "passed": p} for i, p in enumerate(passed)]}


def test_card_reads_stages_runs_and_reports_and_judges_the_targets(tmp_path):
    teacher = save_tiny_cascade(tmp_path / "teacher")
    base = dataclasses.replace(tiny_configs()[0], parameterization="v", sampling=tiny_configs()[0].sampling.replace(
        threshold="static"))
    four = student_config(base, DistillConfig(teacher="-", phase="halve", steps=4, factor=4))  # weight 3 in it
    export = write_stage_export(tmp_path / "x4" / "final", four.to_dict(), "minilm", 32, Stage(four).net.state_dict(), 8)
    model = tmp_path / "variant"
    assemble([str(export), f"{teacher}:sr"], model, ["sr.steps=1", "sr.start=0.1"])

    run = tmp_path / "x4"  # a run directory as `pixcade distill` leaves it: config.json, metrics.jsonl
    distill = {"teacher": "teacher-w3", "phase": "halve", "steps": 4, "factor": 4}
    train = {"batch_size": 4, "max_steps": 8, "lr": 5e-5, "seed": 24, "ema_decay": 0.999, "log_every": 4}
    (run / "config.json").write_text(json.dumps(
        {"stage": "base", "config": {"stages": [{"stage": {"name": "base"}, "distill": distill, "train": train}]}}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"step": 4, "time": 0.0, "loss": 0.02, "images_per_s": 2.0},
        {"step": 8, "time": 8.0, "loss": 0.01, "images_per_s": 2.0})))

    # 30 paired prompts: the variant loses 2 and gains 1 (0.633 vs 0.667: within 0.03 at 4 steps? no, 0.033).
    teacher_passed = [True] * 20 + [False] * 10
    mine = [False, False] + [True] * 18 + [True] + [False] * 9
    reports = {"s.json": _shapes_report(str(model), [False] * 30), "b.json": _shapes_report("base-with-teacher-sr", mine),
               "t.json": _shapes_report(str(teacher), teacher_passed),
               "speed.json": {"date": "2026-12-05T00:00:00", "machine": "m", "threads": 1, "prompts": 8,
                              "batch_size": 8, "repeats": 3, "dtype": "fp32", "command": "python benchmarks/cascade_speed.py",
                              "rows": [{"label": "shapes", "path": str(teacher), "network_evaluations": 8,
                                        "s_per_image": 1.0, "speedup": 1.0, "accuracy": {"value": 2 / 3, "n": 30}},
                                       {"label": "fast", "path": str(model), "network_evaluations": 5,
                                        "s_per_image": 0.1, "speedup": 10.0, "accuracy": {"value": 19 / 30, "n": 30}}]}}
    for name, report in reports.items():
        (tmp_path / name).write_text(json.dumps(report))
    out = tmp_path / "card.md"
    assert distilled_card.main([
        "--model", str(model), "--teacher", str(teacher), "--command-after", "pixcade assemble V",
        "--run", str(run), "--distill-config", "configs/shapes-distill.json", "--command-before", "pixcade assemble T --out teacher-w3",
        "--shapes", str(tmp_path / "s.json"), "--teacher-shapes", str(tmp_path / "t.json"),
        "--base-shapes", str(tmp_path / "b.json"),
        "--speed", str(tmp_path / "speed.json"), "--out", str(out)]) == 0
    text = out.read_text()

    assert "| base | 16 | " in text and "| 4 steps | ddim, 4 | 1 | 3, in the weights (one pass) | 4 |" in text
    assert "| dpm++, 1 | 0.1 | 2 (two passes) | 2 |" in text  # the tiny SR stage is guided
    assert "6 network evaluations per image in all, against 8 for the teacher at its defaults" in text
    assert "| x4 | halve | `teacher-w3` | 4 | 4 | 8 | 4 | 5e-05 | 24 | 0:00:16 | 0.0150 |" in text
    assert ("pixcade assemble T --out teacher-w3\npixcade distill --config configs/shapes-distill.json --stage base "
            f"--phase halve --teacher teacher-w3 --steps 4 --factor 4 --max-steps 8 --out {run}\n"
            "pixcade assemble V\n") in text
    assert "overall 0.000" in text and "teacher at its defaults on the same prompts and sampling seed: 0.667" in text
    assert "0 image(s) pass only with the variant, 20 only with the teacher (exact McNemar p < 0.001)" in text
    # The base-stage target is judged on the base stage beside the teacher's own SR stage.
    assert "with the teacher's SR stage at its defaults (`base-with-teacher-sr`): 0.633; 1 image(s) pass only" in text
    assert "2 only with the teacher (exact McNemar p = 1.000)" in text
    assert "within 0.03 of the teacher: **not met** (loss +0.033)" in text
    assert "| fast (`" in text and "| 5 | 0.100 | 10.0x | 0.633 | 30 |" in text
    assert "at least 8x faster than the default: met (10.0x, at accuracy 0.633 against the default's 0.667)" in text
