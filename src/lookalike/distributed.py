"""Many processes the PyTorch way: `torchrun` starts them, `torch.distributed` joins them into a group.

`join()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE) and initialises the
process group: gloo for CPU tensors, NCCL for CUDA tensors when a GPU is asked for. Outside torchrun it returns a
group of one that does nothing, so every caller runs the same code at any world size.

Values every rank must agree on (a plan, a folder name, a list of files) travel as JSON in uint8 tensors, never
pickled. A collective that fails because another rank stopped becomes `GroupLost`, one line.

`launch()` is `lookalike ... --nproc N`: torchrun's own launcher, run in this process, with its failure report
folded into one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from .errors import LookalikeError

LAUNCHED_ENV = "LOOKALIKE_LAUNCHED"  # set by `launch`: its workers leave the failure message to it


class GroupLost(LookalikeError):
    """Another rank stopped (killed, interrupted or failed): this one stops too."""


def in_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_rank() -> int:
    """This process's rank from torchrun's environment (0 outside torchrun)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def launched() -> bool:
    """Whether this process is a worker started by `launch` (which reports for the group)."""
    return os.environ.get(LAUNCHED_ENV) == "1" and in_torchrun()


@dataclass
class Group:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    active: bool = False  # a torch.distributed process group was initialised

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device):
        """A rank's own GPU: cuda -> cuda:LOCAL_RANK; CPU stays CPU."""
        import torch

        if self.active and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def all_reduce(self, tensors: Sequence) -> None:
        """Sum each tensor over the ranks, in place."""
        if not self.active:
            return
        import torch.distributed as dist

        with _collective():
            for t in tensors:
                dist.all_reduce(t)

    def same(self, value: Any) -> Any:
        """Rank 0's `value` (JSON-serialisable) on every rank."""
        if not self.active:
            return value
        import torch
        import torch.distributed as dist

        blob = json.dumps(value).encode() if self.is_main else b""
        with _collective():
            size = torch.tensor([len(blob)], dtype=torch.long)
            dist.broadcast(size, 0)
            data = (torch.frombuffer(bytearray(blob), dtype=torch.uint8) if self.is_main
                    else torch.empty(int(size), dtype=torch.uint8))
            if int(size):
                dist.broadcast(data, 0)
        return json.loads(bytes(data.numpy()).decode()) if not self.is_main else value

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            with _collective():
                dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (filling a cache), the others after it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            with contextlib.suppress(Exception):
                dist.destroy_process_group()
            self.active = False


@contextlib.contextmanager
def _collective() -> Iterator[None]:
    try:
        yield
    except RuntimeError as exc:  # gloo and NCCL name a lost peer in many ways; all are RuntimeErrors
        raise GroupLost(f"another process of the group stopped ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


_STOPPED = "stopped by the launcher because another process stopped"
_stopped_by_launcher = False


def _stop_on_sigterm(signum, frame) -> None:
    # torchrun stops the other ranks with SIGTERM once one has failed: unwind (an atomic write in progress is
    # dropped, the file it replaces stays whole) and leave as a consequence, not a cause.
    global _stopped_by_launcher
    _stopped_by_launcher = True
    raise GroupLost(_STOPPED)


def as_group_lost(exc: BaseException) -> BaseException:
    """`exc`, or GroupLost when the launcher's SIGTERM came first: the handler's GroupLost, raised inside a
    library's native code (matplotlib drawing a plot, say), can come out as that library's own error."""
    if _stopped_by_launcher and not isinstance(exc, LookalikeError):
        return GroupLost(_STOPPED)
    return exc


def join(device: str = "auto") -> Group:
    """The process group of this torchrun worker (one process outside torchrun). `device` ("cpu", "cuda",
    "auto") decides whether NCCL joins gloo."""
    if not in_torchrun():
        return Group()
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if size == 1:
        return Group(rank, size, local_rank, local_size)
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    gpu = (device or "auto").lower() != "cpu" and torch.cuda.is_available()
    if gpu:
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group("cpu:gloo,cuda:nccl" if gpu else "gloo", timeout=timedelta(minutes=30))
    except (RuntimeError, ValueError) as exc:
        raise LookalikeError(f"cannot join the process group ({_first_line(exc)})") from None
    return Group(rank, size, local_rank, local_size, active=True)


# ---------------------------------------------------------------- `--nproc N`: torchrun on this machine


def argv_without_nproc(argv: Sequence[str]) -> list[str]:
    """The command's arguments less `--nproc N` / `--nproc=N`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch(args: Sequence[str], nproc: int, hint: str = "") -> int:
    """Run `lookalike ARGS` as `nproc` torchrun workers on this machine; returns the exit code to leave with.
    Raises `LookalikeError` with one line when a worker was killed or failed without saying why itself."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise LookalikeError(f"--nproc must be >= 1, got {nproc}")
    from .device import free_cores

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, free_cores() // nproc)))
    os.environ[LAUNCHED_ENV] = "1"
    for name in list(logging.root.manager.loggerDict):  # torchrun's progress and failure logs: ours is one line
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    parsed = get_args_parser().parse_args(["--standalone", "--nproc-per-node", str(nproc), "--max-restarts", "0",
                                           "--module", "lookalike", *args])
    try:
        run(parsed)
    except ChildFailedError as exc:
        return _failure_code(exc, hint)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # SignalException: the launcher itself was told to stop
        if type(exc).__name__ == "SignalException":
            return 130
        raise
    return 0


GROUP_LOST_EXIT = 3  # a worker that stopped because another did: the cause is named elsewhere


def _failure_code(exc, hint: str = "") -> int:
    """The exit code for a failed group. Workers that stopped because another did (exit 3) are not causes; Ctrl-C
    (130) and a user error of rank 0 (2) were printed by rank 0; any other cause is named here, in one line."""
    causes = {rank: f.exitcode for rank, f in exc.failures.items() if f.exitcode != GROUP_LOST_EXIT}
    if any(code == 130 for code in causes.values()):
        return 130
    if causes.get(0) == 2:
        return 2
    if not causes:
        causes = {rank: f.exitcode for rank, f in exc.failures.items()}
    rank = min(causes)
    code = causes[rank]
    if code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
    else:
        how = f"exit code {code}"
    raise LookalikeError(f"process {rank} of the group stopped ({how}); every process was stopped" + hint)


def main_prints() -> bool:
    """Whether this process talks to the user: rank 0, or a process outside torchrun."""
    return env_rank() == 0


def reported_elsewhere(exc: BaseException) -> bool:
    """An error this process should not print: any of a rank other than 0 (every rank checks the same settings,
    and rank 0 or the launcher names a failure), or a lost peer under `launch` (which names the cause)."""
    return not main_prints() or (isinstance(exc, GroupLost) and launched())
