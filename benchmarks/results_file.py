"""Benchmark results on record: each run appends its figures to benchmarks/results/<name>.md with the command, the
commit and the machine, so that a figure quoted anywhere can be traced to the run that measured it."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=RESULTS.parent).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        libs = f", torch {torch.__version__}"
    except ImportError:
        gpu, libs = "no GPU", ""
    system = f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    return f"{cpu}, {cores} cores, {gpu}; {system}{libs}"


def record(name: str, lines: list[str]) -> Path:
    """Append a section with this run's command, commit, machine and `lines` (Markdown) to results/<name>.md."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    command = " ".join(["python", os.path.relpath(sys.argv[0], RESULTS.parent.parent), *sys.argv[1:]])
    section = [f"## {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC", "",
               f"- command: `{command}`", f"- commit: {_commit()}", f"- machine: {_machine()}", "", *lines, ""]
    with open(path, "a") as fh:
        fh.write("\n" + "\n".join(section))
    return path
