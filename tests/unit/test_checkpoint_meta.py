"""A checkpoint whose metadata or weights are damaged or crafted is one clear error naming the field, raised before
a net is allocated: never a traceback, a huge allocation or a model that outputs NaN."""

import math
import time

import pytest
import torch

from lookalike.errors import LookalikeError
from lookalike.models import create_model
from lookalike.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A real checkpoint of a tiny `fast` net, as `lookalike train` writes it."""
    path = tmp_path_factory.mktemp("ck") / "good.pt"
    torch.manual_seed(0)
    model = create_model("fast", num_classes=3, widths=(8, 16, 16), depth=2, whitening="pairs")
    meta = {"model": "fast", "model_kwargs": {"num_classes": 3, "widths": [8, 16, 16], "depth": 2,
                                              "whitening": "pairs"},
            "classes": ["a", "b", "c"], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "input_size": 32,
            "epoch": 1, "config": {"tta": 1, "val_fraction": None}}
    save_checkpoint({"meta": meta, "model_state": model.state_dict()}, path)
    return path


def crafted(good, tmp_path, change) -> str:
    blob = load_checkpoint(good)
    change(blob["meta"], blob["model_state"], blob)
    path = tmp_path / "bad.pt"
    save_checkpoint({k: v for k, v in blob.items() if k not in ("format", "version")}, path)
    return path


def _kw(key, value):
    return lambda meta, state, blob: meta["model_kwargs"].__setitem__(key, value)


def _meta(key, value):
    return lambda meta, state, blob: meta.__setitem__(key, value)


def _weight(key, value):
    def change(meta, state, blob):
        state[key] = state[key].clone()
        state[key].view(-1)[0] = value
    return change


CRAFTED = {
    "huge widths": (_kw("widths", [10**9, 8, 8]), "model_kwargs widths"),
    "widths of two": (_kw("widths", [8, 8]), "model_kwargs widths"),
    "huge class count": (_kw("num_classes", 10**12), "model_kwargs num_classes"),
    "class count of the list": (_kw("num_classes", 7), "model_kwargs num_classes"),
    "depth as text": (_kw("depth", "2"), "model_kwargs depth"),
    "a weights file to read": (_kw("weights", "/etc/passwd"), "model_kwargs"),
    "a download": (_kw("pretrained", True), "model_kwargs pretrained"),
    "unknown model": (_meta("model", "os.system"), "model"),
    "kwargs as a list": (_meta("model_kwargs", [1, 2]), "model_kwargs"),
    "no classes": (_meta("classes", []), "classes"),
    "mean of length 1": (_meta("mean", [0.5]), "mean"),
    "NaN mean": (_meta("mean", [0.5, math.nan, 0.5]), "mean"),
    "mean as text": (_meta("mean", "0.5"), "mean"),
    "std 0": (_meta("std", [0.25, 0.0, 0.25]), "std"),
    "negative std": (_meta("std", [0.25, -0.25, 0.25]), "std"),
    "infinite std": (_meta("std", [0.25, math.inf, 0.25]), "std"),
    "input size 1e6": (_meta("input_size", 10**6), "input_size"),
    "input size 1": (_meta("input_size", 1), "input_size"),
    "input size as float": (_meta("input_size", 1e6), "input_size"),
    "input size as bool": (_meta("input_size", True), "input_size"),
    "epoch as a tensor": (_meta("epoch", torch.tensor(1)), "epoch"),
    "config as a list": (_meta("config", [1]), "config"),
    "tta 7": (_meta("config", {"tta": 7}), "config tta"),
    "meta as a list": (lambda meta, state, blob: blob.__setitem__("meta", [1]), "'meta'"),
    "NaN weight": (_weight("group1.conv1.weight", math.nan), "group1.conv1.weight"),
    "infinite weight": (_weight("fc.weight", -math.inf), "fc.weight"),
    "negative variance": (_weight("group2.norm1.running_var", -1.0), "running_var"),
    "state as a list": (lambda meta, state, blob: blob.__setitem__("model_state", [1]), "'model_state'"),
    "a missing tensor": (lambda meta, state, blob: state.pop("fc.weight"), "fc.weight is missing"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_checkpoint_is_one_line_naming_the_field(good, tmp_path, case):
    change, field = CRAFTED[case]
    path = crafted(good, tmp_path, change)
    with pytest.raises(LookalikeError) as refused:
        model_from_checkpoint(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and field in message and "\n" not in message, message


def test_widths_that_the_weights_do_not_have_allocate_nothing(good, tmp_path):
    # Within the bounds, but the net they describe would take gigabytes: its weights in the file do not fit it.
    path = crafted(good, tmp_path, _kw("widths", [8192, 8192, 8192]))
    started = time.perf_counter()
    with pytest.raises(LookalikeError, match="weights do not fit its model"):
        model_from_checkpoint(path)
    assert time.perf_counter() - started < 5


def test_a_sound_checkpoint_still_loads(good):
    model, meta = model_from_checkpoint(good)
    out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 3) and bool(torch.isfinite(out).all()) and meta["classes"] == ["a", "b", "c"]
