"""Out-of-scope detection: does an input look like the T1-CE tumour slices the classifier learned from?

Score: the Mahalanobis distance (Lee et al., 2018) of an image's pooled activations (channel means and
standard deviations of the early and middle convolutions, :data:`FEATURE_LAYERS`) to the nearest class mean of
the fold's training slices, under one shared covariance (Ledoit-Wolf shrinkage of the standardised features),
divided by the feature count (so in-scope slices score about 1). Early and middle layers see contrast and
texture, which is what sets another contrast, a photograph or noise apart; the top probability does not
(benchmarks/bench_trust.py measures every candidate).

Threshold: a slice is out of scope when its score exceeds the threshold. The threshold starts at the lowest
validation score that leaves so few validation slices above it that the false-reject rate stays under ``target``
with 95% confidence (one-sided Clopper-Pearson bound: a validation part of 300 slices may reject 8, not 15), then
moves half-way up towards the lowest out-of-scope score of the set's ``fit`` part above it (or the highest
validation score): the same out-of-scope images are caught, with a margin for in-scope slices the validation
part did not show. Test folds are never used.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.stats import beta
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score
from torch import nn

from capsule_classifier.activations import captured, pooled
from capsule_classifier.data import to_input

if TYPE_CHECKING:
    from capsule_classifier.deploy import ProbabilityModel

SCORE = "mahalanobis"
FEATURE_LAYERS: dict[str, tuple[str, ...]] = {"capsnet": ("features.2",),
                                               "resnet50": ("layer1",)}
"""Modules whose pooled outputs feed the score, per model (chosen with benchmarks/bench_trust.py)."""
TARGET_FALSE_REJECT = 0.05
CONFIDENCE = 0.95
BATCH = 128
_TENSORS = ("center", "scale", "means", "precision")


class OutOfScopeDetector(nn.Module):
    """Pooled activations of ``layers`` -> out-of-scope score (N,): ``min_c (z - m_c)^T P (z - m_c) / D`` with
    ``z = (features - center) / scale``; ``threshold`` (NaN until chosen) separates in scope from out of scope."""

    def __init__(self, layers: Sequence[str], center: torch.Tensor, scale: torch.Tensor, means: torch.Tensor,
                 precision: torch.Tensor, threshold: float = math.nan) -> None:
        super().__init__()
        self.layers, self.threshold = tuple(layers), float(threshold)
        for name, tensor in zip(_TENSORS, (center, scale, means, precision), strict=True):
            self.register_buffer(name, torch.as_tensor(tensor, dtype=torch.float32))

    def forward(self, activations: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.distance(torch.cat([pooled(activations[name]) for name in self.layers], dim=1))

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """The score of pooled ``features`` (N, D)."""
        z = (features.float() - self.center) / self.scale
        difference = z.unsqueeze(1) - self.means.unsqueeze(0)  # (N, C, D)
        squared = ((difference @ self.precision) * difference).sum(dim=-1)
        return squared.min(dim=1).values / z.shape[1]

    def metadata(self) -> dict[str, Any]:
        """What ``model.pt`` stores (see :meth:`from_metadata`)."""
        return {"score": SCORE, "layers": list(self.layers), "threshold": self.threshold,
                **{name: getattr(self, name).clone() for name in _TENSORS}}

    @classmethod
    def from_metadata(cls, meta: Any, num_classes: int) -> OutOfScopeDetector:
        """The detector that :meth:`metadata` described.

        Raises:
            ValueError: another score, or fields of the wrong type or shape.
        """
        if not isinstance(meta, dict) or meta.get("score") != SCORE:
            raise ValueError(f"out_of_scope must describe a {SCORE!r} detector")
        layers, threshold = meta.get("layers"), meta.get("threshold")
        if not (isinstance(layers, list) and layers and all(isinstance(name, str) for name in layers)):
            raise ValueError("out_of_scope.layers must be a list of module names")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ValueError(f"out_of_scope.threshold must be a finite number, got {str(threshold)[:40]}")
        tensors = [meta.get(name) for name in _TENSORS]
        if not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in tensors):
            raise ValueError(f"out_of_scope needs float tensors {list(_TENSORS)}")
        center, scale, means, precision = tensors
        dim = center.numel()
        if (center.shape != (dim,) or scale.shape != (dim,) or means.shape != (num_classes, dim)
                or precision.shape != (dim, dim) or not all(bool(t.isfinite().all()) for t in tensors)
                or not bool((scale > 0).all())):
            raise ValueError(f"out_of_scope tensors have inconsistent shapes or values (features {dim}, "
                             f"classes {num_classes})")
        return cls(layers, center, scale, means, precision, float(threshold))


def outputs(classifier: ProbabilityModel, images: np.ndarray,
            layers: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The classifier's probabilities (N, C) and the pooled activations of each of ``layers`` (float64, (N, D))
    for uint8 slices ``(N, S, S)``, in one pass."""
    classifier.eval()
    probabilities, features = [], {name: [] for name in layers}
    with torch.no_grad(), captured(classifier.model, layers) as activations:
        for start in range(0, len(images), BATCH):
            probabilities.append(classifier(to_input(images[start:start + BATCH])).double())
            for name in layers:
                features[name].append(pooled(activations[name]).double())
    return torch.cat(probabilities).numpy(), {name: torch.cat(rows).numpy() for name, rows in features.items()}


