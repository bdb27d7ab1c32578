"""NIfTI volumes: discovery in the BraTS/IXI/CSV layouts, orientation and resampling, normalisation,
bad input, subject-grouped splits, the cache, the hook and the torch dataset."""
from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from niftis import brain, make_brats_ixi, make_labels_csv, write_nifti

import datasets.volumes as volumes
from datasets.volume_splits import PARTS, load_or_make_split, make_split, split_records
from datasets.volumes import (
    VolumeDataset,
    VolumeError,
    VolumeRecord,
    VolumeScan,
    VolumeSpec,
    load_volume,
    prepare_volumes,
    resolve_hook,
    scan_volumes,
)

SPEC = VolumeSpec(shape=(16, 16, 16), spacing=(1.5, 1.5, 1.5))


def test_brats_ixi_layout_is_discovered_and_labelled(tmp_path: Path) -> None:
    scan = scan_volumes(make_brats_ixi(tmp_path), modality="flair")
    assert scan.layout == "brats_ixi" and scan.class_counts() == [3, 3, 3]
    brats = [r for r in scan.records if r.label < 2]
    assert all(r.path.name == f"{r.path.parent.name}_flair.nii.gz" for r in brats)
    assert {r.path.parent.parent.name for r in brats} == {"HGG", "LGG"}
    assert {r.subject for r in scan.records if r.label == 2} == {"IXI002", "IXI003", "IXI004"}
    assert "BraTS19_TCIA00_100" in {r.subject for r in brats}  # timepoint suffix dropped
    assert scan_volumes(tmp_path, modality="t1ce").fingerprint != scan.fingerprint


def test_labels_csv_layout(tmp_path: Path) -> None:
    scan = scan_volumes(make_labels_csv(tmp_path, per_class=2))
    assert scan.layout == "csv" and scan.class_counts() == [2, 2, 2]
    assert scan_volumes(tmp_path / "labels.csv").fingerprint == scan.fingerprint


def _world(affine: np.ndarray, index: np.ndarray) -> np.ndarray:
    return (affine @ np.append(np.asarray(index, dtype=np.float64), 1.0))[:3]


@pytest.mark.parametrize("affine, codes", [
    (np.array([[-2.0, 0, 0, 30], [0, -1, 0, 20], [0, 0, 3, -20], [0, 0, 0, 1]]), ("L", "P", "S")),
    (np.array([[0, 0, 1.0, -9], [-1.0, 0, 0, 12], [0, 1.0, 0, -10], [0, 0, 0, 1]]), ("P", "S", "R")),
], ids=["LPS-anisotropic", "PSR-sagittal"])
def test_marked_voxel_keeps_its_world_position(tmp_path: Path, affine: np.ndarray, codes: tuple) -> None:
    data = brain((14, 22, 10), "healthy", seed=1)
    marker = np.array([4, 15, 6])
    data[tuple(marker)] = 5000.0
    path = write_nifti(tmp_path / "marked.nii.gz", data, affine)
    assert nib.aff2axcodes(nib.load(path).affine) == codes
    volume = load_volume(path, VolumeSpec(shape=(40, 40, 40), spacing=(1.0, 1.0, 1.0)))
    assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.sqrt((volume.affine[:3, :3] ** 2).sum(0)), [1.0, 1.0, 1.0])
    found = np.unravel_index(volume.data.argmax(), volume.data.shape)
    np.testing.assert_allclose(_world(volume.affine, found), _world(affine, marker), atol=1e-6)


def test_resampling_changes_grid_not_world(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "a.nii.gz", brain((30, 30, 12), "HGG", 2), np.diag([1.0, 1.0, 2.5, 1.0]))
    volume = load_volume(path, VolumeSpec(shape=(10, 10, 10), spacing=(3.0, 3.0, 3.0)))
    np.testing.assert_allclose(np.diag(volume.affine)[:3], [3.0, 3.0, 3.0])
    # the 10^3 window is centred on the brain: its centre lies near the brain's (the volume's) centre
    centre = _world(volume.affine, np.array([4.5, 4.5, 4.5]))
    np.testing.assert_allclose(centre, [14.5, 14.5, 13.75], atol=2.0)


