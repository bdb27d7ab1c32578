"""Model-agnostic training objectives for :mod:`experiment.engine` (models with a logits output)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class CrossEntropyObjective:
    """Cross-entropy on float logits, optionally class-weighted (``weight``, one value per class) and
    label-smoothed; scores are the logits, probabilities their softmax."""

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.weight, self.label_smoothing = weight, label_smoothing

    def loss(self, output: torch.Tensor, images: torch.Tensor, targets: torch.Tensor,
             masks: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean (weighted) cross-entropy and its single named part (``masks`` are not used)."""
        weight = None if self.weight is None else self.weight.to(output.device)
        loss = F.cross_entropy(output.float(), targets, weight=weight, label_smoothing=self.label_smoothing)
        return loss, {"cross_entropy": float(loss.detach())}

    def scores(self, output: torch.Tensor) -> torch.Tensor:
        """The logits (N, C)."""
        return output

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """Class probabilities from :meth:`scores`: softmax over classes."""
        return scores.float().softmax(dim=1)
