"""Tumour-type classifiers for 2D slices: a small convolutional capsule network and a ResNet50 baseline.

``build_model(name, num_classes=3, image_size=...)`` builds either by name; ``build_objective(name)``
gives the matching loss for ``experiment.engine`` (margin loss for capsules, cross-entropy for ResNet50).
Models take float32 batches ``(N, 1, S, S)`` with intensities in [0, 1] (uint8 slices / 255).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from capsule_classifier.capsnet import CapsuleObjective, capsnet
from capsule_classifier.resnet import CrossEntropyObjective, resnet50

__all__ = ["MODELS", "build_model", "build_objective"]

MODELS: dict[str, Callable[..., nn.Module]] = {"capsnet": capsnet, "resnet50": resnet50}
_OBJECTIVES: dict[str, Callable[..., Any]] = {"capsnet": CapsuleObjective, "resnet50": CrossEntropyObjective}


def build_model(name: str, num_classes: int = 3, image_size: int = 128, **kwargs: Any) -> nn.Module:
    """The classifier ``name`` (``capsnet`` or ``resnet50``); ``kwargs`` go to its builder."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, image_size=image_size, **kwargs)


def build_objective(name: str, **kwargs: Any) -> Any:
    """The training objective of model ``name`` (an ``experiment.engine.Objective`` with ``probabilities``)."""
    if name not in _OBJECTIVES:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(_OBJECTIVES)}")
    return _OBJECTIVES[name](**kwargs)
