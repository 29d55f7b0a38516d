"""Request bodies as JSON, with limits on size, time, nesting depth and number length.

`json.loads` alone is not safe on client input: nesting a few thousand levels deep raises
RecursionError, and an integer of more than 4300 digits raises a bare ValueError. Both
would escape as a server error; here each is a 400 naming the problem, checked before
(depth) or while (numbers) the body is parsed.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import anyio
from starlette.requests import ClientDisconnect, Request

from pixcade.web.errors import RequestError
from pixcade.web.limits import WebLimits

# A JSON string (skipped whole, brackets inside it don't count) or a bracket.
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def json_depth(text: str) -> int:
    """The deepest nesting of arrays/objects in a JSON text (0 for a scalar)."""
    depth = deepest = 0
    for m in _STRING_OR_BRACKET.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def parse_json(raw: bytes, limits: WebLimits) -> Any:
    """Decode a body: UTF-8 JSON within the depth and number limits, else RequestError(400)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, f"malformed JSON: the body is not UTF-8 ({err.reason} at byte {err.start})") from None
    if json_depth(text) > limits.max_json_depth:
        raise RequestError(400, f"malformed JSON: nested deeper than {limits.max_json_depth} levels",
                           "max_json_depth", limits.max_json_depth)

    def number(s: str, kind: type) -> Any:
        if len(s) > limits.max_number_chars:
            raise RequestError(400, f"malformed JSON: a number of {len(s)} characters (at most "
                                    f"{limits.max_number_chars})", "max_number_chars", limits.max_number_chars)
        value = kind(s)
        if not math.isfinite(value):
            raise RequestError(400, f"malformed JSON: the number {s} is out of range")
        return value

    def constant(name: str) -> Any:
        raise RequestError(400, f"malformed JSON: {name} is not a JSON number")

    try:
        return json.loads(text, parse_int=lambda s: number(s, int), parse_float=lambda s: number(s, float),
                          parse_constant=constant)
    except json.JSONDecodeError as err:
        raise RequestError(400, f"malformed JSON: {err}") from None


async def read_body(request: Request, max_bytes: int, limits: WebLimits) -> bytes:
    """The whole body, refused with 411 (no length given), 413 (over ``max_bytes``: before
    reading it when the length is declared) or 408 (not all there within the request timeout)."""
    length = request.headers.get("content-length")
    if length is None and "transfer-encoding" not in request.headers:
        raise RequestError(411, "a Content-Length header is required")
    too_big = RequestError(413, f"request body is over this server's limit (max_body_bytes) of {max_bytes} "
                                "bytes", "max_body_bytes", max_bytes)
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise too_big
    body = bytearray()
    try:
        with anyio.fail_after(limits.request_timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_bytes:
                    raise too_big
    except TimeoutError:
        raise RequestError(408, f"the request body did not arrive within {limits.request_timeout_s:g} s") from None
    except ClientDisconnect:
        raise RequestError(400, "the client closed the connection before sending the whole body") from None
    return bytes(body)


async def read_json(request: Request, max_bytes: int, limits: WebLimits) -> Any:
    """The body decoded as JSON under all the limits above."""
    return parse_json(await read_body(request, max_bytes, limits), limits)
