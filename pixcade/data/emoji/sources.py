"""The six pinned npm tarballs: found in a folder, or fetched there with `npm pack`.

A tarball is read in memory (no member is ever extracted to disk, so a hostile member
name cannot write outside anything), and only the members the spec names: the style's
images and the two metadata files. A tarball that is corrupt or truncated, or that holds
another package or version than the pinned one, is a one-line PixcadeError naming it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path

from pixcade.data.emoji.spec import Style
from pixcade.errors import PixcadeError
from pixcade.io import cache_dir

PACKAGE_ROOT = "package/"  # npm pack puts every file under this folder


def default_cache() -> Path:
    return cache_dir() / "emoji-npm"


def locate(styles: list[Style], folder: Path, fetch: bool) -> dict[str, Path]:
    """style name -> its tarball in `folder`; with `fetch`, missing ones are fetched into
    `folder` with `npm pack` first. Names every missing tarball in one error."""
    found = {s.name: folder / s.tarball for s in styles}
    missing = [s for s in styles if not found[s.name].is_file()]
    if missing and fetch:
        npm = shutil.which("npm")
        if npm is None:
            raise PixcadeError(
                f"missing {', '.join(s.tarball for s in missing)} in {folder} and npm is not on the PATH "
                f"(fetch them elsewhere with `npm pack {' '.join(s.spec for s in missing)}` and pass --from DIR)"
            )
        folder.mkdir(parents=True, exist_ok=True)
        for s in missing:
            _npm_pack(npm, s, folder)
        missing = [s for s in styles if not found[s.name].is_file()]
    if missing:
        raise PixcadeError(
            f"missing {', '.join(s.tarball for s in missing)} in {folder} "
            f"(get them with `npm pack {' '.join(s.spec for s in missing)}`)"
        )
    return found


def _npm_pack(npm: str, style: Style, folder: Path) -> None:
    # npm writes NAME-VERSION.tgz; a partial download must not pass for a tarball, so pack
    # into a private folder and rename into place.
    part = folder / f".part-{style.tarball}"
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir()
    try:
        done = subprocess.run(
            [npm, "pack", style.spec, "--pack-destination", str(part), "--silent"],
            capture_output=True, text=True, timeout=1800,
        )
        if done.returncode != 0 or not (part / style.tarball).is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise PixcadeError(f"`npm pack {style.spec}` failed: {last}")
        os.replace(part / style.tarball, folder / style.tarball)
    except subprocess.TimeoutExpired:
        raise PixcadeError(f"`npm pack {style.spec}` took over 30 minutes; gave up") from None
    finally:
        shutil.rmtree(part, ignore_errors=True)


def read_members(tarball: Path, style: Style, extra: tuple[str, ...] = ()) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(image file name -> bytes for the style's images, path -> bytes for `extra` paths).

    Images are the regular files directly in the style's folder with its suffix (the spec's
    glob, e.g. `assets/*.svg`). Checks package.json's name and version against the pin.
    """
    folder = PACKAGE_ROOT + (style.folder + "/" if style.folder else "")
    wanted_extra = {PACKAGE_ROOT + p: p for p in extra}
    images: dict[str, bytes] = {}
    extras: dict[str, bytes] = {}
    manifest: bytes | None = None
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                name = member.name
                if not member.isfile():
                    continue
                inside = name.startswith(folder) and "/" not in name[len(folder):]
                if inside and name.endswith(style.suffix) and len(name) > len(folder) + len(style.suffix):
                    images[name[len(folder):]] = _read(tar, member)
                elif name in wanted_extra:
                    extras[wanted_extra[name]] = _read(tar, member)
                elif name == PACKAGE_ROOT + "package.json":
                    manifest = _read(tar, member)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise PixcadeError(f"{tarball} is not a readable tarball ({err or type(err).__name__})") from None
    _check_manifest(tarball, style, manifest)
    absent = [p for p in extra if p not in extras]
    if absent:
        raise PixcadeError(f"{tarball} has no {', '.join(absent)}")
    if not images:
        raise PixcadeError(f"{tarball} has no {style.folder or '.'}/*{style.suffix} images")
    return images, extras


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    assert f is not None  # a regular file
    data = f.read()
    if len(data) != member.size:
        raise EOFError(f"{member.name} is truncated")
    return data


def _check_manifest(tarball: Path, style: Style, manifest: bytes | None) -> None:
    try:
        meta = json.loads(manifest) if manifest is not None else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict):
        raise PixcadeError(f"{tarball} has no readable package/package.json")
    got = f"{meta.get('name')}@{meta.get('version')}"
    if got != style.spec:
        raise PixcadeError(f"{tarball} holds {got}, but the {style.name} style is pinned to {style.spec}")
