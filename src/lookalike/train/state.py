"""A run's state: everything a run needs to continue, saved after every epoch as last.pt and read back by resume.

The state is one object, written as one self-describing checkpoint dict (`checkpoint.save_checkpoint`, format 1):

- meta: model, model_kwargs, classes, mean, std, input_size, epoch (finished), test_acc, config
- model_state, optimizer, lookahead (the averaged weights, or None)
- scheduler: kind, step, total_steps (fixed, or re-fitted to a time budget), steps_per_epoch, crop_steps
- rng: the torch (and CUDA) generator states; history: the metrics rows; best_test_acc
- elapsed and train_seconds: time the run has taken so far; config; plan (the time budget's measurements)

best.pt holds meta and model_state only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import LookalikeError
from .budget import epochs_between
from .config import RunConfig
from .optimizers import Lookahead, build_optimizer


@dataclass
class RunState:
    cfg: RunConfig
    meta: dict[str, Any]
    model: Any
    optimizer: Any
    lookahead: Optional[Lookahead]
    steps_per_epoch: int
    total_steps: int
    crop_steps: int  # the first steps train on small crops
    n_epochs: int  # epochs the run will have finished at its end
    step: int = 0
    epoch: int = 0  # epochs finished
    history: list[dict[str, Any]] = field(default_factory=list)
    best_acc: float = -1.0
    elapsed_before: float = 0.0  # seconds taken by earlier processes of a resumed run
    train_seconds: float = 0.0  # the optimisation alone, without evaluation and files
    plan: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, cfg: RunConfig, meta: dict[str, Any], model, steps_per_epoch: int, total_steps: int,
              plan: dict[str, Any]) -> "RunState":
        return cls(cfg, meta, model, build_optimizer(model, cfg), Lookahead(model) if cfg.lookahead else None,
                   steps_per_epoch, total_steps, crop_steps=math.ceil(cfg.crop_fraction * total_steps),
                   n_epochs=epochs_between(0, total_steps, steps_per_epoch), plan=plan)

    @classmethod
    def resume(cls, saved: dict[str, Any], cfg: RunConfig, meta: dict[str, Any], model, steps_per_epoch: int,
               run_dir: Path) -> "RunState":
        """The state of `saved` (a checkpoint read by `checkpoint.load_resume_state`) on `model`; restores the
        global RNG as well."""
        import torch

        model.load_state_dict(saved["model_state"])
        sched = saved["scheduler"]
        step, total_steps, epoch = int(sched["step"]), int(sched["total_steps"]), int(saved["meta"]["epoch"])
        torch.set_rng_state(saved["rng"]["torch"])
        optimizer = build_optimizer(model, cfg)
        try:
            optimizer.load_state_dict(saved["optimizer"])
        except (ValueError, KeyError, IndexError) as exc:
            raise LookalikeError(f"--resume {run_dir}: the optimizer state in last.pt does not fit the model "
                                 f"({exc})") from None
        lookahead = Lookahead(model, saved.get("lookahead")) if cfg.lookahead else None
        return cls(cfg, meta, model, optimizer, lookahead, steps_per_epoch, total_steps,
                   crop_steps=int(sched.get("crop_steps", 0)),
                   n_epochs=epoch + epochs_between(step, total_steps, steps_per_epoch), step=step, epoch=epoch,
                   history=list(saved["history"]), best_acc=float(saved["best_test_acc"]),
                   elapsed_before=float(saved.get("elapsed", 0.0)),
                   train_seconds=float(saved.get("train_seconds", 0.0)), plan=dict(saved.get("plan") or {}))

    def checkpoint(self, seconds: float) -> dict[str, Any]:
        """The last.pt dict; `seconds`: the run's time so far."""
        import torch

        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and next(self.model.parameters()).is_cuda:
            rng["cuda"] = torch.cuda.get_rng_state()
        return {"meta": self.meta, "model_state": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": {"kind": self.cfg.schedule, "step": self.step, "total_steps": self.total_steps,
                              "steps_per_epoch": self.steps_per_epoch, "crop_steps": self.crop_steps},
                "lookahead": self.lookahead.avg if self.lookahead is not None else None,
                "rng": rng, "history": self.history, "best_test_acc": max(self.best_acc, self.meta["test_acc"]),
                "elapsed": seconds, "train_seconds": self.train_seconds, "config": self.cfg.to_dict(),
                "plan": self.plan}

    def save(self, run_dir: Path, test_acc: float, seconds: float) -> None:
        """After an epoch: last.pt, and best.pt when `test_acc` beats every earlier epoch."""
        from .checkpoint import save_checkpoint

        self.meta = {**self.meta, "epoch": self.epoch, "test_acc": test_acc, "config": self.cfg.to_dict()}
        save_checkpoint(self.checkpoint(seconds), run_dir / "last.pt")
        if test_acc > self.best_acc:
            self.best_acc = test_acc
            save_checkpoint({"meta": self.meta, "model_state": self.model.state_dict()}, run_dir / "best.pt")
