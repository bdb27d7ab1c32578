"""Deterministic preprocessing shared by training, synthesis and prediction (MONAI style:
a small class validates in ``__init__`` and applies in ``__call__``).

Every slice the project sees, real or from a user's file, goes through :func:`preprocess_slice`,
so a model meets the same intensities at training and at prediction time.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from skimage.transform import resize as _sk_resize


class RobustNormalize:
    """Clip a 2-D image to its ``[lower, upper]`` percentiles and scale that range to ``[0, 255]`` uint8.

    Per-image, so it fits nothing on other patients (no leakage across folds).

    Args:
        lower: lower percentile (0..100), default 0.5.
        upper: upper percentile, default 99.5; must exceed ``lower``.
    Raises:
        ValueError: on a bad percentile pair, a non-2-D image or non-finite pixels.
    """

    def __init__(self, lower: float = 0.5, upper: float = 99.5) -> None:
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower}, upper={upper}")
        self.lower, self.upper = lower, upper

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image, dtype=np.float32)
        _check_image(image)
        lo, hi = np.percentile(image, [self.lower, self.upper])
        if hi <= lo:  # constant image
            return np.zeros(image.shape, dtype=np.uint8)
        scaled = (np.clip(image, lo, hi) - lo) * (255.0 / (hi - lo))
        return np.rint(scaled).astype(np.uint8)


class Resize:
    """Resize a 2-D image to ``size x size``: anti-aliased (bilinear) for images, nearest neighbour
    for masks (``mask=True``). Returns the input dtype (uint8 images are rounded back)."""

    def __init__(self, size: int, mask: bool = False) -> None:
        if size < 8:
            raise ValueError(f"image size must be at least 8, got {size}")
        self.size, self.mask = int(size), mask

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.shape == (self.size, self.size):
            return image
        if self.mask:
            out = _sk_resize(image.astype(np.float32), (self.size, self.size), order=0,
                             anti_aliasing=False, preserve_range=True)
            return out > 0.5
        out = _sk_resize(image.astype(np.float32), (self.size, self.size), order=1,
                         anti_aliasing=True, preserve_range=True)
        if image.dtype == np.uint8:
            return np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return out.astype(np.float32)


class Compose:
    """Apply callables in order."""

    def __init__(self, transforms: Sequence[Callable[[np.ndarray], np.ndarray]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        for transform in self.transforms:
            image = transform(image)
        return image


def preprocess_slice(image: np.ndarray, size: int, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """The training preprocessing of one raw slice: robust normalisation to uint8, then anti-aliased resize."""
    return Compose([RobustNormalize(lower, upper), Resize(size)])(image)


def preprocess_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a tumour mask with nearest neighbour to ``size x size`` (bool)."""
    return Resize(size, mask=True)(np.asarray(mask).astype(bool))


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite pixels")
