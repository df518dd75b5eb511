"""Small-sample statistics against numbers worked by hand and published power tables."""

from __future__ import annotations

import math

import pytest

from fastres.seedstats import (
    binomial_stderr,
    paired_difference,
    power,
    seeds_to_separate,
    t_quantile,
    welch_difference,
)


def test_t_quantiles_match_the_printed_table():
    # Two-sided 95%: 12.706 (1 df), 4.303 (2 df), 2.776 (4 df), 1.960 in the limit.
    assert t_quantile(1) == pytest.approx(12.706, abs=5e-4)
    assert t_quantile(2) == pytest.approx(4.303, abs=5e-4)
    assert t_quantile(4) == pytest.approx(2.776, abs=5e-4)
    assert t_quantile(10**6) == pytest.approx(1.960, abs=5e-4)


def test_a_three_seed_paired_difference_two_standard_errors_out_is_not_separated():
    # Differences of 1, 2 and 3 points: mean 2, sd 1, s.e. 1/sqrt(3) = 0.5774; 2 df, so the
    # interval is 2 ± 4.303 * 0.5774 = 2 ± 2.484 = [-0.484, 4.484]: it holds 0, although the
    # mean is 3.46 standard errors from it (the old two-s.e. rule would have marked it).
    d = paired_difference([0.01, 0.02, 0.03])
    assert d["n"] == 3 and d["df"] == 2
    assert d["stderr"] == pytest.approx(0.005774, abs=1e-6)
    assert d["half_width"] == pytest.approx(0.02484, abs=1e-5)
    assert (d["low"], d["high"]) == (
        pytest.approx(-0.00484, abs=1e-5),
        pytest.approx(0.04484, abs=1e-5),
    )
    assert d["mean"] / d["stderr"] > 2 and not d["significant"]
    # 3, 2, 2.5 points: mean 2.5, sd 0.5, s.e. 0.2887, half-width 1.242: [1.258, 3.742], separated.
    d = paired_difference([0.03, 0.02, 0.025])
    assert d["low"] == pytest.approx(0.01258, abs=1e-5) and d["significant"]
    d = paired_difference([-0.03, -0.02, -0.025])
    assert d["high"] == pytest.approx(-0.01258, abs=1e-5) and d["significant"], (
        "a loss is separated too"
    )


def test_an_unpaired_difference_takes_welch_satterthwaite_degrees_of_freedom():
    # a = 1, 2, 3 (variance 1, n 3), b = 4, 6 (variance 2, n 2): s.e.^2 = 1/3 + 2/2 = 4/3,
    # df = (4/3)^2 / ((1/3)^2 / 2 + 1^2 / 1) = 1.7778 / 1.0556 = 1.6842.
    d = welch_difference([1, 2, 3], [4, 6])
    assert d["mean"] == pytest.approx(-3.0)
    assert d["stderr"] == pytest.approx(math.sqrt(4 / 3))
    assert d["df"] == pytest.approx(1.6842, abs=1e-4)
    assert d["low"] < 0 < d["high"] and not d["significant"]


def test_seeds_to_separate_match_published_power_tables():
    # 80% power, two-sided alpha 0.05 (e.g. Cohen's tables / G*Power): a one-sample (paired)
    # t-test needs 10 pairs at an effect of one sd and 34 at half an sd; two samples of 17 each
    # at one sd.
    assert seeds_to_separate(1.0, 1.0) == 10
    assert power(1.0, 1.0, 10) == pytest.approx(0.803, abs=1e-3)
    assert power(1.0, 1.0, 9) < 0.8
    assert seeds_to_separate(0.5, 1.0) == 34
    assert seeds_to_separate(-0.5, 1.0) == 34, "the sign does not matter"
    assert seeds_to_separate(1.0, 1.0, paired=False) == 17
    assert seeds_to_separate(0.0, 1.0) is None, "no number of seeds separates no difference"
    assert seeds_to_separate(1e-6, 1.0) is None, "more than the most it searches"
    # An effect 5 sd large (scipy's noncentral t gives nan for its wrong-sign tail): 3 pairs.
    assert power(5.0, 1.0, 3) == pytest.approx(0.975, abs=1e-3)
    assert seeds_to_separate(5.0, 1.0) == 3


def test_the_binomial_limit_of_one_accuracy_on_the_test_set():
    # sqrt(0.86 * 0.14 / 10000) = 0.00347: 0.35 points at 86% on CIFAR-10's 10,000 images.
    assert binomial_stderr(0.86) == pytest.approx(0.00347, abs=1e-5)
    assert binomial_stderr(0.5, 2500) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        binomial_stderr(0.5, 0)


def test_an_accuracy_at_chance_is_within_three_standard_errors_of_one_in_ten():
    from fastres.seedstats import at_chance, test_images

    assert at_chance(0.1) and at_chance(0.108) and not at_chance(0.11)  # 10,000 images: 0.3 pt
    assert at_chance(0.15, 100) and not at_chance(0.20, 100)  # 100 images: 3 points
    assert test_images(0) == 10_000 and test_images(500) == 500 and test_images(20_000) == 10_000
