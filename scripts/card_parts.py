"""What every model card script shares (`model_card.py` for a shapes cascade,
`distilled_card.py` for a distilled variant, `emoji_card.py` for the emoji cascade): reading an
assembled cascade and its training runs, and the Markdown tables and commands built from them.
Every number comes from a file; nothing here is typed by hand."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from pixcade.errors import PixcadeError
from pixcade.eval.provenance import model_digest, same_networks
from pixcade.eval.stage_grid import GRID_COMMAND_KEY, GRID_DIGEST_KEY
from pixcade.io import atomic_write_text
from pixcade.nn.unet import count_parameters
from pixcade.pipeline.saving import load_cascade_config
from pixcade.stage import StageConfig
from pixcade.train.config import CascadeTrainConfig, load_config

# Written beside a card: every run's summary as measured, so a later card can still show a
# phase whose run directory (metrics.jsonl) did not survive the machine it trained on.
TRAINING_RECORD = "training.json"


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"card: cannot read {path}: {err}")


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
        raise SystemExit(f"card: {run}/metrics.jsonl has no records" + (f" up to step {upto_step}" if upto_step else ""))
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
        raise SystemExit(f"card: {path} is not a {TRAINING_RECORD} (no list of runs with stage and run)")
    expand = lambda v: os.path.expanduser(v) if isinstance(v, str) and v.startswith("~/") else v
    return [{k: expand(v) for k, v in r.items()} for r in runs]


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """A card script's --history and --run (read back by `runs_from_arguments`)."""
    p.add_argument("--history", help=f"a {TRAINING_RECORD} an earlier card wrote: its runs stand in for those whose "
                                      "directories are gone (a --run of the same directory replaces its record)")
    p.add_argument("--run", action="append",
                   help="a stage's training run directory (repeat, base first; a stage trained in phases, each "
                        "starting from the previous one's export, gives its runs in order); RUN=CONFIG names "
                        "the config file that run trained with when it is not --config")


