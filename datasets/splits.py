"""Grouped, stratified k-fold splits saved as a JSON manifest (``folds.json``).

Protocols:

* ``grouped`` (default, k=7): scikit-learn ``StratifiedGroupKFold`` over the finest grouping
  the source has (patient id for ``.mat`` folders, ``series`` for the bundle);
* ``cvind``: the authors' patient-wise 5-fold split shipped with the data (test fold i = cvind i+1).

Each fold also carves a validation subset out of its training groups (again grouped and
stratified), used for model selection only. Every model of a fold reads the same manifest.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from datasets.figshare import DataError, SliceSet, load_figshare
from experiment.atomic import atomic_write_json

PROTOCOLS = ("grouped", "cvind")
PARTS = ("train", "val", "test")


def make_folds(data: SliceSet, protocol: str = "grouped", k: int = 7, seed: int = 0,
               val_fraction: float = 0.15) -> dict[str, Any]:
    """Build the fold manifest for ``data``.

    Raises:
        ValueError: unknown protocol, ``k`` outside 2..10, bad ``val_fraction``, or too few groups.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown split protocol {protocol!r}; choose one of {PROTOCOLS}")
    if not 0.0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5), got {val_fraction}")
    if protocol == "cvind":
        test_ids = _cvind_test_folds(data)
        k = len(test_ids)
    else:
        if not 2 <= k <= 10:
            raise ValueError(f"k must be between 2 and 10, got {k}")
        test_ids = _grouped_test_folds(data, k, seed)
    folds = []
    for fold, test_index in enumerate(test_ids):
        rest = np.setdiff1d(np.arange(len(data)), test_index)
        val_index = _carve_validation(data, rest, val_fraction, seed + 1000 * (fold + 1))
        train_index = np.setdiff1d(rest, val_index)
        folds.append({"fold": fold, **{part: _describe(data, index) for part, index in
                                       zip(PARTS, (train_index, val_index, test_index), strict=True)}})
    return {"protocol": protocol, "k": k, "seed": seed, "val_fraction": val_fraction,
            "data_fingerprint": data.fingerprint, "source": data.source, "folds": folds}


def load_or_make_folds(data: SliceSet, folds_dir: str | os.PathLike, protocol: str = "grouped", k: int = 7,
                       seed: int = 0, val_fraction: float = 0.15) -> tuple[dict[str, Any], Path]:
    """Read the manifest for these settings from ``folds_dir``, creating it (atomically) if absent.

    The file name carries protocol, k, seed and the data fingerprint, so every entry point
    with the same settings shares one file.
    """
    k_name = "5" if protocol == "cvind" else str(k)
    path = Path(folds_dir) / f"folds-{protocol}-k{k_name}-seed{seed}-val{val_fraction:g}-{data.fingerprint}.json"
    if path.exists():
        return load_folds(path, data), path
    manifest = make_folds(data, protocol, k, seed, val_fraction)
    atomic_write_json(path, manifest)
    return manifest, path


def load_folds(path: str | os.PathLike, data: SliceSet | None = None) -> dict[str, Any]:
    """Read a fold manifest; with ``data``, check it was made for the same data."""
    manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    if data is not None and manifest.get("data_fingerprint") != data.fingerprint:
        raise DataError(f"fold manifest {path} was made for data {manifest.get('data_fingerprint')}, "
                        f"not for the loaded data {data.fingerprint}")
    return manifest


def fold_indices(manifest: dict[str, Any], data: SliceSet, fold: int) -> dict[str, np.ndarray]:
    """Indices into ``data`` of the fold's ``train``, ``val`` and ``test`` slices.

    Raises:
        ValueError: ``fold`` outside ``0..k-1``.
    """
    k = len(manifest["folds"])
    if not isinstance(fold, (int, np.integer)) or not 0 <= fold < k:
        raise ValueError(f"fold must be an integer in 0..{k - 1} for this {k}-fold manifest, got {fold!r}")
    position = {int(file_id): i for i, file_id in enumerate(data.file_ids)}
    entry = manifest["folds"][fold]
    return {part: np.array(sorted(position[f] for f in entry[part]["file_ids"]), dtype=np.int64) for part in PARTS}


def _describe(data: SliceSet, index: np.ndarray) -> dict[str, Any]:
    index = np.sort(index)
    return {"file_ids": data.file_ids[index].tolist(), "groups": sorted(set(data.groups[index].tolist())),
            "class_counts": np.bincount(data.labels[index], minlength=3).tolist()}


def _grouped_test_folds(data: SliceSet, k: int, seed: int) -> list[np.ndarray]:
    n_groups = len(set(data.groups))
    if n_groups < k:
        raise ValueError(f"{k}-fold split needs at least {k} groups, the data has {n_groups}")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(data)), data.labels, data.groups)]


def _cvind_test_folds(data: SliceSet) -> list[np.ndarray]:
    values = sorted(set(data.cvind.tolist()))
    if not values or values[0] < 1:
        raise DataError(f"split=cvind needs the authors' cvind for every slice; {data.source} lacks it")
    return [np.flatnonzero(data.cvind == v) for v in values]


def _carve_validation(data: SliceSet, rest: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    n_splits = max(2, round(1.0 / val_fraction))
    groups = data.groups[rest]
    if len(set(groups)) < n_splits:
        raise ValueError(f"too few training groups ({len(set(groups))}) to carve a validation set")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed % 2**32)
    _, val = next(splitter.split(np.zeros(rest.size), data.labels[rest], groups))
    return rest[val]


def load_fold(data_cfg: Any, fold: int) -> tuple[SliceSet, dict[str, np.ndarray], Path]:
    """Load the slices that ``data_cfg`` (a :class:`datasets.config.DataConfig` node) names and the
    ``train`` / ``val`` / ``test`` indices of ``fold``; also returns the fold manifest's path.

    The one way every 2D entry point turns ``data.*`` and ``fold`` into a split.
    """
    data = load_figshare(data_cfg.root, data_cfg.image_size, data_cfg.strict, data_cfg.cache_dir)
    manifest, path = load_or_make_folds(data, data_cfg.folds_dir, data_cfg.split, data_cfg.k,
                                        data_cfg.split_seed, data_cfg.val_fraction)
    return data, fold_indices(manifest, data, fold), path
