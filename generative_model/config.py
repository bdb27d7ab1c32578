"""Typed Hydra schemas of the generator entry points: ``net.*`` (architecture), ``train.*`` (schedule, Adam,
checkpoints, logging), ``loss.*`` (the pix2pix losses) and ``augment.*`` (condition augmentation for synthesis)."""
from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from datasets import config as data_config
from experiment import config as experiment_config
from generative_model.networks import INIT_GAIN

DEFAULT_LAMBDA_L1 = 100.0
"""Weight of the L1 term in the generator loss (pix2pix paper)."""


@dataclass
class NetConfig:
    """Generator and discriminator architecture; stored in every checkpoint as ``arch``."""

    ngf: int = 32
    ndf: int = 32
    d_layers: int = 3  # 3 = the 70x70 PatchGAN
    norm: str = "instance"
    dropout: bool = True
    init_type: str = "normal"
    init_gain: float = INIT_GAIN


@dataclass
class GeneratorTrainConfig(experiment_config.TrainConfig):
    """``epochs`` at the constant rate ``lr``, then ``epochs_decay`` of linear decay to zero; Adam ``beta1``;
    a per-step loss record every ``log_every`` steps and a condition | real | fake grid of ``preview_count``
    training slices each epoch (``keep_checkpoints`` as in every branch)."""

    epochs: int = 3
    epochs_decay: int = 3
    batch_size: int = 4
    lr: float = 2e-4
    beta1: float = 0.5
    log_every: int = 25
    preview_count: int = 4


@dataclass
class LossConfig:
    """The generator loss: adversarial (``gan_mode`` ``vanilla`` or ``lsgan``) plus ``lambda_l1`` x L1."""

    gan_mode: str = "vanilla"
    lambda_l1: float = DEFAULT_LAMBDA_L1


@dataclass
class AugmentConfig:
    """How synthesis derives new conditions from real training conditions (see ``generative_model.conditions``)."""

    flip_prob: float = 0.5
    rotate_deg: float = 10.0
    translate: float = 0.05
    scale: list[float] = field(default_factory=lambda: [0.9, 1.1])
    elastic_alpha: float = 4.0
    elastic_sigma: float = 4.0
    transplant_prob: float = 0.5


def register() -> None:
    """Register the ``data``, ``monitor``, ``net``, ``train``, ``loss`` and ``augment`` groups (idempotent)."""
    data_config.register()
    experiment_config.register()
    store = ConfigStore.instance()
    store.store(group="net", name="pix2pix", node=NetConfig)
    store.store(group="train", name="pix2pix", node=GeneratorTrainConfig)
    store.store(group="loss", name="pix2pix", node=LossConfig)
    store.store(group="augment", name="default", node=AugmentConfig)
