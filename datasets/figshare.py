"""Reader of the prepared figshare bundle (``figshare_cheng_{256,128}.npz``) and its patient table.

The bundle holds arrays ``image``, ``mask``, ``label``, ``index``, ``cvind``, ``series`` (and ``orig_size``);
the patient of each slice comes from ``figshare_subjects.csv`` (columns ``index``, ``subject``, ``plane``)
beside it, or from ``subject`` / ``plane`` arrays inside the bundle (the embedded sample carries them).
The ``.mat`` folder reader is its sibling, :mod:`datasets.matlab`; :func:`datasets.slices.load_slices`
turns the output of either into preprocessed slices.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.core import PLANES, DataError

BUNDLE_ARRAYS = ("image", "mask", "label", "index", "cvind", "series")
SUBJECT_ARRAYS = ("subject", "plane")
"""Optional bundle arrays: reconstructed patient id and scan plane per slice (the embedded sample has them)."""
SUBJECTS_CSV = "figshare_subjects.csv"
SUBJECTS_COLUMNS = ("index", "subject", "plane")
GROUPINGS = ("subject", "series")
"""What bundle folds are grouped by: ``subject`` (patients) or ``series`` (leaks patients; old results only)."""


@dataclass
class BundleSlices:
    """The raw slices of a bundle with the patient (or, under ``series`` grouping, the series) of each."""

    arrays: dict[str, np.ndarray]
    subjects: np.ndarray
    planes: np.ndarray
    subjects_file: Path | None


def read_bundle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read and validate the raw arrays of a bundle ``.npz`` (no pickle allowed), with
    ``subject`` / ``plane`` when the bundle carries them."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as bundle:
            missing = [name for name in BUNDLE_ARRAYS if name not in bundle.files]
            if missing:
                raise DataError(f"bundle {path} lacks array(s) {missing}; expected {list(BUNDLE_ARRAYS)}")
            arrays = {name: bundle[name] for name in (*BUNDLE_ARRAYS, *SUBJECT_ARRAYS) if name in bundle.files}
    except DataError:
        raise
    except Exception as error:
        raise DataError(f"bundle {path} is not a readable .npz file: {error}") from error
    n = arrays["label"].shape[0]
    lengths = {name: int(a.shape[0]) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"bundle {path} has arrays of mismatched lengths: {lengths}")
    if arrays["image"].ndim != 3 or arrays["image"].shape[1:] != arrays["mask"].shape[1:]:
        raise DataError(f"bundle {path}: image {arrays['image'].shape} and mask {arrays['mask'].shape} "
                        "must both be (N, S, S)")
    if n == 0:
        raise DataError(f"bundle {path} is empty")
    bad = np.flatnonzero((arrays["label"] < 1) | (arrays["label"] > 3))
    if bad.size:
        raise DataError(f"bundle {path}: label outside 1..3 at index {int(bad[0])} "
                        f"(value {int(arrays['label'][bad[0]])})")
    if np.issubdtype(arrays["image"].dtype, np.floating) and not np.isfinite(arrays["image"]).all():
        raise DataError(f"bundle {path}: image array holds NaN or infinite pixels")
    if len(np.unique(arrays["index"])) != n:
        raise DataError(f"bundle {path}: array 'index' repeats a figshare index")
    return arrays


def read_bundle_slices(path: str | os.PathLike, subjects_file: str | os.PathLike | None = None,
                       group_by: str = "subject") -> BundleSlices:
    """The bundle at ``path`` with each slice's patient and plane.

    Patients come from ``subjects_file``, else from the bundle's own ``subject`` array, else from
    ``figshare_subjects.csv`` beside the bundle. ``group_by="series"`` groups by scan series instead (leaky).

    Raises:
        DataError: an unreadable bundle, no patient table, or a table that does not cover the bundle.
    """
    path = Path(path)
    if group_by not in GROUPINGS:
        raise DataError(f"data.group_by must be one of {GROUPINGS}, got {group_by!r}")
    arrays = read_bundle(path)
    n = arrays["label"].shape[0]
    table = subjects_table_path(path, subjects_file, "subject" in arrays)
    if table is not None:
        subjects, planes = read_subjects(table, arrays["index"])
    elif "subject" in arrays:
        subjects = arrays["subject"].astype(np.int64).astype(str)
        planes = arrays["plane"].astype(str) if "plane" in arrays else np.full(n, "")
    elif group_by == "series":
        subjects, planes = None, np.full(n, "")
    else:
        raise DataError(f"bundle {path} has no patient table: put {SUBJECTS_CSV} beside it or set "
                        f"data.subjects=PATH (data.group_by=series groups by scan series, which leaks patients)")
    if group_by == "series":
        subjects = np.array([f"series-{int(s)}" for s in arrays["series"]])
    _check_one_label_per_subject(table or path, subjects, arrays["label"])
    return BundleSlices(arrays, subjects, planes, table)


def subjects_table_path(bundle: Path, subjects_file: str | os.PathLike | None, embedded: bool) -> Path | None:
    """The patient table to read: ``subjects_file`` when given, else the CSV beside ``bundle`` unless the
    bundle carries its own ``subject`` array."""
    if subjects_file not in (None, ""):
        table = Path(subjects_file).expanduser()
        if not table.is_file():
            raise DataError(f"data.subjects names no file: {table}")
        return table
    beside = bundle.parent / SUBJECTS_CSV
    return beside if beside.is_file() and not embedded else None


def read_subjects(path: str | os.PathLike, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Patient id and scan plane for each figshare ``index`` from a ``figshare_subjects.csv`` table.

    Raises:
        DataError: missing columns, a bad row, a plane outside axial/coronal/sagittal, or an index the table
            does not list (each error names the file and the row).
    """
    path = Path(path)
    rows: dict[int, tuple[str, str]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in SUBJECTS_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: lacks column(s) {missing}; expected {list(SUBJECTS_COLUMNS)}")
            for line, row in enumerate(reader, start=2):
                rows[_index_of(path, line, row["index"], rows)] = _subject_row(path, line, row)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: unreadable patient table ({error})") from error
    unknown = [int(i) for i in index if int(i) not in rows]
    if unknown:
        raise DataError(f"{path} lists no subject for figshare index {unknown[0]} "
                        f"({len(unknown)} bundle slices missing); is it the table of this bundle?")
    pairs = [rows[int(i)] for i in index]
    return np.array([s for s, _ in pairs]), np.array([p for _, p in pairs])


def _index_of(path: Path, line: int, value: str, seen: dict[int, tuple[str, str]]) -> int:
    if not value.strip().isdecimal() or int(value) < 1:
        raise DataError(f"{path} line {line}: index {value!r} is not a positive integer")
    if int(value) in seen:
        raise DataError(f"{path} line {line}: index {value} is listed twice")
    return int(value)


def _subject_row(path: Path, line: int, row: dict[str, str]) -> tuple[str, str]:
    subject, plane = (row["subject"] or "").strip(), (row["plane"] or "").strip()
    if not subject:
        raise DataError(f"{path} line {line}: empty subject")
    if plane not in PLANES:
        raise DataError(f"{path} line {line}: plane {plane!r} is not one of {PLANES}")
    return subject, plane


def _check_one_label_per_subject(where: Path, subjects: np.ndarray, labels: np.ndarray) -> None:
    """A patient has one tumour type; a table that says otherwise belongs to other data."""
    first: dict[str, int] = {}
    for subject, label in zip(subjects.tolist(), labels.tolist(), strict=True):
        if first.setdefault(subject, label) != label:
            raise DataError(f"{where}: subject {subject} has slices of two tumour types ({first[subject]} and "
                            f"{label}); the patient table does not match the bundle")
