"""Pickle shards of synthetic slices: the only meeting point of the generator and the classifier.

A shard folder holds ``shard-00000.pkl`` ... (each a pickle of a dict of plain numpy arrays and
builtins: ``images`` uint8 N x H x W, ``labels`` int64 N, ``meta`` dict), ``writer.json`` (the
provenance of the writer, written first) and ``manifest.json`` (written last: every shard with its
SHA-256, image count and per-class counts, plus image size and provenance). Every file is written
atomically, so a shard that exists is complete and a folder without a manifest is unfinished.

Reading goes through :class:`RestrictedUnpickler`, which resolves only the numpy globals needed to
rebuild arrays; any other global (``os.system``, ``builtins.eval``, ...) is refused before it runs.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from datasets.figshare import CLASS_NAMES
from experiment.atomic import atomic_write_bytes, atomic_write_json

MANIFEST = "manifest.json"
WRITER = "writer.json"
FORMAT = "brain-tumour-shards"
VERSION = 1
_SHARD = re.compile(r"^shard-(\d{5})\.pkl$")

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


class ShardError(ValueError):
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
            shard = safe_loads(data)
            counts = np.bincount(shard["labels"], minlength=len(class_names))
            totals += counts
            sizes.add(tuple(shard["images"].shape[1:]))
            entries.append({"file": path.name, "sha256": _sha256(data),
                            "count": int(shard["labels"].shape[0]), "class_counts": counts.tolist()})
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
    """The manifest of a finished shard set."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ShardError(f"{folder} has no {MANIFEST}: not a shard folder, or its writer did not finish")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ShardError(f"{path} is not valid JSON: {error}") from error
    if manifest.get("format") != FORMAT:
        raise ShardError(f"{path} is not a {FORMAT} manifest")
    return manifest


def read_shards(folder: str | os.PathLike, verify: bool = True) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Load every shard of a finished set: ``(images uint8 N x H x W, labels int64 N, manifest)``.

    The shards' SHA-256 digests are computed on worker threads (hashlib releases the GIL; one per core,
    at most 4) while the main thread unpickles each file straight into arrays and copies them into a
    preallocated output; a shard is accepted only once its digest matches.

    Raises:
        ShardError: missing manifest or shard, checksum mismatch (naming the shard), bad content.
        UnsafePickleError: a shard references a global outside the allow-list.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if not manifest["shards"]:
        raise ShardError(f"{folder} lists no shards")
    height, width = manifest["image_size"]
    images = np.empty((manifest["num_images"], height, width), dtype=np.uint8)
    labels = np.empty(manifest["num_images"], dtype=np.int64)
    paths = [folder / entry["file"] for entry in manifest["shards"]]
    for path in paths:
        if not path.is_file():
            raise ShardError(f"shard {path} listed in the manifest is missing")
    start = 0
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as hasher:
        digests = [hasher.submit(file_sha256, path) if verify else None for path in paths]
        for entry, path, digest in zip(manifest["shards"], paths, digests, strict=True):
            try:
                with open(path, "rb") as handle:
                    shard, failure = RestrictedUnpickler(handle).load(), None
            except UnsafePickleError:
                raise
            except Exception as error:  # a corrupt stream raises many types; the checksum names it below
                shard, failure = None, error
            if digest is not None and digest.result() != entry["sha256"]:
                raise ShardError(f"shard {path} fails its SHA-256 checksum: corrupt or modified")
            if failure is not None:
                raise ShardError(f"shard {path} is not a readable pickle: {failure}") from failure
            if not isinstance(shard, dict) or "images" not in shard or "labels" not in shard:
                raise ShardError(f"shard {path} does not hold an images/labels dict")
            shard_images, shard_labels = _validate(shard["images"], shard["labels"], str(path))
            stop = start + shard_labels.shape[0]
            if shard_images.shape[1:] != (height, width) or stop > labels.shape[0]:
                raise ShardError(f"shard {path} does not match its manifest (size or image count)")
            images[start:stop] = shard_images
            labels[start:stop] = shard_labels
            start = stop
    if start != labels.shape[0]:
        raise ShardError(f"{folder}: shards hold {start} images, the manifest says {labels.shape[0]}")
    return images, labels, manifest


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ShardError(f"{where}: {labels.shape} labels for {images.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise ShardError(f"{where}: labels must be class indices 0..{len(CLASS_NAMES) - 1}")
    return np.ascontiguousarray(images), labels.astype(np.int64)
