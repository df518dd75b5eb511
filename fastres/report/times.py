"""A setting's training time against the reference's: paired by seed where a seed's runs ran
next to each other, leaving out runs that shared their CPU with other processes.
"""

from __future__ import annotations

import statistics
from typing import Any

from .. import contention
from ..rundir import training_interval
from .settings import Group

# Two runs "ran next to each other" when their starts are at most this many times the longer
# run's training time apart: side by side (0), one after the other (~1), or with up to three
# runs of other settings between them (~4: `fastres ablate --interleave` with five settings
# puts a seed's five runs in a row), so that the host's drift over hours (BENCHMARKS.md, the
# interleaved CPU studies) stays out of a pair.
NEIGHBOURS = 4.5


def shared_cpu(summary: dict[str, Any] | None) -> bool:
    """Whether a run shared its CPU with other processes (contention.py): its time is then the
    machine's load, not its setting's cost."""
    return contention.is_shared((summary or {}).get("cpu_wait"))


def time_comparison(group: Group, reference: Group) -> dict[str, Any] | None:
    """``train_time_s`` of ``group`` against ``reference``'s, leaving out runs that shared
    their CPU (``left_out`` counts them). When seeds that ran in both ran next to each other
    (see NEIGHBOURS; what ``fastres ablate --interleave`` does), the median of those seeds'
    ratios: a machine's drift between the two is then small (``not_beside`` counts the seeds
    whose runs ran further apart, left out). Else the ratio of the two medians, with how far
    apart the runs ran (``apart_s``, the largest start-to-start distance of a seed's pair; None
    when the summaries do not say when)."""
    if not group.done or not reference.done:
        return None
    left_out = sum(shared_cpu(r.summary) for r in group.done + reference.done)
    mine, theirs = _timed_summaries(group), _timed_summaries(reference)
    if not mine or not theirs:
        return {
            "paired": False,
            "n": 0,
            "seeds": [],
            "values": [],
            "ratio": None,
            "apart_s": None,
            "left_out": left_out,
            "not_beside": 0,
        }
    pairs = [
        p
        for seed in sorted(set(mine) & set(theirs))
        if (p := _closest_pair(seed, mine[seed], theirs[seed])) is not None
    ]
    beside = [p for p in pairs if p["neighbours"]]
    if beside:  # drift-free pairs, even a few, say more than medians of runs hours apart
        ratios = [p["ratio"] for p in beside]
        return {
            "paired": True,
            "n": len(ratios),
            "seeds": [p["seed"] for p in beside],
            "values": ratios,
            "ratio": statistics.median(ratios),
            "apart_s": max(p["apart_s"] for p in beside),
            "left_out": left_out,
            "not_beside": len(pairs) - len(beside),
        }
    a, b = (statistics.median(ss[0]["train_time_s"] for ss in d.values()) for d in (mine, theirs))
    return {
        "paired": False,
        "n": min(len(mine), len(theirs)),
        "seeds": [],
        "values": [],
        "ratio": a / b if a and b else None,
        "apart_s": max(p["apart_s"] for p in pairs) if pairs else None,
        "left_out": left_out,
        "not_beside": 0,
    }


def _timed_summaries(group: Group) -> dict[int, list[dict[str, Any]]]:
    """Per seed, the summaries whose time counts: the counted run's first, then its twins'
    (see load_studies), leaving out runs that shared their CPU; seeds with none left out."""
    per_seed = {
        r.config.seed: [
            t.summary for t in [r, *r.twins] if t.complete and not shared_cpu(t.summary)
        ]
        for r in group.done
    }
    return {seed: ss for seed, ss in per_seed.items() if ss}


def _closest_pair(
    seed: int, mine: list[dict[str, Any]], theirs: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """Of a seed's runs in both settings, the two that ran closest together, with their time
    ratio; None when no summary says when it ran."""
    timed = [
        (abs(a[0] - b[0]), max(a[1] - a[0], b[1] - b[0]), x, y)
        for x in mine
        for y in theirs
        if (a := training_interval(x)) is not None and (b := training_interval(y)) is not None
    ]
    if not timed:
        return None
    apart, longest, x, y = min(timed, key=lambda t: t[0])
    return {
        "seed": seed,
        "ratio": x["train_time_s"] / y["train_time_s"],
        "apart_s": apart,
        "neighbours": apart <= NEIGHBOURS * longest,
    }
