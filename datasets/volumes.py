"""3D brain MRI volumes (NIfTI) for the spatiospatial branch: high-grade glioma / low-grade glioma / healthy.

Layouts (``layout=``):

* ``brats_ixi``: one root holding the BraTS 2019 training folders and the IXI T1 folder::

      <root>/HGG/<case>/<case>_<modality>.nii.gz     (modality: t1, t1ce, t2, flair)
      <root>/LGG/<case>/<case>_<modality>.nii.gz
      <root>/IXI-T1/IXI<nnn>-<site>-<nnnn>-T1.nii.gz

* ``csv``: a ``labels.csv`` (columns ``path,label``, optional ``subject``; paths relative to the CSV)
  with labels ``HGG``, ``LGG`` or ``healthy``, like ``../shared/data/volumes_extra/``.

Every volume goes through one deterministic path, :func:`load_volume`: optional user hook (e.g. skull
stripping) -> reorientation to the closest canonical orientation (RAS) -> anti-aliased linear resampling to a
common spacing -> crop/pad to a fixed shape centred on the brain's bounding box -> z-score inside the brain
(voxels that differ from the background value) with the background set to 0. Results can be cached per volume.
Splits (stratified by class, grouped by subject, saved as a JSON manifest) are in :mod:`datasets.volume_splits`.
"""
from __future__ import annotations

import csv
import hashlib
import importlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from datasets.core import EMBEDDED_VOLUMES, DataError, check_allocation
from experiment.atomic import atomic_open

log = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = ("HGG", "LGG", "healthy")
"""Class index 0..2: high-grade glioma, low-grade glioma, healthy."""

MODALITIES = ("t1", "t1ce", "t2", "flair")
LAYOUTS = ("auto", "brats_ixi", "csv")
AXES = ("x", "y", "z")
"""Canonical (RAS) array axes: x left->right, y posterior->anterior, z inferior->superior."""

LABEL_FOLDERS = {"HGG": "HGG", "LGG": "LGG", "IXI-T1": "healthy"}
LABELS_CSV = "labels.csv"
CACHE_VERSION = 1  # bump when preprocessing changes, so old caches are rebuilt

_NIFTI = re.compile(r"\.nii(\.gz)?$")
_IXI_T1 = re.compile(r"^(IXI\d+)-[A-Za-z]+-\d+[-_]T1\.nii(\.gz)?$")
_TIMEPOINT = re.compile(r"_\d+$")
# Heuristics for warnings (see _content_warnings).
_MAX_STRIPPED_FRACTION = 0.35  # foreground share of the field of view above this: skull and background noise kept
_MAX_WIDTH_TO_LENGTH = 1.1  # a brain wider (left-right) than long (front-back) suggests swapped axes
VOXEL_MM_RANGE = (0.05, 20.0)
"""Voxel sizes (mm) a header may declare; outside it a file is refused before any voxel is read."""

Hook = Callable[[nib.Nifti1Image, Path], nib.Nifti1Image]


class VolumeError(DataError):
    """A bad volume or folder; the message names the file and the problem."""


@dataclass(frozen=True)
class VolumeRecord:
    """One labelled volume: ``label`` indexes :data:`CLASS_NAMES`; ``subject`` groups splits."""

    path: Path
    label: int
    subject: str


@dataclass
class VolumeScan:
    """What a scan found under ``root`` and what it skipped (``(path, reason)`` pairs; non-strict only)."""

    root: Path
    layout: str
    modality: str
    records: list[VolumeRecord]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        """A hash of the labelled file list (relative paths, labels, subjects) and the modality."""
        digest = hashlib.sha256(self.modality.encode())
        for record in self.records:
            digest.update(f"{relative_path(record.path, self.root)}|{record.label}|{record.subject}\n".encode())
        return digest.hexdigest()[:16]

    def class_counts(self) -> list[int]:
        """Volumes per class, in :data:`CLASS_NAMES` order."""
        return np.bincount([r.label for r in self.records], minlength=len(CLASS_NAMES)).tolist()


