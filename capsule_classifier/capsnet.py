"""A small convolutional capsule network for single-channel MRI slices (Sabour et al., 2017 style).

Layout (total stride 32, so 64/128/256 px inputs change only the number of primary capsules,
not the parameter count):

    stem     conv 5x5/2 (1->16), conv 3x3/2 (16->32), conv 3x3 (32->32)   BN + ReLU each
    trunk    conv 3x3/2 (32->64), conv 3x3/2 (64->64)                      BN + ReLU each
    gate     (optional, ``attention=True``) a tumour map at stride ``attention_stride`` (4: after the stem,
             8: between the two trunk convs), conv 3x3 (->16) BN ReLU, one dilated conv 3x3 (16->16) BN ReLU
             per ``attention_dilations`` entry (context: at stride 4 a cell sees 25 px of the input, 137 px with
             dilations (2, 4, 8)), conv 1x1 (16->1), sigmoid; the features there are multiplied by it, so the
             capsules see only what the gate lets through (an attention gate, Schlemper et al., 2019)
    primary  conv 3x3/2 (64 -> types x dims), squash        -> (side/32)^2 x types capsules
    class    one capsule per tumour type, dynamic routing-by-agreement (3 iterations)
    decoder  (optional, training only) the longest class capsule -> a 32x32 reconstruction of the input

Primary-to-class transforms are shared across positions (one matrix per primary capsule type and
class, as in convolutional capsules), which keeps the network far below 200K parameters. The
routing is vectorised over samples and capsules; the only Python loop runs over iterations.

:class:`CapsuleObjective` (margin loss + small reconstruction term) plugs into ``experiment.engine``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GATE_STRIDES", "TRAINING_ONLY_PREFIX", "CapsNet", "CapsuleObjective", "ClassCapsules", "attention_loss",
           "capsnet", "has_attention_gate", "margin_loss", "squash"]

GATE_STRIDES = {4: 3, 8: 4}
"""Attention-gate stride (input pixels per cell of its map) -> how many ``features`` blocks run before it."""
GATE_WIDTH = 16
"""Channels of the attention gate's hidden convolutions."""

TRAINING_ONLY_PREFIX = "decoder."
"""Parameter-name prefix of the reconstruction decoder, which only training uses (inference never runs it)."""
RECONSTRUCTION_SIDE = 32
"""Side of the decoder's target: the input average-pooled to 32x32, so the decoder stays small."""


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """Capsule non-linearity ``|s|^2 / (1 + |s|^2) * s / |s|``: keeps the direction, maps the norm into [0, 1)."""
    squared = (s * s).sum(dim=dim, keepdim=True)
    return s * (squared / (1.0 + squared) / torch.sqrt(squared + eps))


def margin_loss(lengths: torch.Tensor, targets: torch.Tensor, m_plus: float = 0.9, m_minus: float = 0.1,
                lambda_: float = 0.5) -> torch.Tensor:
    """Capsule margin loss, summed over classes and averaged over the batch.

    ``L_k = T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2`` with ``T`` one-hot targets.
    """
    present = F.one_hot(targets, lengths.shape[1]).to(lengths.dtype)
    loss = present * F.relu(m_plus - lengths) ** 2 + lambda_ * (1.0 - present) * F.relu(lengths - m_minus) ** 2
    return loss.sum(dim=1).mean()


def attention_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft-Dice loss of the gate's ``logits`` (N, 1, h, w) against tumour ``masks``
    (N, 1, H, W) in [0, 1], max-pooled to the gate's grid (a cell is tumour when any of its pixels is)."""
    target = F.adaptive_max_pool2d(masks.float(), logits.shape[-2:])
    logits = logits.float()
    cross_entropy = F.binary_cross_entropy_with_logits(logits, target)
    gate = logits.sigmoid().flatten(1)
    target = target.flatten(1)
    dice = (2 * (gate * target).sum(1) + 1) / (gate.sum(1) + target.sum(1) + 1)
    return cross_entropy + (1 - dice).mean()


