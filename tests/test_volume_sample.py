"""The embedded 3D sample (datasets/data/volumes/): readable by the 3D data layer, split into non-empty
train and test parts, small, documented file by file, and rebuilt byte for byte by its script."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from conftest import SHARED_DATA, require_shared

from datasets.core import EMBEDDED_VOLUMES
from datasets.make_volume_sample import SPACING, build
from datasets.volume_splits import make_split
from datasets.volumes import CLASS_NAMES, VolumeSpec, load_volume, scan_volumes

MAX_BYTES = 5_000_000


def sample_files() -> list[Path]:
    return sorted(p for p in EMBEDDED_VOLUMES.rglob("*") if p.is_file())


def test_scan_finds_every_class_with_one_volume_per_subject() -> None:
    scan = scan_volumes(None)
    assert scan.root == EMBEDDED_VOLUMES and scan.layout == "csv" and not scan.skipped
    assert dict(zip(CLASS_NAMES, scan.class_counts(), strict=True)) == {"HGG": 4, "LGG": 2, "healthy": 4}
    assert len({r.subject for r in scan.records}) == len(scan.records)


def test_split_has_train_and_test_for_every_class_with_three_subjects() -> None:
    scan = scan_volumes(None)
    parts = make_split(scan, seed=0)["parts"]
    assert all(parts[part]["subjects"] for part in ("train", "val", "test"))
    for label, count in enumerate(scan.class_counts()):
        assert parts["train"]["class_counts"][label] > 0
        assert (parts["test"]["class_counts"][label] > 0) == (count >= 3)


def test_sample_is_small_and_every_file_is_documented() -> None:
    files = sample_files()
    assert sum(p.stat().st_size for p in files) <= MAX_BYTES
    readme = (EMBEDDED_VOLUMES / "README.md").read_text(encoding="utf-8")
    listed = [p.relative_to(EMBEDDED_VOLUMES).as_posix() for p in files if p.name != "README.md"]
    assert len(listed) == 11
    assert [name for name in listed if f"`{name}`" not in readme] == []


def test_volumes_are_coarse_ras_uint8_and_load_through_the_pipeline() -> None:
    for record in scan_volumes(None).records:
        image = nib.load(record.path)
        assert image.get_data_dtype() == np.uint8
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        assert np.allclose(image.header.get_zooms(), SPACING)
        assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 1
        volume = load_volume(record.path, VolumeSpec(shape=(32, 32, 32), spacing=(6.0, 6.0, 6.0)))
        assert volume.data.shape == (32, 32, 32) and np.isfinite(volume.data).all()
        assert 0.05 < float((volume.data != 0).mean()) < 0.9  # a head inside the window, not padding or noise


def test_script_rebuilds_the_sample_byte_for_byte(tmp_path: Path) -> None:
    shared = require_shared(SHARED_DATA)
    written = build(shared, tmp_path)
    assert len(written) == len(sample_files()) - 1  # all but the README
    for path in written:
        assert path.read_bytes() == (EMBEDDED_VOLUMES / path.relative_to(tmp_path)).read_bytes(), path
