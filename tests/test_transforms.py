"""Deterministic preprocessing: grey conversion, robust normalisation and resizing (geometry: test_geometry.py)."""
from __future__ import annotations

import numpy as np
import pytest

from datasets.transforms import Resize, RobustNormalize, as_gray, preprocess_slice, resize


def test_robust_normalize_clips_outliers_and_spans_the_range() -> None:
    image = np.linspace(0, 1000, 64 * 64, dtype=np.float32).reshape(64, 64)
    image[0, 0] = 1e6  # a hot pixel must not squash the range
    out = RobustNormalize(0.5, 99.5)(image)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert 120 <= out[32, 32] <= 135


def test_robust_normalize_takes_its_range_from_the_reference() -> None:
    image = np.linspace(0, 100, 100, dtype=np.float32).reshape(10, 10)
    out = RobustNormalize(0, 100)(image, reference=np.array([0.0, 50.0]))
    assert out[0, 0] == 0 and out[-1, -1] == 255 and out[2, 5] == round(255 * image[2, 5] / 50)


def test_constant_image_is_zero() -> None:
    assert not RobustNormalize()(np.full((8, 8), 7.0)).any()


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 8, 8)), "2-D"),
    (np.array([[np.nan, 1.0], [2.0, 3.0]]), "NaN"),
])
def test_bad_images(bad: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RobustNormalize()(bad)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        RobustNormalize(50, 10)
    with pytest.raises(ValueError):
        Resize(4)
    with pytest.raises(ValueError):
        resize(np.zeros((16, 16)), 4)


def test_resize_is_antialiased_and_keeps_uint8() -> None:
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    small = Resize(16)(checker)
    assert small.shape == (16, 16) and small.dtype == np.uint8
    assert abs(int(small.mean()) - 127) <= 2 and small.std() < 10
    assert Resize(64)(checker) is checker


def test_as_gray_reads_rgb_single_channel_and_any_dtype() -> None:
    grey = np.random.default_rng(0).integers(0, 255, (20, 30)).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 255, np.uint8)], axis=-1)
    for image in (rgb, rgba, grey[..., None], grey.astype(np.uint16), grey.astype(np.float64)):
        assert np.allclose(as_gray(image), grey, atol=1e-3) and as_gray(image).dtype == np.float32
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 1] = 100
    assert np.allclose(as_gray(colour), 58.7)  # ITU-R 601 luma, as Pillow's "L"


def test_preprocess_slice_matches_size_for_int16() -> None:
    raw = np.random.default_rng(0).normal(500, 100, (100, 120)).astype(np.int16)
    out = preprocess_slice(raw, 32)
    assert out.shape == (32, 32) and out.dtype == np.uint8
