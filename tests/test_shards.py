"""Pickle shards: round trip, atomic resume, checksums, provenance and the restricted unpickler."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from datasets.shards import (
    MANIFEST,
    ShardError,
    ShardWriter,
    UnsafePickleError,
    read_shards,
    safe_loads,
    shard_name,
    write_shards,
)


def _arrays(n: int = 25, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8), rng.integers(0, 3, n).astype(np.int64)


def test_round_trip_and_manifest(tmp_path: Path) -> None:
    images, labels = _arrays()
    manifest = write_shards(tmp_path, images, labels, {"source": np.arange(25)}, shard_size=10,
                            provenance={"generator": "abc"})
    got_images, got_labels, got_manifest = read_shards(tmp_path)
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
    assert got_manifest == manifest
    assert [s["count"] for s in manifest["shards"]] == [10, 10, 5]
    assert manifest["class_counts"] == np.bincount(labels, minlength=3).tolist()
    assert manifest["image_size"] == [16, 16] and manifest["provenance"] == {"generator": "abc"}
    assert got_images.dtype == np.uint8 and got_labels.dtype == np.int64


class _CreatesFile:
    """A payload whose unpickling would create a file (via builtins.open)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_shard_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    images, labels = _arrays(5)
    write_shards(tmp_path, images, labels, shard_size=5)
    target = tmp_path / "pwned.txt"
    evil = pickle.dumps({"images": images, "labels": labels, "meta": {"x": _CreatesFile(str(target))}})
    (tmp_path / shard_name(0)).write_bytes(evil)
    with pytest.raises(UnsafePickleError, match="builtins"):
        read_shards(tmp_path, verify=False)  # even without the checksum guard
    assert not target.exists()


def test_os_system_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with pytest.raises(UnsafePickleError, match="system"):
        safe_loads(pickle.dumps(Evil()))
    assert not marker.exists()


def test_checksum_mismatch_names_the_shard(tmp_path: Path) -> None:
    images, labels = _arrays()
    write_shards(tmp_path, images, labels, shard_size=10)
    path = tmp_path / shard_name(1)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=shard_name(1)):
        read_shards(tmp_path)


def test_unfinished_folder_has_no_manifest(tmp_path: Path) -> None:
    images, labels = _arrays()
    writer = ShardWriter(tmp_path, {"g": 1})
    writer.write(0, images[:10], labels[:10])
    with pytest.raises(ShardError, match="no manifest.json"):
        read_shards(tmp_path)
    assert not writer.complete and writer.has(0) and not writer.has(1)


def test_resume_rewrites_only_missing_shards(tmp_path: Path) -> None:
    images, labels = _arrays()
    write_shards(tmp_path, images, labels, shard_size=10, provenance={"g": 1})
    first = (tmp_path / shard_name(0)).stat().st_mtime_ns
    (tmp_path / shard_name(2)).unlink()
    (tmp_path / MANIFEST).unlink()
    write_shards(tmp_path, images, labels, shard_size=10, provenance={"g": 1})
    assert (tmp_path / shard_name(0)).stat().st_mtime_ns == first
    assert np.array_equal(read_shards(tmp_path)[0], images)


def test_other_provenance_is_refused_unless_overwrite(tmp_path: Path) -> None:
    images, labels = _arrays()
    write_shards(tmp_path, images, labels, shard_size=10, provenance={"checkpoint": "aaa"})
    with pytest.raises(ShardError, match="another writer"):
        write_shards(tmp_path, images, labels, shard_size=10, provenance={"checkpoint": "bbb"})
    assert read_shards(tmp_path)[2]["provenance"] == {"checkpoint": "aaa"}
    write_shards(tmp_path, images[:5], labels[:5], shard_size=10, provenance={"checkpoint": "bbb"}, overwrite=True)
    assert read_shards(tmp_path)[2]["num_images"] == 5


def test_failed_write_publishes_no_partial_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = _arrays()
    writer = ShardWriter(tmp_path, {"g": 1})

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(ShardError, match="disk full"):
        writer.write(0, images, labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["writer.json"]


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((2, 4, 4), np.float32), np.zeros(2), "uint8"),
    (np.zeros((2, 4, 4), np.uint8), np.zeros(3), "labels for 2 images"),
    (np.zeros((2, 4, 4), np.uint8), np.array([0, 3]), "class indices"),
])
def test_bad_arrays_are_rejected(tmp_path: Path, images: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(ShardError, match=message):
        write_shards(tmp_path, images, labels)


def test_manifest_is_plain_json(tmp_path: Path) -> None:
    images, labels = _arrays(3)
    write_shards(tmp_path, images, labels)
    assert json.loads((tmp_path / MANIFEST).read_text())["format"] == "brain-tumour-shards"
