"""Intermediate activations of a classifier, by module name: captured during a forward pass (for out-of-scope
features and explanation maps) and pooled into one feature vector per image."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import partial

import torch
from torch import nn


@contextlib.contextmanager
def captured(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward pass of ``model`` stores the output of each module in ``names`` (dotted
    names as in ``model.named_modules()``) in the yielded dict.

    Raises:
        ValueError: a name that is not a module of ``model``.
    """
    modules = dict(model.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise ValueError(f"{type(model).__name__} has no module(s) {unknown}")
    store: dict[str, torch.Tensor] = {}

    handles = [modules[name].register_forward_hook(partial(_keep, store, name)) for name in names]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _keep(store: dict[str, torch.Tensor], name: str, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    store[name] = output


def pooled(activation: torch.Tensor) -> torch.Tensor:
    """One vector per image: channel means and standard deviations over space of a ``(N, C, H, W)`` map,
    or the flattened activation otherwise."""
    if activation.ndim != 4:
        return activation.flatten(1)
    mean = activation.mean(dim=(2, 3))
    variance = (activation * activation).mean(dim=(2, 3)) - mean * mean
    return torch.cat([mean, variance.clamp_min(0.0).sqrt()], dim=1)
