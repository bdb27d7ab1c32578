"""Condition crops, training pairs, transplants and the quality metrics, on toy heads (no data, no network)."""
from __future__ import annotations

import numpy as np
import pytest

from datasets.core import SliceSet
from generative_model.conditions import (
    CONDITION_CHANNELS,
    HEALTHY,
    BrainMask,
    condition_preview,
    crop_origin,
    decode,
    encode,
    hole_of,
    paste,
    window,
)
from generative_model.pairs import TrainingPairs
from generative_model.quality import class_consistency, comparison_grid, frechet_distance, max_correlation
from generative_model.transplant import Donors, unpack_masks

SIZE = 64
CROP = 32


def _head(radius: float = 26, centre: tuple[int, int] = (32, 32), seed: int = 0) -> np.ndarray:
    """A textured bright disk on a dark background, with a darker ring inside (a toy head)."""
    y, x = np.ogrid[:SIZE, :SIZE]
    distance = np.hypot(y - centre[0], x - centre[1])
    noise = np.random.default_rng(seed).integers(0, 40, (SIZE, SIZE))
    image = np.where(distance < radius, 110 + noise, 5).astype(np.uint8)
    image[(distance > radius - 6) & (distance < radius - 4)] = 40
    return image


def _tumour(centre: tuple[int, int] = (30, 36), radius: float = 4) -> np.ndarray:
    y, x = np.ogrid[:SIZE, :SIZE]
    return np.hypot(y - centre[0], x - centre[1]) < radius


def _slices() -> SliceSet:
    """Six toy slices: two patients per class, planes alternating, tumours in different places."""
    centres = [(24, 24), (40, 40), (24, 40), (40, 24), (32, 22), (32, 44)]
    masks = np.stack([_tumour(c, 3 + k % 2) for k, c in enumerate(centres)])
    images = np.stack([np.where(m, 230, _head(seed=k)).astype(np.uint8) for k, m in enumerate(masks)])
    return SliceSet(images, masks, np.array([0, 0, 1, 1, 2, 2]), np.arange(100, 106), np.array(list("abcdef")),
                    np.array(["axial", "coronal"] * 3), np.zeros(6, dtype=np.int64), "toy", "f")


def test_brain_mask_is_the_filled_head() -> None:
    mask = BrainMask()(_head())
    y, x = np.ogrid[:SIZE, :SIZE]
    disk = np.hypot(y - 32, x - 32) < 26
    assert (mask & disk).sum() / (mask | disk).sum() > 0.9  # dark inner ring filled, background excluded
    assert not BrainMask()(np.zeros((SIZE, SIZE), dtype=np.uint8)).any()
    with pytest.raises(ValueError, match="threshold_scale"):
        BrainMask(threshold_scale=0)


@pytest.mark.parametrize("label", [0, 1, 2, HEALTHY])
def test_condition_and_class_coding_round_trip(label: int) -> None:
    image = _head()
    tumour = _tumour() if label != HEALTHY else np.zeros((SIZE, SIZE), dtype=bool)
    hole = hole_of(_tumour(), 2)
    condition = encode(image, hole, tumour, label)
    assert condition.shape == (CONDITION_CHANNELS, SIZE, SIZE) and condition.dtype == np.float32
    assert 0.0 <= condition.min() and condition.max() <= 1.0
    anatomy, hole_back, tumour_back, label_back = decode(condition)
    assert label_back == label
    np.testing.assert_array_equal(hole_back, hole)
    np.testing.assert_array_equal(tumour_back, tumour)
    np.testing.assert_array_equal(anatomy[~hole], image[~hole])  # the anatomy survives outside the hole
    assert not anatomy[hole].any()  # and is erased inside it
    coded = condition[2:].reshape(3, -1).any(axis=1)
    assert coded.tolist() == [k == label for k in range(3)]  # one channel per class, none for healthy
    assert condition_preview(condition).shape == (SIZE, SIZE, 3)


def test_condition_refusals() -> None:
    hole, tumour = hole_of(_tumour(), 1), _tumour()
    with pytest.raises(ValueError, match="label"):
        encode(_head(), hole, tumour, 3)
    with pytest.raises(ValueError, match="class label"):
        encode(_head(), hole, tumour, HEALTHY)
    with pytest.raises(ValueError, match="inside the hole"):
        encode(_head(), _tumour(radius=2), tumour, 0)