@dataclass(frozen=True)
class VolumeSpec:
    """How every volume is preprocessed.

    Args:
        shape: output shape in canonical (x, y, z) voxels.
        spacing: output voxel size in mm along (x, y, z).
        hook: optional callable ``hook(image, path) -> image`` applied to the raw NIfTI image first
            (skull stripping, registration, ...); its qualified name is part of the cache key.
    Raises:
        ValueError: a shape or spacing that is not three positive numbers.
    """

    shape: tuple[int, int, int] = (64, 64, 64)
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)
    hook: Hook | None = None

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape must be three positive integers, got {self.shape}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be three positive numbers (mm), got {self.spacing}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))

    def key(self) -> dict[str, Any]:
        """The parameters that determine the output (for cache keys)."""
        hook = None if self.hook is None else f"{self.hook.__module__}.{self.hook.__qualname__}"
        return {"v": CACHE_VERSION, "shape": list(self.shape), "spacing": list(self.spacing), "hook": hook}


@dataclass
class Volume:
    """A preprocessed volume (float32, ``spec.shape``) with the RAS affine of its grid and any warnings."""

    data: np.ndarray
    affine: np.ndarray
    warnings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- discovery


def scan_volumes(root: str | os.PathLike | None, layout: str = "auto", modality: str = "t1ce",
                 strict: bool = True) -> VolumeScan:
    """Find and label the volumes under ``root`` (``None``: the embedded sample); each file's header must be
    a readable 3-D NIfTI.

    Raises:
        VolumeError: (strict) a missing modality file, an unknown label folder or label, a file that is
            not NIfTI or not 3-D; (always) a missing root or no volume at all.
        ValueError: unknown ``layout`` or ``modality``.
    """
    root = EMBEDDED_VOLUMES if root in (None, "") else Path(root)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown volume layout {layout!r}; choose one of {LAYOUTS}")
    if modality not in MODALITIES:
        raise ValueError(f"unknown BraTS modality {modality!r}; choose one of {MODALITIES}")
    if not root.exists():
        raise VolumeError(f"volume root not found: {root}")
    if layout == "auto":
        layout = "csv" if root.suffix == ".csv" or (root / LABELS_CSV).is_file() else "brats_ixi"
    skipped: list[tuple[str, str]] = []
    found = _scan_csv(root, skipped) if layout == "csv" else _scan_brats_ixi(root, modality, skipped)
    records = []
    for record in found:
        try:
            read_header(record.path)
        except VolumeError as error:
            skipped.append((str(record.path), str(error)))
            continue
        records.append(record)
    if strict and skipped:
        raise VolumeError(f"{len(skipped)} problem(s) under {root}:\n" + "\n".join(r for _, r in skipped))
    if not records:
        raise VolumeError(f"no usable volumes under {root} (layout {layout}); skipped {len(skipped)}")
    for path, reason in skipped:
        log.warning("skipping %s: %s", path, reason)
    scan_root = root.parent if root.suffix == ".csv" else root
    return VolumeScan(scan_root, layout, modality, sorted(records, key=lambda r: str(r.path)), skipped)


def _scan_brats_ixi(root: Path, modality: str, skipped: list[tuple[str, str]]) -> list[VolumeRecord]:
    records = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = LABEL_FOLDERS.get(folder.name)
        if label is None:
            skipped.append((str(folder), f"{folder}: unknown label folder {folder.name!r}; expected one of "
                                         f"{sorted(LABEL_FOLDERS)}"))
            continue
        scan = _ixi_files if label == "healthy" else _brats_cases
        records += scan(folder, CLASS_NAMES.index(label), modality, skipped)
    return records