def has_attention_gate(model: nn.Module) -> bool:
    """Whether ``model`` is a capsnet with the tumour attention gate (whose ``forward`` returns its logits)."""
    return isinstance(model, CapsNet) and model.attention is not None


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int,
                  dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride, dilation * (kernel_size // 2),
                                   dilation=dilation, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ClassCapsules(nn.Module):
    """Class capsules from convolutional primary capsules by dynamic routing-by-agreement.

    Input ``(N, T, D_in, H, W)`` primary capsules of ``T`` types; output ``(N, C, D_out)`` class
    capsules (squashed). One transform matrix per (type, class), shared over positions.
    """

    def __init__(self, in_types: int, in_dim: int, num_classes: int, out_dim: int, iterations: int = 3) -> None:
        super().__init__()
        if iterations < 1:
            raise ValueError(f"routing needs at least one iteration, got {iterations}")
        self.iterations = iterations
        self.weight = nn.Parameter(0.05 * torch.randn(in_types, num_classes, out_dim, in_dim))

    def forward(self, primary: torch.Tensor) -> torch.Tensor:
        n, types, dim, height, width = primary.shape
        u = primary.permute(0, 3, 4, 1, 2).reshape(n, height * width, types, dim)
        # predictions u_hat[n, i, c, :] = W[type(i), c] @ u[n, i]; i runs over positions x types
        u_hat = torch.einsum("nptd,tcod->nptco", u, self.weight).flatten(1, 2)
        logits = torch.zeros(u_hat.shape[:3], dtype=u_hat.dtype, device=u_hat.device)
        detached = u_hat.detach()  # earlier iterations only set coefficients; gradients flow in the last
        for iteration in range(self.iterations):
            coupling = logits.softmax(dim=2)
            last = iteration == self.iterations - 1
            votes = u_hat if last else detached
            v = squash((coupling.unsqueeze(-1) * votes).sum(dim=1))
            if not last:
                logits = logits + (detached * v.unsqueeze(1)).sum(dim=-1)
        return v


class CapsNet(nn.Module):
    """Convolutional capsule classifier; ``forward`` returns ``{"poses", "lengths"}`` and, with a
    decoder in training mode, ``"reconstruction"``.

    Args:
        num_classes: class capsules (3 tumour types).
        image_size: input side (divisible by 32; 32 for tests, 64/128/256 in use; 128 gives a 4x4
            grid of primary capsules, which routes far better than 8x8 in our trials).
        primary_types, primary_dim: primary capsule types and their dimension.
        class_dim: class capsule dimension.
        routing_iterations: routing-by-agreement iterations (3).
        decoder: add the reconstruction decoder (a regulariser; see :class:`CapsuleObjective`).
        attention: add the tumour attention gate; ``forward`` then also returns ``"attention_logits"``
            (N, 1, S/stride, S/stride), which :class:`CapsuleObjective` supervises with the tumour masks.
        attention_stride: where the gate sits (a key of :data:`GATE_STRIDES`).
        attention_dilations: dilations of the gate's context convolutions (e.g. ``(2, 4, 8)``); empty: none.
    """

    def __init__(self, num_classes: int = 3, image_size: int = 128, primary_types: int = 16, primary_dim: int = 8,
                 class_dim: int = 16, routing_iterations: int = 3, decoder: bool = True,
                 attention: bool = False, attention_stride: int = 8,
                 attention_dilations: Sequence[int] = ()) -> None:
        super().__init__()
        if image_size % 32 or image_size < 32:
            raise ValueError(f"capsnet needs an image size divisible by 32 and at least 32, got {image_size}")
        if attention_stride not in GATE_STRIDES:
            raise ValueError(f"attention_stride must be one of {sorted(GATE_STRIDES)}, got {attention_stride}")
        if not all(isinstance(d, int) and d >= 1 for d in attention_dilations):
            raise ValueError(f"attention_dilations must be positive integers, got {list(attention_dilations)}")
        self.image_size, self.primary_types, self.primary_dim = image_size, primary_types, primary_dim
        self.features = nn.Sequential(
            _conv_bn_relu(1, 16, 5, 2), _conv_bn_relu(16, 32, 3, 2), _conv_bn_relu(32, 32, 3, 1),
            _conv_bn_relu(32, 64, 3, 2), _conv_bn_relu(64, 64, 3, 2))
        self.gate_after = GATE_STRIDES[attention_stride]
        gate_channels = self.features[self.gate_after - 1][0].out_channels
        self.attention = nn.Sequential(
            _conv_bn_relu(gate_channels, GATE_WIDTH, 3, 1),
            *(_conv_bn_relu(GATE_WIDTH, GATE_WIDTH, 3, 1, dilation) for dilation in attention_dilations),
            nn.Conv2d(GATE_WIDTH, 1, 1)) if attention else None
        self.primary = nn.Conv2d(64, primary_types * primary_dim, 3, stride=2, padding=1)
        self.classes = ClassCapsules(primary_types, primary_dim, num_classes, class_dim, routing_iterations)
        self.decoder = _Decoder(num_classes * class_dim) if decoder else None

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        output: dict[str, torch.Tensor] = {}
        early = self.features[:self.gate_after](images)
        if self.attention is not None:
            output["attention_logits"] = self.attention(early)
            early = early * output["attention_logits"].sigmoid()
        features = self.primary(self.features[self.gate_after:](early))
        n, _, height, width = features.shape
        primary = squash(features.view(n, self.primary_types, self.primary_dim, height, width), dim=2)
        poses = self.classes(primary)
        lengths = torch.sqrt((poses * poses).sum(-1) + 1e-9)
        output.update(poses=poses, lengths=lengths)
        if self.decoder is not None and self.training:
            # a training-time regulariser only (inference and export skip it); masked by the longest
            # capsule, so the forward pass needs no labels (one path for training and DDP).
            mask = F.one_hot(lengths.argmax(1), lengths.shape[1]).to(poses.dtype).unsqueeze(-1)
            output["reconstruction"] = self.decoder((poses * mask).flatten(1))
        return output


class _Decoder(nn.Module):
    """Masked class capsules -> a 32x32 image in [0, 1] (linear to 4x4x64, three transposed convs)."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(in_features, 64 * 4 * 4), nn.ReLU(inplace=True))
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(16, 1, 4, 2, 1), nn.Sigmoid())

    def forward(self, capsules: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.project(capsules).view(-1, 64, 4, 4))


class CapsuleObjective:
    """Margin loss plus ``reconstruction_weight`` x the summed squared error of the 32x32 reconstruction, plus
    ``attention_weight`` x :func:`attention_loss` for a gated network on batches that carry tumour masks.

    The squared error is summed over the 1024 pixels and averaged over the batch, as in Sabour et al.
    (weight 0.0005 there, on 784 pixels); it regularises the capsules and never dominates the margin.
    Scores are the class-capsule lengths; probabilities are the lengths normalised to sum to one.
    """

    def __init__(self, reconstruction_weight: float = 0.0005, attention_weight: float = 1.0, m_plus: float = 0.9,
                 m_minus: float = 0.1, lambda_: float = 0.5) -> None:
        self.reconstruction_weight, self.attention_weight = reconstruction_weight, attention_weight
        self.margins = {"m_plus": m_plus, "m_minus": m_minus, "lambda_": lambda_}

    def loss(self, output: dict[str, torch.Tensor], images: torch.Tensor, targets: torch.Tensor,
             masks: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Margin (+ weighted reconstruction, + weighted attention) loss and its parts."""
        loss = margin_loss(output["lengths"].float(), targets, **self.margins)
        parts = {"margin": float(loss.detach())}
        if "reconstruction" in output and self.reconstruction_weight > 0:
            target = F.adaptive_avg_pool2d(images.float(), RECONSTRUCTION_SIDE)
            error = ((output["reconstruction"].float() - target) ** 2).flatten(1).sum(1).mean()
            parts["reconstruction"] = float(error.detach())
            loss = loss + self.reconstruction_weight * error
        if "attention_logits" in output and masks is not None and self.attention_weight > 0:
            gate = attention_loss(output["attention_logits"], masks)
            parts["attention"] = float(gate.detach())
            loss = loss + self.attention_weight * gate
        return loss, parts

    def scores(self, output: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class-capsule lengths (N, C)."""
        return output["lengths"]

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """Class probabilities from :meth:`scores`: capsule lengths normalised to sum to one per sample."""
        return scores / scores.sum(dim=1, keepdim=True)


def capsnet(num_classes: int = 3, image_size: int = 128, **kwargs) -> CapsNet:
    """The default capsule network (see :class:`CapsNet` for keyword arguments)."""
    return CapsNet(num_classes=num_classes, image_size=image_size, **kwargs)
