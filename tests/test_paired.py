"""pixcade.eval.paired: the exact McNemar test on paired pass/fail results."""

import pytest
from scipy.stats import binomtest

from pixcade.eval.paired import mcnemar_p, paired_difference


def test_paired_difference_counts_only_discordant_prompts():
    # 10 agreeing prompts carry no information; 1 vs 5 discordant: p = 2 * P(X <= 1), X ~ Bin(6, 1/2)
    a = [True] * 5 + [False] * 5 + [True] + [False] * 5
    b = [True] * 5 + [False] * 5 + [False] + [True] * 5
    only_a, only_b, p = paired_difference(a, b)
    assert (only_a, only_b) == (1, 5)
    assert p == pytest.approx(2 * (1 + 6) / 2**6)
    assert paired_difference([True, False], [True, False]) == (0, 0, 1.0)
    assert paired_difference([True] * 8, [False] * 8)[2] == pytest.approx(2 / 2**8)
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([True], [True, False])


@pytest.mark.parametrize("only_a,only_b", [(0, 1), (3, 3), (2, 9), (17, 4), (40, 25)])
def test_mcnemar_p_is_the_two_sided_exact_binomial_test(only_a, only_b):
    assert mcnemar_p(only_a, only_b) == pytest.approx(binomtest(only_a, only_a + only_b).pvalue)
