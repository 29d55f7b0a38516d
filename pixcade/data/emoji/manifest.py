"""Reading the manifests `pixcade data emoji` writes (one JSON object per line: the image's
path relative to the manifest, its caption, style, key and concept family; held-out rows
also their split)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pixcade.errors import PixcadeError

ROW_FIELDS = ("image", "caption", "style", "family", "key")


def manifest_rows(manifest: str | Path, fields: tuple[str, ...] = ROW_FIELDS) -> list[dict[str, Any]]:
    """The rows of an emoji manifest (`pixcade data emoji`), each checked to have ``fields``;
    an unreadable file or a bad row is one line naming it."""
    manifest = Path(manifest)
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise PixcadeError(f"cannot read emoji manifest {manifest}: {err}") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not all(isinstance(row[f], str) for f in fields):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            raise PixcadeError(f"{manifest}:{n}: not an emoji manifest row ({', '.join(fields)})") from None
        rows.append(row)
    return rows
