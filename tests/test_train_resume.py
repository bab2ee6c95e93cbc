"""A training process killed with SIGKILL and resumed ends with exactly the metrics of an uninterrupted run."""

import csv
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

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


def test_resume_after_kill_matches_uninterrupted_run(tiny_folder_dataset, tmp_path):
    # The first half trains on 24-pixel crops: the kill falls inside that phase, the resumed run crosses it.
    args = ["--data", str(tiny_folder_dataset), "--epochs", str(EPOCHS), "--widths", "8,16,16", "--batch-size", "12",
            "--device", "cpu", "--seed", "3", "--crop-size", "24", "--crop-fraction", "0.5"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", "from lookalike.cli import main; main()", "train", *args,
                             "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(_rows(killed / "metrics.csv")) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = load_checkpoint(killed / "last.pt")["meta"]["epoch"]
    assert 2 <= done_before < EPOCHS

    resumed = fit(TrainConfig(), killed, resume=True)
    straight = fit(TrainConfig(data=str(tiny_folder_dataset), epochs=EPOCHS, widths=[8, 16, 16], batch_size=12,
                               device="cpu", seed=3, crop_size=24, crop_fraction=0.5), tmp_path / "straight")

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
    proc = subprocess.Popen([sys.executable, "-c", "from lookalike.cli import main; main()", "train",
                             "--data", str(tiny_folder_dataset), "--epochs", "200", "--widths", "8,16,16",
                             "--batch-size", "12", "--device", "cpu", "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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

    from conftest import make_folder_dataset

    stored = Path(__file__).parent / "data" / "run_v1"
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