def runs_from_arguments(model: dict[str, Any], args: argparse.Namespace, script: str) -> list[dict[str, Any]]:
    """Every phase of every stage from ``add_run_arguments``' --history and --run (`collect_runs`)."""
    history = read_history(Path(args.history)) if args.history else []
    specs = [(Path(r.partition("=")[0]), r.partition("=")[2] or None) for r in args.run or []]
    if not specs and not history:
        raise SystemExit(f"{script}: give at least one --run (or a --history that records the runs)")
    return collect_runs(model, specs, history, args.config)


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
        raise SystemExit(f"card: runs of stage(s) {', '.join(unknown)} that the model at {model['dir']} does not have")
    entries.sort(key=lambda e: order.index(e["stage"]))  # stable: phases keep their order

    def init_export(e: dict[str, Any]) -> tuple[int | None, str | None]:
        """The step of the export a phase started from, and the export that one was grown
        from (`pixcade train grow`), if it was."""
        if e["live"] is None:
            return e.get("init_step"), e.get("grown_from")
        source = e["live"]["train"].get("init_from")
        if not source:
            return None, None
        meta = read_json(Path(source) / "stage.json")
        return meta["step"], meta.get("grown_from")

    starts, grown = zip(*(init_export(e) for e in entries)) if entries else ((), ())
    runs: list[dict[str, Any]] = []
    for i, e in enumerate(entries):
        previous = [j for j in range(i) if entries[j]["stage"] == e["stage"]]
        later = [j for j in range(i + 1, len(entries)) if entries[j]["stage"] == e["stage"]]
        if later and starts[later[0]] is None:
            raise SystemExit(f"card: {entries[later[0]]['run']} follows {e['run']} for stage {e['stage']!r} but "
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
                if grown[i]:
                    summary["grown_from"] = grown[i]
        phases = len(previous) + 1 + len(later)
        summary["label"] = e["stage"] if phases == 1 else f"{e['stage']} ({len(previous) + 1}/{phases})"
        runs.append(summary)
    return runs


def sampling_overrides(trained: Any, now: Any) -> dict[str, Any]:
    """The `pixcade assemble --set` values that turn the ``trained`` sampling settings (a
    stage's training config's) into ``now`` (the cascade's), as the command line writes them."""

    def flat(settings: Any) -> dict[str, Any]:
        d = settings.to_dict()
        return {**{k: v for k, v in d.items() if k != "sampler_args"},
                **{f"sampler_args.{k}": v for k, v in d["sampler_args"].items()}}

    before, after = flat(trained), flat(now)
    return {k: ("none" if v is None else f"{v:g}" if isinstance(v, float) else v)
            for k, v in after.items() if before.get(k) != v}


def export_sampling(export: str | None) -> Any | None:
    """The sampling settings an export's stage.json records (None without one)."""
    path = Path(export) / "stage.json" if export else None
    if path is None or not path.is_file():
        return None
    return StageConfig.from_dict(read_json(path)["stage"]).sampling


def trained_sampling(run: str | None, config: str | None, stage: str) -> Any | None:
    """The sampling settings ``stage`` trained with, as `train export` writes them into its
    export: from the run's own config.json where the run is here, else from the config file
    it names (relative to the current directory), else None."""
    try:
        if run and (Path(run) / "config.json").is_file():
            recorded = read_json(Path(run) / "config.json")["config"]
            return CascadeTrainConfig.from_dict(recorded).stage(stage).stage_config().sampling
        if config:
            return load_config(config).stage(stage).stage_config().sampling
    except (PixcadeError, KeyError):
        pass
    return None


def model_summary(model: Path) -> dict[str, Any]:
    config = load_cascade_config(model)
    sources_path = model / "sources.json"
    sources = {s["stage"]: s for s in read_json(sources_path)["stages"]} if sources_path.is_file() else {}
    stages = []
    for sc in config.stages:
        stages.append({
            "name": sc.name, "resolution": sc.resolution, "lowres_resolution": sc.lowres_resolution,
            "parameters": count_parameters(sc.unet), "bytes": (model / f"{sc.name}.safetensors").stat().st_size,
            "sampler": sc.sampling.sampler, "steps": sc.sampling.steps, "start": sc.sampling.start,
            "guidance_weight": sc.sampling.guidance_weight, "threshold": sc.sampling.threshold,
            "aug_level": sc.sampling.aug_level if sc.is_super_resolution else None,
            "trained_step": sources.get(sc.name, {}).get("step"),
            "export": sources.get(sc.name, {}).get("export"),
            "sampling": sc.sampling,
        })
    return {"dir": str(model), "digest": model_digest(model), "text_encoder": config.text_encoder, "max_length": config.max_length,
            "stages": stages, "total_bytes": sum(s["bytes"] for s in stages)}


def duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def verdict(ok: bool) -> str:
    return "meets the target" if ok else "**does not meet the target**"


def shared_networks(result: dict, model_dir: str | Path) -> list[str]:
    """The stages a result ran, when the cascade it was measured on is still there as it
    recorded (its digest) and holds the network of the card's model (``model_dir``) for each (a
    candidate the model was assembled from with other sampling defaults or storage precision);
    [] otherwise. Which stages a result ran: a sweep records `stages` (null: all), an SR
    evaluation its `stage`."""
    path = result.get("model")
    if not path or model_digest(path) != result.get("model_digest"):
        return []
    names = result.get("stages") or ([result["stage"]] if result.get("stage") else
                                      [s.name for s in load_cascade_config(path).stages])
    return list(names) if same_networks(path, model_dir, names) else []


def measured_on(result: dict, model: dict) -> str:
    """Whether a result was measured on the very model this card describes, or on a cascade
    that holds its networks for the stages the result ran."""
    digest = result.get("model_digest")
    where = f"`{result['model']}`" if result.get("model") else "a model"
    if digest is None:
        return f"**Measured on {where} whose weights were not recorded: not checked to be this model.**"
    if digest == model["digest"]:
        return f"Measured on this model (digest {digest[:12]})."
    shared = shared_networks(result, model["dir"])
    if shared:
        return (f"Measured on {where} (digest {digest[:12]}), which holds this model's "
                f"{' and '.join(shared)} network{'s' if len(shared) > 1 else ''} (checked tensor by tensor, at this "
                "model's storage precision) under its own sampling defaults; the settings the result set or varied "
                "are in its command.")
    return f"**Measured on {where}, a different model from this one (digest {digest[:12]}).**"


def home_relative(text: str) -> str:
    """Paths under the home directory of whoever trained the model read as ~/..., so the card
    neither leaks nor depends on that account's name."""
    home = str(Path.home()).rstrip("/")
    return text.replace(home + "/", "~/") if home else text


def notes_section(path: str | None, script: str) -> str:
    """The card's closing Notes section from a hand-written Markdown file (history and diagnoses
    no measurement file records); "" when none is given."""
    if not path:
        return ""
    try:
        notes = Path(path).read_text(encoding="utf-8").strip()
    except OSError as err:
        raise SystemExit(f"{script}: cannot read --notes {path}: {err}")
    return "\n## Notes\n\n" + notes + "\n"


def code_block(command: str) -> str:
    return f"```bash\n{command}\n```"


def stages_table(model: dict) -> list[str]:
    """Markdown: one row per stage of the cascade (`model_summary`)."""
    out = ["## Stages", "",
            "| stage | resolution | U-Net parameters | weights (MB) | trained steps | sampler, steps | guidance | threshold | noise aug. |",
            "| --- | --- | ---: | ---: | ---: | --- | ---: | --- | ---: |"]
    for s in model["stages"]:
        res = f"{s['lowres_resolution']} -> {s['resolution']}" if s["lowres_resolution"] else f"{s['resolution']}"
        aug = "-" if s["aug_level"] is None else f"{s['aug_level']:g}"
        step = "-" if s["trained_step"] is None else f"{s['trained_step']}"
        # A stage that starts from its noised input (start < 1) spreads its steps over [0, start].
        start = "" if s["start"] == 1 else f" from t = {s['start']:g}"
        out.append(f"| {s['name']} | {res} | {s['parameters']:,} | {s['bytes'] / 1e6:.1f} | {step} | "
                   f"{s['sampler']}, {s['steps']}{start} | {s['guidance_weight']:g} | {s['threshold']} | {aug} |")
    return out


def training_table(runs: list[dict]) -> list[str]:
    """Markdown: one row per training phase (`collect_runs`) and how its time is counted."""
    out = ["## Training", "",
            "| stage | steps | batch | images seen | seed | lr | EMA decay | training time (h:mm:ss) | first to last log | final loss |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in runs:
        loss = "-" if r["loss"] is None else f"{r['loss']:.4f}"
        out.append(f"| {r['label']} | {r['step']:,} | {r['batch_size']} | {r['images_seen']:,} | {r['seed']} | "
                   f"{r['lr']:g} | {r['ema_decay']:g} | {duration(r['training_seconds'])} | "
                   f"{duration(r['elapsed_seconds'])} | {loss} |")
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
                exported = r.get("grown_from") or r["init_from"]
                lines.append(f"pixcade train export --run {r['init_run']} --checkpoint step-{r['init_step']} "
                             f"--out {exported}")
                if r.get("grown_from"):
                    lines.append(f"pixcade train grow --from {exported} --out {r['init_from']}")
            init = f" --init-from {r['init_from']}" if r["init_from"] else ""
            lines.append(f"pixcade train --config {r['config'] or config} --stage {r['stage']} --out {r['run']}{init}")
        out += [code_block("\n".join(lines)), ""]
    if all(s["trained_step"] is not None and s["export"] for s in model["stages"]):
        runs_by_stage = {r["stage"]: r["run"] for r in runs}
        configs_by_stage = {r["stage"]: r.get("config") or config for r in runs}
        # `train export` writes the sampling settings of the run's training config; the export
        # the cascade was assembled from may say otherwise (one unpacked from a saved cascade
        # carries the cascade's), so the --set values are taken against the training config.
        sets = {}
        for s in model["stages"]:
            trained = trained_sampling(runs_by_stage.get(s["name"]), configs_by_stage.get(s["name"]), s["name"])
            if trained is None:
                trained = export_sampling(s["export"])
            sets[s["name"]] = sampling_overrides(trained, s["sampling"]) if trained is not None else {}
        lines = [f"pixcade train export --run {runs_by_stage.get(s['name'], 'RUN_DIR')} "
                 f"--checkpoint step-{s['trained_step']} --out {s['export']}" for s in model["stages"]]
        lines.append(f"pixcade assemble {' '.join(s['export'] for s in model['stages'])} --out {model['dir']}"
                     + "".join(f" --set {s['name']}.{k}={v}" for s in model["stages"] for k, v in sets[s["name"]].items()))
        out += ["The shipped weights are those steps' EMA weights, exported and assembled with:", "",
                code_block("\n".join(lines)), ""]
    return out


def grid_info(path: Path, card_path: Path) -> dict[str, Any]:
    with Image.open(path) as im:
        text = getattr(im, "text", {})
    return {"link": os.path.relpath(path, card_path.parent), "command": text.get(GRID_COMMAND_KEY),
            "model_digest": text.get(GRID_DIGEST_KEY) or None}


def generated_by(script: str, argv: list[str] | None) -> str:
    """The card's last paragraph: the command that wrote it, so it can be made again."""
    args = sys.argv[1:] if argv is None else argv
    return "This card was written by:\n\n" + code_block(shlex.join(["python", f"scripts/{script}", *args])) + "\n"


def write_card(out: Path, text: str, runs: list[dict[str, Any]]) -> None:
    """The card at ``out`` and, beside it, `TRAINING_RECORD` (every run's summary, for a later
    card's ``--history``), both with home paths as ~/ (`home_relative`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, home_relative(text))
    record = out.with_name(TRAINING_RECORD)
    atomic_write_text(record, home_relative(json.dumps({"runs": runs}, indent=1)) + "\n")
    print(f"wrote {out} and {record}", file=sys.stderr)
