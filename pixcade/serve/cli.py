"""`pixcade serve`: a local web page and HTTP API over one cascade."""

from __future__ import annotations

import argparse

from pixcade.commands import ArgumentParser
from pixcade.errors import PixcadeError
from pixcade.serve.requests import Limits
from pixcade.serve.server import serve

EPILOG = """\
The page at http://HOST:PORT/ takes a prompt, seed, guidance, steps and number of images,
shows each stage's progress and images as they finish, and links each image as a PNG.
API: POST /api/jobs {"prompt", "n", "seed", "guidance", "steps", "stages", "sampling"} -> 202 {"id", ...}
("sampling": other sampling settings, e.g. {"sampler": "ddim", "sampler_args": {"eta": 0.5}});
GET /api/jobs/ID (status), /api/jobs/ID/events (Server-Sent Events),
/api/jobs/ID/images/STAGE/K.png; GET /api/config (stages, limits).
One model is loaded and one job runs at a time; at most --max-queue jobs wait, further
requests are refused (HTTP 503) until the queue drains.
"""


def build_parser() -> argparse.ArgumentParser:
    d = Limits()
    p = ArgumentParser(prog="pixcade serve", description="Serve a web page and HTTP API for generation.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="DIR|NAME",
                   help="saved cascade directory, or a shipped model's name (default: shapes)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a Host name to answer besides localhost/127.0.0.1/[::1] and the --host address "
                        "(repeatable; *.example.org for subdomains; * for any): the names other machines "
                        "use to reach this one. Others are refused, against DNS rebinding")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-queue", type=int, default=d.max_queue, metavar="N",
                   help=f"jobs that may wait; more are refused with 503 (default {d.max_queue})")
    p.add_argument("--max-prompt-chars", type=int, default=d.max_prompt_chars, metavar="N",
                   help=f"longest prompt accepted (default {d.max_prompt_chars})")
    p.add_argument("--max-images", type=int, default=d.max_images, metavar="N",
                   help=f"most images per job (default {d.max_images})")
    p.add_argument("--max-steps", type=int, default=d.max_steps, metavar="N",
                   help=f"most sampling steps per stage (default {d.max_steps})")
    p.add_argument("--stages", metavar="A,B",
                   help="the stages requests may run, e.g. `base` to never run the SR stages "
                        "(default: all)")
    p.add_argument("--keep-jobs", type=int, default=64, metavar="N",
                   help="finished jobs kept for viewing/download, least recently used dropped first "
                        "(default 64)")
    p.add_argument("--job-ttl", type=float, default=3600.0, metavar="SECONDS",
                   help="finished jobs are dropped after this long (default 3600)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    # Here: the pipeline imports torch (~4 s), not needed for --help or a bad argument.
    from pixcade.pipeline.cascade import Cascade
    from pixcade.pipeline.jobs import pick_device
    from pixcade.pipeline.shipped import resolve_model
    from pixcade.serve.model import CascadeModel

    stages = tuple(s.strip() for s in args.stages.split(",")) if args.stages else None
    limits = Limits(
        max_prompt_chars=args.max_prompt_chars, max_images=args.max_images, max_steps=args.max_steps,
        stages=stages, max_queue=args.max_queue,
    )
    if args.keep_jobs < 1 or not args.job_ttl > 0:
        raise PixcadeError("--keep-jobs must be at least 1 and --job-ttl positive")
    model_dir = resolve_model(args.model)
    cascade = Cascade.from_pretrained(model_dir, device=pick_device(args.device))
    cascade.encoder  # load the text encoder now: a mismatch fails here, not on the first request
    serve(CascadeModel(cascade), limits, args.host, args.port, args.allow_host, keep=args.keep_jobs,
          ttl=args.job_ttl, label=f"{model_dir} (stages {', '.join(cascade.names)})")
    return 0
