"""DrawBench: prompts, generation layout, the rating API's refusals, the preference report."""

from __future__ import annotations

import io
import json
import sqlite3
import urllib.error
import urllib.request

import pytest
from cli_support import verbs
from drawbench_fixtures import MODELS, N, PROMPTS, LiveServer, make_run
from PIL import Image

from pixcade.errors import PixcadeError
from pixcade.eval import drawbench
from pixcade.eval.drawbench_votes import build_report, report_markdown, wilson_interval

drawbench_main = verbs("drawbench")


@pytest.fixture
def live(tmp_path):
    server = LiveServer(make_run(tmp_path / "run"))
    yield server
    server.close()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _post(url: str, data: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _next(live) -> dict:
    status, body = _post(live.url + "api/next", b"")  # a POST since the move to Starlette: it opens state
    assert status == 200
    return body


def _vote(live, token, fidelity="A", quality="B") -> tuple[int, dict]:
    return _post(live.url + "api/vote", json.dumps({"token": token, "fidelity": fidelity, "quality": quality}).encode())


def test_read_prompts_of_the_shared_drawbench_csv(tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("Prompt,Category\nA red car.,Colors\n\"Two, dogs.\",Counting\n")
    assert drawbench.read_prompts(csv) == [
        {"index": 0, "prompt": "A red car.", "category": "Colors"},
        {"index": 1, "prompt": "Two, dogs.", "category": "Counting"},
    ]
    assert [p["category"] for p in drawbench.read_prompts(csv, ["Counting"])] == ["Counting"]
    with pytest.raises(PixcadeError, match="categories"):
        drawbench.read_prompts(csv, ["Nope"])
    (tmp_path / "bad.csv").write_text("text,kind\na,b\n")
    with pytest.raises(PixcadeError, match="Prompt,Category"):
        drawbench.read_prompts(tmp_path / "bad.csv")


def test_comparisons_are_anonymous_and_both_orders_occur(live):
    seen_orders = set()
    model_pixels = {}
    for i in range(len(MODELS)):
        model_pixels[i] = Image.open(live.session.root / f"model-{i}" / "0000_0.png").getpixel((0, 0))
    for _ in range(24):
        c = _next(live)
        text = json.dumps(c)
        assert not any(m in text or m.split("/")[-1] in text for m in MODELS)
        assert "model-" not in text
        assert len(c["images"]["A"]) == len(c["images"]["B"]) == N
        # Which model's images were served as A: tell them by their colour.
        status, png = _get(live.url + c["images"]["A"][0].lstrip("/"))
        assert status == 200
        red, green, _ = Image.open(io.BytesIO(png)).convert("RGB").getpixel((0, 0))
        seen_orders.add("model-0 first" if red > green else "model-1 first")
    assert seen_orders == {"model-0 first", "model-1 first"}
    assert _get(live.url + "images/notatoken12345/A/0")[0] == 404
    assert _get(live.url + "api/secret")[0] == 404


def test_vote_is_stored_with_models_resolved_server_side(live):
    c = _next(live)
    status, reply = _vote(live, c["token"], "A", "indifferent")
    assert status == 200 and reply == {"ok": True, "rated": 1}
    (row,) = live.store.rows()
    assert row["prompt"] == c["prompt"] and {row["model_a"], row["model_b"]} == set(MODELS)
    assert (row["fidelity"], row["quality"]) == ("A", "indifferent")


def test_unknown_replayed_and_malformed_votes_store_nothing(live):
    c = _next(live)
    assert _vote(live, c["token"])[0] == 200
    assert _vote(live, c["token"], "B", "B")[0] == 409  # replay, even with other answers
    assert _vote(live, "x" * 22)[0] == 404  # never served
    other = _next(live)["token"]
    bad_bodies = [
        b"{not json", b"\xff\xfe", b"[]", b"null",
        json.dumps({"token": other, "fidelity": "A"}).encode(),  # missing field
        json.dumps({"token": other, "fidelity": "A", "quality": "B", "model": "x"}).encode(),  # extra field
        json.dumps({"token": other, "fidelity": "C", "quality": "B"}).encode(),  # bad choice
        json.dumps({"token": other, "fidelity": None, "quality": "B"}).encode(),
        json.dumps({"token": 5, "fidelity": "A", "quality": "B"}).encode(),
    ]
    for body in bad_bodies:
        status, reply = _post(live.url + "api/vote", body)
        assert status == 400, body
        assert "error" in reply
    status, reply = _post(live.url + "api/vote", b"x" * 5000)  # too large: 413 (was 400 before Starlette)
    assert status == 413 and reply["limit"] == "max_body_bytes"
    assert _post(live.url + "api/other", b"{}")[0] == 404
    assert live.store.count() == 1
    with sqlite3.connect(live.store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM votes").fetchone()[0] == 1
    # The malformed attempts did not burn the token: a proper vote on it still counts.
    assert _vote(live, other)[0] == 200
    assert live.store.count() == 2


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_report_counts_preferences_per_category():
    a, b = MODELS

    def row(cat, model_a, model_b, fidelity, quality):
        return {"category": cat, "model_a": model_a, "model_b": model_b, "fidelity": fidelity, "quality": quality}

    rows = [
        row("Colors", a, b, "A", "B"),            # fidelity: a wins; quality: b wins
        row("Colors", b, a, "B", "B"),            # shown swapped: fidelity a wins; quality a wins
        row("Colors", a, b, "indifferent", "A"),  # fidelity tie; quality a wins
        row("Counting", b, a, "A", "indifferent"),  # fidelity b wins; quality tie
    ]
    report = build_report(rows, model_order=[a, b])
    (pair,) = report["pairs"]
    assert (pair["model"], pair["versus"], pair["n_votes"]) == (a, b, 4)
    fid = pair["questions"]["fidelity"]
    colors = fid["categories"]["Colors"]
    assert (colors["n"], colors["wins"], colors["losses"], colors["indifferent"]) == (3, 2, 0, 1)
    assert colors["preference"] == pytest.approx(2.5 / 3)
    assert colors["ci95"] == pytest.approx(list(wilson_interval(2.5, 3)))
    assert fid["categories"]["Counting"]["preference"] == 0.0
    assert fid["overall"]["preference"] == pytest.approx(2.5 / 4)
    assert pair["questions"]["quality"]["overall"]["preference"] == pytest.approx(2.5 / 4)
    md = report_markdown(report)
    assert "| Colors | 3 | 83.3% [" in md and "**overall**" in md


class FakeCascade:
    """Stands in for a saved cascade: a flat image whose shade encodes (model, seed, k)."""

    loaded: list[str] = []

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def from_pretrained(cls, directory, device="cpu"):
        cls.loaded.append(str(directory))
        return cls(str(directory))

    def generate(self, prompts, n=1, seed=0, batch_size=None, progress=True):
        assert len(prompts) == 1
        shade = (MODELS.index(self.name) * 100 + seed * 10) % 256
        return [Image.new("RGB", (8, 8), (shade, k, 0)) for k in range(n)]


def _fake_run(tmp_path, monkeypatch):
    """(argv, out) of `drawbench generate` over the fake cascades: 3 prompts, 2 models, n = 3."""
    monkeypatch.setattr("pixcade.pipeline.cascade.Cascade", FakeCascade)
    FakeCascade.loaded = []
    csv = tmp_path / "p.csv"
    csv.write_text("Prompt,Category\n" + "".join(f"\"{p['prompt']}\",{p['category']}\n" for p in PROMPTS))
    out = tmp_path / "gen"
    argv = ["generate", "--prompts", str(csv), "--model", MODELS[0], "--model", MODELS[1], "--n", "3", "--out", str(out)]
    return argv, out


def test_generate_layout_manifest_and_resume(tmp_path, monkeypatch, capsys):
    argv, out = _fake_run(tmp_path, monkeypatch)
    csv = tmp_path / "p.csv"
    assert drawbench_main(argv) == 0
    assert json.loads(capsys.readouterr().out)["prompts"] == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert [m["name"] for m in manifest["models"]] == MODELS and manifest["prompts"] == PROMPTS
    for i in range(2):
        for p in PROMPTS:
            for k in range(3):
                im = Image.open(out / f"model-{i}" / f"{p['index']:04d}_{k}.png")
                assert im.getpixel((0, 0)) == ((i * 100 + p["index"] * 10) % 256, k, 0)
        rows = [json.loads(x) for x in (out / f"model-{i}" / "prompts.jsonl").read_text().splitlines()]
        assert len(rows) == 9 and rows[0] == {"image": "0000_0.png", "prompt": PROMPTS[0]["prompt"], "category": "Colors"}
    assert FakeCascade.loaded == MODELS
    # Resume: with every image present nothing is loaded or drawn again.
    (out / "model-1" / "0002_1.png").unlink()
    assert drawbench_main(argv) == 0
    assert FakeCascade.loaded == MODELS + [MODELS[1]]
    # A different run into the same folder is refused.
    with pytest.raises(PixcadeError, match="different DrawBench run"):
        drawbench_main(argv[:-3] + ["2", "--out", str(out)])
    with pytest.raises(PixcadeError, match="two different"):
        drawbench_main(["generate", "--prompts", str(csv), "--model", "m", "--model", "m", "--out", str(tmp_path / "x")])


class Crash(BaseException):
    """The process dying mid-write (nothing may catch it)."""


def test_generate_resume_after_a_crash_mid_write_redraws_the_cut_off_image(tmp_path, monkeypatch, capsys):
    argv, out = _fake_run(tmp_path, monkeypatch)
    # Model 0's last image of prompt 1 (the last file of that prompt) is cut off mid-write.
    victim = ((0 * 100 + 1 * 10) % 256, 2, 0)
    real_save = Image.Image.save

    def save(self, fp, format=None, **params):
        if self.getpixel((0, 0)) != victim:
            return real_save(self, fp, format, **params)
        whole = io.BytesIO()
        real_save(self, whole, format="PNG")
        if hasattr(fp, "write"):
            fp.write(whole.getvalue()[:20])
        else:
            with open(fp, "wb") as f:
                f.write(whole.getvalue()[:20])
        raise Crash

    monkeypatch.setattr(Image.Image, "save", save)
    with pytest.raises(Crash):
        drawbench_main(argv)
    assert not (out / "model-0" / "0001_2.png").exists()
    assert sorted(f.name for f in (out / "model-0").iterdir()) == [f"0000_{k}.png" for k in range(3)] + [
        f"0001_{k}.png" for k in range(2)]  # no temporary file left behind either
    monkeypatch.setattr(Image.Image, "save", real_save)

    assert drawbench_main(argv) == 0
    capsys.readouterr()
    for i in range(2):
        for p in PROMPTS:
            for k in range(3):
                with Image.open(out / f"model-{i}" / f"{p['index']:04d}_{k}.png") as im:
                    assert im.convert("RGB").getpixel((0, 0)) == ((i * 100 + p["index"] * 10) % 256, k, 0)
    assert FakeCascade.loaded == [MODELS[0], MODELS[0], MODELS[1]]


def test_report_cli_writes_json_and_markdown(live, capsys):
    c = _next(live)
    assert _vote(live, c["token"], "indifferent", "indifferent")[0] == 200
    assert drawbench_main(["report", "--dir", str(live.session.root)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((live.session.root / "report.json").read_text())
    assert printed["n_votes"] == 1
    assert printed["pairs"][0]["questions"]["fidelity"]["overall"]["preference"] == 0.5
    assert "# DrawBench" in (live.session.root / "report.md").read_text()


def test_generate_with_real_tiny_cascades(tmp_path, capsys):
    from tiny_cascade import save_tiny_cascade

    a, b = save_tiny_cascade(tmp_path / "a", seed=0), save_tiny_cascade(tmp_path / "b", seed=1)
    csv = tmp_path / "p.csv"
    csv.write_text("Prompt,Category\nA red colored car.,Colors\nThree cats.,Counting\n")
    out = tmp_path / "gen"
    assert drawbench_main(["generate", "--prompts", str(csv), "--model", str(a), "--model", str(b),
                           "--n", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    images = {i: [Image.open(out / f"model-{i}" / f"0001_{k}.png").convert("RGB") for k in range(2)] for i in (0, 1)}
    assert all(im.size == (32, 32) for ims in images.values() for im in ims)
    # Different models (different weights) draw different images for the same prompt and seed.
    assert images[0][0].tobytes() != images[1][0].tobytes()
