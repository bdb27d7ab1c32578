"""The MATLAB side of the figshare reader, against fixtures in the exact v7.3 / v5 layout."""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.io.matlab import matfile_version

import datasets.slices as slices
from datasets.core import DataError, SliceRecord
from datasets.fixtures import (
    make_records,
    slice_fields,
    write_cvind,
    write_mat_folder,
    write_mat_v5,
    write_mat_v73,
    write_slice,
)
from datasets.matlab import FIELDS, MatFileError, read_cvind, read_mat_slice, scan_mat_folder
from datasets.slices import load_slices

VERSIONS = ("7.3", "5")
WRITERS = {"7.3": write_mat_v73, "5": write_mat_v5}


def _record(**changes: object) -> SliceRecord:
    record = make_records(1, size=32, small_size=None, seed=1)[0]
    for name, value in changes.items():
        setattr(record, name, value)
    return record


def _assert_same(expected: list[SliceRecord], actual: list[SliceRecord]) -> None:
    assert [r.file_id for r in actual] == [r.file_id for r in expected]
    for want, got in zip(expected, actual, strict=True):
        assert (got.label, got.subject, got.cvind) == (want.label, want.subject, want.cvind)
        assert got.image.dtype == want.image.dtype and np.array_equal(got.image, want.image)
        assert got.mask.dtype == bool and np.array_equal(got.mask, want.mask)
        np.testing.assert_allclose(got.border, want.border)


# --- the fixture really has MATLAB's v7.3 layout -------------------------------------------------

def test_v73_fixture_has_matlab_header_and_attributes(tmp_path: Path) -> None:
    record = _record(subject="MR040232")
    path = write_slice(tmp_path / "7.mat", record, version="7.3")
    assert matfile_version(path) == (2, 0)  # scipy's own parser sees a v7.3 header
    assert path.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    with h5py.File(path, "r") as handle:
        assert handle.userblock_size == 512
        group = handle["cjdata"]
        assert group.attrs["MATLAB_class"] == b"struct"
        assert [b"".join(name).decode() for name in group.attrs["MATLAB_fields"]] == list(FIELDS)
        pid = group["PID"]
        assert pid.dtype == np.uint16 and pid.shape == (8, 1)  # a 1x8 char row, stored reversed
        assert pid.attrs["MATLAB_class"] == b"char" and pid.attrs["MATLAB_int_decode"] == 2
        assert "".join(map(chr, pid[()].ravel())) == "MR040232"
        assert group["image"].dtype == np.int16 and group["image"].attrs["MATLAB_class"] == b"int16"
        assert group["tumorMask"].dtype == np.uint8 and group["tumorMask"].attrs["MATLAB_class"] == b"logical"
        assert group["label"].shape == (1, 1) and group["label"].attrs["MATLAB_class"] == b"double"
        assert group["tumorBorder"].shape == (record.border.size, 1)


def test_v73_reader_transposes_column_major_arrays(tmp_path: Path) -> None:
    rows, cols = np.mgrid[0:24, 0:40]
    image = (rows * 100 + cols).astype(np.int16)  # non-square and asymmetric: a missed transpose fails
    mask = (rows < 5) & (cols < 30)
    path = write_slice(tmp_path / "3.mat", _record(image=image, mask=mask), version="7.3")
    with h5py.File(path, "r") as handle:
        raw = handle["cjdata/image"][()]
    assert raw.shape == (40, 24) and raw[7, 2] == image[2, 7]  # HDF5 holds MATLAB's column-major order
    record = read_mat_slice(path)
    assert record.image.shape == (24, 40) and np.array_equal(record.image, image)
    assert np.array_equal(record.mask, mask)


@pytest.mark.parametrize("version", VERSIONS)
def test_pid_is_decoded_to_text(tmp_path: Path, version: str) -> None:
    record = read_mat_slice(write_slice(tmp_path / "11.mat", _record(subject="MR040232"), version=version))
    assert record.subject == "MR040232" and record.file_id == 11


@pytest.mark.parametrize("version", VERSIONS)
def test_empty_border_reads_as_empty(tmp_path: Path, version: str) -> None:
    record = read_mat_slice(write_slice(tmp_path / "1.mat", _record(border=None), version=version))
    assert record.border is not None and record.border.size == 0


