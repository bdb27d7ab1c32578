"""datasets.augment: deterministic transforms and their seeded random twins, for slice and volume batches."""
from __future__ import annotations

import math

import pytest
import torch

from datasets.augment import (
    Affine,
    Flip,
    RandAffine,
    RandFlip,
    RandScaleShiftIntensity,
    ScaleShiftIntensity,
    slice_augmentation,
    volume_augmentation,
)


def _batch(n: int = 4, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))


def test_flip_selected_samples_only() -> None:
    images = _batch()
    out = Flip("horizontal")(images, torch.tensor([True, False, True, False]))
    assert torch.equal(out[0], images[0].flip(-1)) and torch.equal(out[1], images[1])
    with pytest.raises(ValueError, match="axis"):
        Flip("diagonal")


def test_flip_volumes_along_a_dimension() -> None:
    volumes = torch.rand(2, 1, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    out = Flip(3)(volumes, torch.tensor([False, True]))
    assert torch.equal(out[0], volumes[0]) and torch.equal(out[1], volumes[1].flip(2))
    with pytest.raises(ValueError, match="spatial dimension"):
        Flip(1)
    with pytest.raises(ValueError, match="cannot flip dimension 5"):
        Flip(5)(volumes)
    with pytest.raises(ValueError, match="float batch"):
        Flip(2)(torch.zeros(2, 1, 3, 4, 5, 6))
    with pytest.raises(ValueError, match=r"float batch \(N, C, H, W\), got \(2, 1, 3, 4, 5\)"):
        Affine()(volumes)  # only flips handle volumes
    first, second = volume_augmentation(4), volume_augmentation(4)
    first.reseed(0, 1)
    second.reseed(0, 1)
    batch = torch.rand(16, 1, 2, 2, 3)
    assert torch.equal(first(batch), second(batch)) and not torch.equal(first(batch), batch)


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
