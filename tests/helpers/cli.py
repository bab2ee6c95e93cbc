"""Running `lookalike`: in this process through the real entry point, or as a fresh process."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

# The command line of `lookalike` in a fresh process of this interpreter (this worktree's PYTHONPATH included).
LOOKALIKE = [sys.executable, "-c", "from lookalike.cli import main; main()"]


def _default_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


# Popen options for a child that a test interrupts with SIGINT, as Ctrl-C does. A suite started in the background
# of a non-interactive shell (`pytest &`) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt;
# the child starts with the default disposition instead, so Python installs its handler as in a terminal.
INTERRUPTIBLE = {"preexec_fn": _default_sigint}


def run_cli(args: list, monkeypatch, capsys) -> tuple[int, str, str]:
    """Run `lookalike ARGS` in this process (the real entry point, error mapping included): (exit code, stdout,
    stderr)."""
    from lookalike.cli import main

    monkeypatch.setattr(sys, "argv", ["lookalike", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str, after_warnings: bool = False) -> str:
    """Check a user error as the CLI reports it: exit code 2, no traceback, and on stderr one line `error: ...`
    holding every fragment and nothing else (`after_warnings`: warning or progress lines may come first, the error
    line last). Returns that line."""
    assert code == 2, f"exit code {code}: {err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert after_warnings or len(lines) == 1, err
    assert lines[-1].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, err)
    return lines[-1]


def cli_runner(monkeypatch, capsys, home: Path) -> Callable[[list], subprocess.CompletedProcess]:
    """`run(args)` runs `lookalike ARGS` in this process with `home` as LOOKALIKE_HOME, answering like
    `subprocess.run` (returncode, stdout, stderr): what `run_cli_subprocess` checks, without a new interpreter."""
    monkeypatch.setenv("LOOKALIKE_HOME", str(home))

    def run(args: list) -> subprocess.CompletedProcess:
        code, out, err = run_cli(args, monkeypatch, capsys)
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def run_cli_subprocess(args: list, env_home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `lookalike ARGS` in a fresh process, with `env_home` as its LOOKALIKE_HOME and an empty TORCH_HOME."""
    env = {**os.environ, "LOOKALIKE_HOME": str(env_home), "TORCH_HOME": str(env_home / "torch-empty")}
    return subprocess.run(LOOKALIKE + [str(a) for a in args], capture_output=True, text=True, env=env,
                          timeout=timeout)


class ServeProcess:
    """`lookalike serve ARGS --port 0` in a fresh process: the server binds a port the system picks and prints it,
    and this reads it from that line, so no other process can take the port in between. A context manager:
    `url` is the server's address; after the exit (SIGTERM), `stderr` holds all the server printed."""

    def __init__(self, args: list, env: dict, timeout: float = 120) -> None:
        self.args, self.env, self.timeout = [str(a) for a in args], {**env, "COLUMNS": "200"}, timeout
        self.lines: queue.Queue = queue.Queue()
        self.stderr = ""

    def __enter__(self) -> "ServeProcess":
        self.proc = subprocess.Popen(LOOKALIKE + ["serve", *self.args, "--port", "0"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=self.env)
        # A thread reads stderr to its end, so a chatty server never blocks on a full pipe.
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + self.timeout
        while True:  # "open http://HOST:PORT/" is printed once the socket listens and the model is loaded
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.__exit__()
                raise AssertionError(f"the server printed no address: {self.stderr}")
            found = re.search(r"open http://[^/\s]+:(\d+)/", line)
            if found:
                self.port = int(found.group(1))
                self.url = f"http://127.0.0.1:{self.port}"
                return self

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.stderr += line
            self.lines.put(line)
        self.lines.put(None)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.reader.join(timeout=30)
