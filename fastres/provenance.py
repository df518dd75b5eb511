"""Where a result came from: the fastres commit and the library versions, recorded with
every run summary, data manifest and benchmark file."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

import torch


def git_commit() -> str | None:
    """The commit of the fastres source tree in use, with '-dirty' for local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_version(name: str) -> str:
    """A distribution's version without importing it (importing ffcv has side effects)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    """fastres, torch, numpy, ffcv and Python versions, plus CUDA's where a GPU is used."""
    found = {
        "fastres": package_version("fastres"),
        "torch": torch.__version__,
        "numpy": package_version("numpy"),
        "ffcv": package_version("ffcv"),
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        found["cuda"] = torch.version.cuda or ""
    return found
