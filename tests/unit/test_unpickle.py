"""No code runs from data: CIFAR-10 batches load through a restricted unpickler, checkpoints through PyTorch's
weights-only one, and no module of the package reads pickles any other way."""

import ast
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.cifar import CIFAR10_CLASSES, Py2Pickler, dump_py2, write_cifar_batches
from lookalike.datasets import load_data
from lookalike.errors import LookalikeError
from lookalike.train.checkpoint import load_checkpoint
from lookalike.unpickle import load_cifar_pickle, load_error_reason

pytestmark = pytest.mark.usefixtures("isolated_home")
SRC = Path(__file__).resolve().parents[2] / "src" / "lookalike"


class RunsACommand:
    """A pickle payload that runs a shell command when it is loaded with plain `pickle.load`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Evaluates:
    def __reduce__(self):
        return eval, ("__import__('os').getpid()",)


def test_faithful_batches_load_with_their_pixels_and_labels(tmp_path):
    folder = write_cifar_batches(tmp_path / "cifar-10-batches-py", n_per_batch=7)
    with open(folder / "data_batch_2", "rb") as fh:  # what the batch holds, read the way CIFAR-10's page shows
        plain = pickle.load(fh, encoding="bytes")
    d = load_data(str(folder))
    assert d.classes == CIFAR10_CLASSES
    assert d.train.images.shape == (35, 3, 32, 32) and d.train.images.dtype == torch.uint8
    assert np.array_equal(d.train.images[7:14].numpy(), plain[b"data"].reshape(-1, 3, 32, 32))
    assert d.train.labels[7:14].tolist() == plain[b"labels"]


@pytest.mark.parametrize("name", ["data_batch_1", "test_batch", "batches.meta"])
def test_a_batch_that_runs_code_is_refused_and_nothing_runs(tmp_path, name):
    folder = write_cifar_batches(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "ran"
    with open(folder / name, "wb") as fh:
        pickle.dump(RunsACommand(marker), fh, protocol=2)
    with pytest.raises(LookalikeError) as exc:
        load_data(str(folder))
    message = str(exc.value)
    assert name in message and "system" in message and "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize("payload, why", [
    (lambda: {"data": Evaluates(), "labels": [0]}, "builtin__.eval"),
    (lambda: {"data": np.zeros((2, 3072), dtype=object), "labels": [0, 1]}, "of type 'O8'"),  # holds any object
    (lambda: {"data": np.zeros((2, 3072), dtype=np.float64), "labels": [0, 1]}, "of type 'f8'"),
    (lambda: {"data": np.zeros((2, 3072), dtype=np.uint8).view(np.recarray), "labels": [0, 1]}, "recarray"),
    (lambda: {"data": b"\0" * 3072, "labels": [0]}, "_codecs.encode"),  # Python 3 protocol 2 bytes: not CIFAR
])
def test_anything_but_plain_uint8_arrays_is_refused(tmp_path, payload, why):
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as fh:
        if why.startswith(("builtin", "_codecs")):  # what Python 3 itself writes
            pickle.dump(payload(), fh, protocol=2)
        else:
            Py2Pickler(fh).dump(payload())
    with pytest.raises(LookalikeError, match=f"not a CIFAR-10 batch file: .*{why}"):
        load_cifar_pickle(path)



@pytest.mark.parametrize("blob, why", [
    ({"data": np.zeros((2, 100), dtype=np.uint8), "labels": [0, 1]}, "3072"),
    ({"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0, 10]}, "class numbers"),
    ({"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0]}, "class numbers"),
    ([1, 2, 3], "no data"),
])
def test_batches_of_the_wrong_shape_are_one_line_errors(tmp_path, blob, why):
    folder = write_cifar_batches(tmp_path / "cifar-10-batches-py")
    dump_py2(blob, folder / "data_batch_3")
    with pytest.raises(LookalikeError, match=why):
        load_data(str(folder))


def test_cli_train_refuses_a_crafted_batch_with_one_line(tmp_path, monkeypatch, capsys):
    from lookalike.cli import main

    folder = write_cifar_batches(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "ran"
    with open(folder / "data_batch_1", "wb") as fh:
        Py2Pickler(fh).dump({"data": RunsACommand(marker), "labels": [0]})
    monkeypatch.setattr(sys, "argv", ["lookalike", "train", "--data", str(folder), "--out", str(tmp_path / "run"),
                                      "--device", "cpu"])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and "posix.system" in err[0]
    assert not marker.exists()


def test_checkpoint_that_runs_code_is_refused_without_advice_to_disable_safety(tmp_path):
    path = tmp_path / "best.pt"
    marker = tmp_path / "ran"
    torch.save({"format": "lookalike-checkpoint", "meta": RunsACommand(marker)}, path)
    with pytest.raises(LookalikeError) as exc:
        load_checkpoint(path)
    message = str(exc.value)
    assert "posix.system" in message and "\n" not in message
    assert "weights_only" not in message and "trusted" not in message.lower()
    assert not marker.exists()


def test_reason_of_other_weights_only_errors_keeps_only_the_cause():
    text = ("Weights only load failed. In PyTorch 2.6, we changed the default value of the `weights_only` argument "
            "in `torch.load` from `False` to `True`. Re-running `torch.load` with `weights_only` set to `False` will "
            "likely succeed, but it can result in arbitrary code execution.\nPlease file an issue with the following "
            "so that we can make `weights_only=True` compatible with your use case: WeightsUnpickler error: \n\n"
            "Unsupported operand 149\n\nCheck the documentation of torch.load to learn more.")
    assert load_error_reason(pickle.UnpicklingError(text)) == "Unsupported operand 149"


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            yield name, node.func.attr, {k.arg: k.value for k in node.keywords}, node


def test_no_module_reads_pickles_unsafely():
    """Every `torch.load` is weights-only, every `np.load` refuses pickles, and only lookalike/unpickle.py (the
    restricted unpickler) imports pickle or a library built on it."""
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent)
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            for name in names:
                if name in ("pickle", "_pickle", "cPickle", "dill", "joblib", "shelve", "marshal") \
                        and path.name != "unpickle.py":
                    problems.append(f"{rel}:{node.lineno} imports {name}")
        for owner, attr, kw, node in _calls(tree):
            if owner == "torch" and attr == "load":
                value = kw.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f"{rel}:{node.lineno} torch.load without weights_only=True")
            if owner in ("np", "numpy") and attr == "load":
                value = kw.get("allow_pickle")
                if not (isinstance(value, ast.Constant) and value.value is False):
                    problems.append(f"{rel}:{node.lineno} np.load without allow_pickle=False")
            if owner == "jit" and attr == "load":
                problems.append(f"{rel}:{node.lineno} TorchScript loading runs code from the file")
    assert not problems, problems
