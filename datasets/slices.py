"""The one way 2D slices enter the project: find the source, read it with its reader (:mod:`datasets.figshare`
for the bundle, :mod:`datasets.matlab` for a ``.mat`` folder), preprocess every slice with
:func:`datasets.transforms.preprocess_slice`, and cache the result under a key that hashes the input files
and the parameters."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from datasets.core import CLASS_NAMES, EMBEDDED_SAMPLE, DataError, SliceSet, default_cache_dir
from datasets.figshare import read_bundle_slices, subjects_table_path
from datasets.matlab import scan_mat_folder
from datasets.transforms import preprocess_pair
from experiment.atomic import atomic_open
from experiment.progress import progress

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # bump when preprocessing or the cached fields change, so old caches are rebuilt


def load_slices(root: str | os.PathLike | None = None, image_size: int = 128, strict: bool = True,
                cache_dir: str | os.PathLike | None = None, subjects: str | os.PathLike | None = None,
                group_by: str = "subject", geometry: str = "canonical") -> SliceSet:
    """Load, validate and preprocess the figshare slices at ``root`` (cached).

    Args:
        root: a folder of ``.mat`` files, a bundle ``.npz``, a folder holding bundles
            (the best size is chosen), or ``None`` for the embedded sample.
        image_size: output side length (square).
        strict: stop at the first bad ``.mat`` file; with ``False`` bad files are skipped and
            listed in ``SliceSet.skipped`` (and logged), never silently.
        cache_dir: where preprocessed caches live (default :func:`datasets.core.default_cache_dir`).
        subjects: the bundle's patient table (default: ``figshare_subjects.csv`` beside the bundle).
        group_by: ``subject`` (patients) or, for a bundle only, ``series`` (leaks patients across planes).
        geometry: ``canonical`` (head crop, square, margin) or ``resize`` (the old stretch); see
            :data:`datasets.transforms.GEOMETRIES`.
    Raises:
        DataError: missing, empty or malformed data, naming the file.
    """
    source = resolve_source(root, image_size)
    if source.suffix != ".npz" and (group_by != "subject" or subjects not in (None, "")):
        raise DataError(f"{source}: a .mat folder is grouped by its PID; data.subjects and data.group_by=series "
                        "apply to the .npz bundle only")
    key = _cache_key(source, image_size, strict, subjects, group_by, geometry)
    cache = Path(cache_dir or default_cache_dir()) / f"figshare-{key[:20]}.npz"
    slices = _read_cache(cache, key)
    if slices is None:
        if source.suffix == ".npz":
            slices = _bundle_slices(source, image_size, subjects, group_by, geometry)
        else:
            slices = _mat_slices(source, image_size, strict, geometry)
        _write_cache(cache, key, slices)
    if group_by == "series":
        log.warning("data.group_by=series: folds grouped by scan series share patients across planes (leaky)")
    for name, reason in slices.skipped:  # on every load, cached or not: skipping is never silent
        log.warning("skipped %s: %s", name, reason)
    return slices


def resolve_source(root: str | os.PathLike | None, image_size: int = 128) -> Path:
    """The bundle file or ``.mat`` folder that ``root`` names (see :func:`load_slices`)."""
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
    if any(p.suffix.lower() == ".mat" for p in path.iterdir()):
        return path
    raise DataError(f"data root {path} holds no figshare .mat files and no figshare_cheng_*.npz bundle")


def class_counts_table(data: SliceSet) -> str:
    """A plain-text table: slices and patients per class."""
    lines = [f"{'class':<12}{'slices':>8}{'subjects':>10}"]
    for index, name in enumerate(CLASS_NAMES):
        members = data.labels == index
        lines.append(f"{name:<12}{int(members.sum()):>8}{len(set(data.subjects[members])):>10}")
    lines.append(f"{'total':<12}{len(data):>8}{len(set(data.subjects)):>10}")
    return "\n".join(lines)


def _preprocess(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], image_size: int, geometry: str,
                desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Every slice and its mask in one geometry: uint8 and bool ``(N, S, S)``."""
    pairs = [preprocess_pair(image, mask, image_size, geometry=geometry)
             for image, mask in progress(zip(images, masks, strict=True), desc=desc, total=len(images))]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _bundle_slices(path: Path, image_size: int, subjects: str | os.PathLike | None, group_by: str,
                   geometry: str) -> SliceSet:
    bundle = read_bundle_slices(path, subjects, group_by)
    arrays = bundle.arrays
    images, masks = _preprocess(arrays["image"], arrays["mask"], image_size, geometry, f"preprocess {path.name}")
    return _slice_set(images, masks, arrays["label"], arrays["index"], bundle.subjects, bundle.planes,
                      arrays["cvind"], str(path), [])


