"""Data-parallel training under torchrun: what `engine.fit` changes when it runs in a group of processes.

- Batches: `--batch-size` is the global batch. Every rank draws the same epoch order (seeded by seed and
  epoch) and takes `batch[rank::world]` of each global batch, which is what DistributedSampler hands each
  rank (its `order[rank::world]`, cut into batches of batch/world) when the batch divides by the world size.
  From the tensor cache every rank augments the whole global batch from the shared generator and keeps its
  share, so the augmentation is the one a single process draws; a streamed batch decodes only the rank's
  files and draws its augmentation from a generator of its own, seeded from the shared one.
- The loss is a rank's share of the global batch's loss times the world size, since DDP averages gradients:
  the averaged gradient is the single-process gradient of the same global batch.
- BatchNorm is synchronised (`sync_batchnorm`): statistics over the global batch, so a recipe and its
  checkpoints mean the same at any world size, and a run resumed at another world size continues the same
  maths. PyTorch's SyncBatchNorm runs on CUDA only; this one is plain tensor ops plus one all_gather in the
  forward pass and one all_reduce in the backward pass, on either backend.
- Evaluation: each rank evaluates a contiguous share of the test set; the sums are all-reduced.
"""

from __future__ import annotations

import types
from typing import Any

from ..distributed import Group, _collective
from ..errors import LookalikeError


class ShardedBatches:
    """A rank's view of the run's `batches.Batches`: same steps per epoch and shuffle, its share of each batch."""

    def __init__(self, batches, group: Group):
        if batches.batch_size < group.size:
            raise LookalikeError(f"--batch-size {batches.batch_size} is smaller than the {group.size} processes: "
                                 "each needs at least one image of every batch")
        self.base, self.group = batches, group
        self.global_n = batches.batch_size

    def __getattr__(self, name: str) -> Any:  # split, cfg, batch_size, device, mean, std, steps_per_epoch...
        return getattr(self.base, name)

    def __len__(self) -> int:
        return len(self.base)

    def shuffle(self, epoch: int, steps: int):
        return self.base.shuffle(epoch, steps)

    def take(self, indices, generator, epoch: int = 0, size=None):
        import torch

        rank, world = self.group.rank, self.group.size
        self.global_n = len(indices)
        if self.base.split.in_memory:
            x, y = self.base.take(indices, generator, epoch, size)
            return x[rank::world].contiguous(memory_format=torch.channels_last), y[rank::world]
        # Streamed: decode only this rank's files. One draw keeps the shared generator in step on every rank.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        own = torch.Generator().manual_seed(seed + rank)
        return self.base.take(indices[rank::world], own, epoch, size)

    def probe(self, generator, size=None):
        import torch

        n = len(self.base)
        return self.take(torch.randperm(n, generator=generator)[: self.base.batch_size], generator, size=size)

    def scale_loss(self, loss, y, summed: bool):
        """This rank's loss, scaled so that DDP's average of the ranks' gradients is the gradient of the global
        batch's loss (summed, or the mean over the global batch)."""
        world = self.group.size
        return loss * world if summed else loss * (y.shape[0] * world / max(1, self.global_n))


def shard_batches(batches, group: Group):
    return ShardedBatches(batches, group) if group.size > 1 else batches


def shard_split(split, group: Group):
    """A contiguous share of `split` (`datasets.Split`) for this rank; the whole split in one process."""
    if group.size <= 1:
        return split
    import torch

    from ..datasets import Split

    n = len(split)
    lo, hi = n * group.rank // group.size, n * (group.rank + 1) // group.size
    idx = torch.arange(lo, hi)
    return Split(labels=split.labels[idx], size=split.size,
                 images=split.images[idx] if split.images is not None else None,
                 files=[split.files[i] for i in range(lo, hi)] if split.files is not None else None,
                 skipped=split.skipped)


def reducer(group: Group):
    """`evaluation.evaluate`'s `reduce`: sums over the ranks, in place (None in one process)."""
    return group.all_reduce if group.size > 1 else None


def reduce_epoch(trained, group: Group):
    """`epoch.EpochTraining` summed over the ranks (loss, correct, seen); steps and lr are the same on all."""
    if group.size <= 1:
        return trained
    import torch

    sums = torch.tensor([trained.loss_sum, float(trained.correct), float(trained.seen)], dtype=torch.float64)
    group.all_reduce([sums])
    return trained._replace(loss_sum=float(sums[0]), correct=int(sums[1]), seen=int(sums[2]))


def wrap(model, group: Group, device):
    """The model that DistributedDataParallel trains (the model itself in one process), BatchNorm synchronised."""
    if group.size <= 1:
        return model
    sync_batchnorm(model)
    return _Parallel(model, device)


