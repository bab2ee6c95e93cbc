import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from lookalike.errors import LookalikeError
from lookalike.models import create_model
from lookalike.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint


def _meta():
    return {"model": "fast", "model_kwargs": {"num_classes": 3, "widths": [8, 16, 16], "depth": 2},
            "classes": ["a", "b", "c"], "mean": [0.5] * 3, "std": [0.25] * 3, "input_size": 32, "epoch": 1}


def _save_model(path):
    torch.manual_seed(0)
    model = create_model("fast", num_classes=3, widths=(8, 16, 16))
    save_checkpoint({"meta": _meta(), "model_state": model.state_dict()}, path)
    return model.eval()


def test_round_trip(tmp_path):
    model = _save_model(tmp_path / "m.pt")
    loaded, meta = model_from_checkpoint(tmp_path / "m.pt")
    assert not loaded.training and meta["classes"] == ["a", "b", "c"] and meta["input_size"] == 32
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("damage, message", [
    ("truncate", "not a readable checkpoint"),
    ("random", "not a readable checkpoint"),
    ("empty", "is empty"),
    ("foreign", "not a Lookalike checkpoint"),
    ("code", "not a readable checkpoint"),
    ("missing", "does not exist"),
])
def test_damaged_or_foreign_files_give_clear_errors(tmp_path, damage, message):
    path = tmp_path / "m.pt"
    _save_model(path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "random":
        path.write_bytes(os.urandom(4096))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    elif damage == "code":
        import argparse
        torch.save({"format": "lookalike-checkpoint", "obj": argparse.Namespace(x=1)}, path)
    elif damage == "missing":
        path.unlink()
    with pytest.raises(LookalikeError, match=message):
        load_checkpoint(path)


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    _save_model(path)
    before = path.read_bytes()

    def exploding_save(obj, fh):
        fh.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError):
        save_checkpoint({"meta": _meta(), "model_state": {}}, path)
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name != "last.pt"]


def test_kill_during_writes_never_corrupts(tmp_path):
    """A child rewrites a checkpoint in a loop; SIGKILL at several moments; the file always loads whole."""
    path = tmp_path / "last.pt"
    script = textwrap.dedent(f"""
        import torch, sys
        from lookalike.train.checkpoint import save_checkpoint
        i = 0
        while True:
            save_checkpoint({{"meta": {{"epoch": i}}, "model_state": {{"w": torch.full((1_000_000,), float(i))}}}}, {str(path)!r})
            if i == 0:
                print("ready", flush=True)
            i += 1
    """)
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        blob = load_checkpoint(path)
        assert torch.all(blob["model_state"]["w"] == blob["meta"]["epoch"])
