"""A real headless Chromium for page tests, driven over the Chrome DevTools protocol.

Shared by every test of a web page (`pixcade serve`, the DrawBench rating page): import
``CHROMIUM``, ``DevTools`` and the ``browser`` fixture. Needs Debian's ``chromium`` package
and ``websocket-client`` (the ``test`` extra); tests using it should skip, with the reason,
only when chromium is missing. Chromium runs as root, so without its sandbox, and with
everything that would reach the network switched off.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TIMEOUT = 60.0
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--remote-debugging-port=0", "--window-size=1200,900",
]


class DevTools:
    """Just enough of the DevTools protocol: commands, JS evaluation, clicks, downloads."""

    def __init__(self, ws_url: str) -> None:
        import websocket  # websocket-client, from the `test` extra

        self.ws = websocket.create_connection(ws_url, timeout=TIMEOUT, suppress_origin=True)
        self.ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:  # skip events until our reply
            reply = json.loads(self.ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def js(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.05)
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

    def type_text(self, selector: str, text: str) -> None:
        """Focus a field and type into it as a user would (key events, input events)."""
        self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=text)

    def allow_downloads(self, directory: Path) -> None:
        """Downloads go to ``directory`` without asking, under their suggested names."""
        self.send("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(directory))

    def close(self) -> None:
        self.ws.close()


def wait_for_download(directory: Path, name: str, timeout: float = TIMEOUT) -> Path:
    """The finished file: Chromium writes to NAME.crdownload and renames it when complete."""
    path = directory / name
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and not any(directory.glob("*.crdownload")):
            return path
        time.sleep(0.05)
    raise AssertionError(f"no download {name} in {directory}: {sorted(p.name for p in directory.iterdir())}")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    """A fresh Chromium (own profile under tmp_path) and a DevTools connection to its page."""
    if CHROMIUM is None:
        # CI installs chromium (.ci/run): there a missing browser is a failure, not a skip.
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, but CI must run the browser tests")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    profile = tmp_path / "profile"
    log = open(tmp_path / "chromium.log", "wb")  # a file, not a pipe nobody drains
    proc = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=log,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + TIMEOUT
        while not port_file.is_file() or not port_file.read_text().strip():
            if proc.poll() is not None:
                log.flush()
                raise AssertionError(f"chromium exited: {(tmp_path / 'chromium.log').read_text()[-2000:]}")
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
        log.close()
