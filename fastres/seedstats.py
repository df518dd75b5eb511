"""Statistics for differences over a few seeds: Student's t intervals, the seeds a difference
would need, and the binomial limit of one accuracy on a test set of a given size.

Numbers only (fractions in, fractions out); ``fastres report`` renders them. With 3 seeds a
95% interval is the mean ± 4.30 standard errors (t with 2 degrees of freedom), not ± 2.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from scipy import stats as sps

CONFIDENCE = 0.95
# The power assumed for "seeds to separate": the usual 80% at a two-sided alpha of 1 - CONFIDENCE.
POWER = 0.80
MAX_SEEDS = 1000  # beyond this, "seeds to separate" says "more than MAX_SEEDS"
TEST_IMAGES = 10_000  # CIFAR-10's test set
CLASSES = 10  # CIFAR-10's

RULE = (
    f"{100 * CONFIDENCE:.0f}% interval from Student's t (paired: n-1 degrees of freedom; "
    "unpaired: Welch-Satterthwaite); marked when it excludes 0"
)


def t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
    """The two-sided critical value of Student's t: t(0.975, 2) = 4.303 for 95% and 3 seeds."""
    return float(sps.t.ppf(0.5 + confidence / 2, df))


def _interval(mean: float, stderr: float, df: float, confidence: float) -> dict[str, Any]:
    half = t_quantile(df, confidence) * stderr
    return {
        "mean": mean,
        "stderr": stderr,
        "df": df,
        "t": t_quantile(df, confidence),
        "half_width": half,
        "low": mean - half,
        "high": mean + half,
        "confidence": confidence,
        "significant": bool(mean - half > 0 or mean + half < 0),
    }


def paired_difference(diffs: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """The mean of per-seed differences with its t interval (n-1 degrees of freedom) and the
    seeds that would separate it at its spread; needs at least 2 differences."""
    if len(diffs) < 2:
        raise ValueError(f"a paired interval needs at least 2 differences, got {len(diffs)}")
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    result = _interval(mean, sd / math.sqrt(len(diffs)), len(diffs) - 1, confidence)
    return result | {
        "n": len(diffs),
        "sd": sd,
        "seeds_to_separate": seeds_to_separate(mean, sd, paired=True, alpha=1 - confidence),
    }


def welch_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
) -> dict[str, Any]:
    """mean(a) - mean(b) of unpaired samples with its t interval, the degrees of freedom from
    Welch-Satterthwaite; needs at least 2 values in each."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(
            f"an unpaired interval needs at least 2 values on each side, got {len(a)} and {len(b)}"
        )
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se2 = va + vb
    if se2 == 0:
        df: float = len(a) + len(b) - 2
    else:
        df = se2**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    mean = statistics.fmean(a) - statistics.fmean(b)
    # The spread one seed of either shows, for the seeds an equal-sized pair of samples needs.
    sd = math.sqrt((statistics.variance(a) + statistics.variance(b)) / 2)
    return _interval(mean, math.sqrt(se2), df, confidence) | {
        "n": min(len(a), len(b)),
        "sd": sd,
        "seeds_to_separate": seeds_to_separate(mean, sd, paired=False, alpha=1 - confidence),
    }


def power(
    effect: float, sd: float, n: int, *, paired: bool = True, alpha: float = 1 - CONFIDENCE
) -> float:
    """The chance that a two-sided t-test at ``alpha`` over ``n`` seeds (per side, unpaired)
    finds a true difference ``effect`` when one seed's spread is ``sd`` (noncentral t)."""
    df = n - 1 if paired else 2 * n - 2
    if df < 1:
        return 0.0
    se = sd / math.sqrt(n) if paired else sd * math.sqrt(2 / n)
    if se == 0:
        return 1.0 if effect else 0.0
    nc, crit = abs(effect) / se, t_quantile(df, 1 - alpha)
    # The wrong-sign tail is negligible for a large effect, where scipy's nct returns nan for it.
    wrong_sign = float(sps.nct.cdf(-crit, df, nc))
    return float(sps.nct.sf(crit, df, nc)) + (wrong_sign if math.isfinite(wrong_sign) else 0.0)


def seeds_to_separate(
    effect: float,
    sd: float,
    *,
    paired: bool = True,
    alpha: float = 1 - CONFIDENCE,
    target: float = POWER,
) -> int | None:
    """The fewest seeds (pairs, or runs per setting when unpaired) whose t-test finds
    ``effect`` with probability ``target`` at the spread ``sd``; None for no effect or more
    than MAX_SEEDS."""
    if effect == 0 or not math.isfinite(effect) or not math.isfinite(sd):
        return None
    for n in range(2, MAX_SEEDS + 1):
        if power(effect, sd, n, paired=paired, alpha=alpha) >= target:
            return n
    return None


def binomial_stderr(accuracy: float, images: int = TEST_IMAGES) -> float:
    """The standard error of one accuracy measured on ``images`` test images: what the test
    set's size alone allows when comparing with a number measured elsewhere (0.35 points at
    86% on 10,000). Paired differences on the same images are not limited by it."""
    if images < 1:
        raise ValueError(f"a test set needs at least 1 image, got {images}")
    return math.sqrt(accuracy * (1 - accuracy) / images)


def test_images(test_subset: int) -> int:
    """How many test images a run evaluates: its ``--test-subset`` when set, else the set."""
    return min(test_subset or TEST_IMAGES, TEST_IMAGES)


def at_chance(accuracy: float, images: int = TEST_IMAGES, classes: int = CLASSES) -> bool:
    """Whether an accuracy is what guessing one of ``classes`` gives, within three binomial
    standard errors on ``images`` test images: a run that did not learn (a loss stuck at
    ln 10 ends there without a NaN to stop it)."""
    chance = 1 / classes
    return accuracy <= chance + 3 * binomial_stderr(chance, images)
