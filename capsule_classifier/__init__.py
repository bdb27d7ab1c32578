"""Tumour-type classifiers for 2D slices: a small convolutional capsule network and a ResNet50 baseline.

Each model has one :class:`ModelEntry` in :data:`MODELS`: its builder, its training objective for
``experiment.engine`` (margin loss for capsules, cross-entropy for ResNet50), the builder arguments that only
initialise weights and the parameters only training uses. ``build_model(name, num_classes=3, image_size=...)``
and ``build_objective(name)`` build by name. Models take float32 batches ``(N, 1, S, S)`` with intensities in
[0, 1] (uint8 slices / 255).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from capsule_classifier import capsnet as _capsnet
from capsule_classifier import resnet as _resnet
from experiment.objectives import CrossEntropyObjective

if TYPE_CHECKING:
    from experiment.engine import Objective

__all__ = ["BASELINE", "BASELINE_RATIO", "MODELS", "ModelEntry", "build_model", "build_objective", "model_entry",
           "parameter_counts"]


@dataclass(frozen=True)
class ModelEntry:
    """What training and deployment know about one classifier: ``builder(num_classes, image_size, **kwargs)``,
    ``objective(**kwargs)``, builder arguments that only initialise weights (left out of the deployable
    checkpoint) and the parameter-name prefix of parts only training runs (None: none)."""

    builder: Callable[..., nn.Module]
    objective: Callable[..., Objective]
    init_only_kwargs: tuple[str, ...] = ()
    training_only_prefix: str | None = None


MODELS: dict[str, ModelEntry] = {
    "capsnet": ModelEntry(_capsnet.capsnet, _capsnet.CapsuleObjective,
                          training_only_prefix=_capsnet.TRAINING_ONLY_PREFIX),
    "resnet50": ModelEntry(_resnet.resnet50, CrossEntropyObjective, init_only_kwargs=_resnet.INIT_ONLY_KWARGS),
}
BASELINE = "resnet50"
"""The model every summary compares parameter counts with."""
BASELINE_RATIO = f"{BASELINE}_over_model_without_decoder"
"""Key of :func:`parameter_counts`: baseline parameters / the model's inference parameters."""


def model_entry(name: str) -> ModelEntry:
    """The registry entry of model ``name``.

    Raises:
        ValueError: an unknown name.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name]


def build_model(name: str, num_classes: int = 3, image_size: int = 128, **kwargs: Any) -> nn.Module:
    """The classifier ``name`` (``capsnet`` or ``resnet50``); ``kwargs`` go to its builder."""
    return model_entry(name).builder(num_classes=num_classes, image_size=image_size, **kwargs)


def build_objective(name: str, **kwargs: Any) -> Objective:
    """The training objective of model ``name`` (an ``experiment.engine.Objective``)."""
    return model_entry(name).objective(**kwargs)


def parameter_counts(model: nn.Module, name: str, image_size: int, num_classes: int) -> dict[str, int | float]:
    """Parameters of ``model`` (model ``name``), without its training-only parts, and of :data:`BASELINE` at
    the same input size."""
    prefix = model_entry(name).training_only_prefix
    with torch.device("meta"):
        baseline = build_model(BASELINE, num_classes=num_classes, image_size=image_size)
    counts: dict[str, int | float] = {
        "model": _count(model), "model_without_decoder": _count(model, prefix), BASELINE: _count(baseline)}
    counts[BASELINE_RATIO] = round(counts[BASELINE] / counts["model_without_decoder"], 2)
    return counts


def _count(model: nn.Module, exclude_prefix: str | None = None) -> int:
    return sum(p.numel() for name, p in model.named_parameters()
               if exclude_prefix is None or not name.startswith(exclude_prefix))