@pytest.mark.parametrize("background", [0.0, -7.5], ids=["zero", "constant-negative"])
def test_zscore_inside_brain_and_zero_background(tmp_path: Path, background: float) -> None:
    data = brain((20, 24, 18), "HGG", 3)
    data[data == 0] = background
    volume = load_volume(write_nifti(tmp_path / "b.nii.gz", data), VolumeSpec(shape=(24, 28, 20),
                                                                              spacing=(1.0, 1.0, 1.0)))
    inside = volume.data != 0
    assert inside.sum() == (data != background).sum()
    assert abs(volume.data[inside].mean()) < 1e-3 and abs(volume.data[inside].std() - 1) < 1e-3
    assert volume.data[0, 0, 0] == 0 and volume.data.dtype == np.float32


def test_crop_centres_an_off_centre_brain(tmp_path: Path) -> None:
    data = np.zeros((60, 60, 60), dtype=np.float32)
    data[5:25, 30:54, 36:54] = brain((20, 24, 18), "healthy", 4)
    volume = load_volume(write_nifti(tmp_path / "c.nii.gz", data), VolumeSpec(shape=(24, 28, 22),
                                                                              spacing=(1.0, 1.0, 1.0)))
    mass = np.array(np.nonzero(volume.data)).mean(axis=1)
    np.testing.assert_allclose(mass, [11.5, 13.5, 10.5], atol=1.0)
    assert (volume.data != 0).sum() == (data != 0).sum()  # nothing cut off


def _break_one(root: Path, problem: str) -> Path:
    """Damage one file of a BraTS/IXI tree; return the path the error must name."""
    case = root / "HGG" / "BraTS19_TCIA00_100_1"
    ixi = root / "IXI-T1" / "IXI002-HH-1200-T1.nii.gz"
    if problem == "missing modality":
        (case / f"{case.name}_t1ce.nii.gz").unlink()
        return case / f"{case.name}_t1ce.nii.gz"
    if problem == "unknown label folder":
        (root / "GBM" / "case").mkdir(parents=True)
        return root / "GBM"
    if problem == "not nifti":
        ixi.write_bytes(b"this is not a NIfTI file")
    elif problem == "4-D":
        write_nifti(ixi, np.ones((8, 8, 8, 2), dtype=np.float32))
    elif problem == "empty":
        write_nifti(ixi, np.zeros((8, 8, 8), dtype=np.float32))
    elif problem == "NaN":
        data = brain((8, 8, 8), "healthy", 0)
        data[2, 2, 2] = np.nan
        write_nifti(ixi, data)
    elif problem in ("pixdim 1e-6", "pixdim 1000"):
        write_nifti(ixi, brain((8, 8, 8), "healthy", 0), np.diag([float(problem.split()[1])] * 3 + [1.0]))
    elif problem == "NaN affine":  # nibabel refuses to write one, so the header fields are set by hand
        data = brain((8, 8, 8), "healthy", 0)
        header = _raw_header(data.shape)
        header["sform_code"], header["qform_code"] = 1, 0
        header["srow_y"] = [0.0, np.nan, 0.0, 0.0]
        _write_raw(ixi, header, data.astype(np.float32).tobytes(order="F"))
    elif problem == "huge grid":  # a header declaring 4000^3 voxels with no data behind it
        _write_raw(ixi, _raw_header((4000, 4000, 4000)), b"")
    return ixi


def _raw_header(shape: tuple[int, ...]) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header.set_qform(np.eye(4), code=1)
    return header


def _write_raw(path: Path, header: nib.Nifti1Header, data: bytes) -> None:
    """A .nii.gz of ``header`` and ``data`` exactly as given (no checks by nibabel's writer)."""
    header["vox_offset"] = 352
    with gzip.open(path, "wb") as handle:
        handle.write(header.binaryblock + b"\0" * 4 + data)


PROBLEMS = {"missing modality": "missing t1ce file", "unknown label folder": "unknown label folder",
            "not nifti": "not a readable NIfTI", "4-D": "expected a 3-D volume", "empty": "empty volume",
            "NaN": "NaN or infinite", "pixdim 1e-6": "voxel size .* mm is outside 0.05-20.0 mm",
            "pixdim 1000": "voxel size .* mm is outside", "NaN affine": "the affine is not finite",
            "huge grid": r"reading \(4000, 4000, 4000\) voxels would need 256,000,000,000 bytes, over the"}


