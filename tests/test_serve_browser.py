"""`pixcade serve`'s page in a real headless Chromium (Debian's `chromium` package).

A user types a prompt, changes seed and guidance, presses Generate, sees each stage's
images appear as that stage finishes (the SR stage is held back by the test, so the base
images must be on the page while the SR stage is still running), and downloads a PNG,
which must be a valid PNG of the stage's size holding the model's pixels. Once more with
a real (tiny, random) cascade: the downloaded image equals `Cascade.generate`'s.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
from browser import DevTools, browser, wait_for_download  # noqa: F401 (fixture)
from PIL import Image
from serve_support import FakeModel, fake_color, running_server

from pixcade.serve.requests import Limits

def _open_page(browser: DevTools, url: str) -> None:
    browser.send("Page.enable")
    browser.send("Page.navigate", url=url + "/")
    browser.wait_for("document.getElementById('model')?.textContent.startsWith('stages:')",
                     "the page to load the server's settings")


def _set(browser: DevTools, field: str, value: str) -> None:
    """Replace a form field's value by selecting it and typing, as a user would."""
    browser.js(f"document.getElementById({json.dumps(field)}).select()")
    browser.type_text(f"#{field}", value)


def _loaded_images(stage: str) -> str:
    return (f"[...document.querySelectorAll('img[data-stage={json.dumps(stage)}]')]"
            ".filter(i => i.complete && i.naturalWidth > 0).map(i => [i.naturalWidth, i.naturalHeight])")


def test_prompt_stage_images_appear_in_order_and_download(browser: DevTools, tmp_path: Path) -> None:
    model = FakeModel()
    model.gates["sr"] = threading.Event()
    with running_server(model, Limits(max_images=3)) as server:
        _open_page(browser, server.url)

        # A refused request is explained on the page, and nothing is queued.
        browser.type_text("#prompt", "a red circle above a blue square")
        _set(browser, "n", "9")
        browser.click("#generate")
        browser.wait_for("document.getElementById('message').className === 'error'", "the refusal")
        message = browser.js("document.getElementById('message').textContent")
        assert "max_images" in message and "3" in message
        assert server.manager.stats()["stored"] == 0 and not model.calls

        _set(browser, "n", "2")
        _set(browser, "seed", "7")
        _set(browser, "guidance", "2.5")
        browser.click("#generate")

        # The base stage finishes; the SR stage is held: base images shown, SR not yet.
        base = browser.wait_for(f"(() => {{ const l = {_loaded_images('base')}; return l.length === 2 && l; }})()",
                                "the base stage's images")
        assert base == [[16, 16], [16, 16]]
        assert browser.js(_loaded_images("sr")) == []
        assert browser.js("document.querySelector('.stage[data-stage=\"sr\"]').dataset.done") == "false"
        assert browser.js("document.getElementById('job').dataset.state") == "running"
        assert "running: sr" in browser.js("document.getElementById('job-state').textContent")
        (asked,) = model.calls
        assert (asked.prompt, asked.n, asked.seed, asked.guidance) == ("a red circle above a blue square", 2, 7, 2.5)

        model.gates["sr"].set()
        sr = browser.wait_for(f"(() => {{ const l = {_loaded_images('sr')}; return l.length === 2 && l; }})()",
                              "the SR stage's images")
        assert sr == [[32, 32], [32, 32]]
        browser.wait_for("document.getElementById('job').dataset.state === 'done'", "the job to finish")
        assert browser.js("document.getElementById('job-state').textContent") == "done"

        downloads = tmp_path / "downloads"
        downloads.mkdir()
        browser.allow_downloads(downloads)
        link = 'figure:nth-child(2) a.download'
        name = browser.js(f"document.querySelector('.stage[data-stage=\"sr\"] {link}').download")
        browser.click(f'.stage[data-stage="sr"] {link}')
        path = wait_for_download(downloads, name)
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size == (32, 32) and im.mode == "RGB"
            pixels = np.asarray(im)
        assert (pixels == fake_color(7, "sr", 1)).all()


def test_polling_fallback_without_event_source(browser: DevTools) -> None:
    model = FakeModel()
    with running_server(model) as server:
        _open_page(browser, server.url)
        browser.js("window.EventSource = undefined")
        browser.type_text("#prompt", "three green triangles")
        browser.click("#generate")
        browser.wait_for("document.getElementById('job').dataset.state === 'done'", "the job to finish")
        browser.wait_for(f"{_loaded_images('sr')}.length === 1", "the SR image")
        # Both images are fetched at once: the base one may finish loading after the SR one.
        browser.wait_for(f"{_loaded_images('base')}.length === 1", "the base image")
        assert browser.js(_loaded_images("base")) == [[16, 16]]


def test_real_tiny_cascade_in_the_browser(browser: DevTools, tmp_path: Path) -> None:
    from tiny_cascade import SR_RES, save_tiny_cascade

    from pixcade.pipeline.cascade import Cascade
    from pixcade.serve.model import CascadeModel

    cascade = Cascade.from_pretrained(save_tiny_cascade(tmp_path / "model"))
    with running_server(CascadeModel(cascade)) as server:
        _open_page(browser, server.url)
        browser.type_text("#prompt", "a small red square")
        _set(browser, "seed", "3")
        browser.click("#generate")
        browser.wait_for("document.getElementById('job').dataset.state === 'done'", "the job to finish", 120)
        # 'done' can arrive before the browser has finished fetching the last <img>.
        browser.wait_for(f"{_loaded_images('sr')}.length > 0", "the SR image to load")
        browser.wait_for(f"{_loaded_images('base')}.length > 0", "the base image to load")
        assert browser.js(_loaded_images("base")) == [[16, 16]]
        assert browser.js(_loaded_images("sr")) == [[SR_RES, SR_RES]]

        downloads = tmp_path / "downloads"
        downloads.mkdir()
        browser.allow_downloads(downloads)
        name = browser.js("document.querySelector('.stage[data-stage=\"sr\"] a.download').download")
        browser.click('.stage[data-stage="sr"] a.download')
        with Image.open(wait_for_download(downloads, name)) as im:
            assert im.format == "PNG" and im.size == (SR_RES, SR_RES)
            served = np.asarray(im.convert("RGB"))
    (expected,) = cascade.generate("a small red square", n=1, seed=3, progress=False)
    assert np.array_equal(served, np.asarray(expected))
