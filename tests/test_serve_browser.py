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
        # Each stage shows the precision its network runs in (the fake model's plan: fp32).
        assert browser.js("document.querySelector('.stage[data-stage=\"base\"] .steps').textContent") == "done, fp32"
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


def test_paint_a_mask_on_an_uploaded_image_and_inpaint(browser: DevTools, tmp_path: Path) -> None:
    """A user uploads an image, paints over its left part with the brush, types a negative
    prompt and generates: the result is `Cascade.generate`'s inpainting of that image with
    the painted mask, and the unpainted pixels are the image's own."""
    import base64
    import io

    from tiny_cascade import SR_RES, save_tiny_cascade

    from pixcade.pipeline.cascade import Cascade
    from pixcade.serve.model import CascadeModel

    rng = np.random.default_rng(1)
    source = Image.fromarray(rng.integers(0, 256, (SR_RES, SR_RES, 3), dtype=np.uint8))
    upload = tmp_path / "upload.png"
    source.save(upload)
    cascade = Cascade.from_pretrained(save_tiny_cascade(tmp_path / "model"))
    with running_server(CascadeModel(cascade)) as server:
        _open_page(browser, server.url)
        browser.type_text("#prompt", "a small red square")
        browser.type_text("#negative", "a blue circle")
        browser.js("document.getElementById('edit').open = true")
        root = browser.send("DOM.getDocument")["root"]["nodeId"]
        node = browser.send("DOM.querySelector", nodeId=root, selector="#image-file")["nodeId"]
        browser.send("DOM.setFileInputFiles", files=[str(upload)], nodeId=node)
        browser.wait_for("!document.getElementById('editor').hidden", "the uploaded image in the editor")
        # A stroke down the left quarter of the image, as a mouse drag.
        box = browser.js("(() => { const r = document.getElementById('mask-canvas').getBoundingClientRect();"
                         " return [r.left, r.top, r.width, r.height]; })()")
        x = box[0] + box[2] * 0.2
        points = [(x, box[1] + box[3] * f) for f in (0.1, 0.3, 0.5, 0.7, 0.9)]
        browser.send("Input.dispatchMouseEvent", type="mousePressed", x=points[0][0], y=points[0][1],
                     button="left", buttons=1, clickCount=1)
        for px, py in points[1:]:
            browser.send("Input.dispatchMouseEvent", type="mouseMoved", x=px, y=py, button="left", buttons=1)
        browser.send("Input.dispatchMouseEvent", type="mouseReleased", x=points[-1][0], y=points[-1][1],
                     button="left", buttons=0, clickCount=1)
        mask_url = browser.js("document.getElementById('mask-canvas').toDataURL('image/png')")
        browser.click("#generate")
        browser.wait_for("document.getElementById('job').dataset.state === 'done'", "the job to finish", 120)
        browser.wait_for(f"{_loaded_images('sr')}.length > 0", "the SR image to load")
        served = np.asarray(Image.open(io.BytesIO(base64.b64decode(browser.js(
            "(() => { const i = document.querySelector('img[data-stage=\"sr\"]'); const c = document.createElement('canvas');"
            " c.width = i.naturalWidth; c.height = i.naturalHeight; c.getContext('2d').drawImage(i, 0, 0);"
            " return c.toDataURL('image/png').split(',')[1]; })()")))).convert("RGB"))
    mask = Image.open(io.BytesIO(base64.b64decode(mask_url.split(",", 1)[1])))
    painted = np.asarray(mask.getchannel("A")) > 0
    assert 0.05 < painted.mean() < 0.6 and not painted[:, SR_RES // 2:].any()  # the stroke, and only it
    (expected,) = cascade.generate("a small red square", negative_prompt="a blue circle", image=source,
                                   mask=mask, progress=False)
    assert np.array_equal(served, np.asarray(expected))
    src = np.asarray(source)
    assert np.array_equal(served[~painted], src[~painted])  # unpainted pixels kept exactly
    assert np.abs(served[painted].astype(int) - src[painted]).mean() > 10  # painted ones redrawn
