"""Pretrained backbones: the shipped EfficientNet-Lite weights classify real photos (proof that the key mapping
is right), every backbone honours the model contract, torchvision weights come from TORCH_HOME or --weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lookalike.errors import LookalikeError
from lookalike.models import create_model, get_model_entry, list_models
from lookalike.models import pretrained as P
from lookalike.search.describe.features import prepare_image

from helpers.search import photo

# ImageNet class ids accepted in the top 5 for each skimage photo.
EXPECTED = {
    "chelsea": {281, 282, 285},  # tabby, tiger cat, Egyptian cat
    "coffee": {967, 968},  # espresso, cup
    "rocket": {657, 744, 812},  # missile, projectile, space shuttle
    "camera": {872},  # tripod (the cameraman stands at one)
}


def _top5(model, img) -> set[int]:
    pre = model.preprocess
    arr = prepare_image(img, pre).astype(np.float32) / 255.0
    x = (torch.from_numpy(arr).permute(2, 0, 1)[None] - torch.tensor(pre["mean"]).view(1, 3, 1, 1)) \
        / torch.tensor(pre["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        return set(model(x).topk(5).indices[0].tolist())


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_lite_weights_classify_real_photos(name):
    model = create_model(name)
    for image, classes in EXPECTED.items():
        top5 = _top5(model, photo(image, side=600))
        assert top5 & classes, f"{name}: {image} top-5 {sorted(top5)} misses {sorted(classes)}"


def test_lite_weights_map_one_to_one_in_order():
    import timm

    source = torch.load(P.lite_weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    mapped = P.map_state_dict_in_order(source, target, "lite0")
    assert list(mapped) == list(target)
    assert all(torch.equal(a, b) for a, b in zip(mapped.values(), source.values()))


def test_mapping_rejects_shape_or_count_mismatch():
    a = {"w": torch.zeros(3, 3)}
    with pytest.raises(LookalikeError, match="shape"):
        P.map_state_dict_in_order(a, {"x": torch.zeros(3, 4)}, "t")
    with pytest.raises(LookalikeError, match="tensors"):
        P.map_state_dict_in_order(a, {"x": torch.zeros(3, 3), "y": torch.zeros(1)}, "t")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2", "resnet50", "mobilenet_v3_large"])
def test_model_contract(name):
    entry = get_model_entry(name)
    assert entry.kind == "pretrained"
    model = create_model(name, pretrained=False).eval()
    assert model.preprocess["resize_size"] >= model.preprocess["input_size"] >= 224
    x = torch.randn(2, 3, 64, 64)  # fully convolutional: a small input keeps the test fast
    with torch.inference_mode():
        feats = model.forward_features(x)
        assert feats.ndim == 4 and feats.shape[:2] == (2, model.num_features)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        assert model.forward_head(feats).shape == (2, 1000)
        assert torch.allclose(model(x), model.forward_head(feats), atol=1e-5)


def test_registered_pretrained_models():
    assert set(list_models("pretrained")) >= {"efficientnet_lite0", "efficientnet_lite2", "resnet50",
                                              "mobilenet_v3_large"}


def _random_mobilenet_state() -> dict:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.mobilenet_v3_large(weights=None).state_dict()


def test_torchvision_weights_load_from_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, dst):  # the cached file must be used: any download attempt fails the test
        raise AssertionError("tried to download")

    monkeypatch.setattr(P, "_download", no_network)
    cache = P.torchvision_cache_path("mobilenet_v3_large")
    assert str(cache).startswith(str(tmp_path / "torch" / "hub" / "checkpoints"))
    cache.parent.mkdir(parents=True)
    state = _random_mobilenet_state()
    torch.save(state, cache)
    model = create_model("mobilenet_v3_large")
    loaded = model.net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_torchvision_weights_missing_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls = []

    def offline(url, dst):
        calls.append(url)
        raise OSError("network is unreachable")

    monkeypatch.setattr(P, "_download", offline)
    with pytest.raises(LookalikeError) as info:
        create_model("resnet50")
    message = str(info.value)
    assert calls and calls[0].startswith("https://download.pytorch.org/")
    assert str(P.torchvision_cache_path("resnet50")) in message and "--weights FILE" in message
    assert "\n" not in message


def test_weights_file_option(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(P, "_download", lambda url, dst: (_ for _ in ()).throw(AssertionError("download")))
    state = _random_mobilenet_state()
    path = tmp_path / "mine.pth"
    torch.save(state, path)
    model = create_model("mobilenet_v3_large", weights=str(path))
    assert torch.equal(model.net.state_dict()["features.0.0.weight"], state["features.0.0.weight"])


def test_bad_weights_file(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(LookalikeError, match="cannot read weights file"):
        create_model("efficientnet_lite0", weights=str(bad))
    with pytest.raises(LookalikeError, match="not found"):
        create_model("efficientnet_lite0", weights=str(tmp_path / "missing.pth"))
