"""Pickle shards of synthetic slices: the only meeting point of the generator and the classifier.

A shard folder holds ``shard-00000.pkl`` ... (each a pickle of a dict of plain numpy arrays and
builtins: ``images`` uint8 N x H x W, ``labels`` int64 N, ``meta`` dict), ``writer.json`` (the
provenance of the writer, written first) and ``manifest.json`` (written last: every shard with its
SHA-256, image count and per-class counts, plus image size and provenance). Every file is written
atomically, so a shard that exists is complete and a folder without a manifest is unfinished.

Reading trusts nothing in the folder: the manifest is checked against a schema (shard names are plain file
names inside the folder, counts and sizes add up, the declared size fits the allocation limit), a shard's size
is checked before it is read and its SHA-256 before it is unpickled, and unpickling goes through
:class:`RestrictedUnpickler`, which resolves only the numpy globals needed to rebuild arrays; any other global
(``os.system``, ``builtins.eval``, ...) is refused before it runs.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datasets.core import CLASS_NAMES, MAX_IMAGE_SIDE, DataError, check_allocation
from experiment.atomic import atomic_write_bytes, atomic_write_json, remove_temporaries

MANIFEST = "manifest.json"
WRITER = "writer.json"
FORMAT = "brain-tumour-shards"
VERSION = 1
_SHARD = re.compile(r"^shard-(\d{5})\.pkl$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BYTES_PER_IMAGE_OVERHEAD = 1024  # label, per-image meta (ids, a mask window) and pickle framing, generously
_SHARD_OVERHEAD = 1 << 20

_ALLOWED_GLOBALS = {
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"),
}


class ShardError(DataError):
    """A shard folder or file is unusable; the message names it."""


class UnsafePickleError(ShardError):
    """A pickle referenced a global outside the allow-list; nothing in it was executed."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays, dtypes, scalars and builtin containers."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise UnsafePickleError(f"refused to load global {module}.{name}: shards may only hold numpy arrays "
                                "and builtins")


def safe_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(io.BytesIO(data)).load()


def shard_name(index: int) -> str:
    """``shard-00007.pkl``."""
    return f"shard-{index:05d}.pkl"


