"""What every experiment script writes beside its numbers: the command, commit and machine.

Results files are written with :func:`ssm.util.write_json_atomic` / ``write_text_atomic``."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent


def git_commit(
    paths: tuple[str, ...] = ("ssm", "metarl", "continual", "curricula", "skills", "experiments"),
) -> str:
    """HEAD's hash, with " (dirty)" when ``paths`` have uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *paths], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        return head + (" (dirty)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_metadata() -> dict[str, Any]:
    return {
        "command": " ".join(["python", *sys.argv]),
        "commit": git_commit(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
    }