@pytest.mark.parametrize("problem", PROBLEMS)
def test_bad_input_names_the_file_and_non_strict_skips_it(tmp_path: Path, problem: str) -> None:
    root = make_brats_ixi(tmp_path / "data", shape=(10, 12, 9), modalities=("t1ce",))
    bad = _break_one(root, problem)
    with pytest.raises(VolumeError, match=PROBLEMS[problem]) as error:
        prepare_volumes(scan_volumes(root), SPEC, None, strict=True)
    assert str(bad) in str(error.value)
    scan = prepare_volumes(scan_volumes(root, strict=False), SPEC, tmp_path / "cache", strict=False)
    assert len(scan.records) == (9 if problem == "unknown label folder" else 8)
    assert [path for path, _ in scan.skipped] == [str(bad)]
    assert re.search(PROBLEMS[problem], scan.skipped[0][1])


def test_resampling_that_would_exceed_the_limit_is_refused(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "fine.nii.gz", brain((8, 8, 8), "healthy", 0), np.diag([20.0, 20.0, 20.0, 1.0]))
    message = r"fine.nii.gz: resampling to \(934, 934, 934\) voxels would need 3,259,122,016 bytes"
    with pytest.raises(VolumeError, match=message):
        load_volume(path, VolumeSpec(spacing=(0.15, 0.15, 0.15)))


def test_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="volume root not found"):
        scan_volumes(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown BraTS modality"):
        scan_volumes(tmp_path, modality="dwi")
    with pytest.raises(ValueError, match="unknown volume layout"):
        scan_volumes(tmp_path, layout="nnunet")
    with pytest.raises(VolumeError, match="no usable volumes"):
        scan_volumes(tmp_path)
    with pytest.raises(ValueError, match="spacing"):
        VolumeSpec(spacing=(1.0, 0.0, 1.0))
    (tmp_path / "labels.csv").write_text("file,class\na.nii.gz,HGG\n", encoding="utf-8")
    with pytest.raises(VolumeError, match="columns path,label"):
        scan_volumes(tmp_path)
    (tmp_path / "labels.csv").write_text("path,label\na.nii.gz,GBM\n", encoding="utf-8")
    with pytest.raises(VolumeError, match="unknown label 'GBM'"):
        scan_volumes(tmp_path)


def _synthetic_scan(per_class: tuple[int, int, int]) -> VolumeScan:
    records = [VolumeRecord(Path(f"/v/{label}-{i}.nii.gz"), label, f"s{label}-{i // 2}")
               for label, count in enumerate(per_class) for i in range(2 * count)]  # two volumes per subject
    return VolumeScan(Path("/v"), "csv", "t1ce", records)


def test_split_is_deterministic_stratified_and_subject_grouped(tmp_path: Path) -> None:
    scan = _synthetic_scan((10, 1, 20))
    manifest = make_split(scan, seed=3, val_fraction=0.2, test_fraction=0.2)
    assert manifest == make_split(scan, seed=3, val_fraction=0.2, test_fraction=0.2)
    assert manifest != make_split(scan, seed=4, val_fraction=0.2, test_fraction=0.2)
    subjects = [set(manifest["parts"][p]["subjects"]) for p in PARTS]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    assert [manifest["parts"][p]["class_counts"] for p in PARTS] == [[12, 2, 24], [4, 0, 8], [4, 0, 8]]
    parts = split_records(manifest, scan)
    assert sum(len(r) for r in parts.values()) == len(scan.records)
    saved, path = load_or_make_split(scan, tmp_path, seed=3)
    assert json.loads(path.read_text()) == saved == manifest
    other = _synthetic_scan((10, 2, 20))
    path.rename(path.with_name(path.name.replace(scan.fingerprint, other.fingerprint)))
    with pytest.raises(VolumeError, match="was made for volumes"):
        load_or_make_split(other, tmp_path, seed=3)


def test_split_rejects_a_subject_with_two_labels() -> None:
    scan = VolumeScan(Path("/v"), "csv", "t1ce", [VolumeRecord(Path("/v/a.nii"), 0, "s"),
                                                  VolumeRecord(Path("/v/b.nii"), 2, "s")])
    with pytest.raises(ValueError, match="subject s has volumes with different labels"):
        make_split(scan)


def test_cache_is_reused_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_nifti(tmp_path / "v.nii.gz", brain((20, 24, 18), "LGG", 5))
    first = load_volume(path, SPEC, tmp_path / "cache")
    (cached,) = (tmp_path / "cache").glob("volume-*.npz")
    with monkeypatch.context() as patch:
        patch.setattr(volumes, "read_header", lambda p: pytest.fail("cache not used"))
        np.testing.assert_array_equal(load_volume(path, SPEC, tmp_path / "cache").data, first.data)
    cached.write_bytes(b"truncated")
    np.testing.assert_array_equal(load_volume(path, SPEC, tmp_path / "cache").data, first.data)
    load_volume(path, VolumeSpec(shape=(12, 12, 12), spacing=SPEC.spacing), tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("volume-*.npz"))) == 2


