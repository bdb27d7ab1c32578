"""torchvision's video ResNets for single-channel MRI volumes: 3D (``r3d_18``), mixed convolution
(``mc3_18``) and (2+1)D (``r2plus1d_18``).

One spatial axis of the volume plays torchvision's "time" axis, so an input is ``(N, C, T, H, W)``.
The builder swaps the RGB stem convolution for one with ``in_channels`` inputs and the Kinetics-400 head
for ``num_classes`` outputs. Kinetics weights come only from a local file (never downloaded); their stem
is averaged over RGB.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import video

__all__ = ["MODEL_NAMES", "build_model", "profile"]

_BUILDERS: dict[str, Callable[..., video.VideoResNet]] = {
    "r3d_18": video.r3d_18,
    "mc3_18": video.mc3_18,
    "r2plus1d_18": video.r2plus1d_18,
}
MODEL_NAMES = tuple(_BUILDERS)
KINETICS_CHANNELS = 3


def build_model(name: str, num_classes: int = 3, in_channels: int = 1,
                weights_path: str | os.PathLike | None = None) -> video.VideoResNet:
    """A video ResNet ``name`` for ``in_channels``-channel volumes and ``num_classes`` classes.

    Args:
        weights_path: optional local torchvision Kinetics-400 state dict for the same architecture
            (e.g. ``r3d_18-b3b3357e.pth``), loaded with ``weights_only=True``; every layer but the head
            keeps it, and the stem keeps its RGB filters averaged over the colour channels.
    Raises:
        ValueError: unknown ``name`` or bad sizes.
        RuntimeError: a weights file that is unreadable or does not match the architecture (names the file).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown 3D model {name!r}; choose one of {MODEL_NAMES}")
    if num_classes < 2 or in_channels < 1:
        raise ValueError(f"need num_classes >= 2 and in_channels >= 1, got {num_classes}, {in_channels}")
    model = _BUILDERS[name](weights=None)
    if weights_path is not None:
        _load_kinetics(model, weights_path)
    model.stem[0] = _adapt_stem(model.stem[0], in_channels, pretrained=weights_path is not None)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def _load_kinetics(model: nn.Module, path: str | os.PathLike) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for missing or corrupt files
        raise RuntimeError(f"cannot read Kinetics weights {path}: {error}") from error
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise RuntimeError(f"Kinetics weights {path} do not match {type(model).__name__}: "
                           f"{str(error).splitlines()[0]}") from error


def _adapt_stem(conv: nn.Conv3d, in_channels: int, pretrained: bool) -> nn.Conv3d:
    """A copy of the stem convolution with ``in_channels`` inputs.

    Pretrained RGB filters are averaged over colour and scaled by ``3 / in_channels``, so a grey volume
    repeated on every input channel gives the response an RGB clip of that grey would; otherwise the new
    filters get torchvision's VideoResNet initialisation.
    """
    new = nn.Conv3d(in_channels, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, bias=conv.bias is not None)
    if pretrained:
        mean = conv.weight.detach().mean(dim=1, keepdim=True) * (KINETICS_CHANNELS / in_channels)
        new.weight.data.copy_(mean.expand(-1, in_channels, -1, -1, -1))
    else:
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        new.bias.data.copy_(conv.bias.detach())
    return new


def profile(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Trainable parameters and forward FLOPs (``torch.utils.flop_counter``) for one input of ``input_shape``
    (``(C, T, H, W)``, batch 1)."""
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    return {"parameters": parameters, "forward_flops": int(counter.get_total_flops())}
