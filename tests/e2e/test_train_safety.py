"""Training never loses an earlier run, honours the umask, and turns bad settings into one line and exit 2."""

import json
import math
import os

import pytest
import torch

from helpers.cli import assert_one_line_error, run_cli
from helpers.datasets import make_folder_dataset
from helpers.files import file_mode, snapshot
from lookalike.errors import LookalikeError
from lookalike.train.checkpoint import load_checkpoint, save_checkpoint
from lookalike.train.config import TrainConfig, validate
from lookalike.train.engine import fit
from lookalike.train.rundir import RUN_FILES, new_run_dir

pytestmark = pytest.mark.usefixtures("isolated_home")
SMALL = ["--widths", "8,8,8", "--batch-size", "12", "--device", "cpu"]



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("d") / "data", n_train=4, n_test=2)


@pytest.fixture
def trained(tmp_path, data):
    """A finished one-epoch run, trained through the library."""
    run = tmp_path / "run"
    fit(TrainConfig(data=str(data), epochs=1, widths=[8, 8, 8], batch_size=12, device="cpu"), run)
    return run


# ---------------------------------------------------------------- no run is lost


def test_a_second_run_into_the_same_folder_is_refused_and_changes_nothing(capsys, monkeypatch, data, trained):
    (trained / "notes.txt").write_text("mine")
    before = snapshot(trained)
    code, out, err = run_cli(["train", "--data", data, "--epochs", "1", *SMALL, "--out", trained], monkeypatch, capsys)
    assert_one_line_error(code, err, "already holds a run", f"--resume {trained}", "new --out")
    assert "--overwrite" not in err  # the way out never destroys data by itself
    assert snapshot(trained) == before and out == ""
    with pytest.raises(LookalikeError, match="already holds a run"):  # the library refuses too
        fit(TrainConfig(data=str(data), epochs=1, widths=[8, 8, 8], device="cpu"), trained)


def test_overwrite_replaces_only_the_runs_own_files(capsys, monkeypatch, data, trained):
    (trained / "notes.txt").write_text("mine")
    old_best = (trained / "best.pt").read_bytes()
    code, _, err = run_cli(["train", "--data", data, "--epochs", "2", *SMALL, "--seed", "5",
                            "--out", trained, "--overwrite"], monkeypatch, capsys)
    assert code == 0, err
    assert (trained / "notes.txt").read_text() == "mine"
    assert (trained / "best.pt").read_bytes() != old_best
    assert json.loads((trained / "result.json").read_text())["epochs"] == 2
    code, _, err = run_cli(["train", "--resume", trained, "--overwrite"], monkeypatch, capsys)
    assert_one_line_error(code, err, "--overwrite", "--resume")


def test_overwrite_never_touches_files_that_are_not_a_run(capsys, monkeypatch, data, tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "metrics.csv").write_text("quarter,revenue\nQ1,10\n")
    before = snapshot(folder)
    code, _, err = run_cli(["train", "--data", data, "--epochs", "1", *SMALL, "--out", folder,
                            "--overwrite"], monkeypatch, capsys)
    assert_one_line_error(code, err, "no Lookalike run")
    assert snapshot(folder) == before


def test_resume_without_last_pt_never_restarts_over_best_pt(capsys, monkeypatch, trained):
    (trained / "last.pt").unlink()
    before = snapshot(trained)
    code, _, err = run_cli(["train", "--resume", trained], monkeypatch, capsys)
    assert_one_line_error(code, err, "last.pt is missing", "best.pt", "new --out")
    assert snapshot(trained) == before


def test_a_run_killed_before_its_first_epoch_still_restarts(data, trained):
    for name in set(RUN_FILES) - {"config.json"}:
        (trained / name).unlink()
    result = fit(TrainConfig(), trained, resume=True)
    assert result["epochs"] == 1 and (trained / "best.pt").exists()


def test_default_run_folders_never_collide(tmp_path):
    (tmp_path / "runs").mkdir()
    first = new_run_dir(tmp_path / "runs", "fast", now=1_800_000_000)
    second = new_run_dir(tmp_path / "runs", "fast", now=1_800_000_000)
    assert first != second and first.is_dir() and second.is_dir()
    assert second.name == first.name + "-2"


