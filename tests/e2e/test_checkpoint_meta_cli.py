"""Every command that loads a checkpoint (`index --model`, `evaluate`) refuses a crafted one with one line naming
the checkpoint and the field, exit 2, and writes no index."""

import math

import pytest

from helpers.cli import assert_one_line_error, run_cli
from helpers.datasets import make_folder_dataset
from helpers.search import pattern_image, tiny_checkpoint
from lookalike.train.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("isolated_home")


def _crafted(tmp_path, field, value):
    blob = load_checkpoint(tiny_checkpoint(tmp_path / "good.pt"))
    blob["meta"][field] = value
    path = tmp_path / f"bad-{field}.pt"
    save_checkpoint({k: v for k, v in blob.items() if k not in ("format", "version")}, path)
    return path


@pytest.mark.parametrize("field, value", [("input_size", 10**6), ("std", [0.25, 0.0, 0.25]),
                                          ("mean", [math.nan, 0.5, 0.5])])
def test_index_refuses_a_crafted_checkpoint(tmp_path, monkeypatch, capsys, field, value):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        (photos / f"{i}.png").write_bytes(pattern_image(i))
    bad = _crafted(tmp_path, field, value)
    code, out, err = run_cli(["index", photos, "--index", tmp_path / "ix", "--model", bad], monkeypatch, capsys)
    assert_one_line_error(code, err, str(bad), field)
    assert out == "" and not (tmp_path / "ix").exists()


def test_evaluate_refuses_a_crafted_checkpoint(tmp_path, monkeypatch, capsys):
    data = make_folder_dataset(tmp_path / "data", n_train=1, n_test=1)
    bad = _crafted(tmp_path, "model_kwargs", {"widths": [10**9, 8, 8]})
    code, _, err = run_cli(["evaluate", bad, "--data", data, "--device", "cpu"], monkeypatch, capsys)
    assert_one_line_error(code, err, str(bad), "model_kwargs widths")
