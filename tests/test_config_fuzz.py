"""Every config loader answers a wrong value anywhere with a one-line PixcadeError, before
any model is built: the training config (its stages and U-Net presets/overrides included),
a saved cascade.json, a trainer's stage.json. Each field of each file, in turn, gets every
value of a pool of wrong types (and, through hypothesis, random JSON), seeded and bounded."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pixcade.nn.unet
from pixcade.cli import main as pixcade_main
from pixcade.errors import PixcadeError
from pixcade.pipeline.saving import CascadeConfig, load_cascade_config, read_stage_export
from pixcade.stage import StageConfig
from pixcade.train.config import CascadeTrainConfig, TrainConfig, load_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = Path(str(resources.files("pixcade").joinpath("weights", "shapes")))

# One of each JSON type, the non-finite numbers JSON parsers let through, and extremes.
WRONG: list[Any] = [None, True, False, 0, -1, 7, 2.5, -0.5, math.inf, -math.inf, math.nan, 10**40,
                    "x", "", [], [1, "a"], [[2]], {}, {"k": 1}]


def _paths(value: Any, path: tuple = ()) -> Iterator[tuple]:
    """The path of every value inside ``value`` (dict keys, list indices), outermost first."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield path + (k,)
            yield from _paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield path + (i,)
            yield from _paths(v, path + (i,))


def _replaced(doc: Any, path: tuple, value: Any) -> Any:
    doc = copy.deepcopy(doc)
    target = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return doc


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and json.dumps(a) == json.dumps(b)


@pytest.fixture(autouse=True)
def no_models(monkeypatch):
    """Loading a config must never build a U-Net."""
    def refuse(*args, **kwargs):
        raise AssertionError("a config loader built a model")

    monkeypatch.setattr(pixcade.nn.unet.EfficientUNet, "__init__", refuse)


def _full_training_config() -> dict:
    """configs/tiny-shapes.json with every TrainConfig and StageConfig field written out,
    plus one stage whose U-Net is a preset with overrides."""
    doc = json.loads((REPO / "configs" / "tiny-shapes.json").read_text())
    preset_stage = copy.deepcopy(doc["stages"][1])
    for entry in doc["stages"][:1]:
        entry["train"] = {**TrainConfig().to_dict(), **entry["train"]}
        from pixcade.train.config import resolve_unet

        entry["stage"] = StageConfig.from_dict(resolve_unet(entry["stage"])).to_dict()
    doc["stages"].append(preset_stage)
    return doc


def _loaders(tmp_path: Path) -> list[tuple[str, Any, Callable[[Any], Any]]]:
    """(name, a valid document, load(document)) for every config file pixcade reads."""
    def training(doc):
        # What load_config does after parsing the file (JSON's Infinity/NaN included).
        return CascadeTrainConfig.from_dict(json.loads(json.dumps(doc)))

    def cascade(doc):
        return CascadeConfig.from_dict(json.loads(json.dumps(doc)))

    export = tmp_path / "run" / "final"
    export.mkdir(parents=True)
    stage_json = {"stage": json.loads((SHIPPED / "cascade.json").read_text())["stages"][1],
                  "text_encoder": "minilm", "max_length": 32, "step": 100}

    def stage_export(doc):
        (export / "stage.json").write_text(json.dumps(doc))
        return read_stage_export(export.parent)

    return [("training config", _full_training_config(), training),
            ("cascade.json", json.loads((SHIPPED / "cascade.json").read_text()), cascade),
            ("stage.json", stage_json, stage_export)]


def _load_or_one_line_error(load: Callable[[Any], Any], doc: Any, what: str) -> bool:
    """True when ``doc`` loads; False when refused with a one-line PixcadeError; anything
    else (another exception, a multi-line message) fails the test."""
    try:
        load(doc)
        return True
    except PixcadeError as err:
        message = str(err)
        assert message and "\n" not in message, f"{what}: multi-line error {message!r}"
        return False


