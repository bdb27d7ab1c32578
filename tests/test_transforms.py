"""Deterministic preprocessing: robust normalisation and resizing."""
from __future__ import annotations

import numpy as np
import pytest

from datasets.transforms import Resize, RobustNormalize, preprocess_mask, preprocess_slice


def test_robust_normalize_clips_outliers_and_spans_uint8() -> None:
    image = np.linspace(0, 1000, 64 * 64, dtype=np.float32).reshape(64, 64)
    image[0, 0] = 1e6  # a hot pixel must not squash the range
    out = RobustNormalize(0.5, 99.5)(image)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert 120 <= out[32, 32] <= 135


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


def test_resize_is_antialiased_and_masks_nearest() -> None:
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    small = Resize(16)(checker)
    assert small.shape == (16, 16) and abs(int(small.mean()) - 127) <= 2 and small.std() < 10
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    resized = preprocess_mask(mask, 16)
    assert resized.dtype == bool and resized.sum() == 64


def test_preprocess_slice_matches_size() -> None:
    raw = np.random.default_rng(0).normal(500, 100, (100, 100)).astype(np.int16)
    assert preprocess_slice(raw, 32).shape == (32, 32)