def test_default_run_folder_of_a_failed_start_is_not_left_behind(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", "--data", tmp_path / "missing", *SMALL], monkeypatch, capsys)
    assert_one_line_error(code, err, "does not exist")
    assert list((tmp_path / "runs").iterdir()) == []


# ---------------------------------------------------------------- file modes


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_every_file_of_a_run_honours_the_umask(tmp_path, data, umask, isolated_home, mask):
    umask(mask)
    run = tmp_path / "run"
    fit(TrainConfig(data=str(data), epochs=1, widths=[8, 8, 8], batch_size=12, device="cpu"), run)
    written = [p for p in run.iterdir()] + list((isolated_home / "datasets").rglob("*.pt"))
    assert {p.name for p in run.iterdir()} == set(RUN_FILES)
    assert {p.name: file_mode(p) for p in written} == {p.name: 0o666 & ~mask for p in written}
    assert file_mode(run) == 0o777 & ~mask


def test_a_resumed_run_keeps_the_modes_the_user_set(trained, umask):
    os.chmod(trained / "result.json", 0o640)
    os.chmod(trained / "confusion.png", 0o600)
    fit(TrainConfig(), trained, resume=True)  # a finished run: evaluates, rewrites result.json and the plot
    assert file_mode(trained / "result.json") == 0o640 and file_mode(trained / "confusion.png") == 0o600


# ---------------------------------------------------------------- bad settings


@pytest.mark.parametrize("args, fragment", [
    (["--epochs", "nan"], "--epochs"), (["--epochs", "inf"], "--epochs"), (["--epochs", "-1"], "--epochs"),
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--lr", "0"], "--lr"),
    (["--momentum", "nan"], "--momentum"), (["--momentum", "1"], "--momentum"),
    (["--weight-decay", "nan"], "--weight-decay"), (["--weight-decay", "-1"], "--weight-decay"),
    (["--label-smoothing", "nan"], "--label-smoothing"), (["--gamma", "inf"], "--gamma"),
    (["--crop-fraction", "nan"], "--crop-fraction"), (["--milestones", "5,nan", "--schedule", "step"], "--milestones"),
    (["--seed", "-1"], "--seed"), (["--widths", "8,0,8"], "--widths"), (["--depth", "9"], "--depth"),
    (["--time-budget", "nan"], "--time-budget"), (["--time-budget", "inf"], "--time-budget"),
])
def test_non_finite_or_out_of_range_numbers_are_one_line(capsys, monkeypatch, data, tmp_path, args, fragment):
    code, out, err = run_cli(["train", "--data", data, *SMALL, *args, "--out", tmp_path / "r"], monkeypatch, capsys)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("field, value", [
    ("epochs", float("nan")), ("epochs", "5"), ("batch_size", 12.5), ("batch_size", True), ("lr", float("-inf")),
    ("bias_lr_scale", 0.0), ("whiten_bias_fraction", 2.0), ("eval_batch_size", 0), ("flip", "yes"),
    ("pad_mode", "wrap"), ("widths", "8,8,8"), ("milestones", [float("inf")]), ("seed", 2**40),
])
def test_python_callers_get_the_same_checks(field, value):
    with pytest.raises(LookalikeError, match=field):
        validate(TrainConfig(data="d", **{field: value}))


def test_a_resume_file_without_its_config_is_one_line(capsys, monkeypatch, trained):
    blob = load_checkpoint(trained / "last.pt")
    del blob["config"]
    save_checkpoint({k: v for k, v in blob.items() if k not in ("format", "version")}, trained / "last.pt")
    code, _, err = run_cli(["train", "--resume", trained], monkeypatch, capsys)
    assert_one_line_error(code, err, "cannot be resumed", "'config'")


def test_a_resume_file_with_bad_saved_settings_is_one_line(capsys, monkeypatch, trained):
    blob = load_checkpoint(trained / "last.pt")
    blob["config"]["epochs"] = math.inf
    save_checkpoint({k: v for k, v in blob.items() if k not in ("format", "version")}, trained / "last.pt")
    code, _, err = run_cli(["train", "--resume", trained], monkeypatch, capsys)
    assert_one_line_error(code, err, "epochs", "inf")


def test_a_diverging_run_stops_before_writing_a_nan_model(capsys, monkeypatch, data, tmp_path):
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--data", data, "--epochs", "3", *SMALL, "--optimizer", "sgd",
                            "--lr", "1e20", "--no-lookahead", "--out", run], monkeypatch, capsys)
    assert_one_line_error(code, err, "diverged", "lower lr", after_warnings=True)  # after the run's progress lines
    for name in ("best.pt", "last.pt"):
        if (run / name).exists():
            state = load_checkpoint(run / name)["model_state"]
            assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    assert not (run / "result.json").exists()


def test_a_single_class_is_refused(capsys, monkeypatch, tmp_path):
    one = make_folder_dataset(tmp_path / "one", classes=("cat",), n_train=4, n_test=2)
    code, _, err = run_cli(["train", "--data", one, "--epochs", "1", *SMALL,
                            "--out", tmp_path / "r"], monkeypatch, capsys)
    assert_one_line_error(code, err, "1 class (cat)", "at least two", after_warnings=True)  # after the run's progress lines


def test_a_class_without_readable_training_images_is_a_warning(capsys, monkeypatch, tmp_path):
    root = make_folder_dataset(tmp_path / "d", n_train=4, n_test=2)
    for f in (root / "train" / "triangle").iterdir():
        f.write_bytes(b"not an image")
    code, _, err = run_cli(["train", "--data", root, "--epochs", "1", *SMALL,
                            "--out", tmp_path / "r"], monkeypatch, capsys)
    assert code == 0, err
    assert "warning: no readable training images for triangle" in " ".join(err.split())
