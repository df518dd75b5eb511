"""Multi-seed studies (``fastres ablate``): plan one run per (setting, seed), launch them
through a launcher, record the study in ``OUT/study.json`` and report it.

Read it top-down (setup.cfg's ``fastres.study`` contract): ``api`` (``run_study``: a whole
study as one call) over ``registry`` (the launchers by name) over the launchers (``local``:
this process's children through ``pool``; ``slurm``: submitit jobs through ``jobs``) over
``launcher`` (the interface they implement) over ``records`` (``study.json``, ``--status``)
over ``planning`` (the runs and their commands) over ``reuse`` (earlier studies' runs) and the
helpers ``devices``, ``factors`` (``--base``) and ``projection`` (``--dry-run``'s time).
"""

from .api import DryRun, StudyRequest, StudyResult, check_base, listing, run_study
from .launcher import Launch, Launcher, Outcome
from .planning import PlannedRun, describe_plan, plan, preset_listing, refresh
from .records import record, status_lines
from .registry import LAUNCHERS, get_launcher, register

__all__ = [
    "LAUNCHERS",
    "DryRun",
    "Launch",
    "Launcher",
    "Outcome",
    "PlannedRun",
    "StudyRequest",
    "StudyResult",
    "check_base",
    "describe_plan",
    "get_launcher",
    "listing",
    "plan",
    "preset_listing",
    "record",
    "refresh",
    "register",
    "run_study",
    "status_lines",
]
