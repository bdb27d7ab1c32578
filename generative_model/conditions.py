"""Condition crops of the anatomy-conditioned pix2pix generator: a real slice with a region erased, plus what
to paint there.

A condition is a float32 array ``(CONDITION_CHANNELS, K, K)`` in ``[0, 1]`` over a ``K x K`` crop of a slice:

====  =========================================================================================
 0    anatomy: the real slice / 255, set to 0 inside the hole
 1    hole: 1 where the generator paints (the dilated region erased from channel 0)
 2-4  tumour, one channel per class (meningioma, glioma, pituitary): the tumour mask in the channel
      of its class; all three zero = paint healthy tissue (a tumour removed from a donor)
====  =========================================================================================

The target is the real crop. Crops are square windows of the slice, placed around a region (its bounding-box
centre, optionally shifted) and clamped to the image, so positions keep their meaning: slices come in the
canonical geometry, where a same-plane position means the same place in any head.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from datasets.core import CLASS_NAMES

NUM_CLASSES = len(CLASS_NAMES)
CONDITION_CHANNELS = 2 + NUM_CLASSES
CHANNEL_NAMES: tuple[str, ...] = ("anatomy", "hole", *(f"tumour_{name}" for name in CLASS_NAMES))
HEALTHY = -1
"""The label of a condition whose hole holds no tumour (paint healthy tissue)."""
CLASS_COLOURS = np.array([[255, 64, 64], [64, 255, 64], [64, 128, 255]], dtype=np.float32)
"""RGB of each class's tumour in condition previews (meningioma red, glioma green, pituitary blue)."""
REFERENCE_SIZE = 128
"""Pixel radii and sigmas in configs are given at this slice size and scale with it."""


class BrainMask:
    """Head/brain mask of a uint8 slice: Otsu threshold (scaled by ``threshold_scale``) of the
    lightly smoothed slice, closing, hole filling, largest connected component, opening.

    Radii scale with the image size (given for 128 px), so 64 and 256 px masks look alike.

    Raises:
        ValueError: a non-2-D image or a bad parameter.
    """

    def __init__(self, threshold_scale: float = 0.5, closing_radius: float = 3.0) -> None:
        if not 0.0 < threshold_scale <= 2.0:
            raise ValueError(f"threshold_scale must be in (0, 2], got {threshold_scale}")
        if closing_radius <= 0:
            raise ValueError(f"closing_radius must be positive, got {closing_radius}")
        self.threshold_scale = threshold_scale
        self.closing_radius = closing_radius

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.ndim != 2:
            raise ValueError(f"expected a 2-D slice, got shape {image.shape}")
        scale = image.shape[0] / REFERENCE_SIZE
        smooth = ndimage.gaussian_filter(image.astype(np.float32), sigma=max(0.5, scale))
        if smooth.max() <= smooth.min():
            return np.zeros(image.shape, dtype=bool)
        mask = smooth > self.threshold_scale * threshold_otsu(smooth)
        mask = ndimage.binary_closing(mask, structure=disk(self.closing_radius * scale), border_value=0)
        mask = ndimage.binary_fill_holes(mask)
        labels, count = ndimage.label(mask)
        if count > 1:
            sizes = np.bincount(labels.ravel())[1:]
            mask = labels == 1 + int(np.argmax(sizes))
        return ndimage.binary_opening(mask, structure=disk(max(1.0, scale)))


def brain_masks(images: np.ndarray, tumours: np.ndarray, brain_mask: BrainMask | None = None) -> np.ndarray:
    """Bool ``(N, S, S)`` brain masks of uint8 slices ``(N, S, S)``, each including its tumour."""
    brain_mask = brain_mask or BrainMask()
    return np.stack([brain_mask(image) | np.asarray(tumour, dtype=bool)
                     for image, tumour in zip(images, tumours, strict=True)])


def disk(radius: float) -> np.ndarray:
    """A bool disk structuring element of ``radius`` pixels (at least 1)."""
    r = max(1, int(round(radius)))
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def scaled(pixels: float, size: int) -> float:
    """``pixels`` given at :data:`REFERENCE_SIZE` px, at a ``size`` px slice."""
    return pixels * size / REFERENCE_SIZE


def hole_of(tumour: np.ndarray, radius: float) -> np.ndarray:
    """The region erased for ``tumour``: the mask dilated by a disk of ``radius`` pixels (0: the mask itself)."""
    tumour = np.asarray(tumour, dtype=bool)
    return ndimage.binary_dilation(tumour, structure=disk(radius)) if radius > 0 else tumour.copy()


