"""Atomic file writes: a file under its final name is always whole, the old one or the new.

Every write goes to a temporary file in the target's directory (so the rename stays on
one filesystem), is flushed to disk, and is then renamed over the target with
`os.replace`. Without the fsync a crash soon after the rename can leave an empty file
under the final name on filesystems that delay allocation. Temporary names are
`.<name>.<random>.tmp`: hidden, recognisable as debris after a crash, and distinct
between processes and threads writing the same target.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

if TYPE_CHECKING:
    import torch


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a closed file's data to disk (works for directories too, where allowed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(tmp)`` creates the content under a temporary path, which then replaces ``path``.

    On any failure the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = str(path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp"))
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` as UTF-8."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """A safetensors file of ``tensors`` (detached, contiguous CPU copies where needed),
    written atomically."""
    # Imported here so that writing text and bytes does not load torch.
    from safetensors.torch import save_file

    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(cpu, tmp, metadata=metadata))
