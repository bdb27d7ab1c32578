"""Deterministic preprocessing shared by training, synthesis and prediction (MONAI style:
a small class validates in ``__init__`` and applies in ``__call__``).

Every slice the project sees, real or from a user's file, goes through :func:`preprocess_slice` (or
:func:`preprocess_pair` with its tumour mask), so a model meets the same geometry and intensities at training
and at prediction time. The canonical geometry finds the head (:func:`find_head`), crops to it, pads to a
square keeping the aspect ratio, adds :data:`HEAD_MARGIN` and resizes; intensities are clipped to robust
percentiles of the head and scaled to uint8.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage

from datasets.core import check_allocation

GEOMETRIES = ("canonical", "resize")
"""``canonical``: head crop, square pad, margin, resize; ``resize``: stretch the whole image (the old geometry)."""

HEAD_MARGIN = 0.065
"""Margin on each side of the head, as a share of its longest extent: figshare's median. With
:func:`find_head`, ``(side - extent) / (2 * extent)`` has median 0.064 over the 3064 slices of the 256 px
bundle and 0.071 over the 60 original 512 px JPEGs."""

_COARSE_SIDE = 64  # find_head's coarse pass works on blocks of at most this many per side
_REGION_LEVEL, _EDGE_LEVEL = 0.1, 0.2  # shares of the background..99th-percentile range: coarse region, edges
_FLAT = 0.08  # padding rows and columns stay within this share of the range of one level
_LEAST = 0.05  # an edge row or column holds head pixels over at least this share of the head's size
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's "L"


def as_gray(image: np.ndarray) -> np.ndarray:
    """A float32 2-D copy of a grey ``(H, W)``, ``(H, W, 1)`` or RGB(A) ``(H, W, 3|4)`` slice of any numeric dtype.

    Raises:
        ValueError: another shape, an empty or non-numeric array, or non-finite pixels.
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = array[..., 0] if array.shape[-1] == 1 else array[..., :3].astype(np.float32) @ _LUMA
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"expected a 2-D (or RGB) image, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"expected numeric pixels, got dtype {array.dtype}")
    gray = array.astype(np.float32)
    if not np.isfinite(gray).all():
        raise ValueError("image contains NaN or infinite pixels")
    return gray


