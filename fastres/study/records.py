"""A study's record, ``OUT/study.json``: the plan and each launch (host, PID, time, command,
job ids), and ``--status``, which reads it back without starting anything."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..rundir import RunDir, read_study, record_study
from .planning import PlannedRun


def record(
    out: str | Path,
    runs: Sequence[PlannedRun],
    *,
    presets: Sequence[str],
    seeds: int,
    seed: int | None,
    overrides: Mapping[str, Any],
    launcher: str = "local",
    jobs: Mapping[str, str] | None = None,
    launch: Mapping[str, Any] | None = None,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    rules: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Record the plan and this launch in ``OUT/study.json`` (read by ``fastres ablate --status``)
    and return the launch's entry; passing that back as ``launch`` updates it (with ``jobs``,
    run names ``preset/seedS`` -> the scheduler's job ids) instead of adding another. ``rules``
    (setting -> text) says how a ``--base`` study chose a setting's learning rate."""
    out = Path(out)
    plan = {
        "format": "fastres-study",
        "version": 1,
        "presets": list(presets),
        "seeds": seeds,
        "first_seed": seed,
        "overrides": json.loads(json.dumps(dict(overrides), default=list)),
        "launcher": launcher,
        "variants": json.loads(json.dumps(dict(variants or {}), default=list)),
        **({"rules": dict(rules)} if rules else {}),
        # A reused run stays where it is: its path from OUT (relative, so the folders can move
        # together).
        "runs": [
            {
                "preset": r.preset,
                "setting": r.group,
                "seed": r.seed,
                "run_dir": os.path.relpath(r.run_dir, out),
                **({"reused": True} if r.action == "reuse" else {}),
            }
            for r in runs
        ],
    }
    entry = (
        dict(launch)
        if launch
        else {
            "launcher": launcher,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": sys.argv[1:],
        }
    )
    if jobs:
        entry["jobs"] = dict(jobs)
    record_study(out, plan, entry)
    return entry


_STATUS = {
    "new": "not started",
    "completed": "done",
    "incomplete": "interrupted (killed: no summary)",
}


def status_lines(out: str | Path) -> list[str]:
    """One line per planned run of the study in ``out``: its state and epochs done; starts
    nothing."""
    study = read_study(out)
    launches = study.get("launches", [])
    job_ids: dict[str, str] = {}
    for launch in launches:  # the latest launch that submitted a run names its job
        job_ids.update(launch.get("jobs", {}))
    rows = []
    entries = study.get("runs", [])
    own = {(e.get("setting", e["preset"]), e["seed"]) for e in entries if not e.get("reused")}
    for entry in entries:
        name = f"{entry.get('setting', entry['preset'])}/seed{entry['seed']}"
        if entry.get("reused") and (entry.get("setting", entry["preset"]), entry["seed"]) in own:
            continue  # trained in this folder since (a later launch without --reuse)
        run = RunDir(os.path.normpath(Path(out) / entry["run_dir"]))
        state = run.state()
        status = (
            f"running ({run.describe_holder()})"
            if state == "running"
            else _STATUS.get(state, state)
        )
        if entry.get("reused"):
            status = (
                "missing (reused from an earlier study's folder, since moved?)"
                if state == "new"
                else status + " (reused)"
            )
        planned = run.read_config().get("epochs", "?") if run.holds_run() else "?"
        job = f"job {job_ids[name]}  " if name in job_ids else ""
        rows.append(
            (name, status, f"{len(run.read_metrics())}/{planned} epochs", job + str(run.path))
        )
    last = launches[-1] if launches else {}
    head = f"study in {out}: {len(rows)} planned run(s), {len(launches)} launch(es)" + (
        f", last {last.get('started')} on {last.get('host')} (pid {last.get('pid')})"
        if last
        else ""
    )
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(3)]
    return [head] + [
        "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
        for r in rows
    ]
