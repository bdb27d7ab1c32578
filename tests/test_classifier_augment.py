"""datasets.augment: deterministic transforms, seeded random twins, and the training batches that use them."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from capsule_classifier.data import EvalBatches, TrainBatches
from datasets.augment import (
    Affine,
    Flip,
    RandAffine,
    RandFlip,
    RandScaleShiftIntensity,
    ScaleShiftIntensity,
    slice_augmentation,
)


def _batch(n: int = 4, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))


def test_flip_selected_samples_only() -> None:
    images = _batch()
    out = Flip("horizontal")(images, torch.tensor([True, False, True, False]))
    assert torch.equal(out[0], images[0].flip(-1)) and torch.equal(out[1], images[1])
    with pytest.raises(ValueError, match="axis"):
        Flip("diagonal")


def test_affine_identity_and_quarter_turn() -> None:
    images = torch.zeros(1, 1, 8, 8)
    images[0, 0, 1, 6] = 1.0  # top right
    assert torch.allclose(Affine()(images), images, atol=1e-6)
    turned = Affine()(images, rotate=math.pi / 2)
    assert turned.sum() == pytest.approx(1.0, abs=1e-4) and turned[0, 0].argmax() != images[0, 0].argmax()
    with pytest.raises(ValueError, match="float batch"):
        Affine()(torch.zeros(8, 8))


def test_intensity_jitter_is_clamped() -> None:
    out = ScaleShiftIntensity()(_batch(), scale=2.0, shift=0.5)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_random_twins_are_reproducible_from_their_seed() -> None:
    images = _batch(8, 32)
    first, second = slice_augmentation(), slice_augmentation()
    first.reseed(0, 5)
    second.reseed(0, 5)
    assert torch.equal(first(images), second(images))
    second.reseed(0, 6)
    assert not torch.equal(first(images), second(images))
    assert first(images).shape == images.shape and images.min() >= 0  # input untouched, shape kept


def test_random_twins_validate_arguments() -> None:
    with pytest.raises(ValueError):
        RandFlip(prob=1.5)
    with pytest.raises(ValueError):
        RandAffine(scale=1.2)
    with pytest.raises(ValueError):
        RandScaleShiftIntensity(shift=-0.1)


def test_train_batches_seeded_balanced_and_sharded() -> None:
    labels = np.array([0] * 40 + [1] * 8 + [2] * 16)
    images = np.random.default_rng(0).integers(0, 255, (64, 16, 16), dtype=np.uint8)
    batches = TrainBatches(images, labels, batch_size=8, seed=3, balanced=True, augmentation=slice_augmentation())
    a, b = list(batches(1)), list(batches(1))
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(batches.indices(1), batches.indices(2))
    drawn = np.concatenate([batches.indices(e) for e in range(1, 30)])
    shares = np.bincount(labels[drawn], minlength=3) / drawn.size
    assert np.allclose(shares, 1 / 3, atol=0.05)  # balanced despite 40/8/16
    ranks = [TrainBatches(images, labels, 8, seed=3, rank=r, world_size=2).indices(4) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 32
    assert sorted(np.concatenate(ranks).tolist()) == list(range(64))
    with pytest.raises(ValueError, match="fewer than one batch"):
        TrainBatches(images[:4], labels[:4], batch_size=8, seed=0)


def test_eval_batches_keep_order_without_augmentation() -> None:
    images = np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4)
    batches = list(EvalBatches(images, np.arange(5) % 3, batch_size=2))
    assert [len(y) for _, y in batches] == [2, 2, 1]
    assert torch.equal(torch.cat([x for x, _ in batches])[:, 0], torch.from_numpy(images).float() / 255)
