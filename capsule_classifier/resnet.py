"""The ResNet50 baseline: torchvision's ResNet50 with a one-channel stem and three classes.

Random initialisation by default. ImageNet weights load only from a local file (a torchvision
``resnet50`` state dict); nothing is downloaded. The RGB kernels of the first convolution are summed
into one grey kernel (a grey image replicated to RGB gives the same response), and the ImageNet
classifier head is left at its random initialisation.
"""
from __future__ import annotations

import os

from torch import nn
from torchvision.models import resnet50 as _torchvision_resnet50

from experiment.checkpoint import CheckpointError, load_checkpoint, load_model_state

__all__ = ["INIT_ONLY_KWARGS", "load_imagenet_weights", "resnet50"]

INIT_ONLY_KWARGS = ("weights",)
"""Builder arguments that only initialise the weights (the ImageNet file); a saved model already holds them."""


def resnet50(num_classes: int = 3, image_size: int = 128, weights: str | None = None) -> nn.Module:
    """ResNet50 for (N, 1, S, S) inputs; ``weights``: optional local path to torchvision ImageNet weights.

    ``image_size`` is accepted for a uniform builder signature; global pooling makes the network size-agnostic.
    """
    if image_size < 32:
        raise ValueError(f"resnet50 needs an image size of at least 32, got {image_size}")
    model = _torchvision_resnet50(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if weights:
        load_imagenet_weights(model, weights)
    return model


def load_imagenet_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a local torchvision ResNet50 ImageNet state dict into the one-channel ``model`` (head excluded)."""
    state = load_checkpoint(path)
    if "conv1.weight" not in state or state["conv1.weight"].shape[1] != 3:
        raise CheckpointError(f"{path} is not a torchvision resnet50 ImageNet state dict (no RGB conv1.weight)")
    state = dict(state)
    state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
    head = model.fc.state_dict()
    state["fc.weight"], state["fc.bias"] = head["weight"], head["bias"]
    load_model_state(model, state, str(path))
