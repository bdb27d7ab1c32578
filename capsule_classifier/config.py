"""Typed Hydra schemas of ``capsule_classifier/train.py``: groups ``train``, ``augment`` and ``pretrain``.

Model configs (``configs/model/*.yaml``) override ``train.*`` with their own budgets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II

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
class AugmentConfig:
    """Augmentation of real training slices only (never validation, test or prediction); see
    :func:`datasets.augment.slice_augmentation`. ``flip_prob``: left-right flips; ``translate``: fraction of
    the side; ``prob``: per-slice chance of the affine and of the intensity jitter."""

    enabled: bool = True
    flip_prob: float = 0.5
    rotate_deg: float = 10.0
    scale: float = 0.1
    translate: float = 0.05
    intensity_scale: float = 0.1
    intensity_shift: float = 0.05
    prob: float = 0.8


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
    """Register ``train=classifier``, ``augment=default`` and ``pretrain=default`` (idempotent)."""
    store = ConfigStore.instance()
    store.store(group="train", name="classifier", node=ClassifierTrainConfig)
    store.store(group="augment", name="default", node=AugmentConfig)
    store.store(group="pretrain", name="default", node=PretrainConfig)
