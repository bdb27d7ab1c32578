"""The pix2pix training step (after junyanz ``models/pix2pix_model.py``) and the generator's image I/O.

``set_input`` -> ``forward`` -> ``backward_D`` (on detached fakes) -> ``backward_G`` (adversarial +
``lambda_l1`` * L1, discriminator frozen), wrapped by ``optimize_parameters``. The L1 term may weigh the
pixels of a ``hole`` (where the generator paints) ``hole_weight`` times the others. Learning rate: constant
for ``epochs``, then linear decay to zero over ``epochs_decay`` (``update_learning_rate`` once per epoch).

``lambda_cls > 0`` adds an AC-GAN class objective (Odena et al. 2017): the discriminator's class head, shown
the image alone (condition channels zeroed, so it cannot read the class off the condition), learns the tumour
class of real crops (``D_cls``), and the generator adds ``lambda_cls`` x the cross-entropy of the head on its
fakes against the intended class (``G_cls``). Healthy pairs have no class and are skipped by both.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from experiment.checkpoint import load_model_state
from experiment.device import autocast, grad_scaler
from generative_model.losses import GANLoss, class_loss

CLASS_LOSS_NAMES = ("G_cls", "D_cls")
"""The AC-GAN class losses, computed only when ``lambda_cls > 0``."""
LOSS_NAMES = ("G_GAN", "G_L1", "D_real", "D_fake", *CLASS_LOSS_NAMES)
"""Scalars :meth:`Pix2Pix.optimize_parameters` can return (``Pix2Pix.loss_names``: the class losses ``G_cls``
and ``D_cls`` only when ``lambda_cls > 0``); ``G_L1`` is the plain mean absolute error in [-1, 1] units (before
the hole and ``lambda_l1`` weights), ``G_cls`` the class cross-entropy before ``lambda_cls``."""
STATE_KEYS = ("G", "D", "optimizer_G", "optimizer_D", "scheduler_G", "scheduler_D", "scaler_G", "scaler_D")
"""The parts of :meth:`Pix2Pix.state_dict`."""


class LinearDecay:
    """``LambdaLR`` factor: 1 for the first ``epochs`` epochs, then linear down to ``1 / (epochs_decay + 1)``.

    A class rather than a lambda, so the scheduler's state dict holds plain numbers.
    """

    def __init__(self, epochs: int, epochs_decay: int) -> None:
        if epochs < 0 or epochs_decay < 0 or epochs + epochs_decay == 0:
            raise ValueError(f"need epochs, epochs_decay >= 0 and a positive total, got {epochs}, {epochs_decay}")
        self.epochs, self.epochs_decay = epochs, epochs_decay

    def __call__(self, epoch: int) -> float:
        return 1.0 - max(0, epoch + 1 - self.epochs) / float(self.epochs_decay + 1)


class Pix2Pix:
    """Conditional GAN training on (condition, real image) pairs.

    Args:
        generator: maps a condition ``(N, C, S, S)`` to an image ``(N, 1, S, S)`` in ``[-1, 1]``.
        discriminator: scores ``condition | image`` patches.
        lr, beta1: Adam settings (2e-4 and 0.5 in pix2pix).
        gan_mode: ``vanilla`` or ``lsgan`` (:class:`GANLoss`).
        lambda_l1: weight of the L1 term.
        hole_weight: weight of hole pixels in the L1 term relative to the others (1: plain L1).
        lambda_cls: weight of the generator's class term (0: plain pix2pix, no class losses computed).
        epochs, epochs_decay: the learning-rate schedule (see :class:`LinearDecay`).
        device: where the networks live; ``amp`` turns on float16 autocast there (CUDA only).
    Raises:
        ValueError: ``lambda_cls > 0`` with a discriminator that has no class head.
    """

    def __init__(self, *, generator: nn.Module, discriminator: nn.Module, lr: float, beta1: float, gan_mode: str,
                 lambda_l1: float, epochs: int, epochs_decay: int, device: torch.device, amp: bool = True,
                 hole_weight: float = 1.0, lambda_cls: float = 0.0) -> None:
        if lambda_cls > 0 and getattr(discriminator, "class_head", None) is None:
            raise ValueError("lambda_cls > 0 needs a discriminator with a class head (define_D(num_classes=...))")
        self.device, self.amp, self.lambda_l1, self.hole_weight = device, amp, lambda_l1, hole_weight
        self.lambda_cls = lambda_cls
        self.loss_names = LOSS_NAMES if lambda_cls > 0 else tuple(n for n in LOSS_NAMES if n not in CLASS_LOSS_NAMES)
        self.netG, self.netD = generator.to(device), discriminator.to(device)
        self.criterionGAN = GANLoss(gan_mode).to(device)
        self.optimizer_G = torch.optim.Adam(self.netG.parameters(), lr=lr, betas=(beta1, 0.999))
        self.optimizer_D = torch.optim.Adam(self.netD.parameters(), lr=lr, betas=(beta1, 0.999))
        self.scheduler_G = torch.optim.lr_scheduler.LambdaLR(self.optimizer_G, LinearDecay(epochs, epochs_decay))
        self.scheduler_D = torch.optim.lr_scheduler.LambdaLR(self.optimizer_D, LinearDecay(epochs, epochs_decay))
        self.scaler_G, self.scaler_D = grad_scaler(device, amp), grad_scaler(device, amp)
        self.losses: dict[str, torch.Tensor] = {}

    def set_input(self, condition: torch.Tensor, real: torch.Tensor, hole: torch.Tensor | None = None,
                  labels: torch.Tensor | None = None) -> None:
        """Hold one batch: ``condition`` float ``(N, C, S, S)``, ``real`` in ``[-1, 1]`` ``(N, 1, S, S)``, the
        ``hole`` mask ``(N, 1, S, S)`` (None: no pixel weighted more) and the int64 class ``labels`` ``(N,)``
        (``HEALTHY`` for healthy pairs; needed when ``lambda_cls > 0``).

        Raises:
            ValueError: ``lambda_cls > 0`` and no ``labels``.
        """
        if self.lambda_cls > 0 and labels is None:
            raise ValueError("lambda_cls > 0 needs the class labels of the batch")
        self.real_A = condition.to(self.device, non_blocking=True)
        self.real_B = real.to(self.device, non_blocking=True)
        self.weight = None if hole is None else 1.0 + (self.hole_weight - 1.0) * hole.to(self.device)
        self.labels = None if labels is None else labels.to(self.device, non_blocking=True)

    def forward(self) -> None:
        """``fake_B = G(real_A)``."""
        with autocast(self.device, self.amp):
            self.fake_B = self.netG(self.real_A)

    def backward_D(self) -> None:
        """Discriminator loss: real pairs as real, detached fake pairs as fake, averaged; plus the class
        cross-entropy on the real images when ``lambda_cls > 0``."""
        with autocast(self.device, self.amp):
            pred_fake = self.netD(torch.cat([self.real_A, self.fake_B.detach()], 1))
            pred_real = self.netD(torch.cat([self.real_A, self.real_B], 1))
            self.losses["D_fake"] = self.criterionGAN(pred_fake, False)
            self.losses["D_real"] = self.criterionGAN(pred_real, True)
            loss_D = (self.losses["D_fake"] + self.losses["D_real"]) * 0.5
            if self.lambda_cls > 0:
                self.losses["D_cls"] = class_loss(self._classify(self.real_B), self.labels)
                loss_D = loss_D + self.losses["D_cls"]
        self.scaler_D.scale(loss_D).backward()

    def backward_G(self) -> None:
        """Generator loss: fool the discriminator, plus ``lambda_l1`` times L1 to the real image, plus
        ``lambda_cls`` times the class cross-entropy of the fake against the intended class when positive."""
        with autocast(self.device, self.amp):
            pred_fake = self.netD(torch.cat([self.real_A, self.fake_B], 1))
            self.losses["G_GAN"] = self.criterionGAN(pred_fake, True)
            error = (self.fake_B.float() - self.real_B).abs()
            self.losses["G_L1"] = error.mean()
            weighted = self.losses["G_L1"] if self.weight is None else (error * self.weight).sum() / self.weight.sum()
            loss_G = self.losses["G_GAN"] + self.lambda_l1 * weighted
            if self.lambda_cls > 0:
                self.losses["G_cls"] = class_loss(self._classify(self.fake_B), self.labels)
                loss_G = loss_G + self.lambda_cls * self.losses["G_cls"]
        self.scaler_G.scale(loss_G).backward()

    def _classify(self, image: torch.Tensor) -> torch.Tensor:
        """The discriminator's class logits of ``image`` alone (the condition channels zeroed)."""
        return self.netD.classify(torch.cat([torch.zeros_like(self.real_A), image], 1))

    def optimize_parameters(self) -> dict[str, float]:
        """One training step on the held batch (D first, then G with D frozen); returns ``loss_names``."""
        self.forward()
        _set_requires_grad(self.netD, True)
        self.optimizer_D.zero_grad(set_to_none=True)
        self.backward_D()
        self.scaler_D.step(self.optimizer_D)
        self.scaler_D.update()
        _set_requires_grad(self.netD, False)
        self.optimizer_G.zero_grad(set_to_none=True)
        self.backward_G()
        self.scaler_G.step(self.optimizer_G)
        self.scaler_G.update()
        return {name: float(self.losses[name].detach()) for name in self.loss_names}

    def update_learning_rate(self) -> float:
        """Advance both schedulers by one epoch; return the new learning rate."""
        self.scheduler_G.step()
        self.scheduler_D.step()
        return float(self.optimizer_G.param_groups[0]["lr"])

    def train(self) -> None:
        """Put both networks in training mode."""
        self.netG.train()
        self.netD.train()

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimisers, schedulers and AMP scalers (tensors and plain numbers only)."""
        parts = (self.netG, self.netD, self.optimizer_G, self.optimizer_D, self.scheduler_G, self.scheduler_D,
                 self.scaler_G, self.scaler_D)
        return {key: part.state_dict() for key, part in zip(STATE_KEYS, parts, strict=True)}

    def load_state_dict(self, state: dict[str, Any], source: str) -> None:
        """Restore :meth:`state_dict` output; a mismatched network raises ``CheckpointError`` naming ``source``."""
        load_model_state(self.netG, state["G"], source)
        load_model_state(self.netD, state["D"], source)
        self.optimizer_G.load_state_dict(state["optimizer_G"])
        self.optimizer_D.load_state_dict(state["optimizer_D"])
        self.scheduler_G.load_state_dict(state["scheduler_G"])
        self.scheduler_D.load_state_dict(state["scheduler_D"])
        self.scaler_G.load_state_dict(state["scaler_G"])
        self.scaler_D.load_state_dict(state["scaler_D"])


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, S, S)`` -> float ``(N, 1, S, S)`` in ``[-1, 1]`` (the generator's output range)."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32) / 127.5 - 1.0).unsqueeze(1)


def tensor_to_images(tensor: torch.Tensor) -> np.ndarray:
    """Generator output ``(N, 1, S, S)`` in ``[-1, 1]`` -> uint8 ``(N, S, S)``."""
    values = (tensor.detach().float().cpu().squeeze(1).clamp(-1.0, 1.0) + 1.0) * 127.5
    return torch.round(values).to(torch.uint8).numpy()


@torch.no_grad()
def generate(generator: nn.Module, conditions: np.ndarray, *, device: torch.device, batch_size: int = 16,
             stochastic: bool = False, amp: bool = True) -> np.ndarray:
    """Render float32 conditions ``(N, C, S, S)`` to uint8 images ``(N, S, S)``.

    The generator runs in eval mode; ``stochastic=True`` keeps its dropout active (pix2pix's noise), drawing
    from torch's global generator, so seed it first for reproducible images.
    """
    was_training = generator.training
    generator.eval()
    if stochastic:
        for module in generator.modules():
            if isinstance(module, nn.Dropout):
                module.train()
    try:
        outputs = []
        for start in range(0, len(conditions), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(conditions[start:start + batch_size])).to(device)
            with autocast(device, amp):
                outputs.append(tensor_to_images(generator(batch)))
    finally:
        generator.train(was_training)
    return np.concatenate(outputs) if outputs else np.zeros((0, *conditions.shape[2:]), dtype=np.uint8)


def count_parameters(net: nn.Module) -> int:
    """Number of parameters (trainable or frozen)."""
    return sum(p.numel() for p in net.parameters())


def _set_requires_grad(net: nn.Module, flag: bool) -> None:
    for parameter in net.parameters():
        parameter.requires_grad_(flag)