def _mat_slices(folder: Path, image_size: int, strict: bool, geometry: str) -> SliceSet:
    records, skipped = scan_mat_folder(folder, strict=strict)
    images, masks = _preprocess([r.image for r in records], [r.mask for r in records], image_size, geometry,
                                f"preprocess {folder.name}")
    return _slice_set(images, masks, np.array([r.label for r in records]), np.array([r.file_id for r in records]),
                      np.array([r.subject for r in records]), np.array([r.plane for r in records]),
                      np.array([r.cvind for r in records]), str(folder), skipped)


def _slice_set(images: np.ndarray, masks: np.ndarray, labels: np.ndarray, file_ids: np.ndarray,
               subjects: np.ndarray, planes: np.ndarray, cvind: np.ndarray, source: str,
               skipped: list) -> SliceSet:
    data = SliceSet(images.astype(np.uint8), masks.astype(bool), np.asarray(labels, dtype=np.int64) - 1,
                    np.asarray(file_ids, dtype=np.int64), np.asarray(subjects).astype(str),
                    np.asarray(planes).astype(str), np.asarray(cvind, dtype=np.int64), source, "", list(skipped))
    data.fingerprint = _fingerprint(data)
    return data


def _fingerprint(data: SliceSet) -> str:
    """16 hex digits of SHA-256 over the model-side content and the patients (the data identity that runs
    and folds record: another patient table gives other folds)."""
    digest = hashlib.sha256()
    for array in (data.images, data.masks, data.labels, data.file_ids, data.subjects.astype("U"),
                  data.planes.astype("U")):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def _cache_key(source: Path, image_size: int, strict: bool, subjects: str | os.PathLike | None,
               group_by: str, geometry: str) -> str:
    """Hash of the input files' (name, size, mtime) and the preprocessing and grouping parameters."""
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.suffix.lower() == ".mat")
    if source.is_file():
        table = subjects_table_path(source, subjects, embedded=False)
        files += [table] if table is not None else []
    listing = [(str(p.resolve()), (st := p.stat()).st_size, st.st_mtime_ns) for p in files]
    blob = json.dumps({"v": CACHE_VERSION, "source": str(source.resolve()), "files": listing,
                       "size": image_size, "strict": strict, "group_by": group_by, "geometry": geometry})
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_cache(path: Path, key: str) -> SliceSet | None:
    """A cached :class:`SliceSet`, or ``None`` when absent, stale or corrupt (then it is rebuilt)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as c:
            if str(c["key"]) != key:
                raise ValueError("stale cache key")
            data = SliceSet(c["images"], c["masks"], c["labels"], c["file_ids"], c["subjects"], c["planes"],
                            c["cvind"], str(c["source"]), str(c["fingerprint"]),
                            [tuple(s) for s in json.loads(str(c["skipped"]))])
            if _fingerprint(data) != data.fingerprint:
                raise ValueError("content does not match its fingerprint")
            return data
    except Exception as error:
        log.warning("ignoring unusable cache %s (%s); rebuilding", path, error)
        return None


def _write_cache(path: Path, key: str, data: SliceSet) -> None:
    with atomic_open(path, "wb") as handle:
        np.savez(handle, key=key, images=data.images, masks=data.masks, labels=data.labels,
                 file_ids=data.file_ids, subjects=data.subjects, planes=data.planes, cvind=data.cvind,
                 source=data.source, fingerprint=data.fingerprint, skipped=json.dumps(data.skipped))
