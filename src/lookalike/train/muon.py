"""Muon for convolution filters, momentum SGD for everything else, in one optimizer.

Muon (Keller Jordan et al., 2024) replaces a filter bank's update by the nearest semi-orthogonal matrix of its
(Nesterov) momentum, reached with a few Newton-Schulz iterations, and keeps each bank's weight norm fixed so the
learning rate is an angle. airbench94_muon reports 94% on CIFAR-10 in 8 epochs where SGD needs 9.9.

Groups marked `orthogonal=True` take the Muon update; the others take PyTorch's SGD update (L2 weight decay
added to the gradient, momentum, optional Nesterov). One optimizer object keeps the engine, its schedule and its
checkpoints unchanged.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

# Quintic Newton-Schulz coefficients published with Muon: chosen for the steepest slope at zero, so three
# iterations bring every singular value into roughly [0.5, 1.5], which trains as well as exact orthogonalisation.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with the singular vectors of the 2-D matrix `g`."""
    a, b, c = NS_COEFFICIENTS
    x = g / (g.norm() + eps)  # every singular value <= 1
    wide = x.shape[0] <= x.shape[1]
    if not wide:  # iterate on the smaller Gram matrix
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


class Muon(torch.optim.Optimizer):
    """Parameter groups take `lr`, `momentum`, `nesterov`, `weight_decay` (SGD groups only) and `orthogonal`."""

    def __init__(self, groups: Iterable[dict], lr: float = 0.02, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 0.0):
        super().__init__(list(groups), dict(lr=lr, momentum=momentum, nesterov=nesterov,
                                            weight_decay=weight_decay, orthogonal=False))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401 - the usual optimizer signature
        for group in self.param_groups:
            lr, momentum, nesterov = group["lr"], group["momentum"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["orthogonal"] and group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(g)
                update = g.add(buf, alpha=momentum) if nesterov else buf
                if group["orthogonal"]:
                    p.mul_(math.sqrt(p.shape[0]) / (p.norm() + 1e-12))  # fixed norm: the step is an angle
                    update = orthogonalize(update.reshape(len(update), -1)).view_as(p)
                p.add_(update, alpha=-lr)
