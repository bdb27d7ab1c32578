"""The figshare brain-tumour dataset (Cheng et al., 3064 T1-CE slices, 3 classes).

Two sources give one record type:

* a folder of the original MATLAB files (``<index>.mat``, v7.3/HDF5 or v5), read by
  :mod:`datasets.matlab`, grouped by patient id (``PID``), with ``cvind.mat`` when present;
* the prepared ``.npz`` bundle (``figshare_cheng_{256,128}.npz``; arrays ``image``, ``mask``,
  ``label``, ``index``, ``cvind``, ``series``, ``orig_size``), grouped by ``series``.

:func:`load_figshare` preprocesses every slice with :func:`datasets.transforms.preprocess_slice`
and caches the result under a key that hashes the inputs and the parameters.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from datasets.transforms import preprocess_mask, preprocess_slice
from experiment.atomic import atomic_open

log = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = ("meningioma", "glioma", "pituitary")
"""Class index 0..2 (model side) = figshare label 1..3."""

BUNDLE_ARRAYS = ("image", "mask", "label", "index", "cvind", "series")
EMBEDDED_SAMPLE = Path(__file__).resolve().parent / "data" / "figshare_sample_128.npz"
CACHE_VERSION = 1  # bump when preprocessing changes, so old caches are rebuilt


class DataError(ValueError):
    """Bad input data; the message names the file and what is wrong."""


@dataclass
class SliceRecord:
    """One raw slice as stored by a source.

    ``label`` uses the figshare convention 1 meningioma, 2 glioma, 3 pituitary; ``group`` is the
    patient id (``.mat``) or ``series-<id>`` (bundle); ``border`` is ``tumorBorder`` as stored
    (x1, y1, x2, y2, ... in MATLAB's 1-based pixel coordinates) when known.
    """

    file_id: int
    image: np.ndarray
    label: int
    group: str
    mask: np.ndarray
    border: np.ndarray | None = None
    cvind: int = 0


@dataclass
class SliceSet:
    """Preprocessed slices ready for models.

    ``images`` uint8 (N, S, S); ``masks`` bool (N, S, S); ``labels`` int64 class indices 0..2;
    ``file_ids`` int64; ``groups`` str (N,); ``cvind`` int64 (0 when unknown).
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    file_ids: np.ndarray
    groups: np.ndarray
    cvind: np.ndarray
    source: str
    fingerprint: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, index: np.ndarray) -> SliceSet:
        """The slices at ``index`` (same source and fingerprint)."""
        return SliceSet(self.images[index], self.masks[index], self.labels[index], self.file_ids[index],
                        self.groups[index], self.cvind[index], self.source, self.fingerprint, self.skipped)


def load_figshare(root: str | os.PathLike | None = None, image_size: int = 128, strict: bool = True,
                  cache_dir: str | os.PathLike | None = None) -> SliceSet:
    """Load, validate and preprocess the figshare slices at ``root`` (cached).

    Args:
        root: a folder of ``.mat`` files, a bundle ``.npz``, a folder holding bundles
            (the best size is chosen), or ``None`` for the embedded sample.
        image_size: output side length (square).
        strict: stop at the first bad ``.mat`` file; with ``False`` bad files are skipped and
            listed in ``SliceSet.skipped`` (and logged), never silently.
        cache_dir: where preprocessed caches live (default ``$BRAIN_TUMOUR_CACHE`` or
            ``~/.cache/brain-tumour-mri``).
    Raises:
        DataError: missing, empty or malformed data, naming the file.
    """
    source = resolve_source(root, image_size)
    key = _cache_key(source, image_size, strict)
    cache = Path(cache_dir or default_cache_dir()) / f"figshare-{key[:20]}.npz"
    slices = _read_cache(cache, key)
    if slices is None:
        if source.suffix == ".npz":
            slices = _bundle_slices(source, image_size)
        else:
            slices = _mat_slices(source, image_size, strict)
        _write_cache(cache, key, slices)
    for name, reason in slices.skipped:  # on every load, cached or not: skipping is never silent
        log.warning("skipped %s: %s", name, reason)
    return slices


def resolve_source(root: str | os.PathLike | None, image_size: int = 128) -> Path:
    """The bundle file or ``.mat`` folder that ``root`` names (see :func:`load_figshare`)."""
    if root is None or str(root) == "":
        if not EMBEDDED_SAMPLE.is_file():
            raise DataError(f"embedded sample missing: {EMBEDDED_SAMPLE} (run python -m datasets.make_sample)")
        return EMBEDDED_SAMPLE
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"data root does not exist: {path}")
    if path.is_file():
        if path.suffix != ".npz":
            raise DataError(f"data root {path} is a file but not an .npz bundle")
        return path
    bundles = sorted(path.glob("figshare_cheng_*.npz"))
    if bundles:
        sizes = {int(b.stem.rsplit("_", 1)[1]): b for b in bundles if b.stem.rsplit("_", 1)[1].isdigit()}
        larger = [s for s in sizes if s >= image_size]
        return sizes[min(larger) if larger else max(sizes)]
    if any(p.suffix == ".mat" for p in path.iterdir()):
        return path
    raise DataError(f"data root {path} holds no figshare .mat files and no figshare_cheng_*.npz bundle")


def default_cache_dir() -> Path:
    """``$BRAIN_TUMOUR_CACHE`` or ``~/.cache/brain-tumour-mri``."""
    return Path(os.environ.get("BRAIN_TUMOUR_CACHE", Path.home() / ".cache" / "brain-tumour-mri"))


