"""Training and evaluation batches for :func:`experiment.engine.fit`, for any map-style dataset of
``(image, label)`` items (or ``(image, label, mask)``, the mask moved along with the image by the augmentation's
geometric transforms): in-memory 2D slices and NIfTI volumes alike.

:class:`TrainBatches` draws each epoch from ``(seed, key, epoch)``: the order (shuffled or class-balanced),
the augmentation and the loader workers' seeds. Epoch ``e`` is therefore the same whether or not the run was
resumed. Under DDP every rank takes its share of the same draw, padded so all ranks run the same number of
steps. Augmentation runs batched in the main process, after collation.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from experiment.seeding import seed_worker, torch_generator

Batch = tuple[torch.Tensor, ...]
"""``(images, labels)`` or ``(images, labels, masks)``."""

AUGMENT_STREAM, WORKER_STREAM = 1, 2
"""Seed keys that separate an epoch's augmentation and loader-worker streams from its sampling stream."""


class Augmentation(Protocol):
    """A batched random transform reseeded per epoch (e.g. :class:`datasets.augment.RandCompose`)."""

    def reseed(self, seed: int, *keys: int) -> None:
        """Draw all future parameters from ``(seed, *keys)``."""
        ...

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        ...

    def pair(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` and their masks under the same draws (masks follow the geometric transforms only)."""
        ...


@dataclass
class TrainBatches:
    """``TrainBatches(...)(epoch)``: one epoch of shuffled (or class-balanced) augmented batches of ``dataset``.

    ``labels``: the class index of every item (for balanced sampling, with replacement at inverse class
    frequency). ``key`` separates the streams of several phases of one run. ``rank`` / ``world_size``: this
    process's share under DDP (every ``world_size``-th index of the padded draw, like ``DistributedSampler``).
    ``drop_last`` drops the last incomplete batch (BatchNorm needs > 1 sample); ``num_workers`` loads items
    in worker processes.
    """

    dataset: Dataset
    labels: np.ndarray
    batch_size: int
    seed: int
    key: int = 0
    balanced: bool = False
    augmentation: Augmentation | None = None
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0
    drop_last: bool = True

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.labels) != len(self.dataset):
            raise ValueError(f"{len(self.labels)} labels for {len(self.dataset)} items")
        if self.drop_last and len(self.labels) < self.batch_size * self.world_size:
            raise ValueError(f"{len(self.labels)} training items are fewer than one batch of "
                             f"{self.batch_size} x {self.world_size} process(es); lower the batch size")

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's item indices for ``epoch``."""
        generator = torch_generator(self.seed, self.key, epoch)
        n = len(self.labels)
        if self.balanced:
            counts = np.bincount(self.labels).astype(np.float64)
            weights = torch.from_numpy(1.0 / counts[self.labels])
            order = torch.multinomial(weights, n, replacement=True, generator=generator)
        else:
            order = torch.randperm(n, generator=generator)
        padded = -(-n // self.world_size) * self.world_size
        order = torch.cat([order, order[: padded - n]])
        return order[self.rank::self.world_size].numpy()

    def __len__(self) -> int:
        """Batches per epoch (of this rank)."""
        share = -(-len(self.labels) // self.world_size)
        return share // self.batch_size if self.drop_last else -(-share // self.batch_size)

    def __call__(self, epoch: int) -> Iterator[Batch]:
        order = self.indices(epoch)
        batches = [order[start:start + self.batch_size].tolist() for start in range(0, len(order), self.batch_size)]
        loader = DataLoader(self.dataset, batch_sampler=batches[:len(self)], num_workers=self.num_workers,
                            worker_init_fn=seed_worker,
                            generator=torch_generator(self.seed, self.key, epoch, WORKER_STREAM, self.rank))
        if self.augmentation is not None:
            self.augmentation.reseed(self.seed, self.key, epoch, AUGMENT_STREAM, self.rank)
        for images, labels, *masks in loader:
            if self.augmentation is None:
                yield images, labels, *masks
            elif masks:
                images, moved = self.augmentation.pair(images, masks[0])
                yield images, labels, moved
            else:
                yield self.augmentation(images), labels


def eval_batches(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Re-iterable fixed-order batches of ``dataset`` for validation and test (no augmentation)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      worker_init_fn=seed_worker)
