"""Models shipped inside pixcade (`pixcade/weights/NAME/`), and what a model argument names.

`generate --model`, `serve --model` and `Cascade.from_pretrained` take a folder or the name
of a shipped model (`shapes`, the default). A folder that exists wins over a shipped name,
so a user's own `./shapes` is never shadowed.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from pixcade.errors import PixcadeError

DEFAULT_MODEL = "shapes"


def weights_dir() -> Path:
    return Path(str(resources.files("pixcade").joinpath("weights")))


def shipped_models() -> list[str]:
    """Names of the shipped models: the folders of pixcade/weights holding a cascade.json."""
    root = weights_dir()
    return sorted(p.name for p in root.iterdir() if (p / "cascade.json").is_file()) if root.is_dir() else []


def resolve_model(model: str | os.PathLike | None) -> Path:
    """A cascade folder: `model` itself when it exists, else the shipped model of that name
    (None: the default one); a one-line error naming the shipped models otherwise."""
    if model is not None and Path(model).exists():
        return Path(model)
    name = DEFAULT_MODEL if model is None else os.fspath(model)
    if name in shipped_models():
        return weights_dir() / name
    shipped = ", ".join(shipped_models()) or "none"
    if model is None:
        raise PixcadeError(f"the shipped default model is missing ({weights_dir() / name}); pass --model DIR")
    raise PixcadeError(f"model {name!r} not found: no such folder, and no shipped model of that name "
                       f"(shipped: {shipped})")
