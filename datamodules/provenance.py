"""Where a number comes from: the commit, the date, the machine and its load.

Every measured file of the suite (results tables, ``results/bench/``) carries these, so that a
number read later can be traced to the code that produced it and to how busy the machine was
(timings on a shared machine mean little without the load).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = [
    "REPO",
    "git_commit",
    "load_average",
    "machine",
    "markdown_line",
    "provenance",
    "utc_now",
]

REPO = Path(__file__).resolve().parent.parent


def git_commit(repo: str | Path = REPO) -> str:
    """The short hash of HEAD, ``-dirty`` when tracked files (outside ``results/``) differ
    from it; ``unknown`` outside a git checkout (an installed copy) or without git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(  # results/ is what the code writes, not what computes it
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
            cwd=repo,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_model() -> str:
    """The CPU's marketing name: /proc/cpuinfo on Linux, sysctl on macOS, else platform's."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                # x86: "model name"; some ARM kernels: "Model" or "Hardware"
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def _usable_cores() -> int | None:
    """Cores this process may run on (a container or taskset can allow fewer than exist)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def machine() -> dict[str, Any]:
    """CPU model, cores (present and usable by this process), architecture and OS."""
    return {
        "cpu": _cpu_model(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages; None where the OS has none (Windows)."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def utc_now() -> str:
    """The date and time in UTC, ISO 8601 to the second (``2026-12-07T20:03:05Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def provenance(**extra: Any) -> dict[str, Any]:
    """Commit, date (UTC), machine and the load now (``load_before``: call it before the
    measurement and add ``load_after=load_average()`` after it), plus ``extra``."""
    return {
        "commit": git_commit(),
        "date": utc_now(),
        "machine": machine(),
        "load_before": load_average(),
        **extra,
    }


def markdown_line(record: dict[str, Any]) -> str:
    """One sentence for a results file: ``commit abc1234, 2026-12-07T20:03:05Z, AMD EPYC
    (2 cores, x86_64, Linux-6.1), load 1.53 before and 1.39 after``."""

    def load(values: list[float] | None) -> str:
        return "unknown" if not values else f"{values[0]:.2f}"

    m = record["machine"]
    cores = f"{m['cores']} cores"
    if m.get("usable_cores") and m["usable_cores"] != m["cores"]:
        cores = f"{m['usable_cores']} of {m['cores']} cores usable"
    text = (
        f"commit {record['commit']}, {record['date']}, {m['cpu']} ({cores}, {m['arch']}, "
        f"{m['os']}), load average {load(record.get('load_before'))} before"
    )
    if "load_after" in record:
        text += f" and {load(record['load_after'])} after"
    return text
