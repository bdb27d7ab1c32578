"""Calibrated class probabilities: temperature scaling, and how well probabilities are calibrated (expected
calibration error, Brier score, reliability diagram).

Temperature scaling acts on the log of a model's probabilities: ``softmax(log p / T)``. For ResNet50, whose
probabilities are ``softmax(logits)``, this is exactly temperature scaling of the logits; for capsnet, whose
probabilities are capsule lengths normalised to sum to one, it is temperature scaling of the log capsule
lengths (``p_c`` proportional to ``length_c ** (1 / T)``). ``T = 1`` leaves either model unchanged. ``T`` is
fitted on a fold's validation patients only, by minimising the negative log-likelihood over ``log T``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

ECE_BINS = 15
TINY = 1e-30
"""Probabilities are clamped here before the logarithm (float32 keeps it; log gives -69)."""
TEMPERATURE_RANGE = (0.01, 100.0)


def calibrate(probabilities: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """``softmax(log p / T)`` per row of ``probabilities`` (N, C)."""
    return (probabilities.clamp_min(TINY).log() / temperature).softmax(dim=1)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of :func:`calibrate` on ``(probabilities,
    labels)`` (LBFGS over ``log T``, float64), clipped to :data:`TEMPERATURE_RANGE`.

    Raises:
        ValueError: empty or mismatched inputs.
    """
    if len(probabilities) == 0 or len(probabilities) != len(labels):
        raise ValueError(f"need matching, non-empty probabilities and labels, got {len(probabilities)} and "
                         f"{len(labels)}")
    log_p = torch.as_tensor(probabilities, dtype=torch.float64).clamp_min(TINY).log()
    targets = torch.as_tensor(labels, dtype=torch.int64)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(log_p / log_t.exp(), targets)
        loss.backward()
        return loss

    optimiser.step(closure)
    value = float(log_t.detach().exp())
    return float(np.clip(value if math.isfinite(value) else 1.0, *TEMPERATURE_RANGE))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Per equal-width bin of the top probability: slices, mean top probability and accuracy (empty bins
    hold ``count`` 0 and ``None``)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    rows: dict[str, list[Any]] = {"count": [], "confidence": [], "accuracy": []}
    for b in range(bins):
        members = which == b
        rows["count"].append(int(members.sum()))
        rows["confidence"].append(float(confidence[members].mean()) if members.any() else None)
        rows["accuracy"].append(float(correct[members].mean()) if members.any() else None)
    return rows


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Slice-weighted mean |accuracy - mean top probability| over ``bins`` equal-width bins of the top
    probability."""
    table = reliability(probabilities, labels, bins)
    total = sum(table["count"])
    return float(sum(n * abs(a - c) for n, a, c in zip(table["count"], table["accuracy"], table["confidence"],
                                                         strict=True) if n) / total)


def brier_score(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean over slices of the squared distance between the probabilities and the one-hot label."""
    onehot = np.eye(probabilities.shape[1])[np.asarray(labels)]
    return float(((probabilities - onehot) ** 2).sum(axis=1).mean())


def calibration_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """ECE, Brier score, accuracy, mean top probability and the reliability table of one set."""
    return {"n": int(len(labels)), "ece": expected_calibration_error(probabilities, labels),
            "brier": brier_score(probabilities, labels),
            "accuracy": float((probabilities.argmax(axis=1) == labels).mean()),
            "mean_confidence": float(probabilities.max(axis=1).mean()),
            "reliability": reliability(probabilities, labels)}


def reliability_figure(curves: dict[str, dict[str, Any]], title: str) -> Any:
    """A reliability diagram (accuracy against mean top probability per bin) of ``curves`` (label ->
    :func:`calibration_metrics`)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.2, 4.0), layout="constrained")
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect")
    for label, metrics in curves.items():
        table = metrics["reliability"]
        points = [(c, a) for n, c, a in zip(table["count"], table["confidence"], table["accuracy"], strict=True) if n]
        axes.plot(*zip(*points, strict=True), marker="o", markersize=3,
                  label=f"{label} (ECE {metrics['ece']:.3f})")
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean top probability", ylabel="accuracy", title=title)
    axes.title.set_fontsize(8)
    axes.legend(loc="upper left", fontsize=7)
    return figure
