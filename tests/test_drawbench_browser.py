"""The rating page in a real headless Chromium, driven over the DevTools protocol.

A rater loads the page, sees the prompt and both anonymised image sets, clicks one answer
per question and submits; the vote must land in SQLite and be counted by the report.
The browser comes from tests/browser.py.
"""

from __future__ import annotations

import json

from browser import browser  # noqa: F401 (fixture)
from cli_support import verbs
from drawbench_fixtures import MODELS, LiveServer, make_run

drawbench_main = verbs("drawbench")



def test_rater_votes_in_a_real_browser(tmp_path, browser):
    live = LiveServer(make_run(tmp_path / "run"))
    try:
        browser.send("Page.enable")
        browser.send("Page.navigate", url=live.url)
        browser.wait_for(
            "document.querySelectorAll('#set-A img, #set-B img').length === 4 &&"
            " [...document.images].every(i => i.complete && i.naturalWidth === 16)",
            "the prompt's two image sets to load",
        )
        prompt = browser.js("document.getElementById('prompt').textContent")
        assert prompt in {p["prompt"] for p in live.session.prompts}
        html = browser.js("document.documentElement.outerHTML")
        assert not any(m in html or m.split("/")[-1] in html for m in MODELS) and "model-" not in html
        token = browser.js("current.token")
        shown = live.session._open[token]  # the server's secret A/B assignment, for checking only

        assert browser.js("document.getElementById('submit').disabled") is True
        browser.click('button[data-q="fidelity"][data-choice="A"]')
        assert browser.js("document.getElementById('submit').disabled") is True  # one answer missing
        browser.click('button[data-q="quality"][data-choice="indifferent"]')
        browser.click("#submit")
        browser.wait_for("document.getElementById('status').textContent.startsWith('Thanks')", "the vote to be accepted")
        browser.wait_for(f"current && current.token !== {json.dumps(token)}", "the next comparison")
        assert browser.js("document.getElementById('rated').textContent") == "1"

        (row,) = live.store.rows()
        assert (row["token"], row["prompt"], row["fidelity"], row["quality"]) == (token, prompt, "A", "indifferent")
        assert (row["model_a"], row["model_b"]) == (shown.model_a, shown.model_b)
    finally:
        live.close()

    assert drawbench_main(["report", "--dir", str(tmp_path / "run")]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    (pair,) = report["pairs"]
    assert report["n_votes"] == 1 and pair["model"] == MODELS[0]
    fidelity = pair["questions"]["fidelity"]["overall"]
    # The rater preferred set A: a win for MODELS[0] exactly when it was the one shown as A.
    assert fidelity["n"] == 1 and fidelity["preference"] == (1.0 if shown.model_a == MODELS[0] else 0.0)
    assert pair["questions"]["quality"]["overall"]["preference"] == 0.5
    category = next(p["category"] for p in live.session.prompts if p["prompt"] == prompt)
    assert pair["questions"]["fidelity"]["categories"][category]["n"] == 1
