"""Typed Hydra schemas of ``spatiospatial/run.py``: groups ``model``, ``data`` and ``train``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from datasets.config import SplitConfig
from experiment.config import SupervisedTrainConfig
from spatiospatial.models import MODEL_NAMES


@dataclass
class ModelConfig:
    """A torchvision video ResNet; ``weights_path``: optional local Kinetics-400 state dict (never downloaded)."""

    name: str = "r3d_18"
    weights_path: Optional[str] = None


@dataclass
class VolumeDataConfig(SplitConfig):
    """Where the volumes are and how they are preprocessed and split by subject (see :mod:`datasets.volumes`);
    ``root`` null = the embedded 3D sample.

    ``layout``: ``auto`` | ``brats_ixi`` | ``csv``; ``modality``: BraTS file suffix (t1, t1ce, t2, flair);
    ``shape`` / ``spacing``: canonical (x, y, z) voxels / mm; ``time_axis``: the RAS axis (x, y or z) fed to
    the models as time; ``hook``: optional ``package.module:function`` applied to each raw NIfTI image;
    ``test_fraction``: share of subjects held out for the test; ``cache_dir``: null =
    ``$BRAIN_TUMOUR_CACHE/volumes``.
    """

    layout: str = "auto"
    modality: str = "t1ce"
    shape: list[int] = field(default_factory=lambda: [64, 64, 64])
    spacing: list[float] = field(default_factory=lambda: [3.0, 3.0, 3.0])
    time_axis: str = "z"
    hook: Optional[str] = None
    val_fraction: float = 0.2
    test_fraction: float = 0.2


@dataclass
class VolumeTrainConfig(SupervisedTrainConfig):
    """Optimisation of the 3D models: ``num_workers``: loader processes; ``class_weights``: weight the loss by
    inverse training class frequency; ``flip``: random left-right flips of training volumes."""

    epochs: int = 4
    batch_size: int = 2
    num_workers: int = 0
    class_weights: bool = True
    flip: bool = True


def register() -> None:
    """Register ``model=<name>`` for every video ResNet, ``data=volumes``, ``train=volumes`` (idempotent)."""
    store = ConfigStore.instance()
    for name in MODEL_NAMES:
        store.store(group="model", name=name, node=ModelConfig(name=name))
    store.store(group="data", name="volumes", node=VolumeDataConfig)
    store.store(group="train", name="volumes", node=VolumeTrainConfig)
