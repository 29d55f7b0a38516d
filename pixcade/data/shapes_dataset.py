"""The shapes domain on disk, in the form of real data: a folder of images with same-named
.txt captions (`00000000.png`, `00000000.txt`), plus `00000000.json` holding each image's
structured scene, which generic loaders ignore and the shapes scorer reads."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from pixcade.data.render import MIN_RESOLUTION, render
from pixcade.data.shapes import HELD_OUT, kind_probabilities, scene_for_index
from pixcade.errors import PixcadeError
from pixcade.io import make_dirs
from pixcade.limits import check_limit


def write_shapes_dataset(
    out: Path,
    n: int,
    resolution: int,
    seed: int = 0,
    include_held_out: bool = False,
    progress: bool = True,
    kind_weights: dict[str, float] | None = None,
) -> None:
    """Writes `n` scenes into the folder `out` (created; must be empty if it exists).

    `kind_weights` skews the mix of scene kinds (see `sample_scene`), e.g. to fine-tune on
    the kinds a model gets wrong most; None keeps every kind equally frequent.
    """
    if kind_weights is not None:
        kind_probabilities(kind_weights)  # fail before the folder is made
    if n < 1:
        raise PixcadeError(f"--n must be at least 1, got {n}")
    if resolution < MIN_RESOLUTION:
        raise PixcadeError(f"--res must be at least {MIN_RESOLUTION}, got {resolution}")
    check_limit("dataset_images", n, "--n")
    check_limit("resolution", resolution, "--res")
    if seed < 0:
        raise PixcadeError(f"--seed must be non-negative, got {seed}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PixcadeError(f"output folder {out} exists and is not empty")
    make_dirs(out)
    exclude = () if include_held_out else HELD_OUT
    width = max(8, len(str(n - 1)))
    # One process: rendering a 64 px scene takes well under a millisecond, so writing the
    # files dominates and more workers would mostly contend for the disk.
    for i in tqdm(range(n), desc="shapes", unit="img", disable=not progress):
        scene = scene_for_index(seed, i, exclude_pairs=exclude, kind_weights=kind_weights)
        stem = out / f"{i:0{width}d}"
        try:
            render(scene, resolution).save(stem.with_suffix(".png"))
            stem.with_suffix(".txt").write_text(scene.caption + "\n", encoding="utf-8")
            stem.with_suffix(".json").write_text(scene.to_json() + "\n", encoding="utf-8")
        except OSError as err:  # a full disk: name the file (Pillow's error does not)
            raise PixcadeError(f"cannot write {stem}.png/.txt/.json: {err.strerror or err}") from None
