"""Typed Hydra schema for the data group shared by every 2D entry point (``data.*`` overrides)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore


@dataclass
class DataConfig:
    """Where the figshare slices are and how folds are cut.

    ``root``: a ``.mat`` folder, a bundle ``.npz`` or a folder of bundles; null = embedded sample.
    ``split``: ``grouped`` (k-fold by patient/series) or ``cvind`` (the authors' 5 folds).
    """

    root: Optional[str] = None
    image_size: int = 128
    split: str = "grouped"
    k: int = 7
    split_seed: int = 0
    val_fraction: float = 0.15
    strict: bool = True
    folds_dir: str = "runs/folds"
    cache_dir: Optional[str] = None


def register() -> None:
    """Register ``data=figshare`` in Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(group="data", name="figshare", node=DataConfig)
