"""`pixcade data emoji` (parse, then `pixcade.data.emoji.build.build_emoji_dataset`) and
`pixcade data emoji-audit` (`pixcade.data.emoji.audit.audit`)."""

from __future__ import annotations

from pathlib import Path

from pixcade.commands import ArgumentParser, emit_json
from pixcade.data.emoji.audit import audit
from pixcade.data.emoji.build import build_emoji_dataset
from pixcade.data.emoji.sources import default_cache
from pixcade.data.emoji.spec import STYLES, held_out_rows
from pixcade.errors import PixcadeError


def main(argv: list[str]) -> int:
    p = ArgumentParser(
        prog="pixcade data emoji",
        description="Build the emoji dataset (64 px base set, 256 px SR set, held-out rows apart) "
        "from the six pinned npm packages.",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    p.add_argument("--from", dest="source", type=Path, default=None,
                   help="folder holding the `npm pack` tarballs (default: fetch with npm into "
                   f"{default_cache()})")
    p.add_argument("--styles", default=None, metavar="A,B,...",
                   help=f"only these styles (default: all: {','.join(s.name for s in STYLES)})")
    args = p.parse_args(argv)
    summary = build_emoji_dataset(
        args.out, args.source or default_cache(), fetch=args.source is None,
        style_names=args.styles.split(",") if args.styles else None,
    )
    refused = sum(len(s["refused"]) for s in summary["styles"].values())
    print(f"wrote {summary['images']['train']} training and {summary['images']['held_out']} held-out images "
          f"to {args.out} ({summary['held_out_rows']['not_in_build']} held-out rows not in the build, "
          f"{refused} files refused by the renderer; see summary.json)")
    return 0


def audit_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="pixcade data emoji-audit",
                       description="Check that a built emoji dataset trains on none of its held-out rows "
                                   "(keys, pixels, prompts); exit status 1 when it does.")
    p.add_argument("--data", type=Path, required=True, help="a `pixcade data emoji` folder")
    p.add_argument("--held-out", type=Path, help="the held-out list (default: the copy pixcade ships, "
                                                  "the spec's emoji/heldout.jsonl)")
    p.add_argument("--out", help="also write the JSON report here")
    args = p.parse_args(argv)
    if args.held_out is not None:
        try:
            text = args.held_out.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise PixcadeError(f"cannot read held-out list {args.held_out}: {err}") from None
        rows = held_out_rows(text)
    else:
        rows = held_out_rows()
    report = audit(args.data, rows)
    emit_json(report, args.out)
    return 0 if report["clean"] else 1
