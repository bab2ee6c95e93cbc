"""A run's training batches: one seeded shuffle per epoch, augmented on the training device.

Shuffling and augmentation draw from a generator seeded by (seed, epoch), so a resumed run draws exactly the
batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

from typing import Optional

from .config import RunConfig


class Batches:
    def __init__(self, split, cfg: RunConfig, batch_size: int, mean, std, device):
        import torch

        self.split, self.cfg, self.batch_size, self.device = split, cfg, batch_size, device
        self.mean = torch.tensor(mean, device=device)
        self.std = torch.tensor(std, device=device)
        # Small datasets live on the compute device; the loop then never copies images.
        self.on_device = split.images.to(device) if (split.in_memory and device.type == "cuda") else None

    def __len__(self) -> int:
        return len(self.split)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.split) // self.batch_size)  # full batches only, as airbench and drop_last loaders

    def shuffle(self, epoch: int, steps: int):
        """(order of the images, generator) for an epoch of `steps` steps. Steps beyond a whole epoch (a run's last
        few steps that joined it) draw from a second shuffle."""
        import torch

        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.split), generator=generator)
        spe, bs = self.steps_per_epoch, self.batch_size
        if steps > spe:
            order = torch.cat([order[: spe * bs], torch.randperm(len(self.split), generator=generator)])
        return order, generator

    def take(self, indices, generator, epoch: int = 0, size: Optional[int] = None):
        """The normalised, augmented batch of images `indices` and its labels, on the device; `size` cuts random
        crops of that side."""
        from .augment import alternating_flips, augment, to_float

        cfg = self.cfg
        if self.on_device is not None:
            xb, yb = self.on_device[indices.to(self.device)], self.split.labels[indices]
        else:
            xb, yb = self.split.batch(indices)  # a streamed batch may drop unreadable files: flips only in memory
        xb = xb.to(self.device, non_blocking=True)
        if cfg.crop_scale > 0:  # photos: random-resized crops at the training side (or the small-crop side)
            from .photo_augment import random_resized_crop

            xb = random_resized_crop(xb, generator, size or xb.shape[-1], cfg.crop_scale, cfg.flip)
            return to_float(xb, self.mean, self.std), yb.to(self.device, non_blocking=True)
        flips = None
        if cfg.flip and cfg.alternate_flip and self.split.in_memory:
            flips = alternating_flips(indices, epoch, cfg.seed, len(self.split))
        xb = augment(xb, generator, cfg.translate, cfg.flip, cfg.pad_mode, flips=flips, size=size)
        return to_float(xb, self.mean, self.std), yb.to(self.device, non_blocking=True)

    def probe(self, generator, size: Optional[int] = None):
        """A random batch for timing steps, drawn from `generator` so that the run's own batches stay untouched."""
        import torch

        return self.take(torch.randperm(len(self.split), generator=generator)[: self.batch_size], generator,
                         size=size)
