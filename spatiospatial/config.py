"""Typed Hydra schemas of ``spatiospatial/run.py``: groups ``model``, ``data`` and ``training``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from spatiospatial.models import MODEL_NAMES


@dataclass
class ModelConfig:
    """A torchvision video ResNet; ``weights_path``: optional local Kinetics-400 state dict (never downloaded)."""

    name: str = "r3d_18"
    weights_path: Optional[str] = None


@dataclass
class VolumeDataConfig:
    """Where the volumes are and how they are preprocessed and split (see :mod:`datasets.volumes`).

    ``layout``: ``auto`` | ``brats_ixi`` | ``csv``; ``modality``: BraTS file suffix (t1, t1ce, t2, flair);
    ``shape`` / ``spacing``: canonical (x, y, z) voxels / mm; ``time_axis``: the RAS axis (x, y or z) fed to
    the models as time; ``hook``: optional ``package.module:function`` applied to each raw NIfTI image;
    ``cache_dir``: null = ``$BRAIN_TUMOUR_CACHE/volumes``.
    """

    root: str = "../shared/data/volumes_extra"
    layout: str = "auto"
    modality: str = "t1ce"
    shape: list[int] = field(default_factory=lambda: [64, 64, 64])
    spacing: list[float] = field(default_factory=lambda: [3.0, 3.0, 3.0])
    time_axis: str = "z"
    hook: Optional[str] = None
    strict: bool = True
    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    splits_dir: str = "runs/splits"
    cache_dir: Optional[str] = None


@dataclass
class TrainingConfig:
    """Optimisation. ``patience``: epochs without a better val macro-F1 before stopping (0 = never);
    ``amp``: float16 autocast on CUDA; ``cpu_bf16``: bfloat16 autocast on the CPU (fast on AMX CPUs, off by
    default since it changes the numerics); ``class_weights``: weight the loss by inverse training class
    frequency; ``flip``: random left-right flips."""

    batch_size: int = 2
    lr: float = 0.001
    weight_decay: float = 0.0001
    epochs: int = 4
    patience: int = 0
    num_workers: int = 0
    amp: bool = True
    cpu_bf16: bool = False
    grad_clip: float = 5.0
    class_weights: bool = True
    flip: bool = True
    keep_checkpoints: int = 2


def register() -> None:
    """Register ``model=<name>`` for every video ResNet, ``data=volumes``, ``training=default`` (idempotent)."""
    store = ConfigStore.instance()
    for name in MODEL_NAMES:
        store.store(group="model", name=name, node=ModelConfig(name=name))
    store.store(group="data", name="volumes", node=VolumeDataConfig)
    store.store(group="training", name="default", node=TrainingConfig)
