"""scripts/distill_table.py: the issue-24 table assembled from result files (nothing sampled)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from pixcade.errors import PixcadeError
from pixcade.eval.paired import paired_difference
from tiny_cascade import save_tiny_cascade
from train_support import REPO

spec = importlib.util.spec_from_file_location("distill_table", REPO / "scripts" / "distill_table.py")
dt = importlib.util.module_from_spec(spec)
sys.modules["distill_table"] = dt  # dataclasses look their module up there
spec.loader.exec_module(dt)


def shapes_report(passed: list[bool], held_out_every: int = 3) -> dict:
    results = [{"index": i, "passed": p, "held_out": i % held_out_every == 0} for i, p in enumerate(passed)]
    held = [r for r in results if r["held_out"]]
    return {"prompts": len(passed), "overall": {"n": len(passed), "passed": sum(passed),
                                                "accuracy": sum(passed) / len(passed)},
            "held_out": {"n": len(held), "accuracy": sum(r["passed"] for r in held) / len(held)},
            "results": results}


def sr_report(psnr: float) -> dict:
    return {"stage": "sr", "resolution": 32, "lowres_resolution": 16, "n": 50, "psnr_sr": psnr, "psnr_bicubic": 30.0}


def put(out: Path, row: str, report: dict) -> None:
    name = "sr_psnr.json" if "psnr_sr" in report else "shapes.json"
    (out / "results" / row).mkdir(parents=True, exist_ok=True)
    (out / "results" / row / name).write_text(json.dumps(report))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return save_tiny_cascade(tmp_path_factory.mktemp("teacher"))


def test_rows_cover_the_issue_and_sample_in_fp32(teacher):
    rows = dt.plan_rows(str(teacher), "RUNS")
    names = [r.name for r in rows]
    assert names[:6] == [f"teacher-{k}" for k in (5, 8, 10, 15, 20, 25)]
    assert [n for n in names if n.startswith("student-")] == ["student-1", "student-2", "student-4", "student-8"]
    for r in rows:
        assert {"base.dtype=fp32", "sr.dtype=fp32"} <= set(r.settings)
    t8 = rows[names.index("teacher-8")]
    assert t8.sources == (f"{teacher}:base", f"{teacher}:sr") and "base.steps=8" in t8.settings
    s4 = rows[names.index("student-4")]
    assert s4.sources == ("RUNS/base-4", f"{teacher}:sr") and s4.metric == "shapes"
    d8 = rows[names.index("teacher-ddim-8")]
    assert d8.sources == t8.sources
    assert {"base.sampler=ddim", "base.spacing=uniform-t", "base.steps=8"} <= set(d8.settings)
    g4 = rows[names.index("guided-ddim-4")]
    assert g4.sources == ("RUNS/base-guided", f"{teacher}:sr") and "base.sampler=ddim" in g4.settings
    direct = rows[names.index("direct-4")]
    assert direct.sources == ("RUNS/direct-4", f"{teacher}:sr") and direct.metric == "shapes"
    sr2 = rows[names.index("sr-student-2")]
    assert sr2.sources == (f"{teacher}:base", "RUNS/sr-2") and sr2.metric == "sr-psnr"
    with pytest.raises(PixcadeError, match="unknown row group"):
        dt.plan_rows(str(teacher), "RUNS", ["teachers"])


def test_table_from_result_files(teacher, tmp_path):
    out = tmp_path / "out"
    runs = tmp_path / "runs"
    rows = dt.plan_rows(str(teacher), str(runs))
    ref = [True] * 20 + [False] * 10
    fewer = [True] * 14 + [False] * 6 + [True] * 2 + [False] * 8  # 6 lost, 2 gained
    put(out, "teacher-25", shapes_report(ref))
    put(out, "teacher-5", shapes_report(fewer))
    put(out, "student-4", shapes_report(ref[:-1] + [True]))  # one gained: within 0.03
    put(out, "student-8", shapes_report([True] * 19 + [False] * 11))  # one lost: 0.033 > 0.01
    put(out, "sr-teacher-10", sr_report(34.0))
    put(out, "sr-student-2", sr_report(33.6))
    put(out, "sr-student-4", sr_report(33.8))
    # The assembled cascade decides the network evaluations (the tiny stages are both guided).
    dt.assemble([f"{teacher}:base", f"{teacher}:sr"], out / "models" / "teacher-5", ["base.steps=5"])

    table = dt.collect(out, rows)
    e = {x["name"]: x for x in table}
    assert e["teacher-5"]["evaluations"] == {"base": 10, "sr": 4}  # tiny SR: guided (weight 2), 2 steps
    assert e["teacher-5"]["value"] == pytest.approx(16 / 30)
    assert e["teacher-5"]["delta"] == pytest.approx(16 / 30 - 20 / 30)
    only_row, only_ref, p = paired_difference(fewer, ref)
    assert (e["teacher-5"]["only_this"], e["teacher-5"]["only_reference"]) == (only_row, only_ref) == (2, 6)
    assert e["teacher-5"]["mcnemar_p"] == pytest.approx(p)
    assert e["teacher-25"]["delta"] == 0 and "only_this" not in e["teacher-25"]
    assert e["teacher-8"]["status"] == "not run"  # its sources exist
    assert e["student-1"]["status"] == "pending" and "base-1" in e["student-1"]["reason"]
    assert e["sr-student-2"]["delta"] == pytest.approx(-0.4)

    verdict = {v["row"]: v["status"] for v in dt.verdicts(table)}
    assert verdict == {"student-4": "met", "student-8": "missed", "direct-4": "pending", "direct-8": "pending",
                       "sr-student-2": "missed", "sr-student-4": "met",
                       "sr-start-2": "pending", "sr-start-4": "pending"}  # no such rows asked for

    text = dt.markdown(table)
    line = next(ln for ln in text.splitlines() if ln.startswith("| teacher, DPM-Solver++ 5 |"))
    assert line.split(" | ")[1:4] == ["10", "14", "0.533"]
    assert "| student, 1 step | - | - | pending |" in text
    assert "| SR student, 2 steps | - | 33.60 | -0.40 |" in text


def test_verdicts_pending_without_the_reference(teacher, tmp_path):
    rows = dt.plan_rows(str(teacher), str(tmp_path / "runs"))
    put(tmp_path, "student-4", shapes_report([True, False]))
    verdict = {v["row"]: v["status"] for v in dt.verdicts(dt.collect(tmp_path, rows))}
    assert set(verdict.values()) == {"pending"}


def test_resume_skips_rows_with_results_and_students_without_exports(teacher, tmp_path, monkeypatch):
    out = tmp_path / "out"
    for k in dt.TEACHER_STEPS:
        put(out, f"teacher-{k}", shapes_report([True, False, True]))
    ran = []
    monkeypatch.setattr(dt, "run_row", lambda out, row: ran.append(row.name))
    code = dt.main(["--out", str(out), "--teacher", str(teacher), "--runs", str(tmp_path / "none"),
                    "--groups", "teacher,student"])
    assert code == 0 and ran == []
    assert json.loads((out / "table.json").read_text())["rows"][0]["status"] == "done"
    # A missing row runs, the references first.
    (out / "results" / "teacher-8" / "shapes.json").unlink()
    (out / "results" / "teacher-25" / "shapes.json").unlink()
    assert dt.main(["--out", str(out), "--teacher", str(teacher), "--groups", "teacher"]) == 0
    assert ran == ["teacher-25", "teacher-8"]


def test_a_student_export_is_assembled_beside_the_teachers_sr_in_fp32(teacher, tmp_path, monkeypatch):
    import dataclasses

    from pixcade.stage import Stage
    from pixcade.train.config import DistillConfig
    from pixcade.train.distill import student_config
    from pixcade.train.export import write_stage_export
    from tiny_cascade import tiny_configs

    base = dataclasses.replace(tiny_configs()[0], parameterization="v")
    guided = student_config(base, DistillConfig(teacher="-", phase="guided"))
    four = student_config(guided, DistillConfig(teacher="-", phase="halve", steps=4))
    runs, out = tmp_path / "runs", tmp_path / "out"
    write_stage_export(runs / "base-4" / "final", four.to_dict(), "minilm", 32, Stage(four).net.state_dict(), 500)
    rows = {r.name: r for r in dt.plan_rows(str(teacher), str(runs))}
    assert dt.missing_sources(rows["student-4"]) is None
    assert "base-2" in dt.missing_sources(rows["student-2"])

    def fake_eval(argv):  # what `pixcade eval shapes` would write
        assert argv[:2] == ["eval", "shapes"] and argv[argv.index("--prompts") + 1] == "300"
        put(out, "student-4", shapes_report([True, True, False]))
        return 0

    monkeypatch.setattr(dt, "pixcade_main", fake_eval)
    dt.run_row(out, rows["student-4"])
    saved = json.loads((out / "models" / "student-4" / "cascade.json").read_text())["stages"]
    assert [s["sampling"]["dtype"] for s in saved] == ["fp32", "fp32"]
    assert saved[0]["distilled_steps"] == 4 and saved[0]["unet"]["guidance_conditioned"]
    e = {x["name"]: x for x in dt.collect(out, list(rows.values()))}["student-4"]
    # One pass per step for the student, the teacher's SR (guided, 2 steps) unchanged.
    assert e["status"] == "done" and e["evaluations"] == {"base": 4, "sr": 4}
    assert e["seconds"] is not None
    # The student trained longer and exported again: its row is stale and runs again.
    write_stage_export(runs / "base-4" / "final", four.to_dict(), "minilm", 32, Stage(four).net.state_dict(), 900)
    assert dt.is_stale(out, rows["student-4"])
    assert {x["name"]: x for x in dt.collect(out, list(rows.values()))}["student-4"]["status"] == "stale"
    ran = []
    monkeypatch.setattr(dt, "run_row", lambda out, row: ran.append(row.name))
    assert dt.main(["--out", str(out), "--teacher", str(teacher), "--runs", str(runs), "--groups", "student"]) == 0
    assert ran == ["student-4"]


def test_guidance_choice_reaches_the_w_rows_only_and_a_new_choice_reruns_them(teacher, tmp_path, monkeypatch):
    import dataclasses

    from pixcade.stage import Stage
    from pixcade.train.config import DistillConfig
    from pixcade.train.distill import student_config
    from pixcade.train.export import write_stage_export
    from tiny_cascade import tiny_configs

    base = dataclasses.replace(tiny_configs()[0], parameterization="v")
    four = student_config(student_config(base, DistillConfig(teacher="-", phase="guided")),
                          DistillConfig(teacher="-", phase="halve", steps=4))
    runs, out = tmp_path / "runs", tmp_path / "out"
    write_stage_export(runs / "base-4" / "final", four.to_dict(), "minilm", 32, Stage(four).net.state_dict(), 500)
    rows = {r.name: r for r in dt.plan_rows(str(teacher), str(runs), guidance=6.5)}
    assert "base.guidance_weight=6.5" in rows["student-4"].settings and "w = 6.5" in rows["student-4"].label
    assert "base.guidance_weight=6.5" in rows["guided"].settings
    assert "base.guidance_weight=6.5" in rows["guided-ddim-8"].settings
    w_groups = ("guided", "guided-ddim", "student")  # not "direct": its weight is in its weights
    assert not any("guidance" in s for r in rows.values() if r.group not in w_groups for s in r.settings)

    monkeypatch.setattr(dt, "pixcade_main", lambda argv: put(out, "student-4", shapes_report([True])) or 0)
    dt.run_row(out, rows["student-4"])
    saved = json.loads((out / "models" / "student-4" / "cascade.json").read_text())["stages"][0]
    assert saved["sampling"]["guidance_weight"] == 6.5 and saved["sampling"]["steps"] == 4
    assert not dt.is_stale(out, rows["student-4"])
    other = {r.name: r for r in dt.plan_rows(str(teacher), str(runs), guidance=7)}["student-4"]
    assert dt.is_stale(out, other)


def test_sr_start_rows_sample_the_teachers_sr_from_its_input_and_count_for_the_sr_target(teacher, tmp_path):
    rows = {r.name: r for r in dt.plan_rows(str(teacher), "RUNS", sr_start={1: 0.08, 2: 0.1})}
    two = rows["sr-start-2"]
    assert two.sources == (f"{teacher}:base", f"{teacher}:sr") and two.metric == "sr-psnr"
    assert {"sr.steps=2", "sr.start=0.1", "sr.dtype=fp32"} <= set(two.settings) and "sr-start-1" in rows
    assert "sr-start-4" not in rows  # only the step counts asked for
    put(tmp_path, "sr-teacher-10", sr_report(34.0))
    put(tmp_path, "sr-start-2", sr_report(33.8))
    verdict = {v["row"]: v for v in dt.verdicts(dt.collect(tmp_path, list(rows.values())))}
    assert verdict["sr-start-2"]["status"] == "met" and verdict["sr-start-2"]["loss"] == pytest.approx(0.2)
    assert verdict["sr-student-2"]["status"] == "pending"
    assert dt.main(["--out", str(tmp_path), "--teacher", str(teacher), "--sr-start", "two=0.1", "--table-only"]) == 2