# --- folder scans ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_scan_returns_generated_records_sorted_with_cvind(tmp_path: Path, version: str) -> None:
    expected = write_mat_folder(tmp_path, count=12, size=48, small_size=24, version=version)
    records, skipped = scan_mat_folder(tmp_path, show_progress=False)
    assert skipped == []
    _assert_same(expected, records)  # 1..12 in numeric order, not 1, 10, 11, 12, 2, ...
    assert {r.image.shape for r in records} == {(48, 48), (24, 24)}
    assert {r.cvind for r in records} == {1, 2, 3, 4}
    assert len({r.subject for r in records}) == 4


def test_v5_and_v73_folders_hold_the_same_content(tmp_path: Path) -> None:
    write_mat_folder(tmp_path / "v73", count=6, version="7.3", seed=4)
    write_mat_folder(tmp_path / "v5", count=6, version="5", seed=4)
    v73, _ = scan_mat_folder(tmp_path / "v73", show_progress=False)
    v5, _ = scan_mat_folder(tmp_path / "v5", show_progress=False)
    _assert_same(v73, v5)


def test_scan_without_cvind_file_reports_fold_zero(tmp_path: Path) -> None:
    write_mat_folder(tmp_path, count=4, cvind=False)
    records, _ = scan_mat_folder(tmp_path, show_progress=False)
    assert [r.cvind for r in records] == [0, 0, 0, 0]


@pytest.mark.parametrize("version", VERSIONS)
def test_read_cvind(tmp_path: Path, version: str) -> None:
    folds = np.array([1, 5, 2, 2, 3, 4])
    assert np.array_equal(read_cvind(write_cvind(tmp_path / "cvind.mat", folds, version=version)), folds)


def test_cvind_shorter_than_the_folder_is_an_error(tmp_path: Path) -> None:
    write_mat_folder(tmp_path, count=4, cvind=False)
    write_cvind(tmp_path / "cvind.mat", np.array([1, 2, 3]))
    with pytest.raises(DataError, match="cvind.mat lists 3 folds but the folder holds index 4"):
        scan_mat_folder(tmp_path, show_progress=False)


# --- bad input: every error names the file --------------------------------------------------------

def _bad_fields(change: str) -> dict:
    fields = slice_fields(_record())
    if change.startswith("no "):
        del fields[change[3:]]
    elif change == "label 4":
        fields["label"] = np.array([[4.0]])
    elif change == "label 0":
        fields["label"] = np.array([[0.0]])
    elif change == "3-D image":
        fields["image"] = np.zeros((2, 8, 8), np.int16)
        fields["tumorMask"] = np.zeros((2, 8, 8), bool)
    elif change == "mask shape":
        fields["tumorMask"] = np.zeros((16, 32), bool)
    elif change in ("nan", "inf"):
        fields["image"] = fields["image"].astype(np.float64)
        fields["image"][3, 5] = float(change)
    return fields


BAD_FIELDS = [(f"no {name}", rf"lacks field\(s\) \['{name}'\]") for name in FIELDS] + [
    ("label 4", "label 4 outside 1..3"),
    ("label 0", "label 0 outside 1..3"),
    ("3-D image", r"image must be a non-empty 2-D array, got shape \(2, 8, 8\)"),
    ("mask shape", r"tumorMask shape \(16, 32\) differs from image shape \(32, 32\)"),
    ("nan", "NaN or infinite pixels"),
    ("inf", "NaN or infinite pixels"),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("change", "message"), BAD_FIELDS, ids=[c for c, _ in BAD_FIELDS])
def test_bad_struct_is_refused_naming_the_file(tmp_path: Path, version: str, change: str, message: str) -> None:
    path = WRITERS[version](tmp_path / "5.mat", {"cjdata": _bad_fields(change)})
    with pytest.raises(MatFileError, match=message) as caught:
        read_mat_slice(path)
    assert str(path) in str(caught.value) and caught.value.path == path


