"""Atomic file writes: a file under its final name is always whole, the old one or the new.

Every write goes to a temporary file in the target's directory (so the rename stays on
one filesystem), is flushed to disk, and is then renamed over the target with
`os.replace`. Without the fsync a crash soon after the rename can leave an empty file
under the final name on filesystems that delay allocation. Temporary names are
`.<name>.<pid>-<random>.tmp`: hidden, distinct between processes and threads writing the
same target, and recognisable as debris after a crash: `remove_stale_temps` deletes the
ones whose writer (on this machine) is gone, so a run killed with -9 leaves nothing that
the next run into the same directory does not clean up.

A file gets the permissions any new file of the user gets (0666 less the umask), also when
the writer (safetensors, mkstemp) creates its temporary file private.

Failures are one line naming the file and the cause (`PixcadeError`): an output folder
that is read-only, a file, or on a full disk; a text input that is not UTF-8.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

from pixcade.errors import PixcadeError

if TYPE_CHECKING:
    import torch


def os_error_line(err: OSError, path: str | os.PathLike | None = None) -> str:
    """"PATH: cause" for an OS error (the error's own file name if it has one)."""
    where = err.filename if err.filename is not None else path
    cause = err.strerror or str(err) or type(err).__name__
    return f"{os.fspath(where)}: {cause}" if where is not None else cause


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A UTF-8 text file's content; a missing, unreadable or non-UTF-8 file is one line
    naming ``what`` and the path (and for bad UTF-8, the byte offset)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise PixcadeError(f"cannot read {what} {os_error_line(err, path)}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PixcadeError(f"{what} {path} is not UTF-8 text (byte {err.start}: {data[err.start:err.start + 1]!r})") from None


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p path``; an obstacle (a file in the way, a read-only parent) is one line."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PixcadeError(f"cannot create folder {os_error_line(err, path)}") from None
    return path


def cache_dir() -> Path:
    """pixcade's per-user cache folder, ``$XDG_CACHE_HOME/pixcade`` (default
    ``~/.cache/pixcade``); not created here."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "pixcade"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of every byte of a file, read in blocks (weights may be tens of GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a closed file's data to disk (works for directories too, where allowed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_TEMP_NAME = re.compile(r"^\..+\.(\d+)-[0-9a-f]{12}\.tmp$")


def _umask() -> int:
    # os.umask can only be read by setting it (and at once putting it back), which races
    # with other threads; Linux's /proc/self/status has it without the race.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` (on this machine) is running; True when unknowable."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's live process (or unknowable): leave its file alone
    return True


def remove_stale_temps(directory: str | os.PathLike) -> int:
    """Delete temporary files (and folders) of `atomic_write` / `temp_name` in ``directory``
    whose writing process is gone (killed mid-write); returns how many. Those of live
    writers are kept."""
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        m = _TEMP_NAME.match(name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            path = os.path.join(directory, name)
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
                removed += 1
            except OSError:
                pass
    return removed


def temp_name(path: str | os.PathLike) -> Path:
    """A temporary sibling of ``path`` (file or folder) that `remove_stale_temps` removes
    once its writer is gone."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")


# Folders this process has already cleared of dead writers' temporary files.
_CLEANED: set[str] = set()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(tmp)`` creates the content under a temporary path, which then replaces ``path``.

    On any failure the temporary file is removed and ``path`` is left as it was. The first
    write of a process into a folder removes the debris of killed writers there, so no
    output folder keeps a killed run's temporary files past the next run that writes to it.
    """
    path = Path(path)
    folder = os.path.abspath(path.parent)
    if folder not in _CLEANED:
        _CLEANED.add(folder)
        remove_stale_temps(folder)
    tmp = str(temp_name(path))
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):  # full disk, read-only folder, a file in the way ...
            raise PixcadeError(f"cannot write {path}: {err.strerror or err}") from None
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

    from safetensors import SafetensorError

    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def write(tmp: str) -> None:
        try:
            save_file(cpu, tmp, metadata=metadata)
        except SafetensorError as err:  # its I/O errors (a full disk) come wrapped
            raise OSError(str(err).splitlines()[0] if str(err) else "write failed") from None
        if metadata and len(metadata) > 1:
            _sort_metadata(tmp)

    atomic_write(path, write)


def _sort_metadata(path: str) -> None:
    """Rewrite a safetensors header with its metadata keys sorted, in place.

    safetensors writes the metadata map in a random order (a Rust HashMap), so the same
    tensors and metadata gave other bytes, and another sha256, on every save: a digest a report
    cites could not be reproduced. Sorted, the header holds the same entries in as many bytes
    (JSON as safetensors writes it: compact, UTF-8), so only those bytes are rewritten."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # never seen: the same entries, escaped otherwise than safetensors does
            raise OSError(f"safetensors header of {len(text)} bytes does not fit its {size}")
        f.seek(8)
        f.write(text + b" " * (size - len(text)))  # spaces: the padding safetensors itself uses
