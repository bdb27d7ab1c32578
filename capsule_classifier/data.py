"""In-memory batches for the classifiers: seeded (optionally class-balanced, DDP-sharded) training
epochs with batched augmentation, plain evaluation batches, and synthetic shards for pretraining.

Slices are uint8 ``(N, S, S)`` in memory (the whole figshare set is 50 MB at 128 px), so no
``DataLoader`` workers are needed; a batch becomes float32 ``(B, 1, S, S)`` in [0, 1] via :func:`to_input`,
the one conversion shared by training, evaluation, export and prediction.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from datasets.augment import RandCompose
from datasets.figshare import CLASS_NAMES
from datasets.shards import ShardError, read_shards
from datasets.transforms import Resize
from experiment.seeding import torch_generator

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 slices ``(N, S, S)`` -> float32 model input ``(N, 1, S, S)`` in [0, 1]."""
    tensor = torch.as_tensor(images)
    if tensor.dtype != torch.uint8 or tensor.ndim != 3:
        raise ValueError(f"expected uint8 slices (N, S, S), got {tuple(tensor.shape)} {tensor.dtype}")
    return tensor.unsqueeze(1).float().div_(255.0)


class EvalBatches:
    """Re-iterable fixed-order batches of ``(images, labels)`` for validation and test (no augmentation)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int) -> None:
        self.images, self.labels, self.batch_size = images, np.asarray(labels, dtype=np.int64), batch_size

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for start in range(0, len(self.labels), self.batch_size):
            stop = start + self.batch_size
            yield to_input(self.images[start:stop]), torch.from_numpy(self.labels[start:stop])


@dataclass
class TrainBatches:
    """``TrainBatches(...)(epoch)``: one epoch of shuffled (or class-balanced) augmented batches.

    Every draw comes from generators seeded by ``(seed, key, epoch)``, so epoch ``e`` is the same
    whether or not the run was resumed. Under DDP each of ``world_size`` ranks takes every
    ``world_size``-th index of the same draw (padded like ``DistributedSampler``), so all ranks run
    the same number of steps. The last incomplete batch is dropped (BatchNorm needs > 1 sample).
    """

    images: np.ndarray
    labels: np.ndarray
    batch_size: int
    seed: int
    key: int = 0
    balanced: bool = False
    augmentation: RandCompose | None = None
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if len(self.labels) < self.batch_size * self.world_size:
            raise ValueError(f"{len(self.labels)} training slices are fewer than one batch of "
                             f"{self.batch_size} x {self.world_size} process(es); lower the batch size")

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's slice indices for ``epoch``."""
        generator = torch_generator(self.seed, self.key, epoch)
        n = len(self.labels)
        if self.balanced:
            counts = np.bincount(self.labels, minlength=len(CLASS_NAMES)).astype(np.float64)
            weights = torch.from_numpy(1.0 / counts[self.labels])
            order = torch.multinomial(weights, n, replacement=True, generator=generator)
        else:
            order = torch.randperm(n, generator=generator)
        padded = -(-n // self.world_size) * self.world_size
        order = torch.cat([order, order[: padded - n]])
        return order[self.rank::self.world_size].numpy()

    def __call__(self, epoch: int) -> Iterator[Batch]:
        order = self.indices(epoch)
        if self.augmentation is not None:
            self.augmentation.reseed(self.seed, self.key, epoch, 1)
        for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
            chosen = order[start:start + self.batch_size]
            images = to_input(self.images[chosen])
            if self.augmentation is not None:
                images = self.augmentation(images)
            yield images, torch.from_numpy(self.labels[chosen])


def load_pretrain_shards(folder: str | os.PathLike, image_size: int, strict: bool) -> tuple[np.ndarray, np.ndarray,
                                                                                         dict[str, Any]]:
    """Synthetic slices for pretraining: ``(images uint8 (N, S, S), labels, manifest)``.

    Shards of another image size are resized (with a warning) or, when ``strict``, refused.

    Raises:
        ShardError: unreadable shards, another image size under ``strict``, or a class missing from the manifest.
    """
    images, labels, manifest = read_shards(folder)
    counts = {name: int(count) for name, count in zip(manifest.get("class_names", CLASS_NAMES),
                                                          manifest.get("class_counts", []), strict=False)}
    missing = [name for name in CLASS_NAMES if counts.get(name, 0) == 0]
    if missing:
        raise ShardError(f"shards {folder}: manifest has no images of class(es) {missing} "
                         f"(class_counts={counts}); pretraining needs all of {list(CLASS_NAMES)}")
    side = images.shape[-1]
    if images.shape[1:] != (image_size, image_size):
        if strict:
            raise ShardError(f"shards {folder} hold {images.shape[1]}x{side} images but the classifier uses "
                             f"{image_size}x{image_size}; regenerate them or set pretrain.strict=false to resize")
        log.warning("shards %s hold %dx%d images; resizing to %dx%d", folder, images.shape[1], side,
                    image_size, image_size)
        resize = Resize(image_size)
        images = np.stack([resize(image) for image in images])
    return images, labels, manifest
