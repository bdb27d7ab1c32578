"""The prepared ``.npz`` bundle and its patient table: bad input, the embedded sample and the full shared bundle."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, require_shared

from datasets.core import CLASS_NAMES, PLANES, DataError
from datasets.figshare import BUNDLE_ARRAYS, SUBJECTS_CSV, read_bundle
from datasets.slices import load_slices


def bundle_arrays(n: int = 6, size: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays in the exact bundle layout (names, dtypes, shapes) for ``n`` slices of ``size``."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((n, size, size), dtype=bool)
    mask[:, size // 4: size // 2, size // 4: size // 2] = True
    return {"image": rng.integers(0, 256, (n, size, size), dtype=np.uint8), "mask": mask,
            "label": (np.arange(n) % 3 + 1).astype(np.uint8), "index": np.arange(1, n + 1, dtype=np.int16),
            "cvind": (np.arange(n) % 5 + 1).astype(np.uint8), "series": (np.arange(n) % 3 + 1).astype(np.uint16),
            "orig_size": np.full(n, 512, dtype=np.int16)}


def write_bundle(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez_compressed(path, **arrays)
    return path


SUBJECT_ROWS = [(1, 1, "axial"), (2, 2, "axial"), (3, 3, "coronal"), (4, 1, "coronal"), (5, 2, "sagittal"),
                (6, 3, "sagittal")]
"""(index, subject, plane) for :func:`bundle_arrays`: three patients, one per class, two planes each."""


def write_subjects(path: Path, rows: list[tuple] = SUBJECT_ROWS,
                   header: str = "index,subject,plane,link_evidence") -> Path:
    """A ``figshare_subjects.csv`` in the shared table's exact layout."""
    path.write_text(header + "\n" + "".join(",".join(map(str, row)) + ",strong:rep2\n" for row in rows))
    return path


def test_good_bundle_loads_with_its_patient_table(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "figshare_cheng_16.npz", bundle_arrays())
    write_subjects(tmp_path / SUBJECTS_CSV)
    data = load_slices(path, image_size=16, cache_dir=tmp_path / "cache", geometry="resize")  # noise: no head
    assert data.labels.tolist() == [0, 1, 2, 0, 1, 2] and data.labels.dtype == np.int64
    assert data.subjects.tolist() == ["1", "2", "3", "1", "2", "3"]
    assert data.planes.tolist() == ["axial", "axial", "coronal", "coronal", "sagittal", "sagittal"]
    assert data.cvind.tolist() == [1, 2, 3, 4, 5, 1] and data.file_ids.tolist() == [1, 2, 3, 4, 5, 6]
    assert data.images.shape == (6, 16, 16) and data.masks.sum() == 6 * 16


def test_bundle_without_patient_table_is_refused(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "figshare_cheng_16.npz", bundle_arrays())
    with pytest.raises(DataError, match=f"bundle {re.escape(str(path))} has no patient table: put {SUBJECTS_CSV}"):
        load_slices(path, image_size=16, cache_dir=tmp_path / "cache")


def test_series_grouping_only_when_asked_and_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_bundle(tmp_path / "figshare_cheng_16.npz", bundle_arrays())
    data = load_slices(path, image_size=16, cache_dir=tmp_path / "cache", group_by="series")
    assert data.subjects.tolist() == ["series-1", "series-2", "series-3"] * 2
    assert "leaky" in caplog.text


def test_patient_table_from_a_configured_path(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "figshare_cheng_16.npz", bundle_arrays())
    table = write_subjects(tmp_path / "elsewhere.csv", [(i, 10 + (i - 1) % 3, "axial") for i in range(1, 7)])
    data = load_slices(path, image_size=16, cache_dir=tmp_path / "cache", subjects=table)
    assert data.subjects.tolist() == ["10", "11", "12", "10", "11", "12"]
    with pytest.raises(DataError, match="data.subjects names no file"):
        load_slices(path, image_size=16, cache_dir=tmp_path / "cache", subjects=tmp_path / "missing.csv")


def test_a_replaced_patient_table_is_not_served_from_the_cache(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "figshare_cheng_16.npz", bundle_arrays())
    table = write_subjects(tmp_path / SUBJECTS_CSV)
    first = load_slices(path, image_size=16, cache_dir=tmp_path / "cache")
    write_subjects(table, [(i, 7 + (i - 1) % 3, plane) for i, _, plane in SUBJECT_ROWS])
    os.utime(table, ns=(table.stat().st_mtime_ns + 10**9,) * 2)
    second = load_slices(path, image_size=16, cache_dir=tmp_path / "cache")
    assert second.subjects.tolist() == ["7", "8", "9", "7", "8", "9"] and second.fingerprint != first.fingerprint


