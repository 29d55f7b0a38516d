"""Which model a result came from: a digest of a saved cascade's files.

Results record it so that a model card can check its numbers were measured on the very
weights it describes, wherever the directory was copied to since.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pixcade.errors import PixcadeError


def model_digest(directory: str | Path) -> str | None:
    """sha256 over cascade.json and each stage's weights, in cascade order (None: no cascade there)."""
    directory = Path(directory)
    config_path = directory / "cascade.json"
    if not config_path.is_file():
        return None
    h = hashlib.sha256()
    config = config_path.read_bytes()
    h.update(config)
    try:
        names = [s["name"] for s in json.loads(config)["stages"]]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise PixcadeError(f"{config_path}: cannot list the stages ({err})") from None
    for name in names:
        with open(directory / f"{name}.safetensors", "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
