"""Which real slices the generator of a fold may see: the fold's training patients only (its validation
patients are for the quality report, its test patients for nobody), or every patient for ``fold=null``."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import OmegaConf

from datasets.core import CLASS_NAMES, DataError, SliceSet
from datasets.splits import load_data, load_fold

log = logging.getLogger(__name__)


@dataclass
class FoldData:
    """The loaded slices and the fold's ``train`` / ``val`` indices into them (``val`` empty for ``fold=None``)."""

    data: SliceSet
    train: np.ndarray
    val: np.ndarray
    fold: Optional[int]
    folds_file: Optional[str]

    def describe(self) -> str:
        """One line for logs and summaries saying which patients the generator learns from."""
        if self.fold is None:
            return (f"ALL PATIENTS (fold=null): {self.train.size} slices, no held-out patients; "
                    "do not use this generator's shards for cross-validated evaluation")
        return f"fold {self.fold} training patients only: {self.train.size} slices (folds file {self.folds_file})"


def load_fold_data(data_cfg: Any, fold: Optional[int]) -> FoldData:
    """Load ``data_cfg`` (a ``datasets.config.DataConfig`` node) and select the fold's training slices.

    Raises:
        DataError: missing or empty data, or a class without training slices.
        ValueError: ``fold`` outside ``0..k-1``.
    """
    if fold is None:
        data = load_data(data_cfg)
        selected = FoldData(data, np.arange(len(data)), np.empty(0, dtype=np.int64), None, None)
        log.warning("fold=null: the generator trains on %s", selected.describe())
    else:
        data, index, path = load_fold(data_cfg, fold)
        selected = FoldData(data, index["train"], index["val"], int(fold), str(path))
    counts = np.bincount(data.labels[selected.train], minlength=len(CLASS_NAMES))
    empty = [name for name, count in zip(CLASS_NAMES, counts, strict=True) if count == 0]
    if empty:
        where = "the data" if fold is None else f"fold {fold}'s training patients"
        raise DataError(f"class(es) {empty} have no slices in {where} ({data.source}); the generator "
                        "needs every class to draw labelled conditions")
    return selected


def load_run_fold(run_dir: str | Path) -> FoldData:
    """The fold data of a generator run, from the ``data`` and ``fold`` of its ``config.yaml``.

    Raises:
        DataError: no ``config.yaml`` in ``run_dir``, or as :func:`load_fold_data`.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise DataError(f"{run_dir} holds no config.yaml: not a generator run directory")
    cfg = OmegaConf.load(path)
    return load_fold_data(cfg.data, cfg.fold)
