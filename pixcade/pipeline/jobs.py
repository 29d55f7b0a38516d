"""A generation run as jobs: naming, seeding, sharding across ranks, resuming.

A job is one image: (prompt index, image index), and every random number an image uses is
drawn from its job, so images do not depend on their batch-mates. Jobs are listed
prompt-major and cut into fixed batches by their global position, so a batch's make-up
does not depend on how many ranks run or how far an earlier attempt got either. Ranks take
batches round-robin; a batch whose images all exist is skipped, a partly written one is
recomputed (identically) and only its missing images are written.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch

from pixcade.errors import PixcadeError
from pixcade.pipeline.placement import check_device
from pixcade.io import atomic_write_text, make_dirs, remove_stale_temps


class Job(NamedTuple):
    prompt: int
    image: int


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any hashable description (stable across runs and machines)."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def per_image_noise(seed: int, key: Any, jobs: Sequence[Job], shape: tuple[int, ...]) -> torch.Tensor:
    """``[len(jobs), *shape]`` standard normal noise, each job's from (seed, key, job) on the CPU."""
    return torch.stack([
        torch.randn(shape, generator=torch.Generator().manual_seed(derive_seed(seed, key, tuple(j))))
        for j in jobs
    ])


def per_image_step_noise(
    seed: int, key: Any, jobs: Sequence[Job], shape: tuple[int, ...], device: torch.device | str
) -> Callable[[int], torch.Tensor]:
    """A sampler's ``noise_sampler``: step i's fresh noise, each job's from (seed, key, "step", i, job)."""
    return lambda step: per_image_noise(seed, (key, "step", step), jobs, shape).to(device)


def all_jobs(num_prompts: int, n: int) -> list[Job]:
    return [Job(p, i) for p in range(num_prompts) for i in range(n)]


def batches(jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
    if batch_size < 1:
        raise PixcadeError(f"batch size must be at least 1, got {batch_size}")
    return [list(jobs[k : k + batch_size]) for k in range(0, len(jobs), batch_size)]


def shard_from_env(env: dict[str, str] | None = None) -> tuple[int, int]:
    """(rank, world size) as torchrun sets them; (0, 1) outside torchrun."""
    env = os.environ if env is None else env
    try:
        rank, world = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        raise PixcadeError("RANK and WORLD_SIZE must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise PixcadeError(f"bad RANK={rank} / WORLD_SIZE={world}")
    return rank, world


def pick_device(name: str | None) -> str:
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        check_device(name)
    except PixcadeError as err:
        raise PixcadeError(f"--device {name}: {err}") from None
    if name == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return name


def my_batches(all_batches: Sequence[list[Job]], rank: int, world: int) -> list[list[Job]]:
    return [b for k, b in enumerate(all_batches) if k % world == rank]


class Layout:
    """Where a run's files go. Names depend only on (prompt index, image index)."""

    def __init__(self, out_dir: str | os.PathLike, num_prompts: int, n: int):
        self.out = Path(out_dir)
        self.num_prompts, self.n = num_prompts, n
        self._pw = max(4, len(str(num_prompts - 1)))
        self._iw = max(2, len(str(n - 1)))

    def name(self, job: Job) -> str:
        return f"p{job.prompt:0{self._pw}d}_i{job.image:0{self._iw}d}.png"

    def image_path(self, job: Job) -> Path:
        return self.out / self.name(job)

    def stage_path(self, stage: str, job: Job) -> Path:
        return self.out / "stages" / stage / self.name(job)

    def is_done(self, job: Job) -> bool:
        # The final image is written last and atomically, so its presence means the job
        # (stage images included) is complete.
        return self.image_path(job).is_file()

    def prepare(self, prompts: Sequence[str], settings: dict[str, Any], stage_names: Sequence[str] = ()) -> None:
        """Create the directories and write the index; refuse a directory of another run.

        ``settings`` (seed, n, model, options) is what decides the images: resuming into a
        directory written with other settings would silently mix two runs.
        """
        make_dirs(self.out)
        remove_stale_temps(self.out)  # debris of a run killed mid-write
        for stage in stage_names:
            make_dirs(self.out / "stages" / stage)
            remove_stale_temps(self.out / "stages" / stage)
        run = {"num_prompts": len(prompts), "prompts_sha256": _digest(prompts), **settings}
        run_path = self.out / "run.json"
        if run_path.is_file():
            try:
                old = json.loads(run_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                old = None
            if old != json.loads(json.dumps(run)):
                raise PixcadeError(
                    f"{self.out} holds images of a different run (other prompts or settings); "
                    "use a new --out directory"
                )
        # Every rank writes the same bytes atomically, so no rank needs to wait for another.
        atomic_write_text(run_path, json.dumps(run, indent=2, sort_keys=True) + "\n")
        lines = [
            json.dumps({"index": p, "prompt": text, "images": [self.name(Job(p, i)) for i in range(self.n)]})
            for p, text in enumerate(prompts)
        ]
        atomic_write_text(self.out / "prompts.jsonl", "\n".join(lines) + "\n")


def _digest(prompts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(prompts)).encode("utf-8")).hexdigest()
