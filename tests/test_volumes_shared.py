"""The real sample volumes in ../shared/data/volumes and volumes_extra through the same reader."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from conftest import SHARED_DATA, require_shared

from datasets.volumes import CLASS_NAMES, VolumeSpec, load_volume, scan_volumes

VOLUMES = {  # file: (on-disk axis codes, canonical shape, voxel mm along x, y, z)
    "BraTS-GLI-00001-000_t1c.nii.gz": (("L", "P", "S"), (240, 240, 155), (1.0, 1.0, 1.0)),
    "TCGA-FG-6692_t1c.nii.gz": (("L", "A", "S"), (256, 224, 26), (0.898, 0.898, 5.5)),
    "BTP01_pre_T1.nii.gz": (("L", "P", "S"), (256, 256, 24), (1.0, 1.0, 1.0)),
    "IXI012-HH-1211_T1.nii.gz": (("P", "S", "R"), (90, 120, 120), (2.0, 2.0, 2.0)),
    "IXI015-HH-1258_T1.nii.gz": (("P", "S", "R"), (90, 120, 120), (2.0, 2.0, 2.0)),
}


def _world_centre(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    index = np.array(np.nonzero(mask), dtype=np.float64).mean(axis=1)
    return (affine @ np.append(index, 1.0))[:3]


@pytest.mark.parametrize("name", VOLUMES)
def test_sample_volume_keeps_its_anatomy_in_canonical_space(name: str) -> None:
    path = require_shared(SHARED_DATA / "volumes" / name)
    codes, shape, zooms = VOLUMES[name]
    image = nib.load(path)
    assert nib.aff2axcodes(image.affine) == codes
    native = np.sqrt((nib.as_closest_canonical(image).affine[:3, :3] ** 2).sum(0))
    np.testing.assert_allclose(native, zooms, rtol=1e-3)
    # native spacing and a window larger than the volume: nothing resampled or cut, only reoriented
    volume = load_volume(path, VolumeSpec(shape=tuple(s + 8 for s in shape), spacing=tuple(native)))
    assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
    data = np.asarray(image.dataobj)
    original = _world_centre(data != np.bincount(data.astype(np.int64).ravel()).argmax(), image.affine)
    np.testing.assert_allclose(_world_centre(volume.data != 0, volume.affine), original, atol=0.5)
    if codes == ("P", "S", "R"):  # sagittal IXI: x comes from the last stored axis, y from the reversed first
        assert (volume.data != 0).sum(axis=(1, 2)).nonzero()[0].size <= 90


@pytest.mark.parametrize("name", VOLUMES)
def test_sample_volume_at_the_training_grid(name: str) -> None:
    path = require_shared(SHARED_DATA / "volumes" / name)
    volume = load_volume(path, VolumeSpec(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0)))
    assert volume.data.shape == (64, 64, 64) and np.isfinite(volume.data).all()
    stripped = name.startswith("BraTS")
    if stripped:  # the whole brain fits the window, so the z-scored statistics survive the crop
        inside = volume.data != 0
        assert abs(volume.data[inside].mean()) < 1e-3 and abs(volume.data[inside].std() - 1.0) < 1e-3
    assert any("not skull-stripped" in w for w in volume.warnings) == (not stripped)


def test_volumes_extra_labels_csv() -> None:
    root = require_shared(SHARED_DATA / "volumes_extra")
    scan = scan_volumes(root)
    assert scan.layout == "csv" and scan.class_counts() == [8, 1, 20] and not scan.skipped
    spec = VolumeSpec(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0))
    by_name = {r.path.name: r for r in scan.records}
    zscored = load_volume(by_name["BraTS2015_brats_2013_pat0001_1_t1c_zscore.nii.gz"].path, spec)
    plain = load_volume(by_name["BraTS19_2013_10_1_t1ce.nii.gz"].path, spec)
    # the constant negative background of the z-scored release is recognised as background
    assert 0.8 < (zscored.data != 0).mean() / (plain.data != 0).mean() < 1.25 and not zscored.warnings
    ixi = load_volume(by_name["IXI013-HH-1212_T1.nii.gz"].path, spec)
    assert CLASS_NAMES[by_name["IXI013-HH-1212_T1.nii.gz"].label] == "healthy"
    assert any("not skull-stripped" in w for w in ixi.warnings)
