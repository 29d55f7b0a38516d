"""One idiom for every `pixcade` verb: one table, one parser, one error style."""

from __future__ import annotations

import pytest

from pixcade.cli import main
from pixcade.commands import COMMANDS, ArgumentParser, load


def _leaves(verbs=COMMANDS, path=()):
    for name, entry in verbs.items():
        if isinstance(entry, dict):
            yield from _leaves(entry, path + (name,))
        else:
            yield path + ((name,) if name else ()), entry[0]


LEAVES = list(_leaves())


@pytest.mark.parametrize("path, target", LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_every_verb_loads_and_a_bad_flag_is_one_line_naming_the_verb(path, target, capsys):
    assert callable(load(target))
    assert main([*path, "--no-such-flag"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"pixcade {' '.join(path)}: error: ") and err.count("\n") == 1, err
    assert "--no-such-flag" in err or "required" in err


def test_help_lists_the_verbs_of_each_level(capsys):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert all(f"  {name} " in top for name in COMMANDS)
    assert main(["eval", "--help"]) == 0
    assert "  emoji " in capsys.readouterr().out
    assert main(["eval", "emoji"]) == 2  # a group needs a verb: its usage, exit 2
    assert "generated" in capsys.readouterr().out
    assert main(["eval", "nonsense"]) == 2
    assert capsys.readouterr().err.strip() == (
        "pixcade eval: error: unknown command 'nonsense' (choose from fid, kid, clip-score, shapes, sr-psnr, "
        "grid, train-shapes-features, emoji)")


def test_a_verbs_parser_describes_it_with_its_table_help():
    assert ArgumentParser("pixcade eval grid").description == COMMANDS["eval"]["grid"][1]
    assert ArgumentParser("pixcade train").description == COMMANDS["train"][""][1]
    assert ArgumentParser("pixcade train", description="mine").description == "mine"