@pytest.mark.parametrize("rows, header, message", [
    (SUBJECT_ROWS, "index,patient,plane", r"lacks column\(s\) \['subject'\]"),
    (SUBJECT_ROWS[:5], None, "lists no subject for figshare index 6"),
    ([*SUBJECT_ROWS, (6, 3, "axial")], None, "line 8: index 6 is listed twice"),
    ([(1, 1, "oblique"), *SUBJECT_ROWS[1:]], None, "line 2: plane 'oblique' is not one of"),
    ([("x", 1, "axial"), *SUBJECT_ROWS[1:]], None, "line 2: index 'x' is not a positive integer"),
    ([(1, "", "axial"), *SUBJECT_ROWS[1:]], None, "line 2: empty subject"),
    ([(1, 2, "axial"), *SUBJECT_ROWS[1:]], None, "subject 2 has slices of two tumour types"),
])
def test_bad_patient_table(tmp_path: Path, rows: list, header: str | None, message: str) -> None:
    path = write_bundle(tmp_path / "figshare_cheng_16.npz", bundle_arrays())
    table = write_subjects(tmp_path / SUBJECTS_CSV, rows, *([header] if header else []))
    with pytest.raises(DataError, match=f"{re.escape(str(table))}.*{message}"):
        load_slices(path, image_size=16, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("missing", BUNDLE_ARRAYS)
def test_bundle_missing_array(tmp_path: Path, missing: str) -> None:
    arrays = bundle_arrays()
    del arrays[missing]
    path = write_bundle(tmp_path / "b.npz", arrays)
    with pytest.raises(DataError, match=rf"bundle {re.escape(str(path))} lacks array\(s\) \['{missing}'\]"):
        read_bundle(path)


@pytest.mark.parametrize("name", ["label", "series", "mask"])
def test_bundle_mismatched_lengths(tmp_path: Path, name: str) -> None:
    arrays = bundle_arrays()
    arrays[name] = arrays[name][:-1]
    path = write_bundle(tmp_path / "b.npz", arrays)
    where = re.escape(str(path))
    with pytest.raises(DataError, match=rf"bundle {where} has arrays of mismatched lengths: .*'{name}': 5"):
        read_bundle(path)


@pytest.mark.parametrize("label", [0, 4])
def test_bundle_label_outside_range(tmp_path: Path, label: int) -> None:
    arrays = bundle_arrays()
    arrays["label"][3] = label
    path = write_bundle(tmp_path / "b.npz", arrays)
    where = re.escape(str(path))
    with pytest.raises(DataError, match=rf"bundle {where}: label outside 1..3 at index 3 \(value {label}\)"):
        read_bundle(path)


def test_bundle_that_is_not_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "b.npz"
    path.write_text("image,label\n")
    with pytest.raises(DataError, match=f"bundle {re.escape(str(path))} is not a readable .npz file"):
        load_slices(path, cache_dir=tmp_path / "cache")


def test_bundle_needing_pickle_is_refused(tmp_path: Path) -> None:
    arrays = bundle_arrays()
    arrays["series"] = np.array([{"id": i} for i in range(6)], dtype=object)
    path = write_bundle(tmp_path / "b.npz", arrays)
    with pytest.raises(DataError, match=f"bundle {re.escape(str(path))} is not a readable .npz file"):
        read_bundle(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_bundle_float_images_with_nan(tmp_path: Path, bad: float) -> None:
    arrays = bundle_arrays()
    arrays["image"] = arrays["image"].astype(np.float32)
    arrays["image"][2, 5, 5] = bad
    path = write_bundle(tmp_path / "b.npz", arrays)
    with pytest.raises(DataError, match=f"bundle {re.escape(str(path))}: image array holds NaN or infinite pixels"):
        read_bundle(path)


def test_embedded_sample_carries_its_patients(tmp_path: Path) -> None:
    data = load_slices(cache_dir=tmp_path / "cache")
    assert len(data) == 344 and data.image_size == 128 and data.images.shape == (344, 128, 128)
    assert np.bincount(data.labels).tolist() == [68, 104, 172]
    assert set(data.cvind.tolist()) == {1, 2, 3, 4, 5} and set(data.planes.tolist()) == set(PLANES)
    assert len(set(data.subjects)) == 45 and data.masks.any(axis=(1, 2)).all()
    for subject in set(data.subjects):  # a patient has one tumour type and lies in one author fold
        members = data.subjects == subject
        assert len(set(data.labels[members])) == 1 and len(set(data.cvind[members])) == 1


def test_full_shared_bundle(tmp_path: Path) -> None:
    path = require_shared(SHARED_DATA / "figshare_cheng_128.npz")
    data = load_slices(path, image_size=128, cache_dir=tmp_path / "cache")
    assert len(data) == 3064 and data.images.shape == (3064, 128, 128)
    assert data.file_ids.tolist() == list(range(1, 3065))
    assert dict(zip(CLASS_NAMES, np.bincount(data.labels).tolist(), strict=True)) == {
        "meningioma": 708, "glioma": 1426, "pituitary": 930}
    assert np.bincount(data.cvind, minlength=6)[1:].tolist() == [570, 655, 562, 613, 664]
    per_fold = [[int(((data.cvind == fold) & (data.labels == c)).sum()) for c in range(3)] for fold in range(1, 6)]
    assert per_fold == [[143, 264, 163], [168, 293, 194], [114, 243, 205], [138, 279, 196], [145, 347, 172]]
    assert len(set(data.subjects)) == 233 and set(data.planes.tolist()) == set(PLANES)
    assert [len(set(data.subjects[data.labels == c])) for c in range(3)] == [82, 89, 62]
    assert data.masks.any(axis=(1, 2)).all()
    series = load_slices(path, image_size=128, cache_dir=tmp_path / "cache", group_by="series")
    assert [len(set(series.subjects[series.labels == c])) for c in range(3)] == [151, 198, 158]
