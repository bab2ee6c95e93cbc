"""Data-parallel training under torchrun (gloo, 2 CPU processes) against one process with the same global batch.

The maths is the same (synchronised BatchNorm, the global batch's loss, averaged gradients); the rounding is not:
two processes sum the BatchNorm statistics and the gradients in another order, and each runs convolutions on
another number of threads. With plain SGD these differences stay near float32 resolution, so losses agree to
1e-4 (relative) and accuracies exactly; Muon's orthogonalisation amplifies them (about 1e-3 after a few steps),
which is why these tests train with SGD.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.datasets import make_folder_dataset
from lookalike.train.checkpoint import load_checkpoint
from lookalike.train.config import TrainConfig
from lookalike.train.engine import fit

pytestmark = pytest.mark.usefixtures("isolated_home")
SETTINGS = dict(widths=[8, 16, 16], batch_size=12, device="cpu", seed=3, optimizer="sgd")


def _args(data: Path, epochs: int) -> list[str]:
    return ["--data", str(data), "--epochs", str(epochs), "--widths", "8,16,16", "--batch-size", "12",
            "--device", "cpu", "--seed", "3", "--optimizer", "sgd"]


def _lookalike(*args, **kw):
    return subprocess.run([sys.executable, "-m", "lookalike", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kw)


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path))) if path.exists() else []


def _assert_same_metrics(rows_a: list[dict], rows_b: list[dict]) -> None:
    assert len(rows_a) == len(rows_b)
    for a, b in zip(rows_a, rows_b):
        assert (a["epoch"], a["step"], a["lr"]) == (b["epoch"], b["step"], b["lr"])
        for key in ("train_loss", "test_loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4), key
        for key in ("train_acc", "test_acc"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-9), key


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("ddp") / "data")


def test_two_processes_train_like_one_and_only_rank_0_writes(data, tmp_path):
    one = fit(TrainConfig(data=str(data), epochs=2, **SETTINGS), tmp_path / "one")
    work = tmp_path / "cwd"
    work.mkdir()
    proc = _lookalike("train", *_args(data, 2), "--out", tmp_path / "two", "--nproc", "2", "--json", cwd=work)
    assert proc.returncode == 0, proc.stderr
    two = json.loads(proc.stdout)  # one JSON document: rank 1 printed nothing
    assert two["world_size"] == 2 and two["steps"] == one["steps"]
    _assert_same_metrics(_rows(tmp_path / "two" / "metrics.csv"), _rows(tmp_path / "one" / "metrics.csv"))
    assert two["test_acc"] == one["test_acc"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert list(work.iterdir()) == []  # no default run folder, no stray files
    assert proc.stderr.count("epoch   2 ") == 1  # progress from rank 0 only
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2


def _worker_pids(launcher: int) -> dict[int, int]:
    """{rank: pid} of the torchrun workers under the launcher process."""
    found, todo = {}, [launcher]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            todo.append(child)
            try:
                env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            ranks = [e[5:] for e in env if e.startswith(b"RANK=")]
            if ranks:
                found[int(ranks[0])] = child
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the workers through /proc")
def test_killed_rank_stops_the_group_and_one_process_resumes_it(data, tmp_path):
    run = tmp_path / "run"
    # 12 epochs: after the second, ten more (each writes a checkpoint and a plot) cannot finish before the kill.
    proc = subprocess.Popen([sys.executable, "-m", "lookalike", "train", *_args(data, 12), "--out", str(run),
                             "--nproc", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while len(_rows(run / "metrics.csv")) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    workers = _worker_pids(proc.pid)
    assert set(workers) == {0, 1}, workers
    os.kill(workers[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "process 1" in errors[0] and "SIGKILL" in errors[0], err
    assert f"--resume {run}" in err
    done = load_checkpoint(run / "last.pt")["meta"]["epoch"]  # whole, and the metrics go no further
    assert 2 <= done < 12 and len(_rows(run / "metrics.csv")) == done

    fit(TrainConfig(), run, resume=True)  # one process continues the two-process run
    fit(TrainConfig(data=str(data), epochs=12, **SETTINGS), tmp_path / "straight")
    _assert_same_metrics(_rows(run / "metrics.csv"), _rows(tmp_path / "straight" / "metrics.csv"))


def test_ctrl_c_stops_every_process_with_one_message(data, tmp_path):
    run = tmp_path / "run"
    # A session of its own, so that Ctrl-C can be sent as a terminal sends it: to the launcher and its workers.
    proc = subprocess.Popen([sys.executable, "-m", "lookalike", "train", *_args(data, 200), "--out", str(run),
                             "--nproc", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    while len(_rows(run / "metrics.csv")) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "error:" not in err
    assert err.count(f"lookalike train --resume {run}") == 1 and err.count("interrupted") == 1, err
    assert load_checkpoint(run / "last.pt")["meta"]["epoch"] >= 1
