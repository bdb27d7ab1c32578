"""Patient-wise, stratified k-fold splits saved as a JSON manifest (``folds-*.json``).

Protocols:

* ``grouped`` (default, k=7): scikit-learn ``StratifiedGroupKFold`` over patients (``PID`` for ``.mat``
  folders, ``subject`` from ``figshare_subjects.csv`` for the bundle);
* ``cvind``: the authors' patient-wise 5-fold split shipped with the data (test fold i = cvind i+1).

Each fold also carves a validation subset out of its training patients (grouped and stratified the same
way, in both protocols), used for model selection only. Every model of a fold reads the same manifest, and
a manifest whose parts share a slice or a patient is refused.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from datasets.config import check_split_settings
from datasets.core import CLASS_NAMES, DataError, SliceSet, fold_count
from datasets.slices import load_slices
from experiment.atomic import atomic_write_json
from experiment.errors import ConfigError

PARTS = ("train", "val", "test")
T = TypeVar("T")


def make_folds(data: SliceSet, protocol: str = "grouped", k: int = 7, seed: int = 0,
               val_fraction: float = 0.15) -> dict[str, Any]:
    """Build the fold manifest for ``data``.

    Raises:
        ConfigError: settings out of range (see :func:`datasets.config.check_split_settings`) or too few patients
            in a class.
    """
    check_split_settings(split=protocol, k=k, val_fraction=val_fraction)
    test_ids = _cvind_test_folds(data) if protocol == "cvind" else _grouped_test_folds(data, k, seed)
    folds = []
    for fold, test_index in enumerate(test_ids):
        rest = np.setdiff1d(np.arange(len(data)), test_index)
        val_index = _carve_validation(data, rest, val_fraction, seed + 1000 * (fold + 1))
        train_index = np.setdiff1d(rest, val_index)
        folds.append({"fold": fold, **{part: _describe(data, index) for part, index in
                                       zip(PARTS, (train_index, val_index, test_index), strict=True)}})
    return {"protocol": protocol, "k": len(folds), "seed": seed, "val_fraction": val_fraction,
            "data_fingerprint": data.fingerprint, "source": data.source, "folds": folds}


def load_or_make_folds(data: SliceSet, splits_dir: str | os.PathLike, protocol: str = "grouped", k: int = 7,
                       seed: int = 0, val_fraction: float = 0.15) -> tuple[dict[str, Any], Path]:
    """Read the manifest for these settings from ``splits_dir``, creating it (atomically) if absent.

    The file name carries protocol, k, seed and the data fingerprint, so every entry point
    with the same settings shares one file.
    """
    name = f"folds-{protocol}-k{fold_count(protocol, k)}-seed{seed}-val{val_fraction:g}-{data.fingerprint}.json"
    path = Path(splits_dir) / name
    if path.exists():
        return load_folds(path, data), path
    manifest = make_folds(data, protocol, k, seed, val_fraction)
    atomic_write_json(path, manifest)
    return manifest, path


def load_folds(path: str | os.PathLike, data: SliceSet | None = None) -> dict[str, Any]:
    """Read and check a fold manifest: well-formed, parts disjoint in slices and in patients within every
    fold, test folds disjoint across folds; with ``data``, made for the same data and naming only its slices.

    Raises:
        DataError: unreadable, malformed or overlapping manifest, or one made for other data (names the file).
    """
    manifest, folds = read_manifest(path, "fold manifest", lambda m: [
        [(part, set(entry[part]["file_ids"]), set(entry[part]["subjects"])) for part in PARTS] for entry in m["folds"]])
    if data is not None and manifest.get("data_fingerprint") != data.fingerprint:
        raise DataError(f"fold manifest {path} was made for data {manifest.get('data_fingerprint')}, "
                        f"not for the loaded data {data.fingerprint}")
    known = None if data is None else (set(data.file_ids.tolist()), set(data.subjects.tolist()))
    tested: set[int] = set()
    for fold, parts in enumerate(folds):
        check_parts(f"fold manifest {path}: fold {fold}", parts, known)
        test = parts[-1][1]
        if tested & test:
            raise DataError(f"fold manifest {path}: fold {fold}'s test slices also appear in another fold's test "
                            f"part (e.g. file id {min(tested & test, key=str)})")
        tested |= test
    return manifest


def read_manifest(path: str | os.PathLike, kind: str, parse: Callable[[dict], T]) -> tuple[dict[str, Any], T]:
    """The JSON ``kind`` (``"fold manifest"``) at ``path`` and what ``parse`` makes of it.

    Raises:
        DataError: an unreadable file, invalid JSON, or a structure ``parse`` cannot read (names the file).
    """
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
        return manifest, parse(manifest)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError) as error:
        raise DataError(f"{kind} {path} is unreadable or malformed ({type(error).__name__}: {error}); "
                        "delete it to rebuild it") from error


def check_parts(where: str, parts: list[tuple[str, set, set]], known: tuple[set, set] | None,
                item: str = "file id") -> None:
    """No item and no subject in two of ``parts`` (``(name, items, subjects)``); with ``known`` (the data's items
    and subjects), none the data lacks.

    Raises:
        DataError: the message starts with ``where`` (which names the file).
    """
    for i, (name, ids, subjects) in enumerate(parts):
        unknown = [] if known is None else [(item, sorted(ids - known[0], key=str)),
                                            ("subject", sorted(subjects - known[1], key=str))]
        for what, strangers in unknown:
            if strangers:
                raise DataError(f"{where} {name} names {what} {strangers[0]}, which the data does not hold")
        for other, other_ids, other_subjects in parts[i + 1:]:
            shared_ids, shared = ids & other_ids, subjects & other_subjects
            if shared_ids or shared:
                what = f"{item} {min(shared_ids, key=str)}" if shared_ids else f"subject {min(shared, key=str)}"
                raise DataError(f"{where} has {what} in both {name} and {other}; parts must not overlap")


def fold_indices(manifest: dict[str, Any], data: SliceSet, fold: int) -> dict[str, np.ndarray]:
    """Indices into ``data`` of the fold's ``train``, ``val`` and ``test`` slices.

    Raises:
        ConfigError: ``fold`` outside ``0..k-1``.
    """
    k = len(manifest["folds"])
    if not isinstance(fold, (int, np.integer)) or not 0 <= fold < k:
        raise ConfigError(f"fold must be an integer in 0..{k - 1} for this {k}-fold manifest, got {fold!r}")
    position = {int(file_id): i for i, file_id in enumerate(data.file_ids)}
    entry = manifest["folds"][fold]
    return {part: np.array(sorted(position[f] for f in entry[part]["file_ids"]), dtype=np.int64) for part in PARTS}


def _describe(data: SliceSet, index: np.ndarray) -> dict[str, Any]:
    index = np.sort(index)
    return {"file_ids": data.file_ids[index].tolist(), "subjects": sorted(set(data.subjects[index].tolist())),
            "class_counts": np.bincount(data.labels[index], minlength=3).tolist()}


def _grouped_test_folds(data: SliceSet, k: int, seed: int) -> list[np.ndarray]:
    _check_patients_per_class(data.subjects, data.labels, k, f"a {k}-fold split of {data.source}")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(data)), data.labels, data.subjects)]


def _cvind_test_folds(data: SliceSet) -> list[np.ndarray]:
    values = sorted(set(data.cvind.tolist()))
    if not values or values[0] < 1:
        raise DataError(f"split=cvind needs the authors' cvind for every slice; {data.source} lacks it")
    folds_of: dict[str, set[int]] = {}
    for subject, fold in zip(data.subjects.tolist(), data.cvind.tolist(), strict=True):
        folds_of.setdefault(subject, set()).add(fold)
    crossing = sorted(s for s, f in folds_of.items() if len(f) > 1)
    if crossing:
        raise DataError(f"split=cvind: subject {crossing[0]} of {data.source} lies in cvind folds "
                        f"{sorted(folds_of[crossing[0]])} ({len(crossing)} such subjects); the authors' folds would "
                        "leak patients")
    return [np.flatnonzero(data.cvind == v) for v in values]


def _carve_validation(data: SliceSet, rest: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    n_splits = max(2, round(1.0 / val_fraction))
    subjects = data.subjects[rest]
    _check_patients_per_class(subjects, data.labels[rest], n_splits,
                              f"carving a validation share of {val_fraction:g} from a fold's training part")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed % 2**32)
    _, val = next(splitter.split(np.zeros(rest.size), data.labels[rest], subjects))
    return rest[val]


def _check_patients_per_class(subjects: np.ndarray, labels: np.ndarray, needed: int, what: str) -> None:
    """Stratified patient-wise splitting into ``needed`` parts needs that many patients in every class."""
    counts = {name: len(set(subjects[labels == c].tolist())) for c, name in enumerate(CLASS_NAMES)}
    smallest = min(counts, key=counts.get)
    if counts[smallest] < needed:
        raise ConfigError(f"{what} needs at least {needed} patients per class; {smallest} has {counts[smallest]} "
                         f"(patients per class: {counts})")


def load_data(data_cfg: Any) -> SliceSet:
    """The slices that ``data_cfg`` (a :class:`datasets.config.DataConfig` node) names."""
    return load_slices(data_cfg.root, data_cfg.image_size, data_cfg.strict, data_cfg.cache_dir,
                       data_cfg.subjects, data_cfg.group_by, data_cfg.geometry)


def load_fold(data_cfg: Any, fold: int) -> tuple[SliceSet, dict[str, np.ndarray], Path]:
    """Load the slices that ``data_cfg`` (a :class:`datasets.config.DataConfig` node) names and the
    ``train`` / ``val`` / ``test`` indices of ``fold``; also returns the fold manifest's path.

    The one way every 2D entry point turns ``data.*`` and ``fold`` into a split.
    """
    data = load_data(data_cfg)
    manifest, path = load_or_make_folds(data, data_cfg.splits_dir, data_cfg.split, data_cfg.k,
                                        data_cfg.split_seed, data_cfg.val_fraction)
    return data, fold_indices(manifest, data, fold), path