def _zero_left_half(image: nib.Nifti1Image, path: Path) -> nib.Nifti1Image:
    data = np.asarray(image.dataobj, dtype=np.float32).copy()
    data[: data.shape[0] // 2] = 0
    return nib.Nifti1Image(data, image.affine)


def test_hook_runs_first_and_resolves_by_name(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "v.nii.gz", brain((20, 24, 18), "healthy", 6))
    plain = load_volume(path, SPEC)
    hooked = load_volume(path, VolumeSpec(SPEC.shape, SPEC.spacing, hook=_zero_left_half))
    assert 0.3 < (hooked.data != 0).sum() / (plain.data != 0).sum() < 0.7
    assert SPEC.key()["hook"] is None and "_zero_left_half" in VolumeSpec(hook=_zero_left_half).key()["hook"]
    assert resolve_hook("datasets.volumes:zscore") is volumes.zscore and resolve_hook(None) is None
    with pytest.raises(ValueError, match="package.module:function"):
        resolve_hook("datasets.volumes.zscore")
    with pytest.raises(ValueError, match="not a callable"):
        resolve_hook("datasets.volumes:CLASS_NAMES")


def test_warns_on_unstripped_and_misoriented_volumes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    head = brain((20, 24, 18), "healthy", 7)
    head[head == 0] = np.random.default_rng(0).uniform(1, 20, size=int((head == 0).sum()))  # noisy background
    unstripped = load_volume(write_nifti(tmp_path / "head.nii.gz", head), SPEC)
    assert "not skull-stripped" in " ".join(unstripped.warnings)
    assert "not skull-stripped" in caplog.text
    wide = load_volume(write_nifti(tmp_path / "wide.nii.gz", brain((30, 18, 18), "healthy", 8)), SPEC)
    assert "wider left-right" in " ".join(wide.warnings)
    image = nib.Nifti1Image(brain((20, 24, 18), "healthy", 9), np.eye(4))
    image.set_qform(None, code=0)
    image.set_sform(None, code=0)
    nib.save(image, str(tmp_path / "bare.nii.gz"))
    assert "no orientation in the header" in " ".join(load_volume(tmp_path / "bare.nii.gz", SPEC).warnings)
    clean = load_volume(write_nifti(tmp_path / "clean.nii.gz", brain((20, 24, 18), "healthy", 10)), SPEC)
    assert clean.warnings == []


@pytest.mark.parametrize("axis, shape", [("x", (1, 12, 14, 16)), ("y", (1, 14, 12, 16)), ("z", (1, 16, 12, 14))])
def test_dataset_moves_the_time_axis_first(tmp_path: Path, axis: str, shape: tuple) -> None:
    scan = scan_volumes(make_labels_csv(tmp_path, per_class=1))
    spec = VolumeSpec(shape=(12, 14, 16), spacing=(1.5, 1.5, 1.5))
    dataset = VolumeDataset(scan.records, spec, time_axis=axis, cache_dir=tmp_path / "cache")
    image, label = dataset[0]
    assert tuple(image.shape) == shape == dataset.input_shape()
    assert image.dtype == torch.float32 and label.dtype == torch.int64 and int(label) == scan.records[0].label
    canonical = load_volume(scan.records[0].path, spec, tmp_path / "cache").data
    np.testing.assert_array_equal(image[0].numpy(), np.moveaxis(canonical, "xyz".index(axis), 0))
    assert image.shape[1 + dataset.dim_of("x")] == 12
    with pytest.raises(ValueError, match="time_axis"):
        VolumeDataset(scan.records, spec, time_axis="t")


def test_non_strict_scan_lists_stray_files(tmp_path: Path) -> None:
    root = make_brats_ixi(tmp_path, hgg=1, lgg=1, ixi=1, shape=(8, 8, 8), modalities=("t1ce",))
    shutil.copy(root / "IXI-T1" / "IXI002-HH-1200-T1.nii.gz", root / "IXI-T1" / "IXI002-T2.nii.gz")
    (root / "HGG" / "notes.txt").write_text("stray", encoding="utf-8")
    scan = scan_volumes(root, strict=False)
    assert len(scan.records) == 3
    assert sorted(Path(p).name for p, _ in scan.skipped) == ["IXI002-T2.nii.gz", "notes.txt"]