def joined(features: dict[str, np.ndarray], layers: Sequence[str]) -> np.ndarray:
    """The detector input of ``layers``: their pooled features side by side, in order."""
    return np.concatenate([features[name] for name in layers], axis=1)


def fit_detector(features: np.ndarray, labels: np.ndarray, layers: Sequence[str]) -> OutOfScopeDetector:
    """A detector (threshold not yet chosen) from the pooled features of the training slices and their labels.

    Raises:
        ValueError: a class without training slices.
    """
    classes = int(labels.max()) + 1
    missing = [c for c in range(classes) if not (labels == c).any()]
    if missing:
        raise ValueError(f"no training slices of class(es) {missing}")
    center, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    z = (features - center) / scale
    means = np.stack([z[labels == c].mean(axis=0) for c in range(classes)])
    precision = LedoitWolf(assume_centered=True).fit(z - means[labels]).precision_
    return OutOfScopeDetector(layers, *(torch.from_numpy(a) for a in (center, scale, means, precision)))


def scores(detector: OutOfScopeDetector, features: np.ndarray) -> np.ndarray:
    """The detector's scores of pooled ``features`` (N, D)."""
    with torch.no_grad():
        return detector.distance(torch.from_numpy(features)).double().numpy()


def choose_threshold(in_scope: np.ndarray, out_of_scope: np.ndarray, target: float = TARGET_FALSE_REJECT) -> float:
    """The threshold of the module docstring, from validation (in-scope) and ``fit``-part out-of-scope scores."""
    ranked = np.sort(in_scope)[::-1]
    lowest = float(ranked[allowed_rejects(len(ranked), target)])
    above = out_of_scope[out_of_scope > lowest]
    ceiling = min(float(above.min()), float(in_scope.max())) if above.size else float(in_scope.max())
    return (lowest + ceiling) / 2.0


def allowed_rejects(n: int, target: float, confidence: float = CONFIDENCE) -> int:
    """The most of ``n`` validation slices that may score above the threshold while the false-reject rate's
    one-sided Clopper-Pearson upper bound stays at or below ``target`` (0 when even none cannot show it)."""
    allowed = 0
    while allowed + 1 < n and beta.ppf(confidence, allowed + 2, n - allowed - 1) <= target:
        allowed += 1
    return allowed


def auroc(in_scope: np.ndarray, out_of_scope: np.ndarray) -> float:
    """Area under the ROC curve of telling ``out_of_scope`` scores (positives) from ``in_scope`` ones."""
    truth = np.r_[np.zeros(len(in_scope)), np.ones(len(out_of_scope))]
    return float(roc_auc_score(truth, np.r_[in_scope, out_of_scope]))