def _brats_cases(folder: Path, label: int, modality: str, skipped: list[tuple[str, str]]) -> list[VolumeRecord]:
    records = []
    for case in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        if not case.is_dir():
            skipped.append((str(case), f"{case}: expected a BraTS case folder <case>/<case>_{modality}.nii.gz"))
            continue
        candidates = [case / f"{case.name}_{modality}{ext}" for ext in (".nii.gz", ".nii")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            skipped.append((str(candidates[0]), f"{candidates[0]}: missing {modality} file for case {case.name}"))
            continue
        records.append(VolumeRecord(path, label, _TIMEPOINT.sub("", case.name)))
    return records


def _ixi_files(folder: Path, label: int, modality: str, skipped: list[tuple[str, str]]) -> list[VolumeRecord]:
    records = []
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        match = _IXI_T1.match(path.name)
        if match is None:
            skipped.append((str(path), f"{path}: not an IXI T1 file name (IXI<nnn>-<site>-<nnnn>-T1.nii.gz)"))
            continue
        records.append(VolumeRecord(path, label, match.group(1)))
    return records


def _scan_csv(root: Path, skipped: list[tuple[str, str]]) -> list[VolumeRecord]:
    table = root if root.suffix == ".csv" else root / LABELS_CSV
    with open(table, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise VolumeError(f"{table}: expected a CSV with columns path,label[,subject]")
    records = []
    for line, row in enumerate(rows, start=2):
        path = table.parent / row["path"]
        if row["label"] not in CLASS_NAMES:
            skipped.append((str(path), f"{table}:{line}: unknown label {row['label']!r}; expected {CLASS_NAMES}"))
        elif not path.is_file():
            skipped.append((str(path), f"{table}:{line}: file not found: {path}"))
        else:
            subject = row.get("subject") or _NIFTI.sub("", path.name)
            records.append(VolumeRecord(path, CLASS_NAMES.index(row["label"]), subject))
    return records


def read_header(path: str | os.PathLike) -> nib.Nifti1Image:
    """Open a NIfTI file (header only) and check that it holds one 3-D volume with a usable geometry.

    Raises:
        VolumeError: not a NIfTI file, not 3-D (a trailing axis of length 1 is accepted), a non-finite or
            singular affine, voxel sizes outside :data:`VOXEL_MM_RANGE`, or more voxels than the allocation limit.
    """
    path = Path(path)
    if not _NIFTI.search(path.name):
        raise VolumeError(f"{path}: not a NIfTI file name (.nii or .nii.gz)")
    try:
        image = nib.load(path)
    except Exception as error:  # nibabel raises several types for unreadable files
        raise VolumeError(f"{path}: not a readable NIfTI file ({error})") from error
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise VolumeError(f"{path}: {type(image).__name__} is not a NIfTI image")
    shape = image.shape
    if len(shape) != 3 and not (len(shape) > 3 and all(s == 1 for s in shape[3:])):
        raise VolumeError(f"{path}: expected a 3-D volume, got shape {shape} ({len(shape)}-D)")
    affine = image.affine
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if not np.isfinite(affine).all():
        raise VolumeError(f"{path}: the affine is not finite; no usable geometry")
    low, high = VOXEL_MM_RANGE
    if zooms.min() < low or zooms.max() > high:
        raise VolumeError(f"{path}: voxel size {np.round(zooms, 6).tolist()} mm is outside {low}-{high} mm")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-6 * np.prod(zooms):
        raise VolumeError(f"{path}: the affine is not invertible (its voxel axes are parallel); no usable geometry")
    _check_voxels(path, shape[:3], "reading")
    return image


def _check_voxels(path: Path | str, shape: Sequence[int], step: str) -> None:
    """Refuse a float32 grid of ``shape`` over the allocation limit, as a :class:`VolumeError`."""
    try:
        check_allocation(int(np.prod(shape, dtype=np.int64)) * 4, f"{path}: {step} {tuple(shape)} voxels")
    except DataError as error:
        raise VolumeError(str(error)) from error


# ----------------------------------------------------------------------------------------------- preprocessing


def load_volume(path: str | os.PathLike, spec: VolumeSpec, cache_dir: str | os.PathLike | None = None) -> Volume:
    """Read and preprocess one volume (see the module docstring), using ``cache_dir`` when given.

    Raises:
        VolumeError: unreadable, not 3-D, empty (no foreground) or non-finite voxels.
    """
    path = Path(path)
    cache = None if cache_dir is None else Path(cache_dir) / f"volume-{_cache_key(path, spec)[:24]}.npz"
    if cache is not None and (cached := _read_cache(cache)) is not None:
        return cached
    image = read_header(path)
    if spec.hook is not None:
        image = spec.hook(image, path)
    volume = preprocess(image, spec, str(path))
    if cache is not None:
        with atomic_open(cache, "wb") as handle:
            np.savez(handle, data=volume.data, affine=volume.affine, warnings=np.array(volume.warnings, dtype=str))
    return volume


def preprocess(image: nib.Nifti1Image, spec: VolumeSpec, name: str) -> Volume:
    """Canonicalise, resample, crop/pad and z-score one NIfTI image (``name`` is used in messages)."""
    warnings = _orientation_warnings(image, name)
    image = nib.as_closest_canonical(image)
    _check_voxels(name, resampled_grid(image.shape[:3], image.affine, spec.spacing)[1], "resampling to")
    data = np.asarray(image.dataobj, dtype=np.float32).reshape(image.shape[:3])
    if not np.isfinite(data).all():
        raise VolumeError(f"{name}: {int((~np.isfinite(data)).sum())} voxels are NaN or infinite")
    foreground = data != _background_value(data)
    if not foreground.any():
        raise VolumeError(f"{name}: empty volume (every voxel has the background value {data.flat[0]})")
    data, foreground, affine = resample(data, foreground, image.affine, spec.spacing)
    warnings += _content_warnings(foreground, spec.spacing, name)
    data = zscore(data, foreground)
    data, affine = crop_or_pad(data, spec.shape, _box_centre(foreground), affine)
    for message in warnings:
        log.warning(message)
    return Volume(data, affine, warnings)


def resample(data: np.ndarray, mask: np.ndarray, affine: np.ndarray,
             spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample ``data`` (linear, Gaussian pre-filter when shrinking) and ``mask`` onto a grid of ``spacing`` mm.

    The new grid starts at the first voxel centre, so voxel ``j`` lies at old index ``j * spacing / zoom``;
    the returned affine maps the new voxels to the same world coordinates.
    """
    step, shape = resampled_grid(data.shape, affine, spacing)
    sigma = np.maximum(0.0, (step - 1.0) / 2.0)
    smoothed = ndimage.gaussian_filter(data, sigma) if sigma.any() else data
    out = ndimage.affine_transform(smoothed, step, output_shape=shape, order=1, mode="nearest")
    out_mask = ndimage.affine_transform(mask.astype(np.float32), step, output_shape=shape, order=1,
                                        mode="nearest") > 0.5
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] * step
    return out.astype(np.float32), out_mask, new_affine


def resampled_grid(shape: Sequence[int], affine: np.ndarray,
                   spacing: Sequence[float]) -> tuple[np.ndarray, tuple[int, ...]]:
    """The index step (old voxels per new voxel) and the shape of ``shape`` resampled to ``spacing`` mm."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    step = np.asarray(spacing, dtype=np.float64) / zooms
    return step, tuple(int(n) for n in np.floor((np.asarray(shape) - 1) / step + 1e-6) + 1)


def zscore(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance inside ``mask``; 0 outside."""
    values = data[mask]
    std = float(values.std())
    out = np.zeros_like(data, dtype=np.float32)
    out[mask] = (values - values.mean()) / (std if std > 0 else 1.0)
    return out


def crop_or_pad(data: np.ndarray, shape: Sequence[int], centre: Sequence[float],
                affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A ``shape`` window of ``data`` centred on ``centre`` (voxels), zero-padded outside; and its affine."""
    start = [int(round(c - s / 2.0)) for c, s in zip(centre, shape, strict=True)]
    out = np.zeros(tuple(shape), dtype=data.dtype)
    src = tuple(slice(max(a, 0), min(a + s, n)) for a, s, n in zip(start, shape, data.shape, strict=True))
    dst = tuple(slice(w.start - a, w.stop - a) for w, a in zip(src, start, strict=True))
    out[dst] = data[src]
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=np.float64) + affine[:3, 3]
    return out, shifted


def _background_value(data: np.ndarray) -> float:
    """The most common value on the volume's faces (0 for most scans; a constant negative value in
    some z-scored BraTS releases)."""
    faces = np.concatenate([np.take(data, index, axis=a).ravel() for a in range(3) for index in (0, -1)])
    values, counts = np.unique(faces, return_counts=True)
    return float(values[counts.argmax()])


def _box_centre(mask: np.ndarray) -> list[float]:
    """Centre (voxels) of the bounding box of ``mask``."""
    return [(index.min() + index.max()) / 2.0 for index in np.nonzero(mask)]


def _orientation_warnings(image: nib.Nifti1Image, name: str) -> list[str]:
    header = image.header
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        return [f"{name}: no orientation in the header (qform and sform codes are 0); "
                "the orientation assumed may be wrong"]
    return []


def _content_warnings(mask: np.ndarray, spacing: Sequence[float], name: str) -> list[str]:
    """Warn about volumes that look not skull-stripped or mis-oriented (heuristics on the canonical RAS grid).

    A skull-stripped scan has a clean background, so its foreground fills little of the field of view
    (BraTS: 15-18%; unstripped IXI T1: 43-67%). Only then is the foreground box the head, and a head is
    longer front-back than wide left-right.
    """
    fraction = float(mask.mean())
    if fraction > _MAX_STRIPPED_FRACTION:
        return [f"{name}: looks not skull-stripped ({fraction:.0%} of the field of view is foreground, "
                f"skull-stripped brains fill < {_MAX_STRIPPED_FRACTION:.0%}); strip it first or set data.hook"]
    extent = [(i.max() - i.min() + 1) * s for i, s in zip(np.nonzero(mask), spacing, strict=True)]
    if extent[0] > _MAX_WIDTH_TO_LENGTH * extent[1]:
        return [f"{name}: brain is wider left-right ({extent[0]:.0f} mm) than front-back ({extent[1]:.0f} mm) "
                "after reorientation; check the header's orientation"]
    return []


def _cache_key(path: Path, spec: VolumeSpec) -> str:
    stat = path.stat()
    blob = json.dumps({"path": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns, **spec.key()})
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_cache(path: Path) -> Volume | None:
    """A cached volume, or ``None`` when absent or unreadable (then it is rebuilt)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            return Volume(cached["data"], cached["affine"], [str(w) for w in cached["warnings"]])
    except Exception as error:  # a truncated or foreign file
        log.warning("ignoring unusable volume cache %s (%s); rebuilding", path, error)
        return None


def resolve_hook(name: str | None) -> Hook | None:
    """The hook callable named ``"package.module:function"`` (or ``None``).

    Raises:
        ValueError: a malformed name or one that does not resolve to a callable.
    """
    if not name:
        return None
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"data hook must look like 'package.module:function', got {name!r}")
    hook = getattr(importlib.import_module(module_name), attribute, None)
    if not callable(hook):
        raise ValueError(f"data hook {name!r} is not a callable")
    return hook


def prepare_volumes(scan: VolumeScan, spec: VolumeSpec, cache_dir: str | os.PathLike | None,
                    strict: bool = True) -> VolumeScan:
    """Preprocess every volume of ``scan`` once (filling the cache); non-strict drops and lists failures.

    Raises:
        VolumeError: (strict) the first volume that fails to load.
    """
    records, skipped = [], list(scan.skipped)
    for record in scan.records:
        try:
            load_volume(record.path, spec, cache_dir)
        except VolumeError as error:
            if strict:
                raise
            log.warning("skipping %s", error)
            skipped.append((str(record.path), str(error)))
            continue
        records.append(record)
    if not records:
        raise VolumeError(f"no volume under {scan.root} could be loaded; skipped {len(skipped)}")
    return VolumeScan(scan.root, scan.layout, scan.modality, records, skipped)


def relative_path(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` in POSIX form (absolute when it lies outside ``root``)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


# ----------------------------------------------------------------------------------------------- torch


class VolumeDataset(torch.utils.data.Dataset):
    """Preprocessed volumes as ``(image, label)``: image float32 ``(1, T, H, W)``, the canonical axis
    ``time_axis`` (``x``, ``y`` or ``z``) first, as torchvision's video models expect ``(C, T, H, W)``.

    Raises:
        ValueError: an unknown ``time_axis``.
    """

    def __init__(self, records: Sequence[VolumeRecord], spec: VolumeSpec, time_axis: str = "z",
                 cache_dir: str | os.PathLike | None = None) -> None:
        if time_axis not in AXES:
            raise ValueError(f"time_axis must be one of {AXES}, got {time_axis!r}")
        self.records, self.spec, self.cache_dir = list(records), spec, cache_dir
        self.axis = AXES.index(time_axis)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        record = self.records[index]
        data = load_volume(record.path, self.spec, self.cache_dir).data
        frames = np.ascontiguousarray(np.moveaxis(data, self.axis, 0))
        return torch.from_numpy(frames).unsqueeze(0), torch.tensor(record.label, dtype=torch.int64)

    def dim_of(self, axis: str) -> int:
        """Where canonical ``axis`` (x, y or z) lies in an item's ``(T, H, W)``."""
        order = [self.axis] + [i for i in range(3) if i != self.axis]
        return order.index(AXES.index(axis))

    def input_shape(self) -> tuple[int, int, int, int]:
        """``(1, T, H, W)`` of every item."""
        shape = list(self.spec.shape)
        return (1, shape.pop(self.axis), *shape)
