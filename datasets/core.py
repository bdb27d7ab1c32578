"""The data layer's one vocabulary: record and set types, the error type, class names, where the embedded
samples and the cache live, how many folds a protocol has, and the allocation limits every reader applies.
Every reader and consumer imports these from here; of the project it imports only the error base class."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from experiment.errors import ConfigError, UserError

CLASS_NAMES: tuple[str, ...] = ("meningioma", "glioma", "pituitary")
"""2D class index 0..2 (model side) = figshare label 1..3."""

PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
"""Scan planes of ``figshare_subjects.csv``; ``""`` when a source does not say."""

DATA_DIR = Path(__file__).resolve().parent / "data"
EMBEDDED_SAMPLE = DATA_DIR / "figshare_sample_128.npz"
"""The 2D sample used when no ``data.root`` is given."""
EMBEDDED_VOLUMES = DATA_DIR / "volumes"
"""The 3D sample (``labels.csv`` layout) used when no 3D ``data.root`` is given."""

IMAGE_SIZES = (32, 64, 128, 256)
"""Slice sizes the 2D entry points support (32 for tests; the networks' depths follow 64/128/256)."""

PROTOCOLS = ("grouped", "cvind")
"""Fold protocols: ``grouped`` (k-fold grouped by patient) and ``cvind`` (the authors' 5 folds)."""
CVIND_FOLDS = 5


class DataError(UserError, ValueError):
    """Bad input data; the message names the file and what is wrong."""


def fold_count(split: str, k: int) -> int:
    """How many folds protocol ``split`` has: ``k`` for ``grouped``, always 5 for ``cvind``."""
    if split not in PROTOCOLS:
        raise ConfigError(f"unknown split protocol {split!r}; choose one of {PROTOCOLS}")
    return CVIND_FOLDS if split == "cvind" else int(k)


def default_cache_dir() -> Path:
    """``$BRAIN_TUMOUR_CACHE`` or ``~/.cache/brain-tumour-mri``."""
    return Path(os.environ.get("BRAIN_TUMOUR_CACHE", Path.home() / ".cache" / "brain-tumour-mri"))


@dataclass
class SliceRecord:
    """One raw slice as stored by a source.

    ``label`` uses the figshare convention 1 meningioma, 2 glioma, 3 pituitary; ``subject`` is the patient
    id (``PID`` of a ``.mat`` file, ``subject`` of the bundle); ``plane`` is the scan plane when known;
    ``border`` is ``tumorBorder`` as stored (x1, y1, x2, y2, ... in MATLAB's 1-based pixel coordinates).
    """

    file_id: int
    image: np.ndarray
    label: int
    subject: str
    mask: np.ndarray
    border: np.ndarray | None = None
    cvind: int = 0
    plane: str = ""


@dataclass
class SliceSet:
    """Preprocessed slices ready for models.

    ``images`` uint8 (N, S, S); ``masks`` bool (N, S, S); ``labels`` int64 class indices 0..2; ``file_ids``
    int64; ``subjects`` str (N,) the patient each slice belongs to (the unit of every split); ``planes``
    str (N,) (``""`` when unknown); ``cvind`` int64 (0 when unknown).
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    file_ids: np.ndarray
    subjects: np.ndarray
    planes: np.ndarray
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
                        self.subjects[index], self.planes[index], self.cvind[index], self.source,
                        self.fingerprint, self.skipped)


MAX_IMAGE_SIDE = 8192
"""Largest image side (px) any reader accepts; larger declared sizes are refused before anything is allocated."""
MAX_BYTES_ENV = "BRAIN_TUMOUR_MAX_BYTES"
DEFAULT_MAX_BYTES = 2 * 1024**3


def max_array_bytes() -> int:
    """Largest array (a decoded image, a resampled volume, a shard set) any reader allocates, in bytes:
    ``$BRAIN_TUMOUR_MAX_BYTES`` or 2 GiB."""
    value = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_BYTES
    if not (value.isascii() and value.isdecimal()) or int(value) < 1:
        raise DataError(f"${MAX_BYTES_ENV} must be a positive number of bytes, got {value!r}")
    return int(value)


def check_allocation(nbytes: int, what: str) -> None:
    """Refuse an allocation above :func:`max_array_bytes` with a :class:`DataError` that says ``what`` asked."""
    if nbytes > max_array_bytes():
        raise DataError(f"{what} would need {nbytes:,} bytes, over the {max_array_bytes():,}-byte limit "
                        f"(raise ${MAX_BYTES_ENV} if this input is genuine)")
