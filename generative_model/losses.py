"""Adversarial loss with the real/fake targets hidden behind a flag (after junyanz ``GANLoss``) and the AC-GAN
class loss."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from generative_model.conditions import HEALTHY

GAN_MODES = ("vanilla", "lsgan")


class GANLoss(nn.Module):
    """``vanilla`` (binary cross-entropy on logits, the pix2pix paper) or ``lsgan`` (least squares).

    The target labels are buffers, so they follow ``.to(device)`` and never enter a state dict.

    Raises:
        ValueError: an unknown ``gan_mode``.
    """

    def __init__(self, gan_mode: str = "vanilla", target_real_label: float = 1.0,
                 target_fake_label: float = 0.0) -> None:
        super().__init__()
        if gan_mode not in GAN_MODES:
            raise ValueError(f"unknown gan_mode {gan_mode!r}; choose one of {GAN_MODES}")
        self.gan_mode = gan_mode
        self.register_buffer("real_label", torch.tensor(target_real_label), persistent=False)
        self.register_buffer("fake_label", torch.tensor(target_fake_label), persistent=False)
        self.loss = nn.BCEWithLogitsLoss() if gan_mode == "vanilla" else nn.MSELoss()

    def forward(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        """The loss of discriminator output ``prediction`` against an all-real or all-fake target."""
        target = self.real_label if target_is_real else self.fake_label
        return self.loss(prediction, target.to(prediction.dtype).expand_as(prediction))


def class_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of class ``logits`` ``(N, C)`` against int ``labels`` ``(N,)``, over the samples that
    have a class (label :data:`HEALTHY` is skipped); 0 (still differentiable) when none has."""
    labelled = labels != HEALTHY
    total = F.cross_entropy(logits.float(), labels, ignore_index=HEALTHY, reduction="sum")
    return total / labelled.sum().clamp(min=1)
