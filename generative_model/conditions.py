"""Condition images for the conditional pix2pix generator, and their augmentation for synthesis.

A condition is a float32 array ``(CONDITION_CHANNELS, S, S)`` in ``[0, 1]``:

====  =========================================================================================
 0    brain: the slice's head/brain mask (threshold, closing, hole filling, largest component),
      Gaussian-smoothed
 1    edge: the outline of that mask (morphological gradient), Gaussian-smoothed
 2-4  tumour, one channel per class (meningioma, glioma, pituitary): the tumour mask in the
      channel of the slice's class, zeros in the other two (tumour mask = sum of channels 2-4)
====  =========================================================================================

Everything is derived from the slice itself plus its tumour mask and label, so a synthetic image
rendered from a condition carries a known label. Synthesis draws new conditions from real training
ones with :class:`AugmentGeometry` (flip, small affine, elastic warp of the tumour, transplanting the
tumour into another same-class brain where it fits), deterministic for a ``numpy.random.Generator``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage, signal
from skimage.filters import threshold_otsu

from datasets.core import CLASS_NAMES

NUM_CLASSES = len(CLASS_NAMES)
CONDITION_CHANNELS = 2 + NUM_CLASSES
CHANNEL_NAMES: tuple[str, ...] = ("brain", "edge", *(f"tumour_{name}" for name in CLASS_NAMES))
CLASS_COLOURS = np.array([[255, 64, 64], [64, 255, 64], [64, 128, 255]], dtype=np.float32)
"""RGB of each class's tumour in condition previews (meningioma red, glioma green, pituitary blue)."""


@dataclass(frozen=True)
class Geometry:
    """The layout one condition is rendered from: ``brain`` and ``tumour`` bool ``(S, S)``, class index
    ``label``, and ``host``: the index of the real slice whose brain this is (-1 when unknown)."""

    brain: np.ndarray
    tumour: np.ndarray
    label: int
    host: int = -1