def encode(image: np.ndarray, hole: np.ndarray, tumour: np.ndarray, label: int) -> np.ndarray:
    """The condition of a uint8 crop ``image`` with ``hole`` erased and ``tumour`` coded as class ``label``
    (:data:`HEALTHY`: no tumour; ``tumour`` must then be empty).

    Raises:
        ValueError: a label outside ``HEALTHY, 0..NUM_CLASSES-1``, a tumour with a healthy label, or a tumour
            outside the hole.
    """
    hole, tumour = np.asarray(hole, dtype=bool), np.asarray(tumour, dtype=bool)
    if not HEALTHY <= label < NUM_CLASSES:
        raise ValueError(f"label must be {HEALTHY} (healthy) or a class index 0..{NUM_CLASSES - 1}, got {label}")
    if tumour.any() and (label == HEALTHY or (tumour & ~hole).any()):
        raise ValueError("a tumour needs a class label and must lie inside the hole")
    condition = np.zeros((CONDITION_CHANNELS, *hole.shape), dtype=np.float32)
    condition[0] = np.where(hole, 0.0, np.asarray(image, dtype=np.float32) / 255.0)
    condition[1] = hole
    if label != HEALTHY:
        condition[2 + label] = tumour
    return condition


def decode(condition: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Invert :func:`encode`: the uint8 anatomy (0 in the hole), the hole, the tumour and its label."""
    anatomy = np.round(condition[0] * 255.0).astype(np.uint8)
    hole = condition[1] > 0.5
    coded = condition[2:] > 0.5
    present = np.flatnonzero(coded.any(axis=(1, 2)))
    if present.size > 1:
        raise ValueError(f"a condition codes one class, this one codes {present.tolist()}")
    label = int(present[0]) if present.size else HEALTHY
    return anatomy, hole, coded.any(axis=0), label


def crop_origin(region: np.ndarray, crop: int, shift: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """Top-left corner of the ``crop`` x ``crop`` window centred on ``region``'s bounding box (the image centre
    when ``region`` is empty), plus ``shift`` pixels, clamped to the image."""
    rows, cols = np.nonzero(region)
    size = region.shape[0]
    if rows.size == 0:
        rows = cols = np.array([size // 2])
    centre = ((rows.min() + rows.max() + 1) // 2 + shift[0], (cols.min() + cols.max() + 1) // 2 + shift[1])
    return tuple(int(np.clip(c - crop // 2, 0, size - crop)) for c in centre)


def inside_window(region: np.ndarray, origin: tuple[int, int], crop: int, margin: int) -> bool:
    """Whether ``region`` lies in the window at ``origin`` at least ``margin`` pixels from its border
    (the image border counts as inside; an empty region always does)."""
    rows, cols = np.nonzero(region)
    if rows.size == 0:
        return True
    size = region.shape[0]
    low = [origin[0] + margin if origin[0] > 0 else 0, origin[1] + margin if origin[1] > 0 else 0]
    high = [origin[0] + crop - margin if origin[0] + crop < size else size,
            origin[1] + crop - margin if origin[1] + crop < size else size]
    return bool(rows.min() >= low[0] and cols.min() >= low[1] and rows.max() < high[0] and cols.max() < high[1])


def window(array: np.ndarray, origin: tuple[int, int], crop: int) -> np.ndarray:
    """The ``crop`` x ``crop`` window of the last two axes of ``array`` at ``origin`` (a view)."""
    return array[..., origin[0]:origin[0] + crop, origin[1]:origin[1] + crop]


def paste(image: np.ndarray, painted: np.ndarray, hole: np.ndarray, origin: tuple[int, int],
          feather: float) -> np.ndarray:
    """``image`` with the uint8 crop ``painted`` blended in at ``origin``: fully inside ``hole`` (crop
    coordinates), fading out over a Gaussian of ``feather`` pixels around it, the original elsewhere."""
    alpha = hole.astype(np.float32)
    if feather > 0:
        alpha = np.maximum(alpha, np.clip(ndimage.gaussian_filter(alpha, sigma=feather) * 2.0, 0.0, 1.0))
    result = image.copy()
    original = window(image, origin, painted.shape[0]).astype(np.float32)
    blended = alpha * painted.astype(np.float32) + (1.0 - alpha) * original
    window(result, origin, painted.shape[0])[...] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return result


def condition_preview(condition: np.ndarray) -> np.ndarray:
    """An RGB uint8 ``(K, K, 3)`` picture of a condition: the anatomy, the hole dark blue-grey, the tumour in
    its class colour."""
    grey = condition[0] * 255.0
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb = np.where(condition[1][..., None] > 0.5, np.array([40.0, 40.0, 70.0]), rgb)
    tumour = condition[2:].sum(axis=0)
    colour = np.tensordot(np.moveaxis(condition[2:], 0, -1), CLASS_COLOURS, axes=1)
    rgb = rgb * (1.0 - tumour[..., None]) + colour
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
