"""`pixcade serve` editing fields: an inpainting job with a negative prompt gives the
cascade's own images (kept pixels exact), and bad editing fields are refused before
anything is queued."""

from __future__ import annotations

import base64
import re
import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixcade.pipeline.cascade import Cascade
from pixcade.pipeline.edits import EditRequest
from pixcade.pipeline.images import png_bytes
from pixcade.serve.model import CascadeModel
from pixcade.serve.requests import Limits, RequestError, parse_request
from serve_support import request, request_json, running_server
from tiny_cascade import SR_RES, save_tiny_cascade

STAGES = ["base", "sr"]


def _b64(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def _inputs() -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (SR_RES, SR_RES, 3), dtype=np.uint8))
    mask = np.zeros((SR_RES, SR_RES, 4), dtype=np.uint8)
    mask[:, : SR_RES // 2, 3] = 255  # painted (opaque) on the left: what the page's brush sends
    return image, Image.fromarray(mask, "RGBA")


def test_an_inpainting_job_gives_the_cascades_images(tmp_path: Path) -> None:
    cascade = Cascade.from_pretrained(save_tiny_cascade(tmp_path / "model"))
    image, mask = _inputs()
    body = {"prompt": "a red circle", "n": 2, "seed": 3, "steps": 3, "negative_prompt": "a blue square",
            "image": _b64(image), "mask": _b64(mask), "strength": 1.0}
    with running_server(CascadeModel(cascade), Limits(max_steps=3)) as server:
        status, job = request_json(server, "POST", "/api/jobs", body)
        assert status == 202, job
        for _ in range(600):
            state = request_json(server, "GET", f"/api/jobs/{job['id']}")[1]
            if state["state"] in ("done", "failed"):
                break
            time.sleep(0.1)
        assert state["state"] == "done", state
        final = [np.asarray(Image.open(io.BytesIO(request(server, "GET", i["url"])[2])))
                 for i in state["stages"][-1]["images"]]
    want = cascade.generate("a red circle", n=2, seed=3, steps=3, negative_prompt="a blue square",
                            image=image, mask=mask, edit=EditRequest(strength=1.0), progress=False)
    src = np.asarray(image)
    for got, expected in zip(final, want):
        assert np.array_equal(got, np.asarray(expected))
        assert np.array_equal(got[:, SR_RES // 2:], src[:, SR_RES // 2:])


@pytest.mark.parametrize("fields,status,words", [
    ({"image": "not base64!"}, 400, "not valid base64"),
    ({"image": base64.b64encode(b"not a png").decode()}, 422, "cannot read image"),
    ({"image": "IMG", "mask": "NARROW"}, 422, "the mask is 16x32 but the image is 32x32"),
    ({"image": "IMG", "strength": 1.5}, 422, r"strength must be a number in \[0, 1\]"),
    ({"image": "IMG", "strength": "half"}, 400, "strength must be a finite number"),
    ({"mask": "IMG"}, 422, "need an image to edit"),
    ({"negative_prompt": 3}, 400, "negative_prompt must be a string"),
    ({"negative_prompt": "x" * 41}, 422, "max_prompt_chars"),
    ({"image": "BIG"}, 422, "max_image_side"),
])
def test_bad_editing_fields_are_refused(fields, status, words) -> None:
    image, _ = _inputs()
    known = {"IMG": _b64(image), "NARROW": _b64(Image.new("L", (16, 32))), "BIG": _b64(Image.new("RGB", (300, 300)))}
    payload = {"prompt": "a red circle", **{k: known.get(v, v) if isinstance(v, str) else v for k, v in fields.items()}}
    with pytest.raises(RequestError) as err:
        parse_request(payload, Limits(max_prompt_chars=40), STAGES)
    assert err.value.status == status
    assert re.search(words, str(err.value)) and "\n" not in str(err.value)


@pytest.mark.parametrize("dtype, status, words", [
    ("auto", 202, None),
    ({"base": "fp32", "sr": "auto"}, 202, None),
    ("half", 422, "unknown dtype 'half' \\(choose from auto, fp32, bf16, fp16\\)"),
    ({"sr": "fp16"}, 422, "stage 'sr': fp16 sampling needs an accelerator"),
])
def test_the_sampling_dtype_is_checked_before_queueing(tmp_path: Path, dtype, status, words) -> None:
    cascade = Cascade.from_pretrained(save_tiny_cascade(tmp_path / "model"))
    body = {"prompt": "a red circle", "steps": 1, "sampling": {"dtype": dtype}}
    with running_server(CascadeModel(cascade), Limits(max_steps=3)) as server:
        got, reply = request_json(server, "POST", "/api/jobs", body)
    assert got == status, reply
    if words:
        assert re.search(words, reply["error"]) and "\n" not in reply["error"]
