"""A training process killed with SIGKILL and resumed ends with exactly the metrics of an uninterrupted run."""

import csv
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from helpers.cli import INTERRUPTIBLE, LOOKALIKE
from lookalike.train.checkpoint import load_checkpoint
from lookalike.train.config import TrainConfig
from lookalike.train.engine import fit

pytestmark = pytest.mark.usefixtures("isolated_home")
EPOCHS = 8


def _rows(path):
    if not path.exists():
        return []
    return list(csv.DictReader(open(path)))


def _without_time(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


# The killed run: SIGKILL from inside the run, on the event of the second step of epoch 3. Where the kill lands
# is then known (epoch 2's checkpoint written, epoch 3 half done) however fast or slow the machine is.
KILLED_IN_EPOCH_3 = textwrap.dedent("""
    import json, os, signal, sys
    from lookalike.train.config import TrainConfig
    from lookalike.train.engine import fit

    def kill_in_epoch_3(kind, payload):
        if kind == "step" and payload["epoch"] == 3 and payload["batch"] == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    fit(TrainConfig(**json.loads(sys.argv[1])), sys.argv[2], on_event=kill_in_epoch_3)
""")


def test_resume_after_kill_matches_uninterrupted_run(tiny_folder_dataset, tmp_path):
    # The first half trains on 24-pixel crops: the kill falls inside that phase, the resumed run crosses it.
    config = dict(data=str(tiny_folder_dataset), epochs=EPOCHS, widths=[8, 16, 16], batch_size=12, device="cpu",
                  seed=3, crop_size=24, crop_fraction=0.5)
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLED_IN_EPOCH_3, json.dumps(config), str(killed)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(killed / "last.pt")["meta"]["epoch"] == 2 and len(_rows(killed / "metrics.csv")) == 2

    resumed = fit(TrainConfig(), killed, resume=True)
    straight = fit(TrainConfig(**config), tmp_path / "straight")

    rows_resumed, rows_straight = _rows(killed / "metrics.csv"), _rows(tmp_path / "straight" / "metrics.csv")
    assert len(rows_resumed) == EPOCHS  # no duplicated rows
    assert _without_time(rows_resumed) == _without_time(rows_straight)
    assert resumed["test_acc"] == straight["test_acc"] and resumed["steps"] == straight["steps"]
    a = load_checkpoint(killed / "last.pt")["model_state"]
    b = load_checkpoint(tmp_path / "straight" / "last.pt")["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_of_a_finished_run_only_evaluates(tiny_folder_dataset, tmp_path):
    cfg = TrainConfig(data=str(tiny_folder_dataset), epochs=2, widths=[8, 8, 8], batch_size=12, device="cpu")
    first = fit(cfg, tmp_path / "run")
    again = fit(TrainConfig(), tmp_path / "run", resume=True)
    assert again["test_acc"] == first["test_acc"] and len(_rows(tmp_path / "run" / "metrics.csv")) == 2


def test_ctrl_c_keeps_finished_epochs_and_names_the_resume_command(tiny_folder_dataset, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([*LOOKALIKE, "train",
                             "--data", str(tiny_folder_dataset), "--epochs", "10000", "--widths", "8,16,16",
                             "--batch-size", "12", "--device", "cpu", "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **INTERRUPTIBLE)
    deadline = time.time() + 300
    while len(_rows(run / "metrics.csv")) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and f"lookalike train --resume {run}" in err
    assert err.strip().splitlines()[-1] == "interrupted"
    assert load_checkpoint(run / "last.pt")["meta"]["epoch"] >= 1


def test_resume_with_an_optimizer_state_that_does_not_fit_is_one_clear_error(tiny_folder_dataset, tmp_path):
    from lookalike.errors import LookalikeError
    from lookalike.train.checkpoint import save_checkpoint

    cfg = TrainConfig(data=str(tiny_folder_dataset), widths=[8, 16, 16], batch_size=12, epochs=2, device="cpu")
    fit(cfg, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    state["meta"]["epoch"] = 1  # as if killed after the first epoch
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1]
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, tmp_path / "run" / "last.pt")
    with pytest.raises(LookalikeError, match="optimizer state in last.pt does not fit"):
        fit(cfg, tmp_path / "run", resume=True)


def test_a_run_stopped_by_an_earlier_version_resumes(tmp_path, monkeypatch):
    # tests/data/run_v1 was written by `tests/data/make_run_v1.py` when checkpoint format 1 was current; its config
    # names the data folder "data", relative to the working folder.
    import shutil
    from pathlib import Path

    from helpers.datasets import make_folder_dataset

    stored = Path(__file__).parents[1] / "data" / "run_v1"
    monkeypatch.chdir(tmp_path)
    make_folder_dataset(tmp_path / "data")
    shutil.copytree(stored, tmp_path / "run")
    resumed = fit(TrainConfig(), tmp_path / "run", resume=True)

    saved = json.loads((stored / "config.json").read_text())["config"]
    straight = fit(TrainConfig(**{k: saved[k] for k in ("data", "epochs", "widths", "batch_size", "device", "seed",
                                                         "optimizer", "crop_size", "crop_fraction",
                                                         "eval_batch_size")}), tmp_path / "straight")
    rows = _rows(tmp_path / "run" / "metrics.csv")
    assert rows[0] == _rows(stored / "metrics.csv")[0]  # the stored epoch is kept as it was
    assert [r["epoch"] for r in rows] == ["1", "2"] and resumed["steps"] == straight["steps"] == 6
    # Floats are compared loosely: the stored epoch may have been computed on another CPU.
    for got, want in zip(rows, _rows(tmp_path / "straight" / "metrics.csv")):
        for key in ("lr", "train_loss", "train_acc", "test_loss", "test_acc"):
            assert float(got[key]) == pytest.approx(float(want[key]), rel=1e-3, abs=1e-4), key
    assert resumed["test_acc"] == pytest.approx(straight["test_acc"], abs=1e-6)