class Box(NamedTuple):
    """Rows ``top:bottom`` and columns ``left:right`` of an image (a window may reach beyond it)."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.bottom), slice(self.left, self.right)

    def offset(self, rows: int, cols: int, factor: int = 1) -> Box:
        """This box of a ``factor`` times smaller image whose origin lies at ``(rows, cols)``, in full pixels."""
        return Box(rows + self.top * factor, rows + self.bottom * factor, cols + self.left * factor,
                   cols + self.right * factor)

    def clip(self, other: Box) -> Box:
        return Box(max(self.top, other.top), min(self.bottom, other.bottom), max(self.left, other.left),
                   min(self.right, other.right))


@dataclass(frozen=True)
class Head:
    """What :func:`find_head` finds: the head's ``box``, the ``content`` left after trimming uniform padding, and
    the ``background`` (air) level."""

    box: Box
    content: Box
    background: float


def find_head(gray: np.ndarray) -> Head | None:
    """The head: the largest connected region that stands out from the background (``None`` when nothing does).

    Uniform padding of any level (a grey or black canvas, a flat frame) is trimmed first. The background is the
    darkest level (air). A coarse pass finds the largest region above it on block minima of 2x2 means (noise
    is halved; bright strokes thinner than a block, such as burnt-in text and lines, vanish), smoothed (which
    bridges the skull) and opened. A full-resolution pass then takes the rows and columns that hold head pixels
    near that region, so the box is exact to a pixel or two whatever canvas surrounds the head.
    """
    content = _trim(gray)
    coarse = _coarse_head(gray[content.slices])
    if coarse is None:
        return None
    region, factor, background, level = coarse
    near = _bounds(region)
    search = near.offset(content.top, content.left, factor)
    search = Box(search.top - factor, search.bottom + factor, search.left - factor,
                 search.right + factor).clip(content)
    window = gray[search.slices]
    head = ndimage.uniform_filter(window, max(3, round(max(window.shape) / 100))) > level
    rows = np.minimum((np.arange(search.top, search.bottom) - content.top) // factor, region.shape[0] - 1)
    cols = np.minimum((np.arange(search.left, search.right) - content.left) // factor, region.shape[1] - 1)
    head &= region[np.ix_(rows, cols)]  # only pixels near the coarse region: not text or lines beside it
    least = max(2.0, _LEAST * factor * min(near.bottom - near.top, near.right - near.left))
    rows, cols = head.sum(1) >= least, head.sum(0) >= least
    if not rows.any() or not cols.any():
        return None
    return Head(_bounds(rows[:, None] & cols[None, :]).offset(search.top, search.left), content, background)


def _coarse_head(inner: np.ndarray) -> tuple[np.ndarray, int, float, float] | None:
    """The coarse pass of :func:`find_head` over the trimmed image: the head's region on a grid of
    ``factor x factor`` blocks (dilated by two blocks), ``factor``, the background and the full-resolution
    edge level; ``None`` for an image too small or too flat, or without a region."""
    height, width = inner.shape
    if min(height, width) < 8:
        return None
    factor = 2 * -(-max(height, width) // (2 * _COARSE_SIDE))
    even = inner[:height // 2 * 2, :width // 2 * 2]
    pairs = 0.25 * (even[::2, ::2] + even[1::2, ::2] + even[::2, 1::2] + even[1::2, 1::2])
    cells = _blocks(pairs, factor // 2)
    means = cells.mean((1, 3))
    background = float(np.percentile(means, 2))
    spread = float(np.percentile(means, 99)) - background
    if spread <= 1e-6 * max(1.0, abs(background)):
        return None
    region = ndimage.gaussian_filter(cells.min((1, 3)), 1.0) > background + _REGION_LEVEL * spread
    labels, count = ndimage.label(ndimage.binary_opening(region))
    if count == 0:
        return None
    region = labels == np.bincount(labels.ravel())[1:].argmax() + 1
    spread = float(np.percentile(means[region], 99)) - background  # the head's own range, whatever surrounds it
    return ndimage.binary_dilation(region, iterations=2), factor, background, background + _EDGE_LEVEL * spread


def _bounds(mask: np.ndarray) -> Box:
    """The bounding box of a non-empty 2-D mask."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return Box(int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)


def _blocks(gray: np.ndarray, factor: int) -> np.ndarray:
    """``gray`` as ``factor x factor`` blocks, shape ``(rows, factor, cols, factor)`` (edges padded by repetition)."""
    padded = np.pad(gray, [(0, -n % factor) for n in gray.shape], mode="edge")
    return padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)


def _trim(gray: np.ndarray) -> Box:
    """What is left after removing outer rows and columns that hold one level (the median of the outermost
    ring, within :data:`_FLAT` of the range, JPEG ringing included) in at least 98% of their pixels: uniform
    padding and flat frames."""
    ring = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    flat = np.abs(gray - np.median(ring)) <= max(_FLAT * float(np.ptp(gray)), 1e-6)
    kept = (flat.mean(1) < 0.98)[:, None] & (flat.mean(0) < 0.98)[None, :]
    return _bounds(kept) if kept.sum() >= 4 else Box(0, gray.shape[0], 0, gray.shape[1])


