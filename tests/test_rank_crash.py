"""The multi-process tests' harness tells a rank killed by a signal (rerun once, see
RERUN_ON_RANK_CRASH) from a rank that failed (never rerun)."""

from __future__ import annotations

import pytest

from train_support import RankCrashed, launch, wait_all


def test_a_rank_killed_by_a_signal_is_a_crash_and_names_the_signal():
    with pytest.raises(RankCrashed, match="rank 1: SIGABRT"):
        wait_all(launch(["-c", "import os, sys; os.abort() if os.environ['RANK'] == '1' else sys.exit(0)"], 2))


def test_a_rank_that_fails_is_an_ordinary_failure_not_a_crash():
    with pytest.raises(AssertionError) as err:
        wait_all(launch(["-c", "import os, sys; print('wrong', os.environ['RANK']); sys.exit(1)"], 2))
    assert not isinstance(err.value, RankCrashed) and "wrong 1" in str(err.value)
    assert wait_all(launch(["-c", "print('fine')"], 2)) == ["fine\n", "fine\n"]
