"""Two trainings never share a run folder, and SIGTERM stops a run as Ctrl-C does: finished epochs kept, the resume
command named, the folder released."""

import csv
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from helpers.cli import LOOKALIKE, assert_one_line_error, run_cli
from helpers.files import snapshot
from lookalike.train.checkpoint import load_checkpoint
from lookalike.train.runlock import LOCK_NAME

pytestmark = pytest.mark.usefixtures("isolated_home")

# A real run that pauses once it has written its config and metrics (the "start" event) until its stdin closes.
PAUSED_RUN = textwrap.dedent("""
    import json, sys
    from lookalike.train.config import TrainConfig
    from lookalike.train.engine import fit

    def pause(kind, payload):
        if kind == "start":
            print("started", flush=True)
            sys.stdin.read()

    fit(TrainConfig(**json.loads(sys.argv[1])), sys.argv[2], on_event=pause)
""")


def test_a_second_training_or_resume_is_refused_while_the_first_runs(tiny_folder_dataset, tmp_path, monkeypatch,
                                                                      capsys):
    run = tmp_path / "run"
    config = dict(data=str(tiny_folder_dataset), epochs=1, widths=[8, 8, 8], batch_size=24, device="cpu")
    first = subprocess.Popen([sys.executable, "-c", PAUSED_RUN, json.dumps(config), str(run)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "started", first.stderr.read() if first.poll() else ""
        before = snapshot(run)
        assert "config.json" in before and "metrics.csv" in before
        args = ["train", "--data", tiny_folder_dataset, "--epochs", "1", "--widths", "8,8,8", "--device", "cpu"]
        for extra in (["--out", run], ["--out", run, "--overwrite"]):
            code, out, err = run_cli([*args, *extra], monkeypatch, capsys)
            assert_one_line_error(code, err, f"--out {run}", f"process {first.pid}")
            assert out == ""
        code, _, err = run_cli(["train", "--resume", run], monkeypatch, capsys)
        assert_one_line_error(code, err, f"--resume {run}", f"process {first.pid}")
        assert snapshot(run) == before  # the first run's files are as it wrote them
    finally:
        _, err = first.communicate("", timeout=300)
    assert first.returncode == 0, err
    assert json.loads((run / "result.json").read_text())["epochs"] == 1
    assert not (run / LOCK_NAME).exists()


def _rows(path):
    return list(csv.DictReader(open(path))) if path.exists() else []


def test_sigterm_keeps_finished_epochs_names_the_resume_command_and_frees_the_folder(tiny_folder_dataset, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([*LOOKALIKE, "train", "--data", str(tiny_folder_dataset), "--epochs", "10000",
                             "--widths", "8,8,8", "--batch-size", "12", "--device", "cpu", "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while len(_rows(run / "metrics.csv")) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and f"lookalike train --resume {run}" in err
    assert err.strip().splitlines()[-1] == "terminated"
    assert load_checkpoint(run / "last.pt")["meta"]["epoch"] >= 1
    assert not (run / LOCK_NAME).exists()  # released on the way out
