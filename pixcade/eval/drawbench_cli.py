"""`pixcade drawbench generate|rate|report`: parse, then call pixcade.eval.drawbench and the
rating server."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pixcade.commands import ArgumentParser
from pixcade.eval.drawbench import generate, load_manifest, read_prompts, write_report
from pixcade.eval.drawbench_server import RatingServer, RatingSession
from pixcade.eval.drawbench_votes import VoteStore


def generate_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="pixcade drawbench generate")
    p.add_argument("--prompts", required=True, help="DrawBench CSV (Prompt,Category), e.g. ../shared/drawbench.csv")
    p.add_argument("--model", action="append", required=True, help="saved cascade directory (give two or more)")
    p.add_argument("--n", type=int, default=4, help="images per prompt per model")
    p.add_argument("--out", required=True)
    p.add_argument("--category", action="append", help="only these categories (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    prompts = read_prompts(args.prompts, args.category)
    manifest = generate(prompts, args.model, args.n, args.out, args.seed, args.device, args.batch_size)
    print(json.dumps({"out": str(args.out), "models": [m["name"] for m in manifest["models"]],
                      "prompts": len(prompts), "n": args.n}))
    return 0


def rate_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="pixcade drawbench rate")
    p.add_argument("--dir", required=True, help="the folder `pixcade drawbench generate` wrote")
    p.add_argument("--db", help="votes database (default DIR/votes.sqlite)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a Host name to answer besides the loopback names and --host (repeatable): "
                        "the names raters on other machines use; others are refused")
    args = p.parse_args(argv)
    store = VoteStore(args.db or Path(args.dir) / "votes.sqlite")
    session = RatingSession(args.dir, store, load_manifest(args.dir))
    server = RatingServer(session, args.host, args.port, args.allow_host)
    print(f"rating page on {server.url} ({store.count()} votes in {store.path}; answering Host names "
          f"{', '.join(server.hosts)}); Ctrl-C to stop", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def report_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="pixcade drawbench report")
    p.add_argument("--dir", required=True, help="the DrawBench folder (report.json/.md are written here)")
    p.add_argument("--db", help="votes database (default DIR/votes.sqlite)")
    args = p.parse_args(argv)
    report, markdown = write_report(args.dir, args.db)
    print(markdown, file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0