def _not_mat(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def _text(path: Path) -> Path:
    path.write_text("label,image\n1,brain.png\n")
    return path


def _truncated(version: str):
    def make(path: Path) -> Path:
        write_slice(path, _record(), version=version)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path
    return make


def _no_struct(path: Path) -> Path:
    return write_mat_v73(path, {"slice": slice_fields(_record())})


BAD_FILES = [
    ("random bytes", _not_mat, "not a MATLAB .mat file"),
    ("text", _text, "not a MATLAB .mat file"),
    ("truncated v7.3", _truncated("7.3"), r"truncated or corrupt HDF5 \(MATLAB v7.3\) file"),
    ("truncated v5", _truncated("5"), "truncated or corrupt MATLAB v5 file"),
    ("no cjdata", _no_struct, r"no variable 'cjdata' \(file holds \['slice'\]\)"),
]


@pytest.mark.parametrize(("make", "message"), [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_bad_file_is_refused_naming_the_file(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path / "9.mat")
    with pytest.raises(MatFileError, match=message) as caught:
        read_mat_slice(path)
    assert str(path) in str(caught.value)


def test_file_name_must_be_an_index(tmp_path: Path) -> None:
    path = write_slice(tmp_path / "brain.mat", _record())
    with pytest.raises(MatFileError, match="brain.mat: file name is not <index>.mat"):
        read_mat_slice(path)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(f"{tmp_path} holds no figshare .mat slice files")):
        scan_mat_folder(tmp_path)
    write_cvind(tmp_path / "cvind.mat", np.array([1, 2]))  # cvind.mat alone is not a slice
    with pytest.raises(DataError, match="holds no figshare .mat slice files"):
        load_slices(tmp_path, cache_dir=tmp_path / "cache")


# --- strict and lenient scans ---------------------------------------------------------------------

def _folder_with_bad_files(folder: Path) -> list[SliceRecord]:
    expected = write_mat_folder(folder, count=6, cvind=False)
    _not_mat(folder / "7.mat")
    write_mat_v73(folder / "8.mat", {"cjdata": _bad_fields("label 4")})
    return expected


def test_strict_scan_stops_at_the_first_bad_file(tmp_path: Path) -> None:
    _folder_with_bad_files(tmp_path)
    with pytest.raises(MatFileError, match="7.mat: not a MATLAB .mat file"):
        scan_mat_folder(tmp_path, show_progress=False)
    with pytest.raises(MatFileError, match="7.mat: not a MATLAB .mat file"):
        load_slices(tmp_path, image_size=32, cache_dir=tmp_path / "cache")


def test_lenient_scan_skips_and_lists_bad_files(tmp_path: Path) -> None:
    expected = _folder_with_bad_files(tmp_path)
    records, skipped = scan_mat_folder(tmp_path, strict=False, show_progress=False)
    _assert_same(expected, records)
    assert [name for name, _ in skipped] == ["7.mat", "8.mat"]
    assert skipped[0][1].startswith("not a MATLAB .mat file") and skipped[1][1].startswith("label 4 outside")


def test_load_slices_surfaces_skipped_files_on_every_load(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    _folder_with_bad_files(tmp_path)
    for _ in range(2):  # the second load comes from the cache and must warn again
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="datasets.figshare"):
            data = load_slices(tmp_path, image_size=32, strict=False, cache_dir=tmp_path / "cache")
        assert len(data) == 6 and [name for name, _ in data.skipped] == ["7.mat", "8.mat"]
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("skipped 7.mat: not a MATLAB" in m for m in warned)
        assert any("skipped 8.mat: label 4 outside" in m for m in warned)


def test_lenient_scan_with_no_readable_file_is_an_error(tmp_path: Path) -> None:
    _not_mat(tmp_path / "1.mat")
    _text(tmp_path / "2.mat")
    with pytest.raises(DataError, match="no readable slice .* all 2 .mat files were skipped, first 1.mat"):
        scan_mat_folder(tmp_path, strict=False, show_progress=False)


# --- load_slices end to end and its cache -------------------------------------------------------

def test_load_slices_reads_a_mat_folder(tmp_path: Path) -> None:
    expected = write_mat_folder(tmp_path / "mat", count=9, size=64, small_size=32)
    data = load_slices(tmp_path / "mat", image_size=32, cache_dir=tmp_path / "cache")
    assert data.images.shape == (9, 32, 32) and data.images.dtype == np.uint8
    assert data.masks.shape == (9, 32, 32) and data.masks.any(axis=(1, 2)).all()
    assert data.labels.tolist() == [r.label - 1 for r in expected]
    assert data.subjects.tolist() == [r.subject for r in expected]
    assert data.cvind.tolist() == [r.cvind for r in expected]
    assert data.file_ids.tolist() == list(range(1, 10)) and data.skipped == []
    # the tumour is brighter than the brain around it after preprocessing (meningioma, pituitary)
    bright = [data.images[i][data.masks[i]].mean() > data.images[i][~data.masks[i]].mean()
              for i in range(9) if expected[i].label != 2]
    assert all(bright)


class _CountingScan:
    """Wraps scan_mat_folder and counts how often the folder is parsed."""

    def __init__(self, scan: Callable) -> None:
        self.scan, self.calls = scan, 0

    def __call__(self, *args: object, **kwargs: object) -> tuple[list[SliceRecord], list[tuple[str, str]]]:
        self.calls += 1
        return self.scan(*args, **kwargs)


def _cache_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("figshare-*.npz"))


def test_second_load_comes_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mat_folder(tmp_path / "mat", count=6)
    first = load_slices(tmp_path / "mat", image_size=32, cache_dir=tmp_path / "cache")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the .mat folder was parsed again despite a valid cache")

    monkeypatch.setattr(slices, "scan_mat_folder", refuse)
    second = load_slices(tmp_path / "mat", image_size=32, cache_dir=tmp_path / "cache")
    assert second.fingerprint == first.fingerprint and np.array_equal(second.images, first.images)
    assert second.subjects.tolist() == first.subjects.tolist() and second.cvind.tolist() == first.cvind.tolist()


def test_corrupt_cache_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  caplog: pytest.LogCaptureFixture) -> None:
    write_mat_folder(tmp_path / "mat", count=6)
    first = load_slices(tmp_path / "mat", image_size=32, cache_dir=tmp_path / "cache")
    (cache,) = _cache_files(tmp_path / "cache")
    cache.write_bytes(cache.read_bytes()[:1000])
    scan = _CountingScan(scan_mat_folder)
    monkeypatch.setattr(slices, "scan_mat_folder", scan)
    with caplog.at_level(logging.WARNING, logger="datasets.figshare"):
        again = load_slices(tmp_path / "mat", image_size=32, cache_dir=tmp_path / "cache")
    assert scan.calls == 1 and "ignoring unusable cache" in caplog.text
    assert again.fingerprint == first.fingerprint
    load_slices(tmp_path / "mat", image_size=32, cache_dir=tmp_path / "cache")
    assert scan.calls == 1  # the rebuilt cache is valid again