def read_bundle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read and validate the raw arrays of a bundle ``.npz`` (no pickle allowed)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as bundle:
            missing = [name for name in BUNDLE_ARRAYS if name not in bundle.files]
            if missing:
                raise DataError(f"bundle {path} lacks array(s) {missing}; expected {list(BUNDLE_ARRAYS)}")
            arrays = {name: bundle[name] for name in BUNDLE_ARRAYS}
    except DataError:
        raise
    except Exception as error:
        raise DataError(f"bundle {path} is not a readable .npz file: {error}") from error
    n = arrays["label"].shape[0]
    lengths = {name: int(a.shape[0]) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"bundle {path} has arrays of mismatched lengths: {lengths}")
    if arrays["image"].ndim != 3 or arrays["image"].shape[1:] != arrays["mask"].shape[1:]:
        raise DataError(f"bundle {path}: image {arrays['image'].shape} and mask {arrays['mask'].shape} "
                        "must both be (N, S, S)")
    if n == 0:
        raise DataError(f"bundle {path} is empty")
    bad = np.flatnonzero((arrays["label"] < 1) | (arrays["label"] > 3))
    if bad.size:
        raise DataError(f"bundle {path}: label outside 1..3 at index {int(bad[0])} "
                        f"(value {int(arrays['label'][bad[0]])})")
    if np.issubdtype(arrays["image"].dtype, np.floating) and not np.isfinite(arrays["image"]).all():
        raise DataError(f"bundle {path}: image array holds NaN or infinite pixels")
    return arrays


def _bundle_slices(path: Path, image_size: int) -> SliceSet:
    arrays = read_bundle(path)
    images = np.stack([preprocess_slice(im, image_size) for im in
                       tqdm(arrays["image"], desc=f"preprocess {path.name}", leave=False, mininterval=2)])
    masks = np.stack([preprocess_mask(m, image_size) for m in arrays["mask"]])
    return _slice_set(images, masks, arrays["label"], arrays["index"],
                      np.array([f"series-{int(s)}" for s in arrays["series"]]), arrays["cvind"], str(path), [])


def _mat_slices(folder: Path, image_size: int, strict: bool) -> SliceSet:
    from datasets.matlab import scan_mat_folder

    records, skipped = scan_mat_folder(folder, strict=strict)
    images = np.stack([preprocess_slice(r.image, image_size) for r in records])
    masks = np.stack([preprocess_mask(r.mask, image_size) for r in records])
    return _slice_set(images, masks, np.array([r.label for r in records]), np.array([r.file_id for r in records]),
                      np.array([r.group for r in records]), np.array([r.cvind for r in records]), str(folder),
                      skipped)


def _slice_set(images: np.ndarray, masks: np.ndarray, labels: np.ndarray, file_ids: np.ndarray,
               groups: np.ndarray, cvind: np.ndarray, source: str, skipped: list) -> SliceSet:
    labels = np.asarray(labels, dtype=np.int64) - 1
    file_ids = np.asarray(file_ids, dtype=np.int64)
    groups = np.asarray(groups).astype(str)
    return SliceSet(images.astype(np.uint8), masks.astype(bool), labels, file_ids, groups,
                    np.asarray(cvind, dtype=np.int64), source, _fingerprint(images, masks, labels, file_ids, groups),
                    list(skipped))


def _fingerprint(images: np.ndarray, masks: np.ndarray, labels: np.ndarray, file_ids: np.ndarray,
                 groups: np.ndarray) -> str:
    """16 hex digits of SHA-256 over the model-side content (the data identity runs and folds record)."""
    digest = hashlib.sha256()
    for array in (images, masks, labels, file_ids, groups.astype("U")):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def _cache_key(source: Path, image_size: int, strict: bool) -> str:
    """Hash of the source files' (name, size, mtime) and the preprocessing parameters."""
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.suffix == ".mat")
    listing = [(p.name, (st := p.stat()).st_size, st.st_mtime_ns) for p in files]
    blob = json.dumps({"v": CACHE_VERSION, "source": str(source.resolve()), "files": listing,
                       "size": image_size, "strict": strict})
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_cache(path: Path, key: str) -> SliceSet | None:
    """A cached :class:`SliceSet`, or ``None`` when absent, stale or corrupt (then it is rebuilt)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as c:
            if str(c["key"]) != key:
                raise ValueError("stale cache key")
            data = SliceSet(c["images"], c["masks"], c["labels"], c["file_ids"], c["groups"], c["cvind"],
                            str(c["source"]), str(c["fingerprint"]),
                            [tuple(s) for s in json.loads(str(c["skipped"]))])
            if _fingerprint(data.images, data.masks, data.labels, data.file_ids, data.groups) != data.fingerprint:
                raise ValueError("content does not match its fingerprint")
            return data
    except Exception as error:
        log.warning("ignoring unusable cache %s (%s); rebuilding", path, error)
        return None


def _write_cache(path: Path, key: str, data: SliceSet) -> None:
    with atomic_open(path, "wb") as handle:
        np.savez(handle, key=key, images=data.images, masks=data.masks, labels=data.labels,
                 file_ids=data.file_ids, groups=data.groups, cvind=data.cvind, source=data.source,
                 fingerprint=data.fingerprint, skipped=json.dumps(data.skipped))


def class_counts_table(data: SliceSet) -> str:
    """A plain-text table: slices and groups per class."""
    lines = [f"{'class':<12}{'slices':>8}{'groups':>8}"]
    for index, name in enumerate(CLASS_NAMES):
        members = data.labels == index
        lines.append(f"{name:<12}{int(members.sum()):>8}{len(set(data.groups[members])):>8}")
    lines.append(f"{'total':<12}{len(data):>8}{len(set(data.groups)):>8}")
    return "\n".join(lines)
