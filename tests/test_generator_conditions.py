"""Condition channels, their augmentation, and the quality helpers."""
from __future__ import annotations

import numpy as np
import pytest

from generative_model.conditions import (
    CONDITION_CHANNELS,
    AugmentGeometry,
    BrainMask,
    Geometry,
    RandAffine,
    RandElasticTumour,
    RandFlip,
    RandTumourTransplant,
    brain_masks,
    condition_preview,
    render_condition,
)
from generative_model.quality import class_consistency, comparison_grid

SIZE = 64


def _head(radius: float = 22, centre: tuple[int, int] = (32, 32)) -> np.ndarray:
    """A bright disk on a dark background, with a darker ring inside (a toy head)."""
    y, x = np.ogrid[:SIZE, :SIZE]
    distance = np.hypot(y - centre[0], x - centre[1])
    image = np.where(distance < radius, 150, 5).astype(np.uint8)
    image[(distance > radius - 6) & (distance < radius - 4)] = 40
    return image


def _tumour(centre: tuple[int, int] = (30, 36), radius: float = 4) -> np.ndarray:
    y, x = np.ogrid[:SIZE, :SIZE]
    return np.hypot(y - centre[0], x - centre[1]) < radius


def test_brain_mask_is_the_filled_head() -> None:
    mask = BrainMask()(_head())
    y, x = np.ogrid[:SIZE, :SIZE]
    disk = np.hypot(y - 32, x - 32) < 22
    assert (mask & disk).sum() / (mask | disk).sum() > 0.9  # dark inner ring filled, background excluded
    assert not BrainMask()(np.zeros((SIZE, SIZE), dtype=np.uint8)).any()
    with pytest.raises(ValueError, match="threshold_scale"):
        BrainMask(threshold_scale=0)


def test_condition_channels() -> None:
    tumour = _tumour()
    brain = brain_masks(_head()[None], tumour[None])[0]
    condition = render_condition(Geometry(brain=brain, tumour=tumour, label=1))
    assert condition.shape == (CONDITION_CHANNELS, SIZE, SIZE) and condition.dtype == np.float32
    assert 0.0 <= condition.min() and condition.max() <= 1.0
    assert condition[0][32, 32] > 0.99 and condition[0][0, 0] < 0.01  # brain
    assert condition[1][32, 32] == 0 and condition[1].max() > 0.5  # edge only on the outline
    np.testing.assert_array_equal(condition[3], tumour)  # glioma channel holds the tumour
    assert not condition[2].any() and not condition[4].any()
    assert condition_preview(condition).shape == (SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="label"):
        render_condition(Geometry(brain=brain, tumour=tumour, label=3))


def _augment(brains: np.ndarray, labels: np.ndarray) -> AugmentGeometry:
    return AugmentGeometry([RandTumourTransplant(brains, labels, prob=0.5), RandElasticTumour(), RandFlip(),
                            RandAffine(rotate_deg=10, translate=0.05, scale=(0.9, 1.1))])


def test_augmentation_is_deterministic_and_keeps_label_and_tumour_inside() -> None:
    heads = np.stack([_head(), _head(18, (30, 30)), _head(24, (33, 31))])
    tumours = np.stack([_tumour(), _tumour((28, 28), 3), _tumour((36, 30), 5)])
    brains = brain_masks(heads, tumours)
    labels = np.array([0, 0, 2])
    augment = _augment(brains, labels)
    source = Geometry(brain=brains[0], tumour=tumours[0], label=0, host=0)
    first = [augment(source, np.random.default_rng(seed)) for seed in range(20)]
    again = [augment(source, np.random.default_rng(seed)) for seed in range(20)]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.tumour, b.tumour)
        np.testing.assert_array_equal(a.brain, b.brain)
    assert {g.label for g in first} == {0}
    assert {g.host for g in first} <= {0, 1}  # transplants go to same-class brains only
    assert any(g.host == 1 for g in first)
    assert any(not np.array_equal(g.tumour, source.tumour) for g in first)
    for geometry in first:
        assert geometry.tumour.any()
        assert not (geometry.tumour & ~geometry.brain).any()


def test_transplant_fits_the_tumour_inside_the_host_brain() -> None:
    heads = np.stack([_head(), _head(14, (40, 40))])
    tumours = np.stack([_tumour((30, 36), 6), _tumour((40, 40), 2)])
    brains = brain_masks(heads, tumours)
    transplant = RandTumourTransplant(brains, np.array([2, 2]), prob=1.0, margin=2)
    for seed in range(10):
        moved = transplant(Geometry(brains[0], tumours[0], 2, host=0), np.random.default_rng(seed))
        assert moved.tumour.sum() == tumours[0].sum()
        assert not (moved.tumour & ~moved.brain).any()
    with pytest.raises(ValueError, match="probability"):
        RandTumourTransplant(brains, np.array([2, 2]), prob=1.5)


def test_comparison_grid_layout() -> None:
    conditions = np.zeros((2, CONDITION_CHANNELS, 8, 8), dtype=np.float32)
    images = np.full((2, 8, 8), 200, dtype=np.uint8)
    grid = comparison_grid(conditions, images, images)
    assert grid.shape == (2 * 8 + 2, 3 * 8 + 2 * 2, 3) and grid.dtype == np.uint8


def test_class_consistency_scores_a_callable_classifier() -> None:
    images = np.zeros((6, 8, 8), dtype=np.uint8)
    images[:, 0, 0] = [0, 1, 2, 0, 1, 2]
    labels = np.array([0, 1, 2, 0, 1, 1])

    def predict(batch: np.ndarray) -> np.ndarray:  # "classifies" by a marker pixel
        return batch[:, 0, 0].astype(np.int64)

    result = class_consistency(predict, images, labels)
    assert result["consistency"] == pytest.approx(5 / 6)
    assert result["per_class"] == {"meningioma": 1.0, "glioma": pytest.approx(2 / 3), "pituitary": 1.0}
    with pytest.raises(ValueError, match="predictions"):
        class_consistency(lambda batch: np.zeros(2), images, labels)
