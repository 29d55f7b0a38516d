#!/usr/bin/env python
"""Write the shipped model's card from measured outputs only: no number is typed by hand.

    python scripts/model_card.py --model pixcade/weights/shapes --config configs/shapes.json \
        --run ~/pixcade-runs/shapes-base --run ~/pixcade-runs/shapes-sr --data ~/pixcade-runs/data/shapes128 \
        --shapes eval/shapes/shapes.json --shapes-dtype eval/shapes-bf16/shapes.json --sweep eval/sweep/sweep.json --sr-psnr eval/sr/sr_psnr.json \
        --grid docs/images/grid.png --out pixcade/weights/shapes/MODEL_CARD.md

Reads the assembled cascade (cascade.json, weights, sources.json from `pixcade assemble`),
each stage's run directory (config.json, metrics.jsonl), and the JSON the evaluation
commands wrote (each records the command that produced it). Writes the card and, beside it,
training.json: each run's summary, which `--history` reads back when a later card is made on
a machine where some of those run directories no longer exist.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pixcade.io import atomic_write_text

# Targets of issue 7 (the shipped model must meet them; the card says whether it does).
TARGET_OVERALL = 0.80
TARGET_HELD_OUT = 0.50
TARGET_PROMPTS = 300
TARGET_SR_GAIN_DB = 3.0
TARGET_FINAL_RESOLUTION = 128
MAX_WEIGHTS_BYTES = 60 * 10**6
# Written beside the card: every run's summary as measured, so a later card can still show a
# phase whose run directory (metrics.jsonl) did not survive the machine it trained on.
TRAINING_RECORD = "training.json"


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"model_card: cannot read {path}: {err}")


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records; a line still being written by a live run is skipped."""
    records = []
    for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record and "time" in record:
            records.append(record)
    return records