class BrainMask:
    """Head/brain mask of a uint8 slice: Otsu threshold (scaled by ``threshold_scale``) of the
    lightly smoothed slice, closing, hole filling, largest connected component, opening.

    Radii scale with the image size (given for 128 px), so 64 and 256 px masks look alike.

    Args:
        threshold_scale: factor on the Otsu threshold; below 1 keeps dark brain tissue in the mask.
        closing_radius: closing radius in pixels at 128 px.
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
        scale = image.shape[0] / 128.0
        smooth = ndimage.gaussian_filter(image.astype(np.float32), sigma=max(0.5, scale))
        if smooth.max() <= smooth.min():
            return np.zeros(image.shape, dtype=bool)
        mask = smooth > self.threshold_scale * threshold_otsu(smooth)
        mask = ndimage.binary_closing(mask, structure=_disk(self.closing_radius * scale), border_value=0)
        mask = ndimage.binary_fill_holes(mask)
        labels, count = ndimage.label(mask)
        if count > 1:
            sizes = np.bincount(labels.ravel())[1:]
            mask = labels == 1 + int(np.argmax(sizes))
        return ndimage.binary_opening(mask, structure=_disk(max(1.0, scale)))


def brain_masks(images: np.ndarray, tumours: np.ndarray, brain_mask: BrainMask | None = None) -> np.ndarray:
    """Bool ``(N, S, S)`` brain masks of uint8 slices ``(N, S, S)``, each including its tumour."""
    brain_mask = brain_mask or BrainMask()
    return np.stack([brain_mask(image) | np.asarray(tumour, dtype=bool)
                     for image, tumour in zip(images, tumours, strict=True)])


def render_condition(geometry: Geometry) -> np.ndarray:
    """The float32 ``(CONDITION_CHANNELS, S, S)`` condition of ``geometry`` (channels in the module docstring)."""
    if not 0 <= geometry.label < NUM_CLASSES:
        raise ValueError(f"label must be a class index 0..{NUM_CLASSES - 1}, got {geometry.label}")
    size = geometry.brain.shape[0]
    sigma = max(0.5, size / 128.0)
    brain = geometry.brain.astype(np.float32)
    edge = (geometry.brain ^ ndimage.binary_erosion(geometry.brain, border_value=0)).astype(np.float32)
    condition = np.zeros((CONDITION_CHANNELS, *geometry.brain.shape), dtype=np.float32)
    condition[0] = ndimage.gaussian_filter(brain, sigma=sigma)
    condition[1] = np.clip(ndimage.gaussian_filter(edge, sigma=sigma) * 2.0, 0.0, 1.0)
    condition[2 + geometry.label] = geometry.tumour
    return condition


def render_conditions(geometries: Sequence[Geometry]) -> np.ndarray:
    """Stack :func:`render_condition` over ``geometries``: float32 ``(N, C, S, S)``."""
    return np.stack([render_condition(g) for g in geometries])


def condition_preview(condition: np.ndarray) -> np.ndarray:
    """An RGB uint8 ``(S, S, 3)`` picture of a condition: grey brain, white edge, tumour in its class colour."""
    grey = np.clip(condition[0] * 70.0 + condition[1] * 185.0, 0.0, 255.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    tumour = condition[2:].sum(axis=0)
    colour = np.tensordot(np.moveaxis(condition[2:], 0, -1), CLASS_COLOURS, axes=1)
    rgb = rgb * (1.0 - tumour[..., None]) + colour
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


class RandFlip:
    """Mirror the whole geometry left-right with probability ``prob``."""

    def __init__(self, prob: float = 0.5) -> None:
        _check_prob(prob, "prob")
        self.prob = prob

    def __call__(self, geometry: Geometry, rng: np.random.Generator) -> Geometry:
        if rng.random() >= self.prob:
            return geometry
        return replace(geometry, brain=geometry.brain[:, ::-1].copy(), tumour=geometry.tumour[:, ::-1].copy())


class RandAffine:
    """Rotate (degrees), scale and translate (fraction of the side) brain and tumour together
    about the image centre, each parameter drawn uniformly from its range.

    Raises:
        ValueError: a negative range or a scale range outside (0, 2).
    """

    def __init__(self, rotate_deg: float = 10.0, translate: float = 0.05,
                 scale: tuple[float, float] = (0.9, 1.1)) -> None:
        if rotate_deg < 0 or translate < 0:
            raise ValueError(f"rotate_deg and translate must be >= 0, got {rotate_deg}, {translate}")
        if not 0.0 < scale[0] <= scale[1] < 2.0:
            raise ValueError(f"scale must be an increasing pair in (0, 2), got {tuple(scale)}")
        self.rotate_deg, self.translate, self.scale = rotate_deg, translate, (float(scale[0]), float(scale[1]))

    def __call__(self, geometry: Geometry, rng: np.random.Generator) -> Geometry:
        size = geometry.brain.shape[0]
        angle = np.deg2rad(rng.uniform(-self.rotate_deg, self.rotate_deg))
        zoom = rng.uniform(*self.scale)
        shift = rng.uniform(-self.translate, self.translate, size=2) * size
        cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
        matrix = np.array([[cos, -sin], [sin, cos]])  # output -> input coordinates
        centre = (np.array(geometry.brain.shape) - 1) / 2.0
        offset = centre - matrix @ (centre + shift)
        brain = _warp_mask(geometry.brain, lambda m: ndimage.affine_transform(m, matrix, offset, order=1))
        tumour = _warp_mask(geometry.tumour, lambda m: ndimage.affine_transform(m, matrix, offset, order=1))
        return _keep_tumour_inside(geometry, brain=brain | tumour, tumour=tumour)


class RandElasticTumour:
    """Elastic warp of the tumour mask only: a random displacement field, Gaussian-smoothed with
    ``sigma`` and scaled to at most ``alpha`` pixels (both given for 128 px), clipped to the brain."""

    def __init__(self, alpha: float = 4.0, sigma: float = 4.0) -> None:
        if alpha < 0 or sigma <= 0:
            raise ValueError(f"need alpha >= 0 and sigma > 0, got alpha={alpha}, sigma={sigma}")
        self.alpha, self.sigma = alpha, sigma

    def __call__(self, geometry: Geometry, rng: np.random.Generator) -> Geometry:
        shape = geometry.tumour.shape
        scale = shape[0] / 128.0
        fields = []
        for _ in range(2):
            field = ndimage.gaussian_filter(rng.uniform(-1.0, 1.0, size=shape), sigma=self.sigma * scale)
            peak = np.abs(field).max()
            fields.append(field * (self.alpha * scale / peak) if peak > 0 else field)
        rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        coordinates = np.stack([rows + fields[0], cols + fields[1]])
        tumour = _warp_mask(geometry.tumour, lambda m: ndimage.map_coordinates(m, coordinates, order=1))
        return _keep_tumour_inside(geometry, brain=geometry.brain, tumour=tumour & geometry.brain)


class RandTumourTransplant:
    """With probability ``prob``, move the tumour into the brain of another slice of the same class,
    at a random position where the whole tumour lies inside that brain (eroded by ``margin`` pixels).

    Args:
        brains: bool ``(N, S, S)`` brain masks of the candidate hosts.
        labels: their class indices ``(N,)``; a transplanted geometry's ``host`` indexes these.
        prob: probability of a transplant.
        margin: pixels between the tumour and the host's brain outline.
    When no host of the class can hold the tumour, the geometry is returned unchanged.
    """

    def __init__(self, brains: np.ndarray, labels: np.ndarray, prob: float = 0.5, margin: int = 2) -> None:
        _check_prob(prob, "prob")
        brains, labels = np.asarray(brains, dtype=bool), np.asarray(labels)
        if brains.ndim != 3 or brains.shape[0] != labels.shape[0]:
            raise ValueError(f"brains {brains.shape} must be (N, S, S) with one label each ({labels.shape})")
        self.brains, self.labels, self.prob, self.margin = brains, labels, prob, int(margin)
        self._hosts = {c: np.flatnonzero(labels == c) for c in range(NUM_CLASSES)}

    def __call__(self, geometry: Geometry, rng: np.random.Generator) -> Geometry:
        hosts = self._hosts.get(geometry.label, np.empty(0, dtype=np.int64))
        if rng.random() >= self.prob or hosts.size == 0 or not geometry.tumour.any():
            return geometry
        host = int(rng.choice(hosts))
        rows, cols = np.nonzero(geometry.tumour)
        crop = geometry.tumour[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        inside = ndimage.binary_erosion(self.brains[host], iterations=self.margin) if self.margin else self.brains[host]
        overlap = signal.correlate(inside.astype(np.float32), crop.astype(np.float32), mode="valid", method="fft")
        fits = np.argwhere(overlap > crop.sum() - 0.5)
        if fits.size == 0:
            return geometry
        top, left = fits[rng.integers(len(fits))]
        tumour = np.zeros_like(geometry.tumour)
        tumour[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
        return Geometry(brain=self.brains[host], tumour=tumour, label=geometry.label, host=host)


class AugmentGeometry:
    """Compose geometry augmentations, each drawing from the same ``numpy.random.Generator``,
    so one generator state fixes the result."""

    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, geometry: Geometry, rng: np.random.Generator) -> Geometry:
        for transform in self.transforms:
            geometry = transform(geometry, rng)
        return geometry


def _disk(radius: float) -> np.ndarray:
    r = max(1, int(round(radius)))
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def _warp_mask(mask: np.ndarray, warp) -> np.ndarray:
    """Apply a linear-interpolating ``warp`` to a bool mask and threshold it back at one half."""
    return warp(mask.astype(np.float32)) > 0.5


def _keep_tumour_inside(original: Geometry, brain: np.ndarray, tumour: np.ndarray) -> Geometry:
    """The warped geometry, or ``original`` when the warp pushed the tumour out of the image."""
    if original.tumour.any() and not tumour.any():
        return original
    return replace(original, brain=brain, tumour=tumour)


def _check_prob(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
