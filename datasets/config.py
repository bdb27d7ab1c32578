"""Typed Hydra schemas of the ``data.*`` group: the fields every branch shares (:class:`SplitConfig`) and the
2D figshare data (:class:`DataConfig`); plus the run-directory names derived from them."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from datasets.core import IMAGE_SIZES, PROTOCOLS, fold_count
from datasets.figshare import GROUPINGS
from datasets.transforms import GEOMETRIES
from experiment.errors import ConfigError


@dataclass
class SplitConfig:
    """Where the data is and how it is split, in every branch.

    ``root``: the data (null = the embedded sample); ``strict``: stop at the first bad file instead of skipping
    it with a warning; ``split_seed``: seeds the split; ``val_fraction``: share of training patients held out
    for model selection; ``splits_dir``: where split manifests are written; ``cache_dir``: null =
    ``$BRAIN_TUMOUR_CACHE`` or ``~/.cache/brain-tumour-mri``.
    """

    root: Optional[str] = None
    strict: bool = True
    split_seed: int = 0
    val_fraction: float = 0.15
    splits_dir: str = "runs/splits"
    cache_dir: Optional[str] = None


@dataclass
class DataConfig(SplitConfig):
    """The figshare slices: ``root`` is a ``.mat`` folder, a bundle ``.npz`` or a folder of bundles.

    ``split``: ``grouped`` (k folds grouped by patient) or ``cvind`` (the authors' 5 folds); ``subjects``: the
    bundle's ``figshare_subjects.csv`` (null = the one beside the bundle); ``group_by``: ``subject`` (patients;
    the default and the only leak-free choice) or ``series`` (the bundle's scan series: leaks patients across
    scan planes, kept only to reproduce old results); ``geometry``: ``canonical`` (crop to the head, pad to a
    square, add figshare's margin, resize) or ``resize`` (stretch the whole image: the old preprocessing).
    """

    image_size: int = 128
    split: str = "grouped"
    k: int = 7
    subjects: Optional[str] = None
    group_by: str = "subject"
    geometry: str = "canonical"


_SHARE = (lambda v: isinstance(v, (int, float)) and 0 < v < 0.5, "in (0, 0.5)")
SPLIT_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "split": (lambda v: v in PROTOCOLS, f"one of {PROTOCOLS}"),
    "k": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 2 <= v <= 10, "an integer in 2..10"),
    "val_fraction": _SHARE,
    "test_fraction": _SHARE,
}
"""The one definition of the split settings' ranges: key -> (test, what it must be)."""


def check_split_settings(**settings: Any) -> None:
    """Refuse split settings (``split=``, ``k=``, ``val_fraction=``, ``test_fraction=``) outside their ranges.

    Raises:
        ConfigError: names the ``data.*`` key, the rule and the value.
    """
    for key, value in settings.items():
        ok, what = SPLIT_RULES[key]
        if not ok(value):
            raise ConfigError(f"data.{key} must be {what}, got {value!r}")


def check_data(data: DataConfig) -> None:
    """Refuse ``data.*`` settings that cannot work, naming the key.

    Raises:
        ConfigError: an unsupported image size, grouping or geometry, or a split setting out of range (see
            :func:`check_split_settings`).
    """
    check_split_settings(split=data.split, k=data.k, val_fraction=data.val_fraction)
    checks = [("image_size", data.image_size in IMAGE_SIZES, f"one of {IMAGE_SIZES}"),
              ("group_by", data.group_by in GROUPINGS, f"one of {GROUPINGS}"),
              ("geometry", data.geometry in GEOMETRIES, f"one of {GEOMETRIES}")]
    for key, ok, what in checks:
        if not ok:
            raise ConfigError(f"data.{key} must be {what}, got {getattr(data, key)!r}")


def split_tag(split: str, k: int) -> str:
    """Run-directory tag of a split protocol: ``grouped-k7``, ``cvind-k5``.

    Raises:
        ConfigError: ``split`` or ``k`` out of range (so a bad setting stops Hydra before it makes a run folder).
    """
    check_split_settings(split=split, k=k)
    return f"{split}-k{fold_count(split, k)}"


def fold_dir(fold: Optional[int]) -> str:
    """Run-directory name of a fold: ``fold3``, or ``all`` for ``fold=null`` (every patient)."""
    return "all" if fold is None else f"fold{fold}"


def data_identity(data_cfg: DataConfig, fingerprint: str) -> dict:
    """What binds a run directory to its data and split (see :meth:`experiment.rundir.RunDir.claim`)."""
    return {"data_fingerprint": fingerprint, "image_size": data_cfg.image_size, "split": data_cfg.split,
            "k": fold_count(data_cfg.split, data_cfg.k), "split_seed": data_cfg.split_seed,
            "val_fraction": data_cfg.val_fraction, "group_by": data_cfg.group_by}


def register() -> None:
    """Register ``data=figshare`` in Hydra's ConfigStore and the ``split_tag`` / ``fold_dir`` resolvers
    that run-directory paths use (idempotent)."""
    ConfigStore.instance().store(group="data", name="figshare", node=DataConfig)
    for name, resolver in (("split_tag", split_tag), ("fold_dir", fold_dir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
