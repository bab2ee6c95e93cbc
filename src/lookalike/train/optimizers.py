"""The optimizers of a run: SGD in three parametrisations or Muon for the conv filters, and airbench's lookahead."""

from __future__ import annotations

from typing import Optional

from ..errors import LookalikeError
from .config import RunConfig

LOOKAHEAD_EVERY = 5  # airbench's period: steps between moves of the weights towards their trailing average


def build_optimizer(model, cfg: RunConfig):
    """SGD, or Muon for the conv filters. "sgd-sum" is airbench's parametrisation: lr and weight decay per 1024
    examples for a summed loss, decoupled from momentum, and BatchNorm shifts learning `bias_lr_scale` times
    faster."""
    from torch import nn

    norm_ids = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.bias is not None}
    whiten_bias = getattr(getattr(model, "whiten", None), "bias", None)
    params = [p for p in model.parameters() if p.requires_grad or p is whiten_bias]
    norm = [p for p in params if id(p) in norm_ids]
    other = [p for p in params if id(p) not in norm_ids]
    if cfg.optimizer == "sgd-sum":
        scale = 1024 * (1 + 1 / (1 - cfg.momentum))
        lr = cfg.lr / scale
        wd = cfg.weight_decay * cfg.batch_size / scale
        lr_bias = lr * cfg.bias_lr_scale
        groups = [dict(params=norm, lr=lr_bias, weight_decay=wd / lr_bias),
                  dict(params=other, lr=lr, weight_decay=wd / lr)]
    elif cfg.optimizer == "sgd":
        groups = [dict(params=norm, lr=cfg.lr * cfg.bias_lr_scale, weight_decay=cfg.weight_decay),
                  dict(params=other, lr=cfg.lr, weight_decay=cfg.weight_decay)]
    elif cfg.optimizer == "muon":
        groups = _muon_groups(model, cfg, norm, other)
    else:
        raise LookalikeError(f"unknown optimizer {cfg.optimizer!r}: use sgd, sgd-sum or muon")
    if cfg.body_lr_scale != 1.0:  # a pretrained body fine-tuned under its new head
        from .probe import scale_body_lr

        groups = scale_body_lr(groups, model, cfg.body_lr_scale)
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["initial_lr"] = g["lr"]
    from .muon import Muon

    if cfg.optimizer == "muon":
        return Muon(groups, nesterov=True)
    # Without orthogonal groups Muon steps exactly like torch.optim.SGD, without SGD's one-off TorchDynamo import.
    return Muon(groups, momentum=cfg.momentum, nesterov=bool(cfg.nesterov and cfg.momentum > 0))


# airbench94_muon's settings for the parameters Muon does not take, for a summed loss: SGD with Nesterov
# momentum 0.85, lr 0.053 for the norm and whitening biases, 0.67 for a unit-variance head divided by its width,
# weight decay 2e-6 per example.
MUON_SGD_MOMENTUM = 0.85
MUON_BIAS_LR = 0.053
MUON_HEAD_LR = 0.67


def _muon_groups(model, cfg: RunConfig, norm: list, other: list) -> list[dict]:
    filters = [p for p in other if p.ndim == 4]
    rest = [p for p in other if p.ndim != 4]
    head = [p for p in rest if p.ndim == 2]
    biases = norm + [p for p in rest if p.ndim != 2]
    # Our head multiplies by `logit_scale` instead of 1/width: the same logit steps need lr x (1/width / scale)^2.
    width = getattr(model, "num_features", 1)
    head_lr = MUON_HEAD_LR * ((1 / width) / getattr(model, "logit_scale", 1 / width)) ** 2
    wd = cfg.weight_decay * cfg.batch_size  # per example -> per step of a summed loss
    return [dict(params=filters, lr=cfg.lr, momentum=cfg.momentum, orthogonal=True),
            dict(params=biases, lr=MUON_BIAS_LR, momentum=MUON_SGD_MOMENTUM, weight_decay=wd / MUON_BIAS_LR),
            dict(params=head, lr=head_lr, momentum=MUON_SGD_MOMENTUM, weight_decay=wd / head_lr)]


class Lookahead:
    """airbench's lookahead: every few steps the weights move to an average that trails them, with an averaging
    strength that grows through the run (decay 0.95^5 * progress^3); at the end the average replaces the weights."""

    def __init__(self, model, state: Optional[dict] = None):
        live = model.state_dict()
        if state is not None:
            self.avg = {k: state[k].to(live[k].device) for k in live}
        else:
            self.avg = {k: v.detach().clone() for k, v in live.items()}

    def update(self, model, decay: float) -> None:
        import torch

        with torch.no_grad():
            for (k, live), avg in zip(model.state_dict().items(), self.avg.values()):
                if live.is_floating_point():
                    avg.lerp_(live, 1 - decay)
                    live.copy_(avg)

    def step(self, model, step: int, total_steps: int) -> None:
        """After training step `step` (counted from 1) of `total_steps`: airbench's periodic move, and at the end
        the switch to the averaged weights."""
        if step % LOOKAHEAD_EVERY == 0:
            self.update(model, decay=0.95**5 * (step / total_steps) ** 3)
        if step == total_steps:
            self.update(model, decay=1.0)
