import pytest
import torch
import torch.nn.functional as F

from lookalike.models import count_parameters, create_model, list_models


@pytest.mark.parametrize("name", list_models(kind="cifar"))
def test_forward_shapes(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.ndim == 4 and feats.shape[:2] == (2, model.num_features)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        logits = model(x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    assert torch.allclose(logits, model.forward_head(model.forward_features(x)))


def test_cifar_models_registered():
    assert {"fast", "lab", "resnet18"} <= set(list_models(kind="cifar"))


def test_fast_width_and_depth_options_change_size():
    small = count_parameters(create_model("fast", widths=(16, 32, 64)))
    base = count_parameters(create_model("fast"))
    deep = count_parameters(create_model("fast", depth=3))
    assert small < base < deep
    # Inputs other than 32 px work too (global pooling in the head).
    assert create_model("fast", widths=(8, 8, 8)).eval()(torch.randn(1, 3, 48, 48)).shape == (1, 10)


@pytest.mark.parametrize("whitening", ["pairs", "linear"])
def test_whitening_layer_decorrelates_patches(whitening):
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.6, 0.5], [0.0, 0.0, 0.4]])
    images = torch.einsum("ij,bjhw->bihw", mix, torch.randn(64, 3, 16, 16))
    model = create_model("fast", widths=(8, 8, 8), whitening=whitening)
    model.init_whitening(images)
    weight = model.whiten.weight
    if whitening == "pairs":
        assert weight.shape[0] == 24 and torch.equal(weight[12:], -weight[:12])
    else:
        assert weight.shape[0] == 12 and model.whiten.bias is None
    with torch.no_grad():
        out = F.conv2d(images, weight[:12])  # "pairs": the + half of the +/- pairs
    flat = out.permute(1, 0, 2, 3).reshape(12, -1)
    cov = flat @ flat.T / flat.shape[1]
    assert torch.allclose(cov, torch.eye(12), atol=0.05)
    assert not weight.requires_grad


def test_linear_whitening_halves_the_first_conv_and_drops_its_activation():
    pairs, linear = create_model("fast"), create_model("fast", whitening="linear")
    assert pairs.group1.conv1.in_channels == 24 and linear.group1.conv1.in_channels == 12
    assert isinstance(pairs.act, torch.nn.GELU) and isinstance(linear.act, torch.nn.Identity)
    assert count_parameters(linear) < count_parameters(pairs)
    with pytest.raises(ValueError, match="whitening"):
        create_model("fast", whitening="cubic")


def test_linear_whitening_runs_with_the_first_conv_as_one_4x4_conv():
    torch.manual_seed(0)
    model = create_model("fast", widths=(8, 8, 8), whitening="linear")
    x = torch.randn(3, 3, 32, 32)
    model.init_whitening(x)
    with torch.no_grad():
        one = F.conv2d(x, F.conv_transpose2d(model.group1.conv1.weight, model.whiten.weight), padding=1)
        two = model.group1.conv1(model.whiten(x))  # whitening, then the 3x3 conv
        assert torch.equal(model.forward_features(x), model.group3(model.group2(model.group1.after_conv1(one))))
    # The same conv away from the border, where only the padding differs.
    assert one.shape == two.shape
    assert torch.allclose(one[..., 1:-1, 1:-1], two[..., 1:-1, 1:-1], atol=1e-4)
    # The 3x3 weights stay the trained parameter.
    model.forward_features(x).sum().backward()
    assert model.group1.conv1.weight.grad is not None and model.whiten.weight.grad is None


def test_overfits_one_small_batch():
    from lookalike.train.config import TrainConfig, resolve
    from lookalike.train.optimizers import build_optimizer

    torch.manual_seed(0)
    cfg = resolve(TrainConfig(model="fast", widths=[16, 32, 32], batch_size=16), "cpu")
    model = create_model("fast", widths=(16, 32, 32), num_classes=4)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 4
    model.init_whitening(x)
    opt = build_optimizer(model, cfg)
    for _ in range(60):
        loss = F.cross_entropy(model(x), y, reduction="sum")
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).all()


def test_lab_resnet_overfits_one_small_batch():
    torch.manual_seed(0)
    model = create_model("lab", num_classes=4)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    first = None
    for _ in range(25):
        loss = F.cross_entropy(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
