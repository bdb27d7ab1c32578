"""Train / validation / test splits of NIfTI volumes: stratified by class, grouped by subject,
deterministic in a seed and saved as a JSON manifest that every run with the same settings shares."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from datasets.config import check_split_settings
from datasets.core import DataError
from datasets.splits import PARTS, check_parts, read_manifest
from datasets.volumes import CLASS_NAMES, VolumeError, VolumeRecord, VolumeScan, relative_path
from experiment.atomic import atomic_write_json


def make_split(scan: VolumeScan, seed: int = 0, val_fraction: float = 0.2,
               test_fraction: float = 0.2) -> dict[str, Any]:
    """A deterministic train/val/test split of ``scan``'s subjects, stratified by class.

    Per class, subjects are shuffled with ``seed``; test and validation take ``round(n * fraction)``
    subjects each, at least one when the class has enough subjects to keep one for training.

    Raises:
        ConfigError: fractions outside (0, 0.5).
        DataError: a subject that carries two labels.
    """
    check_split_settings(val_fraction=val_fraction, test_fraction=test_fraction)
    subject_label = subject_labels(scan)
    parts: dict[str, list[str]] = {part: [] for part in PARTS}
    rng = np.random.default_rng(seed)
    for label in range(len(CLASS_NAMES)):
        subjects = sorted(s for s, lab in subject_label.items() if lab == label)
        order = [subjects[i] for i in rng.permutation(len(subjects))]
        n_test = _share(len(order), test_fraction)
        n_val = _share(len(order) - n_test, val_fraction * len(order) / max(len(order) - n_test, 1))
        parts["test"] += order[:n_test]
        parts["val"] += order[n_test:n_test + n_val]
        parts["train"] += order[n_test + n_val:]
    manifest: dict[str, Any] = {"layout": scan.layout, "root": str(scan.root), "modality": scan.modality,
                                "seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
                                "fingerprint": scan.fingerprint, "class_names": list(CLASS_NAMES), "parts": {}}
    for part, subjects in parts.items():
        chosen = set(subjects)
        records = [r for r in scan.records if r.subject in chosen]
        manifest["parts"][part] = {
            "subjects": sorted(chosen), "paths": [relative_path(r.path, scan.root) for r in records],
            "class_counts": np.bincount([r.label for r in records], minlength=len(CLASS_NAMES)).tolist()}
    return manifest


def load_or_make_split(scan: VolumeScan, splits_dir: str | os.PathLike, seed: int = 0, val_fraction: float = 0.2,
                       test_fraction: float = 0.2) -> tuple[dict[str, Any], Path]:
    """Read the split manifest for these settings from ``splits_dir``, creating it (atomically) if absent.

    Raises:
        DataError: an existing manifest that is unreadable or malformed, was made for a different file list, has
            parts that overlap, names volumes or subjects the scan lacks or leaves a subject out (names the file);
            a subject that carries two labels.
    """
    path = Path(splits_dir) / (f"volumes-{scan.layout}-{scan.modality}-seed{seed}-val{val_fraction:g}"
                               f"-test{test_fraction:g}-{scan.fingerprint}.json")
    if path.exists():
        return load_split(path, scan), path
    manifest = make_split(scan, seed, val_fraction, test_fraction)
    atomic_write_json(path, manifest)
    return manifest, path


def load_split(path: str | os.PathLike, scan: VolumeScan) -> dict[str, Any]:
    """Read and check the split manifest at ``path`` for ``scan`` (see :func:`load_or_make_split`)."""
    manifest, parts = read_manifest(path, "split manifest", lambda m: [
        (part, set(m["parts"][part]["paths"]), set(m["parts"][part]["subjects"])) for part in PARTS])
    if manifest.get("fingerprint") != scan.fingerprint:
        raise VolumeError(f"split manifest {path} was made for volumes {manifest.get('fingerprint')}, "
                          f"not for the scanned volumes {scan.fingerprint}")
    subjects = subject_labels(scan)
    check_parts(f"split manifest {path}", parts, ({relative_path(r.path, scan.root) for r in scan.records},
                                                  set(subjects)), item="volume")
    left_out = set(subjects).difference(*(part[2] for part in parts))
    if left_out:
        raise DataError(f"split manifest {path} leaves subject {min(left_out)} out of every part "
                        f"({len(left_out)} such subjects); delete it to rebuild it")
    return manifest


def subject_labels(scan: VolumeScan) -> dict[str, int]:
    """Each subject's label.

    Raises:
        DataError: a subject with volumes of two labels (names both volumes).
    """
    first: dict[str, VolumeRecord] = {}
    for record in scan.records:
        seen = first.setdefault(record.subject, record)
        if seen.label != record.label:
            raise DataError(f"subject {record.subject} has volumes with different labels: {seen.path} is "
                            f"{CLASS_NAMES[seen.label]}, {record.path} is {CLASS_NAMES[record.label]}")
    return {subject: record.label for subject, record in first.items()}


def split_records(manifest: dict[str, Any], scan: VolumeScan) -> dict[str, list[VolumeRecord]]:
    """The records of each part (``train``, ``val``, ``test``) of a split manifest."""
    subjects = {part: set(manifest["parts"][part]["subjects"]) for part in PARTS}
    return {part: [r for r in scan.records if r.subject in subjects[part]] for part in PARTS}


def _share(n: int, fraction: float) -> int:
    """``round(n * fraction)`` subjects, at least 1 while at least 2 would remain for the other parts."""
    return min(max(round(n * fraction), 1), n - 2) if n >= 3 else 0

