"""Canonical slice geometry: the same slice on another canvas, cropped, re-encoded, annotated or in 16 bits
preprocesses to nearly the same array, and its mask follows."""
from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from datasets.core import EMBEDDED_SAMPLE
from datasets.transforms import (
    HEAD_MARGIN,
    SliceGeometry,
    as_gray,
    find_head,
    preprocess_pair,
    preprocess_slice,
)

SIZE = 128
Slice = tuple[np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def slices() -> list[Slice]:
    """The first embedded slice of each class, upsampled 3x (384 px, like a scanner export) with its mask."""
    with np.load(EMBEDDED_SAMPLE) as sample:
        images, masks, labels = sample["image"], sample["mask"], sample["label"]
    chosen = [int(np.flatnonzero(labels == label)[0]) for label in (1, 2, 3)]
    return [(np.asarray(Image.fromarray(images[i]).resize((384, 384), Image.Resampling.BICUBIC)),
             np.asarray(Image.fromarray(masks[i]).resize((384, 384), Image.Resampling.NEAREST))) for i in chosen]


def _pad(fill: int) -> Callable[[np.ndarray, np.ndarray], Slice]:
    def pad(image: np.ndarray, mask: np.ndarray) -> Slice:
        """Off-centre on a taller, wider canvas of one ``fill`` level."""
        height, width = image.shape
        canvas = np.full((int(height * 1.6), int(width * 1.25)), fill, dtype=image.dtype)
        big_mask = np.zeros(canvas.shape, dtype=bool)
        top, left = int(0.1 * (canvas.shape[0] - height)), int(0.8 * (canvas.shape[1] - width))
        canvas[top:top + height, left:left + width] = image
        big_mask[top:top + height, left:left + width] = mask
        return canvas, big_mask
    return pad


def _tight(image: np.ndarray, mask: np.ndarray) -> Slice:
    head = find_head(as_gray(image))
    assert head is not None
    return image[head.box.slices], mask[head.box.slices]


def _rgb_jpeg(image: np.ndarray, mask: np.ndarray) -> Slice:
    buffer = io.BytesIO()
    Image.fromarray(image).convert("RGB").save(buffer, "JPEG", quality=75)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")), mask


def _text(image: np.ndarray, mask: np.ndarray) -> Slice:
    """White annotations burnt into the top corners, as scanner exports carry them."""
    annotated = Image.fromarray(image)
    draw, font = ImageDraw.Draw(annotated), ImageFont.load_default(size=image.shape[0] // 24)
    draw.text((2, 1), "SE 4 IM 12", fill=255, font=font)
    draw.text((image.shape[1] - image.shape[1] // 4, 1), "R  TR 500", fill=255, font=font)
    return np.asarray(annotated), mask


def _sixteen_bit(image: np.ndarray, mask: np.ndarray) -> Slice:
    return image.astype(np.uint16) * 200 + 1000, mask


def _frame(image: np.ndarray, mask: np.ndarray) -> Slice:
    framed = _pad(0)(image, mask)
    framed[0][:3], framed[0][-3:], framed[0][:, :3], framed[0][:, -3:] = 255, 255, 255, 255
    return framed


VARIANTS = {"padded, black": _pad(0), "padded, grey": _pad(128), "cropped tightly": _tight, "RGB JPEG": _rgb_jpeg,
            "burnt-in text": _text, "16-bit": _sixteen_bit, "bright frame": _frame,
            "grey canvas, then JPEG": lambda image, mask: _rgb_jpeg(*_pad(128)(image, mask))}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_preprocess_like_the_original(slices: list[Slice], variant: str) -> None:
    for image, mask in slices:
        expected, expected_mask = preprocess_pair(image, mask, SIZE)
        out, out_mask = preprocess_pair(*VARIANTS[variant](image, mask), SIZE)
        assert out.shape == (SIZE, SIZE) and out.dtype == np.uint8 and out_mask.dtype == bool
        correlation = np.corrcoef(expected.ravel(), out.ravel())[0, 1]
        iou = (expected_mask & out_mask).sum() / (expected_mask | out_mask).sum()
        assert correlation >= 0.95, f"{variant}: correlation {correlation:.3f}"
        assert iou >= 0.8, f"{variant}: mask IoU {iou:.3f}"


def test_plain_resize_differs_from_canonical_for_an_off_centre_slice(slices: list[Slice]) -> None:
    image, _ = _pad(0)(*slices[0])
    canonical, stretched = preprocess_slice(image, SIZE), preprocess_slice(image, SIZE, geometry="resize")
    reference = preprocess_slice(slices[0][0], SIZE)
    assert np.corrcoef(reference.ravel(), canonical.ravel())[0, 1] > 0.95
    assert np.corrcoef(reference.ravel(), stretched.ravel())[0, 1] < 0.5  # what prediction did before


def test_square_window_keeps_aspect_ratio_and_adds_the_margin() -> None:
    image = np.zeros((300, 500), dtype=np.float32)
    rows, cols = np.ogrid[:300, :500]
    image[((rows - 120) / 80.0) ** 2 + ((cols - 300) / 40.0) ** 2 <= 1] = 100.0  # a 161 x 81 px "head"
    out = preprocess_slice(image, SIZE)
    bright = np.argwhere(out > 127)
    height, width = np.ptp(bright, axis=0) + 1
    assert height / width == pytest.approx(161 / 81, rel=0.05)
    assert height == pytest.approx(SIZE / (1 + 2 * HEAD_MARGIN), abs=2)
    assert abs(bright[:, 1].mean() - SIZE / 2) < 1.5  # centred
    stretched = np.ptp(np.argwhere(preprocess_slice(image, SIZE, geometry="resize") > 127), axis=0) + 1
    assert stretched[0] / stretched[1] > 1.3 * 161 / 81  # the old geometry stretches a 300 x 500 image


def test_mask_and_image_share_one_geometry(slices: list[Slice]) -> None:
    image, mask = _pad(128)(*slices[1])
    geometry = SliceGeometry.of(as_gray(image))
    out_image, out_mask = preprocess_pair(image, mask, SIZE)
    assert np.array_equal(out_image, geometry.image(as_gray(image), SIZE))
    assert np.array_equal(out_mask, geometry.mask(mask, SIZE))
    with pytest.raises(ValueError, match="mask shape"):
        preprocess_pair(image, mask[1:], SIZE)


@pytest.mark.parametrize("image", [
    np.zeros((64, 64)), np.full((40, 70), 7.0), np.zeros((1, 1)), np.arange(15.0).reshape(3, 5),
    np.pad(np.ones((1, 1)), 20), np.random.default_rng(0).normal(size=(50, 50)), np.zeros((30, 30, 4), np.uint8),
], ids=["blank", "constant", "one pixel", "tiny", "one bright pixel", "pure noise", "blank RGBA"])
def test_degenerate_slices_do_not_crash(image: np.ndarray) -> None:
    out = preprocess_slice(image, SIZE)
    assert out.shape == (SIZE, SIZE) and out.dtype == np.uint8
    if np.ptp(image) == 0:
        assert not out.any()


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 8, 8)), "2-D"), (np.zeros((0, 5)), "2-D"), (np.array([[np.nan, 1.0], [2.0, 3.0]]), "NaN"),
    (np.array([["a", "b"]]), "numeric"),
])
def test_unusable_arrays_are_refused(bad: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        preprocess_slice(bad, SIZE)
    with pytest.raises(ValueError, match="geometry"):
        preprocess_slice(np.zeros((8, 8)), SIZE, geometry="crop")
