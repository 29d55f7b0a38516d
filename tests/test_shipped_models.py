"""A model argument names a folder or a shipped model (pixcade/weights/NAME)."""

from __future__ import annotations

import pytest

from pixcade.cli import main as pixcade_main
from pixcade.errors import PixcadeError
from pixcade.pipeline.shipped import resolve_model, shipped_models, weights_dir


def test_names_resolve_to_shipped_folders_and_folders_win(tmp_path, monkeypatch):
    assert "shapes" in shipped_models()
    assert resolve_model(None) == weights_dir() / "shapes" == resolve_model("shapes")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shapes").mkdir()  # a user's own folder of that name is what they meant
    assert resolve_model("shapes").resolve() == tmp_path / "shapes"
    assert resolve_model(tmp_path) == tmp_path


def test_unknown_name_is_one_line_naming_the_shipped_models(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PixcadeError, match=r"model 'emoji' not found.*shipped: .*shapes"):
        resolve_model("emoji")
    assert pixcade_main(["generate", "--model", "no-such-model", "a red circle"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'no-such-model' not found" in err


def test_python_api_takes_a_shipped_name():
    from pixcade.pipeline.cascade import Cascade

    by_name = Cascade.from_pretrained("shapes")
    by_path = Cascade.from_pretrained(weights_dir() / "shapes")
    assert [s.config for s in by_name.stages] == [s.config for s in by_path.stages]
