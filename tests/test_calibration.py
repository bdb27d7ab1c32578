"""Temperature scaling and calibration metrics: the temperature fitted on one half of a synthetic, miscalibrated
problem lowers the expected calibration error on the other half; ECE and Brier score on hand-made cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from capsule_classifier.calibration import (
    brier_score,
    calibrate,
    calibration_metrics,
    expected_calibration_error,
    fit_temperature,
    reliability,
)


def miscalibrated(sharpness: float, n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z) and the probabilities of a model that reports softmax(sharpness * z)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, size=(n, 3))
    truth = torch.from_numpy(logits).softmax(dim=1).numpy()
    labels = np.array([rng.choice(3, p=row) for row in truth])
    return torch.from_numpy(sharpness * logits).softmax(dim=1).numpy(), labels


@pytest.mark.parametrize("sharpness", [3.0, 0.4])  # over-confident (ResNet50-like) and under-confident (capsnet)
def test_temperature_fitted_on_one_half_lowers_ece_on_the_other(sharpness: float) -> None:
    probabilities, labels = miscalibrated(sharpness)
    temperature = fit_temperature(probabilities[:2000], labels[:2000])
    assert temperature == pytest.approx(sharpness, rel=0.15)  # undoes the distortion
    held_out = probabilities[2000:], labels[2000:]
    before = expected_calibration_error(*held_out)
    after = expected_calibration_error(calibrate(torch.from_numpy(held_out[0]), temperature).numpy(), held_out[1])
    assert before > 0.08 and after < 0.03 and after < before / 3
    assert brier_score(calibrate(torch.from_numpy(held_out[0]), temperature).numpy(), held_out[1]) < brier_score(
        *held_out)


def test_calibration_keeps_the_ranking_and_unit_temperature_changes_nothing() -> None:
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.05, 0.15, 0.8], [1.0, 0.0, 0.0]])
    assert torch.allclose(calibrate(probabilities, 1.0), probabilities, atol=1e-6)
    sharper = calibrate(probabilities, 0.5)
    assert torch.equal(sharper.argmax(1), probabilities.argmax(1)) and torch.allclose(sharper.sum(1), torch.ones(3))
    assert bool((sharper.max(1).values >= probabilities.max(1).values - 1e-6).all())


def test_ece_and_brier_on_hand_made_sets() -> None:
    probabilities = np.tile([0.8, 0.2, 0.0], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.0)  # 80% right at 0.8
    assert brier_score(probabilities, labels) == pytest.approx(0.8 * 0.08 + 0.2 * 1.28)
    assert expected_calibration_error(probabilities, np.zeros(10, dtype=int)) == pytest.approx(0.2)
    table = reliability(probabilities, labels)
    assert table["count"][12] == 10 and table["accuracy"][12] == pytest.approx(0.8)  # 0.8 falls in bin 12 of 15
    assert sum(table["count"]) == 10 and table["confidence"][0] is None
    metrics = calibration_metrics(probabilities, labels)
    assert metrics["n"] == 10 and metrics["accuracy"] == pytest.approx(0.8) and metrics["mean_confidence"] == 0.8


def test_fit_temperature_refuses_empty_or_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="matching, non-empty"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="matching, non-empty"):
        fit_temperature(np.full((4, 3), 1 / 3), np.zeros(3, dtype=int))
