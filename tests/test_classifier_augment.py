"""datasets.augment: deterministic transforms and their seeded random twins, for slice and volume batches."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from capsule_classifier.data import SliceDataset
from datasets.augment import (
    BASIC,
    Affine,
    BiasField,
    Flip,
    RandAffine,
    RandBiasField,
    RandFlip,
    RandGamma,
    RandGaussianBlur,
    RandJPEG,
    RandLowResolution,
    RandomTransform,
    RandRicianNoise,
    RandScaleShiftIntensity,
    ScaleShiftIntensity,
    SliceAugment,
    slice_augmentation,
    volume_augmentation,
)
from datasets.core import EMBEDDED_SAMPLE
from experiment.batches import TrainBatches


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


def _slices(n: int = 8) -> torch.Tensor:
    """Real embedded slices as a float batch (N, 1, 128, 128) in [0, 1]."""
    with np.load(EMBEDDED_SAMPLE) as sample:
        return torch.from_numpy(sample["image"][:n]).float().div(255.0)[:, None]


def _reseeded(transform: RandomTransform, seed: int = 0) -> RandomTransform:
    transform.set_generator(torch.Generator().manual_seed(seed))
    return transform


def test_bias_field_is_smooth_and_multiplicative() -> None:
    field = BiasField(degree=3)
    images = torch.full((2, 1, 32, 32), 0.5)
    coefficients = torch.zeros(2, len(field.orders))
    coefficients[1, field.orders.index((1, 0))] = 0.3  # a vertical ramp of the log field
    out = field(images, coefficients)
    assert torch.equal(out[0], images[0]) and len(field.orders) == 9
    column = out[1, 0, :, 16]
    assert torch.all(column.diff() * column.diff()[0] > 0)  # monotone
    assert float(column.max() / column.min()) == pytest.approx(math.exp(0.6), rel=0.02)


def test_gamma_keeps_black_and_white_and_stays_monotone() -> None:
    ramp = torch.linspace(0, 1, 64).expand(4, 1, 8, 64).contiguous()
    out = _reseeded(RandGamma(0.5, prob=1.0))(ramp)
    assert torch.all(out[..., 0] == 0) and torch.allclose(out[..., -1], torch.ones(1))
    assert torch.all(out.diff(dim=-1) >= 0) and not torch.allclose(out, ramp)


def test_rician_noise_lifts_the_background_like_magnitude_images() -> None:
    black = torch.zeros(16, 1, 32, 32)
    out = _reseeded(RandRicianNoise(0.05, prob=1.0))(black)
    assert out.min() >= 0 and 0 < out.mean() < 0.05
    assert torch.equal(_reseeded(RandRicianNoise(0.05, prob=0.0))(black), black)


@pytest.mark.parametrize("build, smoother", [
    (lambda: RandGaussianBlur(1.5, prob=1.0), True), (lambda: RandLowResolution(0.6, prob=1.0), True),
    (lambda: RandJPEG(10, prob=1.0), False),
], ids=["blur", "resolution loss", "JPEG"])
def test_per_sample_library_ops_degrade_detail_but_keep_the_picture(build: Callable[[], RandomTransform],
                                                                    smoother: bool) -> None:
    images = _slices(4)
    out = _reseeded(build())(images)
    assert out.shape == images.shape and out.dtype == images.dtype and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, _reseeded(build())(images))  # the same draws, the same result
    assert 0 < float((out - images).abs().mean()) < 0.05
    if smoother:  # less detail between neighbouring pixels
        assert (out[..., 1:] - out[..., :-1]).abs().mean() < 0.9 * (images[..., 1:] - images[..., :-1]).abs().mean()


def test_basic_is_the_former_augmentation_and_robust_adds_appearance() -> None:
    basic, robust = slice_augmentation(BASIC), slice_augmentation()
    assert [type(t) for t in basic.transforms] == [RandFlip, RandAffine, RandScaleShiftIntensity]
    assert [type(t) for t in robust.transforms] == [RandFlip, RandAffine, RandBiasField, RandGaussianBlur,
                                                    RandLowResolution, RandRicianNoise, RandGamma,
                                                    RandScaleShiftIntensity, RandJPEG]
    assert len(slice_augmentation(noise_std=0, jpeg_quality=0).transforms) == 7
    with pytest.raises(TypeError):
        slice_augmentation(SliceAugment(), sharpness=1.0)


def test_robust_epochs_resume_exactly() -> None:
    """An epoch drawn by a fresh TrainBatches (a resumed run) equals the one an uninterrupted run draws."""
    images = (_slices(24)[:, 0] * 255).round().to(torch.uint8).numpy()
    labels = np.arange(24) % 3

    def batches() -> TrainBatches:
        return TrainBatches(SliceDataset(images, labels), labels, batch_size=8, seed=4, key=2,
                            augmentation=slice_augmentation(appearance_prob=1.0))

    uninterrupted = batches()
    epochs = [[b for b, _ in uninterrupted(epoch)] for epoch in range(3)]
    resumed = [b for b, _ in batches()(2)]
    assert all(torch.equal(a, b) for a, b in zip(epochs[2], resumed, strict=True))
    assert not torch.equal(epochs[1][0], epochs[2][0])


def test_appearance_twins_validate_arguments() -> None:
    for build in (lambda: RandBiasField(-0.1), lambda: RandGamma(0.2, prob=2.0), lambda: RandRicianNoise(-1.0),
                  lambda: RandGaussianBlur(-1.0), lambda: RandLowResolution(1.0), lambda: RandJPEG(0),
                  lambda: BiasField(0)):
        with pytest.raises(ValueError):
            build()