def test_every_field_with_every_wrong_type(tmp_path):
    refused = 0
    for name, valid, load in _loaders(tmp_path):
        assert _load_or_one_line_error(load, valid, name)  # the base documents are valid
        for path in _paths(valid):
            for value in WRONG:
                target = valid
                for part in path:
                    target = target[part]
                if _same(target, value):
                    continue
                what = f"{name} {'.'.join(map(str, path))} = {value!r}"
                refused += not _load_or_one_line_error(load, _replaced(valid, path, value), what)
    assert refused > 1000  # the pool is mostly wrong; the loaders said so


def test_non_finite_and_wrongly_typed_training_values_are_named(tmp_path):
    _, valid, load = _loaders(tmp_path)[0]
    for path, value, named in [
        (("stages", 0, "train", "lr"), math.inf, "train.lr must be a finite number, got inf"),
        (("stages", 0, "train", "ema_decay"), math.nan, "train.ema_decay must be a finite number"),
        (("stages", 0, "train", "batch_size"), "16", "train.batch_size must be an integer, got '16'"),
        (("stages", 0, "train", "adam_betas"), [0.9], "adam_betas must be a list of 2"),
        (("stages", 0, "stage", "sampling", "steps"), 2.5, "sampling.steps must be an integer, got 2.5"),
        (("stages", 0, "stage", "unet", "channel_mult"), [1, "2"], "channel_mult must be a list of integers"),
        (("stages", 2, "stage", "unet", "text_dim"), True, "text_dim must be an integer, got True"),
        (("stages", 2, "stage", "unet", "preset"), ["tiny-sr"], "preset must be a preset name"),
    ]:
        with pytest.raises(PixcadeError, match=named.replace("(", r"\(").replace("[", r"\[")):
            load(_replaced(valid, path, value))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)


@settings(max_examples=150, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_random_json_anywhere(tmp_path, data):
    loaders = _loaders_cached(tmp_path)
    name, valid, load = data.draw(st.sampled_from(loaders))
    path = data.draw(st.sampled_from(list(_paths(valid))))
    value = data.draw(JSON)
    _load_or_one_line_error(load, _replaced(valid, path, value), f"{name} {path} = {value!r}")


_CACHE: dict[Path, list] = {}


def _loaders_cached(tmp_path: Path) -> list:
    if tmp_path not in _CACHE:
        _CACHE.clear()
        _CACHE[tmp_path] = _loaders(tmp_path)
    return _CACHE[tmp_path]


def test_files_are_read_through_the_same_checks(tmp_path):
    doc = json.loads((SHIPPED / "cascade.json").read_text())
    model = tmp_path / "model"
    shutil.copytree(SHIPPED, model, ignore=shutil.ignore_patterns("*.safetensors"))
    (model / "cascade.json").write_text(json.dumps(_replaced(doc, ("stages", 1, "steps"), "20")))
    with pytest.raises(PixcadeError, match="steps must be an integer, got '20'"):
        load_cascade_config(model)
    (model / "cascade.json").write_bytes(b'{"format": 1, "text_encoder": "\xff"}')  # not UTF-8
    with pytest.raises(PixcadeError, match="cascade.json"):
        load_cascade_config(model)
    train = tmp_path / "train.json"
    train.write_text(json.dumps(_replaced(_full_training_config(), ("stages", 0, "train", "lr"), math.inf)))
    assert "Infinity" in train.read_text()  # what JSON writers make of inf; JSON readers accept it
    with pytest.raises(PixcadeError, match="train.lr must be a finite number, got inf"):
        load_config(train)
    train.write_bytes(b'{"stages": "\xff"}')
    with pytest.raises(PixcadeError, match="cannot parse config"):
        load_config(train)


def test_the_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    _, valid, _ = _loaders(tmp_path)[0]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_replaced(valid, ("stages", 0, "train", "lr"), "fast")))
    code = pixcade_main(["train", "--config", str(path), "--stage", "base", "--out", str(tmp_path / "train-out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "train.lr must be a finite number, got 'fast'" in err
    assert not (tmp_path / "train-out").exists()


def test_dataclass_fields_all_reached():
    """The pool above covers every field of every config dataclass (a new field is fuzzed too)."""
    doc = _full_training_config()
    train_keys = set(doc["stages"][0]["train"])
    stage_keys = set(doc["stages"][0]["stage"])
    assert train_keys == {f.name for f in dataclasses.fields(TrainConfig)}
    assert stage_keys == {f.name for f in dataclasses.fields(StageConfig)}
