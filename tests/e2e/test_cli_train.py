"""`lookalike train` and `lookalike evaluate` end to end, through the real entry point (`lookalike.cli.main`)."""

import json

import pytest

from helpers.cli import assert_one_line_error, run_cli

pytestmark = pytest.mark.usefixtures("isolated_home")
SMALL = ["--widths", "8,16,16", "--batch-size", "12", "--device", "cpu"]


def test_train_json_then_evaluate(capsys, monkeypatch, tiny_folder_dataset, tmp_path):
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--data", tiny_folder_dataset, "--epochs", "2",
                              *SMALL, "--out", run, "--json"], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert {"test_acc", "best_test_acc", "epochs", "seconds", "run_dir"} <= set(result)
    assert result["epochs"] == 2 and result["run_dir"] == str(run)
    assert "epoch   1" in err and "epoch   2" in err  # one line per epoch on stderr

    code, out, err = run_cli(["evaluate", run / "best.pt", "--data", tiny_folder_dataset,
                              "--json", "--device", "cpu"], monkeypatch, capsys)
    assert code == 0, err
    ev = json.loads(out)
    assert 0 <= ev["test_acc"] <= 1 and set(ev["per_class"]) == {"circle", "square", "triangle"}
    assert sum(map(sum, ev["confusion"])) == 12

    code, out, err = run_cli(["evaluate", run / "last.pt", "--data", tiny_folder_dataset,
                              "--tta", "0", "--device", "cpu"], monkeypatch, capsys)
    assert code == 0 and "test accuracy" in out and "confusion" in err


def test_default_run_folder_and_text_summary(capsys, monkeypatch, tiny_folder_dataset, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["train", "--data", tiny_folder_dataset, "--epochs", "1", *SMALL], monkeypatch, capsys)
    assert code == 0, err
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("fast-") and (runs[0] / "last.pt").exists()
    assert "test accuracy" in out and "test accuracy by epoch" in err


def test_corrupt_image_is_named_and_training_goes_on(capsys, monkeypatch, tiny_folder_dataset, tmp_path):
    (tiny_folder_dataset / "train" / "square" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, out, err = run_cli(["train", "--data", tiny_folder_dataset, "--epochs", "1",
                              *SMALL, "--out", tmp_path / "r", "--json"], monkeypatch, capsys)
    assert code == 0
    assert "warning" in err and "bad.png" in err
    assert any("bad.png" in s for s in json.loads(out)["skipped"])


@pytest.mark.parametrize("setup, args, fragment", [
    ("missing", [], "does not exist"),
    ("no_train", [], "no train/ folder"),
    ("empty_class", [], "holds no images"),
    ("mismatch", [], "different classes"),
    ("ok", ["--epochs", "-1"], "--epochs"),
    ("ok", ["--schedule", "zigzag"], "--schedule"),
    ("ok", ["--time-budget", "soon"], "--time-budget"),
    ("ok", ["--widths", "8,16"], "--widths"),
    ("ok", ["--widths", "a,b,c"], "--widths"),
    ("ok", ["--tta", "7"], "--tta"),
    ("ok", ["--whitening", "cubic"], "--whitening"),
    ("ok", ["--optimizer", "adam"], "--optimizer"),
    ("ok", ["--crop-size", "4"], "--crop-size"),
    ("ok", ["--crop-fraction", "1.5"], "--crop-fraction"),
    ("ok", ["--device", "tpu"], "unknown device"),
    ("ok", ["--model", "nosuchnet"], "unknown model"),
    ("ok", ["--batch-size", "0"], "--batch-size"),
    ("ok", ["--milestones", "5,x", "--schedule", "step"], "--milestones"),
    ("nodata", [], "--data is required"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, monkeypatch, tmp_path, setup, args, fragment):
    from helpers.datasets import broken_folder_dataset

    data = [] if setup == "nodata" else ["--data", broken_folder_dataset(tmp_path, setup)]
    code, out, err = run_cli(["train", *data, *SMALL, *args, "--out", tmp_path / "r"], monkeypatch, capsys)
    assert_one_line_error(code, err, fragment)
    assert out == ""


def test_evaluate_bad_inputs(capsys, monkeypatch, tiny_folder_dataset, tmp_path):
    code, _, err = run_cli(["evaluate", tmp_path / "none.pt", "--data", tiny_folder_dataset], monkeypatch, capsys)
    assert_one_line_error(code, err, "does not exist")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    code, _, err = run_cli(["evaluate", junk, "--data", tiny_folder_dataset], monkeypatch, capsys)
    assert_one_line_error(code, err, "not a readable checkpoint")
    code, _, err = run_cli(["train", "--resume", tmp_path / "no-run"], monkeypatch, capsys)
    assert_one_line_error(code, err, "no such run folder")


def test_evaluate_refuses_other_classes(capsys, monkeypatch, tiny_folder_dataset, tmp_path):
    from helpers.datasets import make_folder_dataset

    run = tmp_path / "run"
    assert run_cli(["train", "--data", tiny_folder_dataset, "--epochs", "1", *SMALL,
                    "--out", run], monkeypatch, capsys)[0] == 0
    other = make_folder_dataset(tmp_path / "other", classes=("cat", "dog"), n_train=1, n_test=2)
    code, _, err = run_cli(["evaluate", run / "best.pt", "--data", other], monkeypatch, capsys)
    assert_one_line_error(code, err, "classes", after_warnings=True)  # after the run's progress lines
