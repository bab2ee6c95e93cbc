"""Pick the compute device and size the CPU thread pool to the cores this process may actually use."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .errors import LookalikeError

if TYPE_CHECKING:
    import torch


def free_cores() -> int:
    """Cores this process may run on (cgroup/affinity aware), at least 1; under torchrun, its share of them."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        cores = max(1, os.cpu_count() or 1)
    return max(1, cores // _local_processes())


def one_thread_per_call() -> None:
    """Every BLAS library loaded so far (NumPy's OpenBLAS, and the one inside OpenCV that its matrix products use)
    runs each call on the calling thread alone, from now on. For a server: its concurrent requests already keep
    every core busy, and products split over threads on top of them cost more CPU than they save
    (benchmarks/results/serve_load.md)."""
    from threadpoolctl import threadpool_limits

    try:
        import cv2  # noqa: F401 (loaded now, so that its BLAS is found and limited too)
    except ImportError:  # no spatial verification without it; NumPy's BLAS is still limited
        pass
    threadpool_limits(limits=1, user_api="blas")


def _local_processes() -> int:
    """Processes torchrun started on this machine (LOCAL_WORLD_SIZE; 1 outside torchrun): they share its cores."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def resolve_device(name: str = "auto") -> "torch.device":
    """`auto` takes CUDA when present, else CPU. On CPU, threads = free cores (oversubscription is much slower)."""
    import torch

    name = (name or "auto").lower()
    if name not in {"auto", "cpu", "cuda"} and not name.startswith("cuda:"):
        raise LookalikeError(f"unknown device {name!r}: use auto, cpu or cuda")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LookalikeError("--device cuda asked for, but no CUDA GPU is available: use --device cpu")
    device = torch.device(name)
    if device.type == "cpu":
        torch.set_num_threads(free_cores())
    return device
