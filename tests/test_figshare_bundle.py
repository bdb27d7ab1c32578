"""The prepared ``.npz`` bundle: bad input, the embedded sample and (when present) the full shared bundle."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, require_shared

from datasets.figshare import BUNDLE_ARRAYS, CLASS_NAMES, DataError, load_figshare, read_bundle


def bundle_arrays(n: int = 6, size: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays in the exact bundle layout (names, dtypes, shapes) for ``n`` slices of ``size``."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((n, size, size), dtype=bool)
    mask[:, size // 4: size // 2, size // 4: size // 2] = True
    return {"image": rng.integers(0, 256, (n, size, size), dtype=np.uint8), "mask": mask,
            "label": (np.arange(n) % 3 + 1).astype(np.uint8), "index": np.arange(1, n + 1, dtype=np.int16),
            "cvind": (np.arange(n) % 5 + 1).astype(np.uint8), "series": (np.arange(n) // 2 + 1).astype(np.uint16),
            "orig_size": np.full(n, 512, dtype=np.int16)}


def write_bundle(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez_compressed(path, **arrays)
    return path


def test_good_bundle_loads(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "figshare_cheng_16.npz", bundle_arrays())
    data = load_figshare(path, image_size=16, cache_dir=tmp_path / "cache")
    assert data.labels.tolist() == [0, 1, 2, 0, 1, 2] and data.labels.dtype == np.int64
    assert data.groups.tolist() == ["series-1", "series-1", "series-2", "series-2", "series-3", "series-3"]
    assert data.cvind.tolist() == [1, 2, 3, 4, 5, 1] and data.file_ids.tolist() == [1, 2, 3, 4, 5, 6]
    assert data.images.shape == (6, 16, 16) and data.masks.sum() == 6 * 16


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
        load_figshare(path, cache_dir=tmp_path / "cache")


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


def test_embedded_sample(tmp_path: Path) -> None:
    data = load_figshare(cache_dir=tmp_path / "cache")
    assert len(data) == 431 and data.image_size == 128 and data.images.shape == (431, 128, 128)
    assert np.bincount(data.labels).tolist() == [125, 163, 143]
    assert set(data.cvind.tolist()) == {1, 2, 3, 4, 5}
    assert len(set(data.groups)) == 90 and all(g.startswith("series-") for g in data.groups)
    assert data.masks.any(axis=(1, 2)).all()
    for group in set(data.groups):  # a series lies in one class and one author fold
        members = data.groups == group
        assert len(set(data.labels[members])) == 1 and len(set(data.cvind[members])) == 1


def test_full_shared_bundle(tmp_path: Path) -> None:
    path = require_shared(SHARED_DATA / "figshare_cheng_128.npz")
    data = load_figshare(path, image_size=128, cache_dir=tmp_path / "cache")
    assert len(data) == 3064 and data.images.shape == (3064, 128, 128)
    assert data.file_ids.tolist() == list(range(1, 3065))
    assert dict(zip(CLASS_NAMES, np.bincount(data.labels).tolist(), strict=True)) == {
        "meningioma": 708, "glioma": 1426, "pituitary": 930}
    assert np.bincount(data.cvind, minlength=6)[1:].tolist() == [570, 655, 562, 613, 664]
    per_fold = [[int(((data.cvind == fold) & (data.labels == c)).sum()) for c in range(3)] for fold in range(1, 6)]
    assert per_fold == [[143, 264, 163], [168, 293, 194], [114, 243, 205], [138, 279, 196], [145, 347, 172]]
    assert len(set(data.groups)) == 507
    assert [len(set(data.groups[data.labels == c])) for c in range(3)] == [151, 198, 158]
    assert data.masks.any(axis=(1, 2)).all()
