"""Training on photos: the from-scratch photo recipe, the pretrained linear probe and fine-tuning, resume, and bad
requests. Small generated photos (80 px), trained at 72 px so that the photo cache and the photo net are used."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from helpers.cli import assert_one_line_error, run_cli
from helpers.datasets import make_folder_dataset
from lookalike.errors import LookalikeError
from lookalike.train.checkpoint import model_from_checkpoint
from lookalike.train.config import TrainConfig, resolve
from lookalike.train.engine import fit
from lookalike.train.evaluation import evaluate_checkpoint
from lookalike.train.probe import fit_linear_head

pytestmark = pytest.mark.usefixtures("isolated_home")
SCRATCH = dict(widths=[8, 16, 16], batch_size=8, device="cpu", eval_batch_size=16, image_size=72)
PROBE = dict(model="efficientnet_lite0", pretrained=True, image_size=72, device="cpu", eval_batch_size=16)


@pytest.fixture
def photos(tmp_path):
    root = make_folder_dataset(tmp_path / "photos", n_train=8, n_test=3, size=80)
    (root / "test").rename(root / "val")
    return root


def rows(run):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(run / "metrics.csv"))]


def test_auto_picks_the_photo_net_above_64_px(photos, tmp_path):
    assert resolve(TrainConfig(model="photo"), "cpu", 128).crop_scale > 0  # random-resized crops
    result = fit(TrainConfig(data=str(photos), epochs=2, **SCRATCH), tmp_path / "run")
    assert result["model"] == "photo" and result["epochs"] == 2
    config = json.load(open(tmp_path / "run" / "config.json"))
    assert config["config"]["model"] == "photo" and config["layout"]["test"].endswith("val")
    for name in ("best.pt", "last.pt", "metrics.csv", "curves.png", "confusion.png", "result.json"):
        assert (tmp_path / "run" / name).exists()


def test_photo_run_resumes_exactly(photos, tmp_path):
    cfg = TrainConfig(data=str(photos), epochs=2, seed=1, **SCRATCH)
    straight = fit(cfg, tmp_path / "straight")

    def stop_after_first_epoch(kind, payload):
        if kind == "epoch":
            raise KeyboardInterrupt  # Ctrl-C: the epoch's checkpoint is already written

    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "stopped", on_event=stop_after_first_epoch)
    resumed = fit(TrainConfig(), tmp_path / "stopped", resume=True)
    assert rows(tmp_path / "stopped") == rows(tmp_path / "straight")
    assert resumed["test_acc"] == straight["test_acc"]
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model_state"]
    b = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_single_folder_run_records_its_split_and_evaluates_on_it(photos, tmp_path):
    single = tmp_path / "single"
    shutil.copytree(photos / "train", single)
    result = fit(TrainConfig(data=str(single), epochs=1, val_fraction=0.25, **SCRATCH), tmp_path / "run")
    config = json.load(open(tmp_path / "run" / "config.json"))
    assert config["config"]["val_fraction"] == 0.25 and config["layout"]["held_out"] == 6
    assert config["test_images"] == 6 and config["train_images"] == 18
    ev = evaluate_checkpoint(tmp_path / "run" / "last.pt", str(single), tta=result["tta"], device="cpu")
    assert ev["n"] == 6 and ev["test_acc"] == pytest.approx(result["test_acc"])


def test_linear_head_fits_separable_features():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=gen) * 3
    y = torch.arange(200) % 4
    x = centres[y] + torch.randn(200, 16, generator=gen) + 50  # an offset the folded standardisation must undo
    w, b, wd = fit_linear_head(x, y, 4)
    assert w.shape == (4, 16) and b.shape == (4,) and wd > 0
    assert float(((x @ w.T + b).argmax(1) == y).float().mean()) > 0.97


def test_linear_probe_learns_and_its_checkpoint_serves_everywhere(photos, tmp_path):
    from lookalike.search.describe.features import load_embedder

    run = tmp_path / "probe"
    result = fit(TrainConfig(data=str(photos), **PROBE), run)
    assert result["model"] == "efficientnet_lite0" and result["steps"] == 0
    assert result["test_acc"] >= 0.75 and float(rows(run)[0]["train_acc"]) >= 0.9  # 3 classes: chance is 1/3
    assert [r["epoch"] for r in rows(run)] == ["0"]
    for name in ("best.pt", "last.pt", "curves.png", "confusion.png", "result.json"):
        assert (run / name).exists()
    # The probe's accuracy (computed on the embedded features) is the model's own.
    ev = evaluate_checkpoint(run / "best.pt", str(photos), tta=0, device="cpu")
    assert ev["test_acc"] == pytest.approx(result["test_acc"])
    model, meta = model_from_checkpoint(run / "best.pt")
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["input_size"] == 72
    # A search backbone: `lookalike index --model runs/.../best.pt`.
    vectors, infos = load_embedder(str(run / "best.pt"), device="cpu").embed_paths(
        sorted((photos / "val" / "circle").iterdir()))
    assert vectors.shape == (3, model.num_features) and np.isfinite(vectors).all()


def test_probe_checkpoint_indexes_a_folder(capsys, monkeypatch, photos, tmp_path):
    fit(TrainConfig(data=str(photos), **PROBE), tmp_path / "probe")
    code, out, err = run_cli(["index", photos / "val", "--index", tmp_path / "ix", "--model",
                              tmp_path / "probe" / "best.pt", "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["added"] == 9 if "added" in json.loads(out) else True


def test_probe_then_finetune_resumes_after_the_probe(photos, tmp_path):
    cfg = TrainConfig(data=str(photos), finetune=True, epochs=2, batch_size=8, **PROBE)
    straight = fit(cfg, tmp_path / "straight")
    assert [r["epoch"] for r in rows(tmp_path / "straight")] == ["0", "1", "2"]
    assert straight["steps"] == 6 and straight["test_acc"] >= 0.75

    def stop_after_probe(kind, payload):
        if kind == "epoch" and payload["epoch"] == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "stopped", on_event=stop_after_probe)
    assert [r["epoch"] for r in rows(tmp_path / "stopped")] == ["0"]
    model, meta = model_from_checkpoint(tmp_path / "stopped" / "last.pt")  # the probe's model, with its head
    assert meta["epoch"] == 0 and meta["model_kwargs"]["num_classes"] == 3
    resumed = fit(TrainConfig(), tmp_path / "stopped", resume=True)
    assert rows(tmp_path / "stopped") == rows(tmp_path / "straight")
    assert resumed["test_acc"] == straight["test_acc"]


def test_finetune_trains_the_body_slower_than_the_head(photos):
    from lookalike.models import create_model
    from lookalike.train.optimizers import build_optimizer

    cfg = resolve(TrainConfig(model="efficientnet_lite0", pretrained=True, finetune=True), "cpu", 72)
    model = create_model("efficientnet_lite0", pretrained=False, num_classes=3)
    groups = build_optimizer(model, cfg).param_groups
    head = {id(p) for p in model.get_classifier().parameters()}
    lrs = {("head" if id(p) in head else "body"): g["lr"] for g in groups for p in g["params"]}
    assert lrs["body"] == pytest.approx(cfg.lr * cfg.body_lr_scale) and lrs["head"] == pytest.approx(cfg.lr)


@pytest.mark.parametrize("args, fragment", [
    (["--model", "photo", "--pretrained"], "--pretrained needs a pretrained backbone"),
    (["--model", "efficientnet_lite0"], "add --pretrained"),
    (["--finetune"], "--finetune needs --pretrained"),
    (["--val-fraction", "0.2"], "--val-fraction splits a folder without"),
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--crop-scale", "2"], "--crop-scale"),
])
def test_bad_photo_requests_are_one_line_errors(capsys, monkeypatch, photos, tmp_path, args, fragment):
    code, out, err = run_cli(["train", "--data", photos, "--out", tmp_path / "r", "--device", "cpu", *args],
                             monkeypatch, capsys)
    assert_one_line_error(code, err, fragment)


def test_offline_torchvision_backbone_is_one_line_error(capsys, monkeypatch, photos, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached weights
    import urllib.request

    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # any download fails at once
    # urlopen keeps the first opener it builds, with the proxies of that moment: this test's opener must not
    # outlive it (later tests talk to their own servers on 127.0.0.1).
    monkeypatch.setattr(urllib.request, "_opener", None)
    code, out, err = run_cli(["train", "--data", photos, "--out", tmp_path / "r", "--device", "cpu", "--model",
                              "resnet50", "--pretrained", "--image-size", "72"], monkeypatch, capsys)
    assert code == 2 and "could not be downloaded" in err and len(err.strip().splitlines()) == 1
    assert "decoding" not in err  # checked before any photo is read


def test_class_folder_without_images_stops_the_run(photos, tmp_path):
    (photos / "val" / "nothing").mkdir()
    (photos / "train" / "nothing").mkdir()
    with pytest.raises(LookalikeError, match="holds no images"):
        fit(TrainConfig(data=str(photos), epochs=1, **SCRATCH), tmp_path / "run")


def test_unreadable_photo_is_skipped_and_named_in_the_result(photos, tmp_path):
    (photos / "train" / "circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    result = fit(TrainConfig(data=str(photos), epochs=1, **SCRATCH), tmp_path / "run")
    assert any("broken.jpg" in s for s in result["skipped"])


def test_probe_features_through_onnx_runtime_match_pytorch(photos):
    from lookalike.datasets import load_data
    from lookalike.models import create_model
    from lookalike.train.probe import embed, prelogits_runner

    data = load_data(str(photos), 72)
    model = create_model("efficientnet_lite0", pretrained=True, num_classes=len(data.classes))
    mean, std = torch.tensor([0.5] * 3), torch.tensor([0.5] * 3)
    model.train()
    runner = prelogits_runner(model, "efficientnet_lite0", 72)
    assert runner is not None and model.training  # the model is left as it was found
    fast, labels = embed(model, data.test, mean, std, torch.device("cpu"), 16, runner)
    slow, same = embed(model, data.test, mean, std, torch.device("cpu"), 16)
    assert torch.equal(labels, same) and fast.shape == slow.shape == (len(data.test), model.num_features)
    assert torch.allclose(fast, slow, atol=1e-3)