@dataclass(frozen=True)
class SliceGeometry:
    """How a slice becomes its output square: the ``window`` (a square in source pixels, possibly beyond the
    image), the ``content`` pixels it may show (the rest is ``fill``) and the ``region`` whose percentiles set the
    intensity range. One geometry serves a slice and its mask alike, so they cannot disagree."""

    window: Box
    content: Box
    region: Box
    fill: float

    @classmethod
    def of(cls, gray: np.ndarray, geometry: str = "canonical", margin: float = HEAD_MARGIN) -> SliceGeometry:
        """The ``geometry`` (one of :data:`GEOMETRIES`) of a grey slice."""
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
        whole = Box(0, gray.shape[0], 0, gray.shape[1])
        head = find_head(gray) if geometry == "canonical" else None
        if head is None:
            return cls(whole, whole, whole, float(gray.min()))
        box = head.box
        side = max(1, round(max(box.bottom - box.top, box.right - box.left) * (1 + 2 * margin)))
        top, left = round((box.top + box.bottom - side) / 2), round((box.left + box.right - side) / 2)
        return cls(Box(top, top + side, left, left + side), head.content, box, head.background)

    def crop(self, array: np.ndarray) -> np.ndarray:
        """The float32 window of ``array``: its content pixels, ``fill`` elsewhere."""
        height, width = self.window.bottom - self.window.top, self.window.right - self.window.left
        check_allocation(height * width * 4, f"a {height}x{width} slice window")
        out = np.full((height, width), self.fill, dtype=np.float32)
        shown = self.window.clip(self.content)
        if shown.bottom > shown.top and shown.right > shown.left:
            out[shown.offset(-self.window.top, -self.window.left).slices] = array[shown.slices]
        return out

    def image(self, gray: np.ndarray, size: int, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
        """``gray`` in this geometry at ``size x size``, robustly scaled to uint8."""
        region = gray[self.region.slices]
        step = max(1, min(region.shape) // 256)  # percentiles of at most ~256x256 pixels
        return RobustNormalize(lower, upper)(resize(self.crop(gray), size), reference=region[::step, ::step])

    def mask(self, mask: np.ndarray, size: int) -> np.ndarray:
        """A tumour mask of the same slice in this geometry (bool ``size x size``; a pixel is set when at least
        half of it is covered)."""
        return resize(replace(self, fill=0.0).crop(np.asarray(mask, dtype=np.float32)), size) >= 0.5


class RobustNormalize:
    """Clip a 2-D image to the ``[lower, upper]`` percentiles of a reference (default: the image itself) and
    scale that range to ``[0, 255]`` uint8 (zeros when the range is empty).

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

    def __call__(self, image: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
        image = as_gray(image)
        low, high = np.percentile(image if reference is None else reference, [self.lower, self.upper])
        if high <= low:
            return np.zeros(image.shape, dtype=np.uint8)
        return np.rint((np.clip(image, low, high) - low) * (255.0 / (high - low))).astype(np.uint8)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased (bilinear, Pillow) resize of a 2-D array to float32 ``size x size``."""
    _check_size(size)
    return np.asarray(Image.fromarray(np.asarray(image, dtype=np.float32)).resize((size, size),
                                                                                  Image.Resampling.BILINEAR))


class Resize:
    """Resize 2-D images to ``size x size`` with :func:`resize`, keeping the dtype (uint8 is rounded back)."""

    def __init__(self, size: int) -> None:
        _check_size(size)
        self.size = int(size)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.shape == (self.size, self.size):
            return image
        out = resize(image, self.size)
        if image.dtype == np.uint8:
            return np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return out


def _check_size(size: int) -> None:
    if size < 8:
        raise ValueError(f"image size must be at least 8, got {size}")


def preprocess_slice(image: np.ndarray, size: int, lower: float = 0.5, upper: float = 99.5,
                     geometry: str = "canonical") -> np.ndarray:
    """The preprocessing of one raw slice (grey, RGB, any numeric dtype): ``geometry`` (see :data:`GEOMETRIES`),
    robust intensity scaling and anti-aliased resize to uint8 ``size x size``."""
    gray = as_gray(image)
    return SliceGeometry.of(gray, geometry).image(gray, size, lower, upper)


def preprocess_pair(image: np.ndarray, mask: np.ndarray, size: int, lower: float = 0.5, upper: float = 99.5,
                    geometry: str = "canonical") -> tuple[np.ndarray, np.ndarray]:
    """:func:`preprocess_slice` of a slice and its tumour mask in the one geometry the slice gives
    (uint8 and bool ``size x size``)."""
    gray = as_gray(image)
    if np.shape(mask) != gray.shape:
        raise ValueError(f"mask shape {np.shape(mask)} differs from the slice's {gray.shape}")
    frame = SliceGeometry.of(gray, geometry)
    return frame.image(gray, size, lower, upper), frame.mask(mask, size)
