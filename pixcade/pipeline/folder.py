"""`pixcade generate`'s output folder: one rank's share of the images written into it,
resuming what an earlier run left, and the grid once every image exists (see
`pipeline.jobs` for naming, seeding and sharding)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pixcade.pipeline.cascade import Cascade
from pixcade.pipeline.images import make_grid, open_image, save_png_atomic, to_pil
from pixcade.pipeline.jobs import Job, Layout, all_jobs, batches, my_batches
from pixcade.pipeline.plan import Plan, StageBars
from pixcade.pipeline.request import Request

GRID_MAX = 16  # the grid shows at most this many prompts (rows) and images (columns)


def write_images(
    cascade: Cascade,
    plan: Plan,
    request: Request,
    out: str | Path,
    *,
    n: int,
    seed: int,
    batch_size: int,
    save_stages: bool,
    rank: int,
    world: int,
    record: dict[str, Any],
) -> tuple[int, int, int]:
    """Render this rank's batches of the ``n`` images per prompt of ``request`` into
    ``out`` (``record``: the settings OUT/run.json keeps, checked against an earlier run's);
    (images written now, images done in all, images in all). Whichever rank finishes last
    writes the grid."""
    prompts = request.prompts
    layout = Layout(out, len(prompts), n)
    saved_stages = plan.names[:-1] if save_stages else []
    layout.prepare(prompts, record, saved_stages)
    jobs = all_jobs(len(prompts), n)
    mine = my_batches(batches(jobs, batch_size), rank, world)
    todo = [b for b in mine if not all(layout.is_done(j) for j in b)]
    written = 0
    with StageBars(plan, len(todo), enabled=rank == 0) as bars:
        for batch in todo:
            images = {name: to_pil(x) for name, x in cascade.sample_batch(plan, request, batch, seed, bars).items()}
            for k, job in enumerate(batch):
                if layout.is_done(job):
                    continue
                for name in saved_stages:
                    save_png_atomic(images[name][k], layout.stage_path(name, job))
                save_png_atomic(images[plan.names[-1]][k], layout.image_path(job))  # last: marks done
                written += 1
    done = sum(layout.is_done(j) for j in jobs)
    if done == len(jobs):
        rows = [[open_image(layout.image_path(Job(p, i))) for i in range(min(n, GRID_MAX))]
                for p in range(min(len(prompts), GRID_MAX))]
        save_png_atomic(make_grid(rows), layout.out / "grid.png")
    return written, done, len(jobs)