class ShardWriter:
    """Writes a shard set one shard at a time, so a killed writer resumes at the first missing shard.

    Args:
        folder: output folder (created).
        provenance: who wrote the shards (generator checkpoint hash, fold, seed, config, ...).
        overwrite: replace a shard set written with a different provenance instead of refusing.
    Raises:
        ShardError: the folder holds shards from another provenance and ``overwrite`` is false.
    """

    def __init__(self, folder: str | os.PathLike, provenance: dict[str, Any], overwrite: bool = False) -> None:
        self.folder = Path(folder)
        self.provenance = json.loads(json.dumps(provenance, default=str))
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_temporaries(self.folder)  # left by a killed shard write; this writer owns the folder now
        writer = self.folder / WRITER
        existing = json.loads(writer.read_text()) if writer.exists() else None
        if existing is None and any(_SHARD.match(p.name) for p in self.folder.iterdir()):
            existing = {"provenance": "unknown (no writer.json)"}
        if existing is not None and existing.get("provenance") != self.provenance:
            if not overwrite:
                raise ShardError(f"{self.folder} already holds shards from another writer "
                                 f"({existing.get('provenance')}); pass overwrite=true to replace them")
            self.clear()
        atomic_write_json(writer, {"format": FORMAT, "version": VERSION, "provenance": self.provenance})

    def clear(self) -> None:
        """Delete every shard, the manifest and the writer record in the folder."""
        for path in self.folder.iterdir():
            if _SHARD.match(path.name) or path.name in (MANIFEST, WRITER):
                path.unlink()

    def has(self, index: int) -> bool:
        """Whether shard ``index`` was written completely (atomic writes make existence enough)."""
        return (self.folder / shard_name(index)).is_file()

    @property
    def complete(self) -> bool:
        """Whether the manifest exists (the set was finalised)."""
        return (self.folder / MANIFEST).is_file()

    def write(self, index: int, images: np.ndarray, labels: np.ndarray, meta: dict[str, Any] | None = None) -> None:
        """Write shard ``index`` atomically.

        Raises:
            ShardError: bad arrays, or the write failed (disk full, ...); no partial shard is published.
        """
        images, labels = _validate(images, labels)
        payload = pickle.dumps({"images": images, "labels": labels, "meta": meta or {}},
                               protocol=pickle.HIGHEST_PROTOCOL)
        path = self.folder / shard_name(index)
        try:
            atomic_write_bytes(path, payload)
        except OSError as error:
            raise ShardError(f"could not write shard {path}: {error.strerror or error} "
                             "(disk full?); no partial shard was published") from error

    def finalize(self, num_shards: int, class_names: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
        """Checksum shards ``0..num_shards-1`` and write ``manifest.json`` last."""
        entries, sizes = [], set()
        totals = np.zeros(len(class_names), dtype=np.int64)
        for index in range(num_shards):
            path = self.folder / shard_name(index)
            if not path.is_file():
                raise ShardError(f"cannot finalise {self.folder}: {path.name} is missing")
            data = path.read_bytes()
            shard_images, shard_labels = _load_shard(data, path)
            counts = np.bincount(shard_labels, minlength=len(class_names))
            totals += counts
            sizes.add(tuple(shard_images.shape[1:]))
            entries.append({"file": path.name, "sha256": _sha256(data),
                            "count": int(shard_labels.shape[0]), "class_counts": counts.tolist()})
        if len(sizes) != 1:
            raise ShardError(f"{self.folder}: shards have different image sizes {sorted(sizes)}")
        height, width = sizes.pop()
        manifest = {"format": FORMAT, "version": VERSION, "image_size": [height, width],
                    "num_images": int(totals.sum()), "class_names": list(class_names),
                    "class_counts": totals.tolist(), "provenance": self.provenance, "shards": entries}
        atomic_write_json(self.folder / MANIFEST, manifest)
        return manifest


def write_shards(folder: str | os.PathLike, images: np.ndarray, labels: np.ndarray,
                 meta: dict[str, np.ndarray] | None = None, shard_size: int = 1000,
                 provenance: dict[str, Any] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write ``images`` (uint8 N x H x W) and ``labels`` (class indices) as shards of at most
    ``shard_size`` images; per-image ``meta`` arrays are split alongside. Returns the manifest."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    images, labels = _validate(images, labels)
    meta = meta or {}
    for key, value in meta.items():
        if len(value) != len(labels):
            raise ShardError(f"meta[{key!r}] has {len(value)} entries for {len(labels)} images")
    writer = ShardWriter(folder, provenance or {}, overwrite=overwrite)
    starts = range(0, len(labels), shard_size)
    for index, start in enumerate(starts):
        if not writer.has(index):
            stop = start + shard_size
            writer.write(index, images[start:stop], labels[start:stop],
                         {k: np.asarray(v)[start:stop] for k, v in meta.items()})
    return writer.finalize(len(starts))


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a finished shard set, checked against the schema (see :func:`check_manifest`)."""
    path = _member(Path(folder), MANIFEST)
    if not path.is_file():
        raise ShardError(f"{folder} has no {MANIFEST}: not a shard folder, or its writer did not finish")
    if path.stat().st_size > _SHARD_OVERHEAD * 64:
        raise ShardError(f"{path} is {path.stat().st_size} bytes, too large for a shard manifest")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ShardError(f"{path} is not valid JSON: {error}") from error
    check_manifest(manifest, path)
    return manifest


def check_manifest(manifest: Any, path: Path) -> None:
    """Raise :class:`ShardError` naming ``path`` unless ``manifest`` is a well-formed, self-consistent manifest
    whose images fit the allocation limit."""
    def need(ok: bool, problem: str) -> None:
        if not ok:
            raise ShardError(f"{path}: {problem}")

    need(isinstance(manifest, dict) and manifest.get("format") == FORMAT, f"not a {FORMAT} manifest")
    need(manifest.get("version") == VERSION, f"version {manifest.get('version')!r} is not {VERSION}")
    size, names, counts = manifest.get("image_size"), manifest.get("class_names"), manifest.get("class_counts")
    need(isinstance(size, list) and len(size) == 2 and all(_count(v) and 0 < v <= MAX_IMAGE_SIDE for v in size),
         f"image_size must be [height, width] in 1..{MAX_IMAGE_SIDE}, got {size!r}")
    need(isinstance(names, list) and names and all(isinstance(n, str) for n in names), "class_names must be a list "
         "of names")
    need(_counts(counts, len(names)), f"class_counts must be {len(names)} non-negative integers, got {counts!r}")
    need(_count(manifest.get("num_images")) and manifest["num_images"] == sum(counts),
         f"num_images {manifest.get('num_images')!r} is not the sum of class_counts {counts}")
    need(isinstance(manifest.get("provenance", {}), dict), "provenance must be an object")
    shards = manifest.get("shards")
    need(isinstance(shards, list) and len(shards) > 0, "lists no shards")
    files = set()
    for entry in shards:
        need(isinstance(entry, dict) and isinstance(entry.get("file"), str) and _SHARD.match(entry["file"]),
             f"shard entry {entry!r} does not name a shard-NNNNN.pkl file in the folder")
        need(entry["file"] not in files, f"shard {entry['file']} is listed twice")
        files.add(entry["file"])
        need(isinstance(entry.get("sha256"), str) and _SHA256.match(entry["sha256"]),
             f"shard {entry['file']}: sha256 is not 64 hex digits")
        need(_count(entry.get("count")) and entry["count"] > 0 and _counts(entry.get("class_counts"), len(names))
             and sum(entry["class_counts"]) == entry["count"],
             f"shard {entry['file']}: count and class_counts do not agree")
    need([sum(e["class_counts"][c] for e in shards) for c in range(len(names))] == counts,
         "the shards' class_counts do not add up to the manifest's")
    check_allocation(manifest["num_images"] * size[0] * size[1], f"shard set {path.parent}")


def read_shards(folder: str | os.PathLike, verify: bool = True) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Load every shard of a finished set: ``(images uint8 N x H x W, labels int64 N, manifest)``.

    Each shard is size-checked before it is read and (with ``verify``) checksummed before it is unpickled;
    its content must match its manifest entry.

    Raises:
        ShardError: bad manifest, missing, oversized or corrupt shard, checksum mismatch (naming the shard).
        UnsafePickleError: a shard references a global outside the allow-list.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    height, width = manifest["image_size"]
    images = np.empty((manifest["num_images"], height, width), dtype=np.uint8)
    labels = np.empty(manifest["num_images"], dtype=np.int64)
    start = 0
    for entry in manifest["shards"]:
        path = _member(folder, entry["file"])
        # per image: its pixels, at most a bit-packed mask of the same size (1/8 byte a pixel) and the overhead
        data = _read_bounded(path, entry["count"] * (height * width * 9 // 8 + _BYTES_PER_IMAGE_OVERHEAD)
                             + _SHARD_OVERHEAD)
        if verify and _sha256(data) != entry["sha256"]:
            raise ShardError(f"shard {path} fails its SHA-256 checksum: corrupt or modified")
        shard_images, shard_labels = _load_shard(data, path)
        stop = start + entry["count"]
        if shard_images.shape != (entry["count"], height, width) or \
                np.bincount(shard_labels, minlength=len(entry["class_counts"])).tolist() != entry["class_counts"]:
            raise ShardError(f"shard {path} does not match its manifest entry (image size, count or classes)")
        images[start:stop] = shard_images
        labels[start:stop] = shard_labels
        start = stop
    return images, labels, manifest


def _member(folder: Path, name: str) -> Path:
    """``folder / name``, refusing a symlink that leads out of the folder."""
    path = folder / name
    if path.is_symlink() and path.resolve().parent != folder.resolve():
        raise ShardError(f"{path} is a symlink leading out of its shard folder; refused")
    return path


def _read_bounded(path: Path, limit: int) -> bytes:
    if not path.is_file():
        raise ShardError(f"shard {path} listed in the manifest is missing")
    size = path.stat().st_size
    if size > limit:
        raise ShardError(f"shard {path} is {size} bytes, more than its manifest entry allows ({limit})")
    return path.read_bytes()


def _load_shard(data: bytes, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Unpickle a checksummed shard and check its types before touching its arrays."""
    try:
        shard = safe_loads(data)
    except UnsafePickleError as error:
        raise UnsafePickleError(f"shard {path}: {error}") from error
    except Exception as error:  # a corrupt stream raises many types
        raise ShardError(f"shard {path} is not a readable pickle: {type(error).__name__}: {error}") from error
    if not isinstance(shard, dict) or not isinstance(shard.get("images"), np.ndarray) \
            or not isinstance(shard.get("labels"), np.ndarray) or not isinstance(shard.get("meta", {}), dict):
        raise ShardError(f"shard {path} does not hold a dict of numpy arrays 'images', 'labels' and 'meta'")
    return _validate(shard["images"], shard["labels"], f"shard {path}")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _counts(value: Any, length: int) -> bool:
    return isinstance(value, list) and len(value) == length and all(_count(v) for v in value)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 4 MiB chunks into one reused buffer."""
    digest, buffer = hashlib.sha256(), bytearray(1 << 22)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while size := handle.readinto(view):
            digest.update(view[:size])
    return digest.hexdigest()


def _validate(images: np.ndarray, labels: np.ndarray, where: str = "shard") -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ShardError(f"{where}: images must be uint8 N x H x W, got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or labels.dtype.kind not in "iu":
        raise ShardError(f"{where}: {labels.shape} labels for {images.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise ShardError(f"{where}: labels must be class indices 0..{len(CLASS_NAMES) - 1}")
    return np.ascontiguousarray(images), labels.astype(np.int64)
