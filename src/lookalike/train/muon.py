"""Muon for convolution filters, momentum SGD for everything else, in one optimizer.

Muon (Keller Jordan et al., 2024) replaces a filter bank's update by the nearest semi-orthogonal matrix of its
(Nesterov) momentum, reached with a few Newton-Schulz iterations, and keeps each bank's weight norm fixed so the
learning rate is an angle. airbench94_muon reaches airbench94's CIFAR-10 accuracy in fewer epochs than its SGD
(benchmarks/results/training.notes.md).

Groups marked `orthogonal=True` take the Muon update; the others take PyTorch's SGD update (L2 weight decay
added to the gradient, momentum, optional Nesterov). One optimizer object keeps the engine, its schedule and its
checkpoints unchanged; the SGD recipes use it too, with no orthogonal group.
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


class Muon:
    """Parameter groups take `lr`, `momentum`, `nesterov`, `weight_decay` (SGD groups only) and `orthogonal`.

    The interface (`param_groups`, `state`, `step`, `zero_grad`, `state_dict`, `load_state_dict`) and the
    state-dict layout are torch.optim's, so checkpoints and the engine treat it like any optimizer. It does not
    derive from `torch.optim.Optimizer`: the first call into that class imports TorchDynamo, which adds seconds to
    every run's start-up on a CPU and buys nothing here (benchmarks/results/training.notes.md)."""

    def __init__(self, groups: Iterable[dict], lr: float = 0.02, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 0.0):
        self.defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                             orthogonal=False)
        self.param_groups: list[dict] = []
        self.state: dict[torch.Tensor, dict] = {}
        for group in groups:
            group = {**self.defaults, **group, "params": list(group["params"])}
            self.param_groups.append(group)

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    def state_dict(self) -> dict:
        """torch.optim's layout: parameters are numbered in group order."""
        index = {id(p): i for i, p in enumerate(self._params())}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
                  for g in self.param_groups]
        state = {index[id(p)]: dict(s) for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups) or any(
                len(s["params"]) != len(g["params"]) for s, g in zip(saved, self.param_groups)):
            raise ValueError("the optimizer state does not match this model's parameter groups")
        params = self._params()
        for saved_group, group in zip(saved, self.param_groups):
            group.update({k: v for k, v in saved_group.items() if k != "params"})
        self.state = {}
        for i, saved_state in state_dict["state"].items():
            p = params[int(i)]
            # Copies: the loaded optimizer must not share buffers with the one that saved the state.
            self.state[p] = {k: (v.to(p.device, copy=True) if torch.is_tensor(v) else v)
                             for k, v in saved_state.items()}

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, momentum, nesterov = group["lr"], group["momentum"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["orthogonal"] and group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state.setdefault(p, {})
                buf = state.get("momentum_buffer")
                if buf is None:  # first step (torch's SGD saves None here when it ran without momentum)
                    buf = state["momentum_buffer"] = torch.zeros_like(g)
                buf.mul_(momentum).add_(g)
                update = g.add(buf, alpha=momentum) if nesterov else buf
                if group["orthogonal"]:
                    p.mul_(math.sqrt(p.shape[0]) / (p.norm() + 1e-12))  # fixed norm: the step is an angle
                    update = orthogonalize(update.reshape(len(update), -1)).view_as(p)
                p.add_(update, alpha=-lr)
