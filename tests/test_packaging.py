"""pyproject's version floors are versions the suite runs on (.ci/run tests them)."""

from __future__ import annotations

import re
import sys
import tomllib

from train_support import REPO


def _project() -> dict:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]


def _floor(name: str) -> tuple[int, ...]:
    spec = next(d for d in _project()["dependencies"] if re.match(rf"{name}\b", d))
    return tuple(int(x) for x in re.search(r">=([0-9.]+)", spec).group(1).split("."))


def test_the_torch_floor_is_the_torch_ci_installs():
    pinned = re.search(r"torch==([0-9.]+)", (REPO / ".ci/run").read_text()).group(1)
    assert tuple(int(x) for x in pinned.split("."))[:2] == _floor("torch")


def test_ci_runs_the_transformers_tests_on_the_transformers_floor():
    ci = (REPO / ".ci/run").read_text()
    assert _floor("transformers") >= (4, 40)  # the oldest one tried (README)
    # The floor is read from pyproject, installed, and the tests that use it run on it.
    assert 'pip" install -q "transformers==$floor"' in ci and "tests/test_text_encoders.py" in ci


def test_the_python_floor_has_what_pixcade_imports_and_admits_this_interpreter():
    floor = tuple(int(x) for x in re.fullmatch(r">=([0-9.]+)", _project()["requires-python"]).group(1).split("."))
    # Config files are read with tomllib, in the standard library from 3.11; 3.10 lacks it.
    assert floor >= (3, 11)
    assert sys.version_info[:2] >= floor