def training_seconds(records: list[dict[str, Any]], batch_size: int, log_every: int) -> float:
    """Time spent training, summed window by window as steps x batch / images_per_s.

    Not the spread of the timestamps: that would count the hours a run sat stopped
    between an interruption and its --resume. A window that does not follow the previous
    record (the first, or the first after resuming from an earlier checkpoint) is taken to
    have started at the previous multiple of log_every, where the trainer starts windows.
    """
    total, prev = 0.0, None
    for r in records:
        ips = r.get("images_per_s")
        if prev is not None and r["step"] > prev:
            steps = r["step"] - prev
        else:
            steps = r["step"] - ((r["step"] - 1) // log_every) * log_every
        prev = r["step"]
        if ips:
            total += steps * batch_size / ips
    return total


def run_stage(run: Path) -> tuple[str, dict[str, Any]]:
    """(stage name, its train config) as the run recorded them in config.json."""
    config = read_json(run / "config.json")
    stage = config["stage"]
    return stage, next(s for s in config["config"]["stages"] if s["stage"]["name"] == stage)["train"]


def training_summary(run: Path, upto_step: int | None = None) -> dict[str, Any]:
    """Steps, images seen, seed, training time of one stage's run, up to ``upto_step``."""
    stage, train = run_stage(run)
    batch = int(train.get("batch_size", 2048))
    log_every = int(train.get("log_every", 50))
    records = read_metrics(run)
    if upto_step is not None:
        records = [r for r in records if r["step"] <= upto_step]
    if not records:
        raise SystemExit(f"model_card: {run}/metrics.jsonl has no records" + (f" up to step {upto_step}" if upto_step else ""))
    step = upto_step if upto_step is not None else max(r["step"] for r in records)
    losses = [r["loss"] for r in records if r.get("loss") is not None][-5:]
    return {
        "run": str(run),
        "stage": stage,
        "step": step,
        "batch_size": batch,
        "images_seen": step * batch,
        "seed": int(train.get("seed", 0)),
        "lr": train.get("lr"),
        "ema_decay": train.get("ema_decay"),
        "data": train.get("data"),
        "init_from": train.get("init_from"),
        "training_seconds": training_seconds(records, batch, log_every),
        "elapsed_seconds": records[-1]["time"] - records[0]["time"],
        "loss": sum(losses) / len(losses) if losses else None,
    }


def read_history(path: Path) -> list[dict[str, Any]]:
    """The run summaries of an earlier card's training record, ~/ paths expanded."""
    runs = read_json(path).get("runs")
    if not isinstance(runs, list) or not all(isinstance(r, dict) and "stage" in r and "run" in r for r in runs):
        raise SystemExit(f"model_card: {path} is not a {TRAINING_RECORD} (no list of runs with stage and run)")
    expand = lambda v: os.path.expanduser(v) if isinstance(v, str) and v.startswith("~/") else v
    return [{k: expand(v) for k, v in r.items()} for r in runs]


def collect_runs(model: dict[str, Any], specs: list[tuple[Path, str | None]], history: list[dict[str, Any]],
                 config: str | None = None) -> list[dict[str, Any]]:
    """Every training phase of every stage, in cascade order, phases in training order.

    Runs given by directory are summarised from their metrics; a recorded run (``history``)
    is taken as recorded unless its directory is given too. A directory not in the record
    is a phase after the recorded ones of its stage. An earlier phase counts up to the
    export the next one started from, the last up to the step the model was assembled from.
    ``config`` is the config file of the runs given without one.
    """
    trained = {s["name"]: s["trained_step"] for s in model["stages"]}
    order = [s["name"] for s in model["stages"]]
    entries: list[dict[str, Any]] = [dict(r, live=None) for r in history]
    for run, run_config in specs:
        stage, train = run_stage(run)
        live = {"run": run, "config": run_config, "train": train}
        same = [i for i, e in enumerate(entries) if Path(e["run"]) == run]
        if same:
            entries[same[0]] = dict(entries[same[0]], stage=stage, live=live)
        else:
            entries.append({"run": str(run), "stage": stage, "live": live})
    unknown = sorted({e["stage"] for e in entries} - set(order))
    if unknown:
        raise SystemExit(f"model_card: runs of stage(s) {', '.join(unknown)} that the model at {model['dir']} does not have")
    entries.sort(key=lambda e: order.index(e["stage"]))  # stable: phases keep their order

    def init_step(e: dict[str, Any]) -> int | None:
        if e["live"] is None:
            return e.get("init_step")
        source = e["live"]["train"].get("init_from")
        return read_json(Path(source) / "stage.json")["step"] if source else None

    starts = [init_step(e) for e in entries]
    runs: list[dict[str, Any]] = []
    for i, e in enumerate(entries):
        previous = [j for j in range(i) if entries[j]["stage"] == e["stage"]]
        later = [j for j in range(i + 1, len(entries)) if entries[j]["stage"] == e["stage"]]
        if later and starts[later[0]] is None:
            raise SystemExit(f"model_card: {entries[later[0]]['run']} follows {e['run']} for stage {e['stage']!r} but "
                             "records no train.init_from to start from")
        if e["live"] is None:
            summary = {k: v for k, v in e.items() if k not in ("live", "label")}
        else:
            # An earlier phase counts up to the export the next phase started from.
            summary = training_summary(e["live"]["run"], starts[later[0]] if later else trained.get(e["stage"]))
            summary["config"] = e["live"]["config"] or config
            if summary["init_from"]:
                summary["init_run"] = str(entries[previous[-1]]["run"]) if previous else "RUN_DIR"
                summary["init_step"] = starts[i]
        phases = len(previous) + 1 + len(later)
        summary["label"] = e["stage"] if phases == 1 else f"{e['stage']} ({len(previous) + 1}/{phases})"
        runs.append(summary)
    return runs


def sampling_overrides(stage_config: Any, export: str | None) -> dict[str, Any]:
    """The sampling settings `pixcade assemble --set` gave this stage: where the cascade's
    differ from its export's training config (so the card's assemble command reproduces them)."""
    from pixcade.stage import StageConfig

    path = Path(export) / "stage.json" if export else None
    if path is None or not path.is_file():
        return {}

    def flat(settings: Any) -> dict[str, Any]:
        d = settings.to_dict()
        return {**{k: v for k, v in d.items() if k != "sampler_args"},
                **{f"sampler_args.{k}": v for k, v in d["sampler_args"].items()}}

    trained = flat(StageConfig.from_dict(read_json(path)["stage"]).sampling)
    values = flat(stage_config.sampling)
    return {k: ("none" if v is None else f"{v:g}" if isinstance(v, float) else v)
            for k, v in values.items() if trained.get(k) != v}


def model_summary(model: Path) -> dict[str, Any]:
    from pixcade.eval.provenance import model_digest
    from pixcade.nn.unet import count_parameters
    from pixcade.pipeline.saving import load_cascade_config

    config = load_cascade_config(model)
    sources_path = model / "sources.json"
    sources = {s["stage"]: s for s in read_json(sources_path)["stages"]} if sources_path.is_file() else {}
    stages = []
    for sc in config.stages:
        stages.append({
            "name": sc.name, "resolution": sc.resolution, "lowres_resolution": sc.lowres_resolution,
            "parameters": count_parameters(sc.unet), "bytes": (model / f"{sc.name}.safetensors").stat().st_size,
            "sampler": sc.sampling.sampler, "steps": sc.sampling.steps,
            "guidance_weight": sc.sampling.guidance_weight, "threshold": sc.sampling.threshold,
            "aug_level": sc.sampling.aug_level if sc.is_super_resolution else None,
            "trained_step": sources.get(sc.name, {}).get("step"),
            "export": sources.get(sc.name, {}).get("export"),
            "set": sampling_overrides(sc, sources.get(sc.name, {}).get("export")),
        })
    return {"dir": str(model), "digest": model_digest(model), "text_encoder": config.text_encoder, "max_length": config.max_length,
            "stages": stages, "total_bytes": sum(s["bytes"] for s in stages)}


def held_out_in_data(data: Path) -> dict[str, Any]:
    """How many training captions name a held-out colour-shape pair (should be none)."""
    from pixcade.data.shapes import HELD_OUT, parse_caption

    files = sorted(data.rglob("*.txt"))
    named = sum(parse_caption(p.read_text(encoding="utf-8")).held_out for p in files)
    return {"dir": str(data), "captions": len(files), "naming_held_out": named,
            "held_out_pairs": sorted(" ".join(p) for p in HELD_OUT)}


# -- Markdown ------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _verdict(ok: bool) -> str:
    return "meets the target" if ok else "**does not meet the target**"


def _measured_on(result: dict, model: dict) -> str:
    """Whether a result was measured on the very model this card describes."""
    digest = result.get("model_digest")
    where = f"`{result['model']}`" if result.get("model") else "a model"
    if digest is None:
        return f"**Measured on {where} whose weights were not recorded: not checked to be this model.**"
    if digest != model["digest"]:
        return f"**Measured on {where}, a different model from this one (digest {digest[:12]}).**"
    return f"Measured on this model (digest {digest[:12]})."


def home_relative(text: str) -> str:
    """Paths under the home directory of whoever trained the model read as ~/..., so the card
    neither leaks nor depends on that account's name."""
    home = str(Path.home()).rstrip("/")
    return text.replace(home + "/", "~/") if home else text


def _code(command: str) -> str:
    return f"```bash\n{command}\n```"


def _precision(result: dict) -> str:
    """The precision each stage of a benchmark ran in, as its report recorded it."""
    recorded = result.get("precision")
    if not recorded:
        return "precision not recorded (runs made before the `auto` default sampled in fp32)"
    names = set(recorded.values())
    return names.pop() if len(names) == 1 else ", ".join(f"{k} {v}" for k, v in recorded.items())


def precision_section(shapes: dict | None, others: list[dict], model: dict) -> list[str]:
    """Markdown: the shapes benchmark in other precisions (`pixcade eval shapes --dtype`), each
    against the default run ``shapes`` where given, and what the default precision means."""
    from pixcade.eval.paired import paired_difference
    from pixcade.eval.shapes import markdown_table as shapes_table

    out = ["### Shapes benchmark by precision", "",
           "The default precision, `auto`, samples in bf16 where the device computes bf16 natively (CUDA GPUs "
           "with bf16, CPUs with avx512_bf16 or AMX-bf16) and in fp32 elsewhere (`pixcade.diffusion.precision`)."
           + (f" The run above: {_precision(shapes)}." if shapes is not None else ""), ""]
    for other in others:
        acc, held = other["overall"]["accuracy"], other["held_out"]["accuracy"]
        line = (f"In {_precision(other)}: overall {acc:.3f}, held-out pairs {held:.3f} on {other['prompts']} prompts")
        if shapes is not None:
            line += (f", against {shapes['overall']['accuracy']:.3f} and {shapes['held_out']['accuracy']:.3f} "
                     "in the run above")
            pairs = {(r["caption"], r["index"]): r["passed"] for r in shapes.get("results", [])}
            verdicts = [(pairs[(r["caption"], r["index"])], r["passed"]) for r in other.get("results", [])
                        if (r["caption"], r["index"]) in pairs]
            if verdicts and len(verdicts) == len(other.get("results", [])):
                only_above, only_this, p = paired_difference([a for a, _ in verdicts], [b for _, b in verdicts])
                line += (f"; {only_above} image(s) pass only in the run above, {only_this} only in this one "
                         f"(exact McNemar p = {p:.2f})")
        out += [line + f". {_measured_on(other, model)}", "", shapes_table(other), "", _code(other["command"]), ""]
    return out


def stages_table(model: dict) -> list[str]:
    """Markdown: one row per stage of the cascade (`model_summary`)."""
    out = ["## Stages", "",
            "| stage | resolution | U-Net parameters | weights (MB) | trained steps | sampler, steps | guidance | threshold | noise aug. |",
            "| --- | --- | ---: | ---: | ---: | --- | ---: | --- | ---: |"]
    for s in model["stages"]:
        res = f"{s['lowres_resolution']} -> {s['resolution']}" if s["lowres_resolution"] else f"{s['resolution']}"
        aug = "-" if s["aug_level"] is None else f"{s['aug_level']:g}"
        step = "-" if s["trained_step"] is None else f"{s['trained_step']}"
        out.append(f"| {s['name']} | {res} | {s['parameters']:,} | {s['bytes'] / 1e6:.1f} | {step} | "
                   f"{s['sampler']}, {s['steps']} | {s['guidance_weight']:g} | {s['threshold']} | {aug} |")
    return out


def training_table(runs: list[dict]) -> list[str]:
    """Markdown: one row per training phase (`collect_runs`) and how its time is counted."""
    out = ["## Training", "",
            "| stage | steps | batch | images seen | seed | lr | EMA decay | training time (h:mm:ss) | first to last log | final loss |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in runs:
        loss = "-" if r["loss"] is None else f"{r['loss']:.4f}"
        out.append(f"| {r['label']} | {r['step']:,} | {r['batch_size']} | {r['images_seen']:,} | {r['seed']} | "
                   f"{r['lr']:g} | {r['ema_decay']:g} | {_duration(r['training_seconds'])} | "
                   f"{_duration(r['elapsed_seconds'])} | {loss} |")
    out += ["", "Training time sums each logging window's steps x batch / measured images per second (so a "
            "pause between an interruption and `--resume` is not counted); the next column is the span of the "
            "log's timestamps. Final loss: mean of the last five logged windows.", ""]
    return out


def training_commands(model: dict, runs: list[dict], config: str | None, data_commands: list[str]) -> list[str]:
    """Markdown: the commands that made the data and trained each phase (given the config),
    and those that exported and assembled the shipped weights (given the steps they were taken at)."""
    out: list[str] = []
    if config:
        out += ["Commands (the data, then each stage on its own; add `--resume` to continue after an "
                "interruption; relative paths in the config are taken from the current directory; a stage "
                "trained in phases starts each phase from the previous one's export):", ""]
        lines = list(data_commands)
        for r in runs:
            if r["init_from"]:
                lines.append(f"pixcade train export --run {r['init_run']} --checkpoint step-{r['init_step']} "
                             f"--out {r['init_from']}")
            init = f" --init-from {r['init_from']}" if r["init_from"] else ""
            lines.append(f"pixcade train --config {r['config'] or config} --stage {r['stage']} --out {r['run']}{init}")
        out += [_code("\n".join(lines)), ""]
    if all(s["trained_step"] is not None and s["export"] for s in model["stages"]):
        runs_by_stage = {r["stage"]: r["run"] for r in runs}
        lines = [f"pixcade train export --run {runs_by_stage.get(s['name'], 'RUN_DIR')} "
                 f"--checkpoint step-{s['trained_step']} --out {s['export']}" for s in model["stages"]]
        lines.append(f"pixcade assemble {' '.join(s['export'] for s in model['stages'])} --out {model['dir']}"
                     + "".join(f" --set {s['name']}.{k}={v}" for s in model["stages"] for k, v in s["set"].items()))
        out += ["The shipped weights are those steps' EMA weights, exported and assembled with:", "",
                _code("\n".join(lines)), ""]
    return out


def card(model: dict, runs: list[dict], *, config: str | None, data_commands: list[str], shapes: dict | None,
         sweep: dict | None, sr: dict | None, grid: dict | None, data_checks: list[dict],
         shapes_by_dtype: list[dict] = ()) -> str:
    from pixcade.eval.shapes import markdown_table as shapes_table
    from pixcade.eval.sr_psnr import markdown_table as sr_table
    from pixcade.eval.sweep import markdown_table as sweep_table

    final = model["stages"][-1]["resolution"]
    out = ["# Model card: pixcade shapes cascade", ""]
    n = len(model["stages"])
    out += [f"A text-to-image cascade for the shapes domain (`shared/SHAPES_SPEC.md`), {n} stage{'s' * (n > 1)} "
            f"ending at {final} px, text encoder `{model['text_encoder']}` (max {model['max_length']} tokens). "
            "Every number below was measured by the command shown beside it; this card is generated by "
            "`scripts/model_card.py`.", ""]

    out += stages_table(model)
    total = model["total_bytes"]
    out += ["", f"Weights (EMA, safetensors): {total / 1e6:.1f} MB in all: "
            f"{_verdict(total <= MAX_WEIGHTS_BYTES)} of at most {MAX_WEIGHTS_BYTES / 1e6:.0f} MB. "
            f"Final resolution {final} px: {_verdict(final >= TARGET_FINAL_RESOLUTION)} of at least "
            f"{TARGET_FINAL_RESOLUTION} px.", ""]

    out += training_table(runs)
    for data_check in data_checks:
        ok = data_check["naming_held_out"] == 0
        out += [f"Held-out pairs ({', '.join(data_check['held_out_pairs'])}): "
                f"{data_check['naming_held_out']} of the {data_check['captions']:,} training captions in "
                f"`{data_check['dir']}` name one ({'excluded' if ok else '**NOT excluded**'}).", ""]
    out += training_commands(model, runs, config, data_commands)

    out += ["## Evaluation", ""]
    if shapes is not None:
        acc, held = shapes["overall"]["accuracy"], shapes["held_out"]["accuracy"]
        ok = (shapes["prompts"] >= TARGET_PROMPTS and acc is not None and acc >= TARGET_OVERALL
              and held is not None and held >= TARGET_HELD_OUT)
        out += ["### Shapes benchmark at the default settings", "",
                f"{shapes['prompts']} prompts x {shapes['images_per_prompt']} image(s) at {shapes['resolution']} px, "
                f"scored by `pixcade.eval.shapes` (held-out: prompts naming a held-out pair). Overall "
                f"{acc:.3f} (target >= {TARGET_OVERALL:.2f}), held-out pairs {held:.3f} (target >= "
                f"{TARGET_HELD_OUT:.2f}) on >= {TARGET_PROMPTS} prompts: {_verdict(ok)}. "
                f"{_measured_on(shapes, model)}", "",
                shapes_table(shapes), "", _code(shapes["command"]), ""]
    if shapes_by_dtype:
        out += precision_section(shapes, list(shapes_by_dtype), model)
    if sr is not None:
        out += [f"### Super-resolution ({sr['stage']}: {sr['lowres_resolution']} -> {sr['resolution']} px)", "",
                f"Given the true {sr['lowres_resolution']} px render of {sr['n']} scenes, the SR stage's output vs "
                f"the true {sr['resolution']} px render: {sr['psnr_sr']:.2f} dB against {sr['psnr_bicubic']:.2f} dB for "
                f"bicubic upsampling, {sr['gain_db']:+.2f} dB (target >= +{TARGET_SR_GAIN_DB:g} dB): "
                f"{_verdict(sr['gain_db'] >= TARGET_SR_GAIN_DB)}. {_measured_on(sr, model)}", "", sr_table(sr), "", _code(sr["command"]), ""]
    if sweep is not None:
        out += [f"### Guidance weight x thresholding (stage {sweep['stage']}; other stages at their defaults)", "",
                f"Accuracy on {sweep['prompts']} prompts at {sweep['resolution']} px. {_measured_on(sweep, model)}", "",
                sweep_table(sweep["rows"], sweep["stage"]), "", _code(sweep["command"]), ""]
    if grid is not None:
        out += ["### Samples", "", _measured_on(grid, model), "",
                f"![prompts, base and final images]({grid['link']})", "",
                _code(grid["command"]) if grid["command"] else "", ""]
    return "\n".join(out)


def grid_info(path: Path, card_path: Path) -> dict[str, Any]:
    from PIL import Image

    from pixcade.eval.stage_grid import GRID_COMMAND_KEY, GRID_DIGEST_KEY

    with Image.open(path) as im:
        text = getattr(im, "text", {})
    return {"link": os.path.relpath(path, card_path.parent), "command": text.get(GRID_COMMAND_KEY),
            "model_digest": text.get(GRID_DIGEST_KEY) or None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the assembled cascade directory")
    p.add_argument("--history", help=f"a {TRAINING_RECORD} an earlier card wrote: its runs stand in for those whose "
                                      "directories are gone (a --run of the same directory replaces its record)")
    p.add_argument("--run", action="append",
                   help="a stage's training run directory (repeat, base first; a stage trained in phases, each "
                        "starting from the previous one's export, gives its runs in order); RUN=CONFIG names "
                        "the config file that run trained with when it is not --config")
    p.add_argument("--config", help="the training config file, for the training commands")
    p.add_argument("--data", action="append", default=[],
                   help="a training data folder: check that no caption names a held-out pair (repeat for each)")
    p.add_argument("--data-command", action="append", default=[],
                   help="a command that made training data (repeat; shown in order before the training commands)")
    p.add_argument("--shapes", help="shapes.json of `pixcade eval shapes` at default settings")
    p.add_argument("--shapes-dtype", action="append", default=[],
                   help="shapes.json of the same benchmark in another precision, `pixcade eval shapes --dtype bf16` "
                        "(repeat for each)")
    p.add_argument("--sweep", help="sweep.json of `pixcade eval shapes --guidance ... --threshold ...`")
    p.add_argument("--sr-psnr", help="sr_psnr.json of `pixcade eval sr-psnr`")
    p.add_argument("--grid", help="the PNG of `pixcade eval grid`")
    p.add_argument("--notes", help="a hand-written Markdown file appended as the card's Notes section (history and "
                                    "diagnoses no measurement file records)")
    p.add_argument("--out", required=True, help="where to write the Markdown (e.g. pixcade/weights/shapes/MODEL_CARD.md)")
    args = p.parse_args(argv)

    out = Path(args.out)
    model = model_summary(Path(args.model))
    history = read_history(Path(args.history)) if args.history else []
    specs = [(Path(r.partition("=")[0]), r.partition("=")[2] or None) for r in args.run or []]
    if not specs and not history:
        raise SystemExit("model_card: give at least one --run (or a --history that records the runs)")
    runs = collect_runs(model, specs, history, args.config)
    text = card(
        model, runs, config=args.config, data_commands=args.data_command,
        shapes=read_json(args.shapes) if args.shapes else None,
        sweep=read_json(args.sweep) if args.sweep else None,
        sr=read_json(args.sr_psnr) if args.sr_psnr else None,
        grid=grid_info(Path(args.grid), out) if args.grid else None,
        data_checks=[held_out_in_data(Path(d)) for d in args.data],
        shapes_by_dtype=[read_json(f) for f in args.shapes_dtype],
    )
    if args.notes:
        try:
            notes = Path(args.notes).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise SystemExit(f"model_card: cannot read --notes {args.notes}: {err}")
        text += "\n## Notes\n\n" + notes + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, home_relative(text))
    record = out.with_name(TRAINING_RECORD)
    atomic_write_text(record, home_relative(json.dumps({"runs": runs}, indent=1)) + "\n")
    print(f"wrote {out} and {record}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