class _Parallel:
    """DistributedDataParallel of `model`, built again whenever the set of trainable parameters changes (the
    `fast` net freezes its whitening bias part-way through a run): DDP reduces the gradients of the parameters
    that were trainable when it was built, and waits for every one of them."""

    def __init__(self, model, device):
        self.module, self.device = model, device
        self._ddp, self._key = None, None

    def __call__(self, x):
        key = tuple(p.requires_grad for p in self.module.parameters())
        if key != self._key:
            from torch.nn.parallel import DistributedDataParallel

            # Buffers need no broadcast: synchronised BatchNorm keeps them equal on every rank.
            self._ddp = DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                **_options(first=self._ddp is None))
            self._key = key
        return self._ddp(x)

    def __getattr__(self, name: str):
        return getattr(self.module, name)


def _options(first: bool) -> dict:
    """No buffer broadcasts; parameters broadcast from rank 0 when first built (equal on every rank later)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel).parameters
    options = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    if "init_sync" in params:
        options["init_sync"] = first
    return options


# ---------------------------------------------------------------- synchronised BatchNorm


def sync_batchnorm(model) -> None:
    """Make every BatchNorm2d of `model` normalise training batches with the statistics of the global batch.
    The modules keep their class and state_dict (checkpoints are the same); evaluation is unchanged."""
    import torch.nn as nn

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and not getattr(m, "_synced", False):
            m.forward = types.MethodType(_sync_forward, m)
            m._synced = True


def _sync_forward(self, x):
    import torch
    import torch.distributed as dist
    import torch.nn as nn

    if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return nn.BatchNorm2d.forward(self, x)
    y, mean, var, count = _SyncBatchNorm.apply(x, self.weight, self.bias, self.eps)
    if self.track_running_stats:
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            unbiased = var * (count / max(1.0, count - 1))  # as nn.BatchNorm2d: unbiased running variance
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
    return y


def _sync_function():
    import torch
    import torch.distributed as dist

    class SyncBatchNorm(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, eps):
            xf = x.float()
            c = xf.shape[1]
            n = xf.numel() // c
            var, mean = torch.var_mean(xf, dim=(0, 2, 3), unbiased=False)
            # (count, mean, sum of squared deviations) per rank, combined exactly (Chan et al.) in float64.
            local = torch.cat([xf.new_tensor([float(n)]), mean, var * n]).double()
            parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
            with _collective():
                dist.all_gather(parts, local)
            stats = torch.stack(parts)
            counts, means, m2 = stats[:, :1], stats[:, 1 : c + 1], stats[:, c + 1 :]
            total = counts.sum()
            gmean = (counts * means).sum(0) / total
            gvar = (m2 + counts * (means - gmean) ** 2).sum(0) / total
            invstd = torch.rsqrt(gvar + eps).float()
            gmean, gvar = gmean.float(), gvar.float()
            xhat = (xf - gmean.view(1, c, 1, 1)) * invstd.view(1, c, 1, 1)
            y = xhat
            if weight is not None:
                y = y * weight.float().view(1, c, 1, 1) + bias.float().view(1, c, 1, 1)
            ctx.save_for_backward(xhat, invstd, weight)
            ctx.total = float(total)
            ctx.mark_non_differentiable(gmean, gvar)
            return y.to(x.dtype), gmean, gvar, float(total)

        @staticmethod
        def backward(ctx, dy, _mean, _var, _count):
            xhat, invstd, weight = ctx.saved_tensors
            dyf = dy.float()
            c = dyf.shape[1]
            sum_dy = dyf.sum((0, 2, 3))
            sum_dy_xhat = (dyf * xhat).sum((0, 2, 3))
            both = torch.cat([sum_dy, sum_dy_xhat])
            with _collective():
                dist.all_reduce(both)
            g_dy, g_dy_xhat = both[:c] / ctx.total, both[c:] / ctx.total
            scale = invstd if weight is None else invstd * weight.float()
            dx = scale.view(1, c, 1, 1) * (dyf - g_dy.view(1, c, 1, 1) - xhat * g_dy_xhat.view(1, c, 1, 1))
            # Parameter gradients stay this rank's own: DDP averages them over the ranks.
            dw = sum_dy_xhat.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
            db = sum_dy.to(weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None
            return dx.to(dy.dtype), dw, db, None

    return SyncBatchNorm


class _Lazy:
    """`_SyncBatchNorm.apply`, built on first use so that importing this module does not import torch."""

    _fn = None

    def apply(self, *args):
        if _Lazy._fn is None:
            _Lazy._fn = _sync_function()
        return _Lazy._fn.apply(*args)


_SyncBatchNorm = _Lazy()
