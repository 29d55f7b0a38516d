"""The rating page in a real headless Chromium, driven over the DevTools protocol.

A rater loads the page, sees the prompt and both anonymised image sets, clicks one answer
per question and submits; the vote must land in SQLite and be counted by the report.
Needs Debian's `chromium` package; skipped (with the reason) only when it is missing.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import time
import urllib.request

import pytest
from drawbench_fixtures import MODELS, LiveServer, make_run

from pixcade.eval import drawbench

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium); rating page untested"
)
TIMEOUT = 60.0


class DevTools:
    """Just enough of the Chrome DevTools protocol: commands and JS evaluation."""

    def __init__(self, ws_url: str) -> None:
        import websocket  # websocket-client, from the `test` extra

        self.ws = websocket.create_connection(ws_url, timeout=TIMEOUT, suppress_origin=True)
        self.ids = itertools.count(1)

    def send(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:  # skip events until our reply
            reply = json.loads(self.ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def click(self, selector: str) -> None:
        """A real mouse click at the element's centre (fails if it is hidden or covered)."""
        box = self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def browser(tmp_path):
    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "--window-size=1200,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + TIMEOUT
        while not port_file.is_file() or not port_file.read_text().strip():
            if proc.poll() is not None:
                raise AssertionError(f"chromium exited: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r:
            page = next(t for t in json.loads(r.read()) if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        yield tools
        tools.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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

    assert drawbench.main(["report", "--dir", str(tmp_path / "run")]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    (pair,) = report["pairs"]
    assert report["n_votes"] == 1 and pair["model"] == MODELS[0]
    fidelity = pair["questions"]["fidelity"]["overall"]
    # The rater preferred set A: a win for MODELS[0] exactly when it was the one shown as A.
    assert fidelity["n"] == 1 and fidelity["preference"] == (1.0 if shown.model_a == MODELS[0] else 0.0)
    assert pair["questions"]["quality"]["overall"]["preference"] == 0.5
    category = next(p["category"] for p in live.session.prompts if p["prompt"] == prompt)
    assert pair["questions"]["fidelity"]["categories"][category]["n"] == 1
