"""Typed Hydra schema for the data group shared by every 2D entry point (``data.*`` overrides)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


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


def split_tag(split: str, k: int) -> str:
    """Run-directory tag of a split protocol: ``grouped-k7``, ``cvind-k5`` (cvind always has 5 folds)."""
    return f"{split}-k{5 if split == 'cvind' else k}"


def fold_dir(fold: Optional[int]) -> str:
    """Run-directory name of a fold: ``fold3``, or ``all`` for ``fold=null`` (every patient)."""
    return "all" if fold is None else f"fold{fold}"


def data_identity(data_cfg: DataConfig, fingerprint: str) -> dict:
    """What binds a run directory to its data and split (see :meth:`experiment.rundir.RunDir.claim`)."""
    return {"data_fingerprint": fingerprint, "image_size": data_cfg.image_size, "split": data_cfg.split,
            "k": 5 if data_cfg.split == "cvind" else data_cfg.k, "split_seed": data_cfg.split_seed,
            "val_fraction": data_cfg.val_fraction}


def register() -> None:
    """Register ``data=figshare`` in Hydra's ConfigStore and the ``split_tag`` / ``fold_dir`` resolvers
    that run-directory paths use (idempotent)."""
    ConfigStore.instance().store(group="data", name="figshare", node=DataConfig)
    for name, resolver in (("split_tag", split_tag), ("fold_dir", fold_dir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
