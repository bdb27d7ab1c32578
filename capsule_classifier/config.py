"""Typed Hydra schemas of ``capsule_classifier/train.py``: groups ``train``, ``augment`` and ``pretrain``.

Model configs (``configs/model/*.yaml``) override ``train.*`` with their own budgets.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II

from datasets.augment import BASIC, SliceAugment
from experiment.config import SupervisedTrainConfig


@dataclass
class ClassifierTrainConfig(SupervisedTrainConfig):
    """Stage 2: fine-tune on the fold's real training patients, select on its validation patients.

    ``schedule``: per-epoch learning rate, ``cosine`` (to zero over ``epochs``) or ``step`` (times ``gamma``
    every ``step_size`` epochs); ``balanced``: class-balanced sampling (with replacement) instead of shuffling.
    """

    epochs: int = 40
    lr: float = 0.002
    patience: int = 12
    schedule: str = "cosine"
    step_size: int = 15
    gamma: float = 0.1
    balanced: bool = False


@dataclass
class AugmentConfig(SliceAugment):
    """Augmentation of training slices, real and synthetic (never validation, test or prediction):
    ``augment=robust`` (the default) or ``augment=basic`` (flip, affine and intensity jitter only); every field
    is documented at :class:`datasets.augment.SliceAugment`. ``enabled=false`` turns it off."""

    enabled: bool = True


@dataclass
class PretrainConfig:
    """Stage 1 (optional): synthetic shards from ``generative_model/synthesize.py``.

    ``shards``: the shard folder (null = no pretraining); ``strict``: refuse shards of another image size
    instead of resizing them; ``lr``: defaults to ``train.lr``; ``balanced``: sample classes evenly
    (synthetic sets may be imbalanced).
    """

    shards: Optional[str] = None
    strict: bool = False
    epochs: int = 10
    lr: float = II("train.lr")
    balanced: bool = True


def register() -> None:
    """Register ``train=classifier``, ``augment=robust|basic`` and ``pretrain=default`` (idempotent)."""
    store = ConfigStore.instance()
    store.store(group="train", name="classifier", node=ClassifierTrainConfig)
    store.store(group="augment", name="robust", node=AugmentConfig)
    store.store(group="augment", name="basic", node=AugmentConfig(**asdict(BASIC)))
    store.store(group="pretrain", name="default", node=PretrainConfig)