def test_tampered_cache_content_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mat_folder(tmp_path / "mat", count=6)
    first = load_slices(tmp_path / "mat", image_size=32, cache_dir=tmp_path / "cache")
    (cache,) = _cache_files(tmp_path / "cache")
    with np.load(cache, allow_pickle=False) as stored:
        arrays = dict(stored)
    arrays["images"] = 255 - arrays["images"]  # same key, content no longer matches its fingerprint
    with open(cache, "wb") as handle:
        np.savez(handle, **arrays)
    scan = _CountingScan(scan_mat_folder)
    monkeypatch.setattr(slices, "scan_mat_folder", scan)
    again = load_slices(tmp_path / "mat", image_size=32, cache_dir=tmp_path / "cache")
    assert scan.calls == 1 and np.array_equal(again.images, first.images)


def test_changed_source_file_makes_the_cache_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = write_mat_folder(tmp_path / "mat", count=6)
    load_slices(tmp_path / "mat", image_size=32, cache_dir=tmp_path / "cache")
    changed = records[0]
    changed.label = 3
    path = write_slice(tmp_path / "mat" / "1.mat", changed)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # even on coarse-mtime filesystems
    scan = _CountingScan(scan_mat_folder)
    monkeypatch.setattr(slices, "scan_mat_folder", scan)
    data = load_slices(tmp_path / "mat", image_size=32, cache_dir=tmp_path / "cache")
    assert scan.calls == 1 and data.labels[0] == 2
    (tmp_path / "mat" / "cvind.mat").touch()  # cvind.mat is a source too
    os.utime(tmp_path / "mat" / "cvind.mat", ns=(stat.st_atime_ns, stat.st_mtime_ns + 2 * 10**9))
    load_slices(tmp_path / "mat", image_size=32, cache_dir=tmp_path / "cache")
    assert scan.calls == 2