def test_crop_window_is_centred_and_clamped() -> None:
    assert crop_origin(_tumour((30, 36)), CROP) == (14, 20)
    assert crop_origin(_tumour((3, 60)), CROP) == (0, SIZE - CROP)
    assert crop_origin(_tumour((30, 36)), CROP, shift=(-100, 0)) == (0, 20)
    assert crop_origin(np.zeros((SIZE, SIZE), dtype=bool), CROP) == (16, 16)


def test_paste_changes_only_the_hole_and_its_feather() -> None:
    image, hole = _head(), hole_of(_tumour(), 2)
    origin = crop_origin(hole, CROP)
    painted = np.full((CROP, CROP), 255, dtype=np.uint8)
    result = paste(image, painted, window(hole, origin, CROP), origin, feather=1.0)
    assert (result[hole] == 255).all()
    band = hole_of(hole, 3)
    np.testing.assert_array_equal(result[~band], image[~band])


def test_training_pairs_code_tumour_and_healthy_pairs_deterministically() -> None:
    slices = _slices()
    pairs = TrainingPairs(slices.images, slices.masks, slices.labels, crop=CROP, erase_radius=2, jitter=4,
                          healthy_prob=0.5)
    condition, target, hole = pairs.pair(2)  # centred tumour pair
    anatomy, hole_back, tumour, label = decode(condition)
    assert label == 1 and target.shape == (CROP, CROP) and tumour.any()
    np.testing.assert_array_equal(hole_back, hole)
    np.testing.assert_array_equal(anatomy[~hole], target[~hole])
    seen = set()
    for seed in range(20):
        first = pairs.batch(np.arange(6), np.random.default_rng(seed))
        again = pairs.batch(np.arange(6), np.random.default_rng(seed))
        assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(first, again, strict=True))
        for condition in first[0].numpy():
            _, hole, tumour, label = decode(condition)
            seen.add(label)
            if label == HEALTHY:
                assert not tumour.any() and hole.any()
    assert seen == {0, 1, 2, HEALTHY}


def test_transplants_stay_in_plane_class_across_patients_and_inside_the_head() -> None:
    toy = _slices()  # and six mirrored slices of six more patients, planes swapped: each class has both planes
    slices = SliceSet(np.concatenate([toy.images, toy.images[:, :, ::-1]]),
                      np.concatenate([toy.masks, toy.masks[:, :, ::-1]]), np.tile(toy.labels, 2),
                      np.arange(100, 112), np.array(list("abcdefghijkl")),
                      np.array(["axial", "coronal"] * 3 + ["coronal", "axial"] * 3), np.zeros(12, dtype=np.int64),
                      "toy", "f")
    donors = Donors(slices, crop=CROP, erase_radius=2, margin=2, feather=1.0, tries=50, neighbours=2)
    rng = np.random.default_rng(0)
    plans = [donors.draw(label, rng) for label in [0, 1, 2] * 10]
    mixed = Donors(slices, crop=CROP, erase_radius=2, margin=2, feather=1.0, tries=50, neighbours=2, same_class=False)
    assert any(slices.labels[mixed.draw(label, rng).donor] != label for label in [0, 1, 2] * 10)
    for plan in plans:
        assert slices.labels[plan.mask] == slices.labels[plan.donor] == plan.label
        assert slices.subjects[plan.donor] != slices.subjects[plan.mask]
        assert slices.planes[plan.donor] == slices.planes[plan.mask]
        assert not (donors.holes[plan.mask] & ~donors.inner[plan.donor]).any()
    meta = donors.meta(plans)
    np.testing.assert_array_equal(unpack_masks(meta, SIZE, CROP), slices.masks[[p.mask for p in plans]])
    assert set(meta["donor_subject"]) <= set(slices.subjects)
    lonely = Donors(slices.subset(np.array([0, 1])), crop=CROP, erase_radius=2, margin=2, feather=1.0, tries=5,
                    neighbours=2)
    with pytest.raises(ValueError, match="no tumour of class 0"):  # no other patient has a slice of this plane
        lonely.draw(0, rng)


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


def test_frechet_distance_and_memorisation_figures() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 4)), rng.normal(size=(400, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) < 0.5 < frechet_distance(a, b + 2.0)
    references = rng.integers(0, 255, (5, 8, 8)).astype(np.uint8)
    copies = np.concatenate([references[:2], rng.integers(0, 255, (2, 8, 8)).astype(np.uint8)])
    best = max_correlation(copies, references)
    assert best[:2] == pytest.approx(1.0) and (best[2:] < 0.9).all()
