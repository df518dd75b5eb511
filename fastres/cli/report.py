"""``fastres report``: aggregate a folder of runs (or several) into report.md, plots, JSON."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="aggregate the runs in a folder (or several): report.md, plots, JSON",
        description="Group the runs below DIR (or below several DIRs, as one study) by setting "
        "(preset + recipe), and write into DIR (or --out OUT) report.md (final and "
        "best-epoch val accuracy, mean ± sample std over seeds, the difference from "
        "the reference with its 95% interval from Student's t for the n at hand and "
        "the seeds that would separate it, train accuracy, epochs, wall time, "
        "images/s, the original study's number), report.json and the plots "
        "val_acc.png, lr_schedule.png and acc_vs_time.png. Unfinished runs are listed, "
        "not counted; a run whose CPU other processes shared is marked and left out of "
        "time ratios.",
    )
    p.add_argument(
        "dir",
        metavar="DIR",
        nargs="+",
        help="a folder of runs, e.g. the --out of fastres ablate; several are reported as one "
        "study (a setting's seeds from each count together; a run of a setting and seed "
        "already counted from an earlier folder is listed, not counted again)",
    )
    p.add_argument(
        "--out",
        metavar="OUT",
        help="where report.md, report.json and the plots go (default: DIR; "
        "needed with several folders)",
    )
    p.add_argument(
        "--reference",
        metavar="NAME",
        help="the setting every other is compared with (a preset's or a "
        "--variant's name; default: baseline, or the study's preset "
        "when it has variants); paired by seed where seeds match",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the aggregated results as JSON (accuracies as fractions)",
    )


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import summary_table, write_report

    data = write_report(args.dir, args.reference, out=args.out)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(summary_table(data))
        files = data["files"]
        print(
            f"wrote {args.out or args.dir[0]}/{files['markdown']}, {files['json']}, "
            f"{files['val_plot']}, {files['lr_plot']}, {files['time_plot']}"
        )
    return 0