# --- hostile files: nothing outside the file is read, nothing unbounded is allocated ------------------------

def _hostile_v73(path: Path, tmp_path: Path, kind: str) -> None:
    """A valid v7.3 slice whose ``image`` field is replaced by a link, external storage or a huge declaration."""
    write_slice(path, _record())
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(64, dtype=np.int16).tobytes())
    with h5py.File(path, "a") as handle:
        struct = handle["cjdata"]
        attrs = dict(struct["image"].attrs)
        del struct["image"]
        if kind == "external link":
            other = tmp_path / "other.h5"
            with h5py.File(other, "w") as target:
                target["image"] = np.zeros((8, 8), np.int16)
            struct["image"] = h5py.ExternalLink(str(other), "image")
            return
        if kind == "soft link":
            struct["image"] = h5py.SoftLink("/cjdata/tumorMask")
            return
        if kind == "external storage":
            image = struct.create_dataset("image", shape=(8, 8), dtype=np.int16, external=[(str(secret), 0, 128)])
        else:  # a 20000 x 20000 deflate-compressed image whose chunks were never written: a few KB on disk
            image = struct.create_dataset("image", shape=(20000, 20000), dtype=np.int16, chunks=(256, 256),
                                          compression="gzip")
        image.attrs.update(attrs)


@pytest.mark.parametrize("kind, message", [
    ("external link", "'image' is a ExternalLink; links to other objects or files are not read"),
    ("soft link", "'image' is a SoftLink"),
    ("external storage", "keeps its data outside this file"),
    ("huge declared image", r"declares shape \(20000, 20000\), over 8192 a side"),
])
def test_hostile_hdf5_is_refused_without_reading_elsewhere(tmp_path: Path, kind: str, message: str) -> None:
    path = tmp_path / "5.mat"
    _hostile_v73(path, tmp_path, kind)
    assert path.stat().st_size < 200_000
    with pytest.raises(MatFileError, match=f"{re.escape(str(path))}: .*{message}"):
        read_mat_slice(path)


@pytest.mark.parametrize("name", ["0.mat", "٣.mat", "².mat", "-1.mat"])
def test_names_that_are_not_positive_ascii_indices(tmp_path: Path, name: str) -> None:
    write_slice(tmp_path / "1.mat", _record())
    write_slice(tmp_path / name, _record())
    write_cvind(tmp_path / "cvind.mat", np.array([1, 2, 3]))
    with pytest.raises(MatFileError, match="positive integer index"):
        scan_mat_folder(tmp_path, show_progress=False)
    records, skipped = scan_mat_folder(tmp_path, strict=False, show_progress=False)
    assert [r.file_id for r in records] == [1] and [s[0] for s in skipped] == [name]


def test_upper_case_extension_is_read_and_keyed(tmp_path: Path) -> None:
    (tmp_path / "mat").mkdir()
    write_slice(tmp_path / "mat" / "1.mat", _record(label=1))
    write_slice(tmp_path / "mat" / "2.MAT", _record(label=2))
    first = load_slices(tmp_path / "mat", image_size=32, cache_dir=tmp_path / "cache")
    assert first.labels.tolist() == [0, 1]
    replaced = write_slice(tmp_path / "mat" / "2.MAT", _record(label=3))
    os.utime(replaced, ns=(replaced.stat().st_mtime_ns + 10**9,) * 2)
    second = load_slices(tmp_path / "mat", image_size=32, cache_dir=tmp_path / "cache")
    assert second.labels.tolist() == [0, 2]
