"""The classifiers' data in memory: slices as a dataset for :mod:`experiment.batches`, and synthetic shards
for pretraining.

Slices are uint8 ``(N, S, S)`` in memory (the whole figshare set is 50 MB at 128 px), so no ``DataLoader``
workers are needed; a slice becomes float32 ``(1, S, S)`` in [0, 1] via :func:`to_input`, the one conversion
shared by training, evaluation, export and prediction.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from datasets.core import CLASS_NAMES
from datasets.shards import ShardError, read_shards
from datasets.transforms import Resize

log = logging.getLogger(__name__)


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 slices ``(N, S, S)`` -> float32 model input ``(N, 1, S, S)`` in [0, 1]."""
    tensor = torch.as_tensor(images)
    if tensor.dtype != torch.uint8 or tensor.ndim != 3:
        raise ValueError(f"expected uint8 slices (N, S, S), got {tuple(tensor.shape)} {tensor.dtype}")
    return tensor.unsqueeze(1).float().div_(255.0)


class SliceDataset(torch.utils.data.Dataset):
    """In-memory uint8 slices ``(N, S, S)`` with class indices, as items ``(float32 (1, S, S) in [0, 1], label)``
    for :mod:`experiment.batches`; with bool ``masks`` ``(N, S, S)``, items ``(image, label, float32 mask)``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, masks: np.ndarray | None = None) -> None:
        if len(images) != len(labels) or (masks is not None and masks.shape != images.shape):
            raise ValueError(f"{len(images)} slices, {len(labels)} labels and masks of shape "
                             f"{None if masks is None else masks.shape} do not match")
        self.images, self.labels, self.masks = images, torch.as_tensor(np.asarray(labels, dtype=np.int64)), masks

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        image = to_input(self.images[index:index + 1])[0]
        if self.masks is None:
            return image, self.labels[index]
        return image, self.labels[index], torch.from_numpy(self.masks[index:index + 1].astype(np.float32))


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
