"""Training pairs of the anatomy generator: crops of real slices with a region erased (condition) and the real
crop (target).

A *tumour* pair erases the slice's own dilated tumour and codes the tumour by class; a *healthy* pair erases
the dilated tumour shape of another slice, placed where it lies (same canonical position) inside this slice's
head and away from its tumour, and codes no class, so the generator also learns to paint healthy tissue (what
synthesis does to a donor's own tumour). Windows are centred on the hole, shifted by up to ``jitter`` pixels
when training, and clamped to the image; pairs are mirrored left-right with probability :data:`FLIP_PROB`.
"""
from __future__ import annotations

import numpy as np
import torch

from generative_model.conditions import HEALTHY, brain_masks, crop_origin, encode, hole_of, window
from generative_model.pix2pix import images_to_tensor

FLIP_PROB = 0.5  # pix2pix's random mirroring of (condition, image) pairs
HEALTHY_TRIES = 3  # other slices' tumour shapes tried before a healthy pair falls back to a tumour pair


class TrainingPairs:
    """Pairs from uint8 slices ``images`` ``(N, S, S)``, their bool tumour ``masks`` and class ``labels``.

    Args:
        crop: window side in pixels (a U-Net size, at most ``S``).
        erase_radius: dilation of the tumour into the hole, pixels at this slice size.
        jitter: largest shift of the window from the hole's centre when training, pixels.
        healthy_prob: share of training pairs that are healthy pairs (when one fits).
    Raises:
        ValueError: a crop larger than the slices or a probability outside [0, 1].
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, labels: np.ndarray, *, crop: int,
                 erase_radius: float, jitter: int = 0, healthy_prob: float = 0.0) -> None:
        if crop > images.shape[-1]:
            raise ValueError(f"crop {crop} is larger than the {images.shape[-1]} px slices")
        if not 0.0 <= healthy_prob <= 1.0:
            raise ValueError(f"healthy_prob must be a probability in [0, 1], got {healthy_prob}")
        self.images, self.masks, self.labels = images, np.asarray(masks, dtype=bool), np.asarray(labels)
        self.crop, self.jitter, self.healthy_prob = int(crop), int(jitter), float(healthy_prob)
        self.holes = np.stack([hole_of(mask, erase_radius) for mask in self.masks])
        self.brains = brain_masks(images, self.masks)

    def __len__(self) -> int:
        return len(self.images)

    def pair(self, index: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Condition, uint8 target crop and bool hole crop of slice ``index``: a centred tumour pair without
        ``rng``, else a jittered tumour or healthy pair drawn from ``rng``."""
        return self._labelled_pair(index, rng)[:3]

    def _labelled_pair(self, index: int, rng: np.random.Generator | None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """:meth:`pair` and the class label it codes (``HEALTHY`` for a healthy pair)."""
        hole, tumour, label = self.holes[index], self.masks[index], int(self.labels[index])
        shift = (0, 0)
        if rng is not None:
            if rng.random() < self.healthy_prob:
                hole, tumour, label = self._healthy_hole(index, rng) or (hole, tumour, label)
            shift = tuple(int(s) for s in rng.integers(-self.jitter, self.jitter + 1, size=2))
        origin = crop_origin(hole, self.crop, shift)
        target = window(self.images[index], origin, self.crop)
        hole_crop = window(hole, origin, self.crop)
        return encode(target, hole_crop, window(tumour, origin, self.crop), label), target, hole_crop, label

    def batch(self, index: np.ndarray, rng: np.random.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Conditions, targets in ``[-1, 1]``, hole masks (float) and int64 class labels (``HEALTHY`` for
        healthy pairs) of slices ``index``, as tensors."""
        conditions, targets, holes, labels = (np.stack(part) for part in zip(
            *(self._labelled_pair(int(i), rng) for i in index), strict=True))
        if rng is not None:
            flip = rng.random(len(index)) < FLIP_PROB
            conditions[flip] = conditions[flip][..., ::-1]
            targets[flip] = targets[flip][..., ::-1]
            holes[flip] = holes[flip][..., ::-1]
        return (torch.from_numpy(np.ascontiguousarray(conditions)), images_to_tensor(targets),
                torch.from_numpy(holes.astype(np.float32)).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))

    def _healthy_hole(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int] | None:
        """Another slice's hole that lies inside this slice's head and clear of its own hole, or None."""
        for _ in range(HEALTHY_TRIES):
            hole = self.holes[int(rng.integers(len(self)))]
            if not (hole & ~self.brains[index]).any() and not (hole & self.holes[index]).any():
                return hole, np.zeros_like(hole), HEALTHY
        return None
