"""Pickle shards: round trip, atomic resume, checksums, provenance and the restricted unpickler."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from datasets.core import DataError
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


def _edit_manifest(folder: Path, edit) -> Path:
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["shards"][0].update(file="../../outside.pkl"), "does not name a shard-NNNNN.pkl file"),
    (lambda m: m["shards"][0].update(file="/etc/passwd"), "does not name a shard-NNNNN.pkl file"),
    (lambda m: m.pop("num_images"), "num_images None is not the sum"),
    (lambda m: m["shards"][0].pop("sha256"), "sha256 is not 64 hex digits"),
    (lambda m: m.update(class_counts=[25, 1, 1], num_images=27), "do not add up"),
    (lambda m: m["shards"][0].update(class_counts=[10, 1, 0]), "count and class_counts do not agree"),
    (lambda m: m.update(image_size=[100000, 100000]), "image_size must be"),
    (lambda m: m["shards"].append(dict(m["shards"][0])), "listed twice"),
    (lambda m: m.update(format="other"), "not a brain-tumour-shards manifest"),
])
def test_manifest_schema_is_enforced(tmp_path: Path, edit, message: str) -> None:
    images, labels = _arrays()
    write_shards(tmp_path, images, labels, shard_size=10)
    path = _edit_manifest(tmp_path, edit)
    with pytest.raises(ShardError, match=f"{path}: .*{message}"):
        read_shards(tmp_path)


def test_declared_size_over_the_allocation_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = _arrays()
    write_shards(tmp_path, images, labels, shard_size=10)
    monkeypatch.setenv("BRAIN_TUMOUR_MAX_BYTES", str(16 * 16 * 24))
    with pytest.raises(DataError, match=f"shard set {re.escape(str(tmp_path))} would need 6,400 bytes, over the"):
        read_shards(tmp_path)


def test_symlink_leading_out_of_the_folder_is_not_followed(tmp_path: Path) -> None:
    images, labels = _arrays()
    write_shards(tmp_path / "set", images, labels, shard_size=10)
    write_shards(tmp_path / "other", images, labels, shard_size=10)
    shard = tmp_path / "set" / shard_name(0)
    shard.unlink()
    shard.symlink_to(tmp_path / "other" / shard_name(0))
    with pytest.raises(ShardError, match="symlink leading out of its shard folder"):
        read_shards(tmp_path / "set")


def test_checksum_is_compared_before_unpickling(tmp_path: Path) -> None:
    images, labels = _arrays(5)
    write_shards(tmp_path, images, labels, shard_size=5)
    target = tmp_path / "pwned.txt"
    (tmp_path / shard_name(0)).write_bytes(pickle.dumps({"images": images, "labels": labels,
                                                         "meta": {"x": _CreatesFile(str(target))}}))
    with pytest.raises(ShardError, match="fails its SHA-256 checksum"):
        read_shards(tmp_path)
    assert not target.exists()


def _nested_list_bomb(depth: int = 40) -> bytes:
    """A tiny pickle of lists sharing one list at every level: 2**depth leaves once traversed."""
    inner: list = [0, 0]
    for _ in range(depth):
        inner = [inner, inner]
    return pickle.dumps({"images": inner, "labels": inner, "meta": {}})


def test_a_tiny_shard_of_shared_lists_is_refused_at_once(tmp_path: Path) -> None:
    images, labels = _arrays(5)
    write_shards(tmp_path, images, labels, shard_size=5)
    bomb = _nested_list_bomb()
    assert len(bomb) < 1000
    (tmp_path / shard_name(0)).write_bytes(bomb)
    _edit_manifest(tmp_path, lambda m: m["shards"][0].update(sha256=hashlib.sha256(bomb).hexdigest()))
    with pytest.raises(ShardError, match="does not hold a dict of numpy arrays"):
        read_shards(tmp_path)


def test_oversized_shard_file_is_refused_before_reading(tmp_path: Path) -> None:
    images, labels = _arrays(5)
    write_shards(tmp_path, images, labels, shard_size=5)
    with open(tmp_path / shard_name(0), "ab") as handle:
        handle.truncate(10 * 2**20)
    with pytest.raises(ShardError, match="more than its manifest entry allows"):
        read_shards(tmp_path)
