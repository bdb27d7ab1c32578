"""Typed Hydra schemas of the generator entry points: ``net.*`` (architecture), ``optim.*`` (training
schedule and losses) and ``augment.*`` (condition augmentation for synthesis)."""
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
class OptimConfig:
    """Adam, batch size and the pix2pix losses (the epoch schedule is top-level: ``epochs``, ``epochs_decay``)."""

    batch_size: int = 4
    lr: float = 2e-4
    beta1: float = 0.5
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
    """Register the ``data``, ``monitor``, ``net``, ``optim`` and ``augment`` groups (idempotent)."""
    data_config.register()
    experiment_config.register()
    store = ConfigStore.instance()
    store.store(group="net", name="pix2pix", node=NetConfig)
    store.store(group="optim", name="pix2pix", node=OptimConfig)
    store.store(group="augment", name="default", node=AugmentConfig)
