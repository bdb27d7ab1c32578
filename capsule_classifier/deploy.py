"""The deployable classifier checkpoint (``model.pt``) and a probabilities head for export and prediction.

``model.pt`` holds the selected weights plus everything needed to rebuild and feed the model:
model name and builder arguments, image size and class names. It is loaded with ``weights_only=True``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from capsule_classifier import build_model, build_objective
from experiment.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint

if TYPE_CHECKING:
    from experiment.engine import Objective

REQUIRED_KEYS = ("model", "model_name", "model_kwargs", "image_size", "class_names")


class ProbabilityModel(nn.Module):
    """``model`` followed by its objective's class probabilities: (N, 1, S, S) -> (N, C)."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.objective.probabilities(self.objective.scores(self.model(images)))


def save_classifier(path: str | os.PathLike, model: nn.Module, model_name: str, model_kwargs: dict[str, Any],
                    image_size: int, class_names: Sequence[str], **extra: Any) -> None:
    """Write the deployable checkpoint (atomically); ``extra`` holds plain provenance (fold, epoch, ...)."""
    save_checkpoint(path, {"model": model.state_dict(), "model_name": model_name, "model_kwargs": dict(model_kwargs),
                           "image_size": int(image_size), "class_names": list(class_names), **extra})


def load_classifier(path: str | os.PathLike) -> tuple[ProbabilityModel, dict[str, Any]]:
    """Rebuild the classifier saved at ``path`` in eval mode; return it with its metadata.

    Raises:
        CheckpointError: missing or corrupt file, a checkpoint that is not a classifier, or mismatched weights.
    """
    state = load_checkpoint(path)
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a classifier checkpoint (model.pt from capsule_classifier/train.py): "
                              f"it lacks {missing}")
    try:
        model = build_model(state["model_name"], num_classes=len(state["class_names"]),
                            image_size=state["image_size"], **state["model_kwargs"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot rebuild model {state['model_name']!r}: {error}") from error
    load_model_state(model, state["model"], str(path))
    classifier = ProbabilityModel(model, build_objective(state["model_name"])).eval()
    meta = {key: value for key, value in state.items() if key != "model"}
    return classifier, meta
