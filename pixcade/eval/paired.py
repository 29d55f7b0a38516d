"""Comparing two models on the same prompts: which prompts only one of them passed, and
whether that split could be chance (the exact McNemar test)."""

from __future__ import annotations

import math
from typing import Sequence

from pixcade.errors import PixcadeError


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value for ``only_a`` and ``only_b`` discordant pairs.

    Under "equally accurate" each discordant prompt is a fair coin, so the p-value is the
    binomial probability of a split at least this uneven.
    """
    m = only_a + only_b
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(only_a, only_b) + 1)) / 2**m
    return min(1.0, 2 * tail)


def paired_difference(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, float]:
    """(passed only by a, passed only by b, exact McNemar p) over the same prompts, in order.

    The prompts both pass or both fail say nothing about which model is better; only the
    discordant ones do.
    """
    if len(a) != len(b):
        raise PixcadeError(f"paired results differ in length: {len(a)} vs {len(b)}")
    only_a = sum(bool(x) and not y for x, y in zip(a, b))
    only_b = sum(bool(y) and not x for x, y in zip(a, b))
    return only_a, only_b, mcnemar_p(only_a, only_b)
