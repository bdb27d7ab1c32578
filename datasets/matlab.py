"""Readers for the original figshare MATLAB files (``<index>.mat`` slices and ``cvind.mat``).

Each slice file holds one struct ``cjdata`` with fields ``label`` (1 meningioma, 2 glioma,
3 pituitary), ``PID`` (patient id, a char array), ``image`` (int16, 512x512 or 256x256),
``tumorBorder`` (1xK doubles: x1, y1, x2, y2, ... in 1-based pixel coordinates) and
``tumorMask`` (logical, same shape as ``image``). The release is MATLAB v7.3, i.e. HDF5 behind a
512-byte MATLAB header; mirrors re-save it as MATLAB v5. Two layout details matter for v7.3:

* HDF5 stores MATLAB's column-major arrays with their axes reversed, so h5py yields the
  transpose of what MATLAB shows; every array is transposed back here.
* char arrays are uint16 character codes marked ``MATLAB_class = "char"``; they are decoded to str.

Nothing in a file may make the reader look elsewhere or allocate without bound: HDF5 links (soft, external),
external raw storage and virtual datasets are refused, and every dataset's declared shape is checked against
:data:`datasets.core.MAX_IMAGE_SIDE` and the allocation limit before it is read.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import scipy.io

from datasets.core import MAX_IMAGE_SIDE, DataError, SliceRecord, check_allocation
from experiment.progress import progress

STRUCT = "cjdata"
FIELDS = ("label", "PID", "image", "tumorBorder", "tumorMask")
CVIND_FILE = "cvind.mat"
LABELS = (1, 2, 3)

_V73_HEADER = b"MATLAB 7.3 MAT-file"
_V5_HEADER = b"MATLAB 5.0 MAT-file"

MatValue = np.ndarray | str


class MatFileError(DataError):
    """One ``.mat`` file is unreadable or does not hold a valid figshare slice.

    ``path`` is the file and ``reason`` the problem; the message names both.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def read_mat_slice(path: str | os.PathLike) -> SliceRecord:
    """Read and validate one figshare slice file (v7.3 or v5) into a :class:`SliceRecord`.

    ``file_id`` comes from the file name ``<index>.mat``; ``subject`` is the patient id (``PID``).

    Raises:
        MatFileError: not a .mat file, truncated, missing ``cjdata`` or a field, bad label,
            image not 2-D, mask shape differing from the image, NaN/inf pixels.
    """
    path = Path(path)
    file_id = _file_id(path)
    fields = read_mat_variable(path, STRUCT)
    if not isinstance(fields, dict):
        raise MatFileError(path, f"variable {STRUCT!r} is not a struct")
    return _slice_record(path, file_id, fields)


def read_cvind(path: str | os.PathLike) -> np.ndarray:
    """The authors' fold id per figshare index from ``cvind.mat``: int64 array, entry ``i - 1`` for ``<i>.mat``."""
    path = Path(path)
    value = read_mat_variable(path, "cvind")
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf":
        raise MatFileError(path, "variable 'cvind' is not a numeric array")
    folds = value.ravel().astype(np.float64)
    if folds.size == 0 or not np.all(np.isfinite(folds)) or np.any(folds != np.round(folds)) or folds.min() < 1:
        raise MatFileError(path, "cvind must hold positive integer fold ids")
    return folds.astype(np.int64)


def scan_mat_folder(folder: str | os.PathLike, strict: bool = True,
                    show_progress: bool = True) -> tuple[list[SliceRecord], list[tuple[str, str]]]:
    """Read every ``<index>.mat`` slice in ``folder``, sorted by file id.

    ``cvind`` is attached from ``cvind.mat`` when the folder holds one (0 otherwise).

    Args:
        folder: a folder of figshare slice files.
        strict: raise at the first bad file; with ``False`` bad files are skipped and returned
            as ``(file name, reason)`` pairs for the caller to report.
        show_progress: show a progress bar (plain lines when not in a terminal).
    Raises:
        DataError: no .mat slice files, no readable slice at all, duplicate file ids, a bad
            ``cvind.mat``, or (strict) the first bad file as :class:`MatFileError`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder of figshare .mat files")
    paths = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".mat" and p.name.lower() != CVIND_FILE),
                   key=_sort_key)
    if not paths:
        raise DataError(f"{folder} holds no figshare .mat slice files (<index>.mat)")
    records: list[SliceRecord] = []
    skipped: list[tuple[str, str]] = []
    for path in progress(paths, desc=f"read {folder.name}", disable=not show_progress):
        try:
            records.append(read_mat_slice(path))
        except MatFileError as error:
            if strict:
                raise
            skipped.append((path.name, error.reason))
    if not records:
        raise DataError(f"no readable slice in {folder}: all {len(paths)} .mat files were skipped, "
                        f"first {skipped[0][0]}: {skipped[0][1]}")
    _check_unique_ids(folder, records)
    cvind_path = folder / CVIND_FILE
    if cvind_path.is_file():
        _attach_cvind(cvind_path, records)
    return records, skipped


def read_mat_variable(path: str | os.PathLike, name: str) -> dict[str, MatValue] | MatValue:
    """One top-level variable of a v7.3 or v5 ``.mat`` file in MATLAB's own orientation.

    A struct becomes a dict of its fields; char arrays become str; numeric arrays keep their dtype.
    """
    path = Path(path)
    version = mat_version(path)
    try:
        return _read_hdf5(path, name) if version == "7.3" else _read_v5(path, name)
    except MatFileError:
        raise
    except Exception as error:  # h5py and scipy raise many types for damaged files
        kind = "HDF5 (MATLAB v7.3)" if version == "7.3" else "MATLAB v5"
        raise MatFileError(path, f"truncated or corrupt {kind} file ({type(error).__name__}: {error})") from error


def mat_version(path: str | os.PathLike) -> str:
    """``"7.3"`` (HDF5) or ``"5"``, from the file header; raises :class:`MatFileError` for anything else."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            header = handle.read(128)
    except OSError as error:
        raise MatFileError(path, f"cannot read file ({error.strerror or error})") from error
    if header.startswith(_V73_HEADER) or h5py.is_hdf5(path):
        return "7.3"
    if header.startswith(_V5_HEADER):
        return "5"
    raise MatFileError(path, f"not a MATLAB .mat file (expected a v5 or v7.3 header, found {header[:20]!r})")


def _read_hdf5(path: Path, name: str) -> dict[str, MatValue] | MatValue:
    with h5py.File(path, "r") as handle:
        if name not in handle:
            raise MatFileError(path, f"no variable {name!r} (file holds {sorted(handle.keys())})")
        node = _local_node(path, handle, name)
        if isinstance(node, h5py.Group):
            children = {key: _local_node(path, node, key) for key in node}
            return {key: _hdf5_value(path, child) for key, child in children.items()
                    if isinstance(child, h5py.Dataset)}
        return _hdf5_value(path, node)


def _local_node(path: Path, parent: h5py.Group, name: str) -> h5py.Group | h5py.Dataset:
    """``parent[name]`` when it is a plain object of this file; links that lead elsewhere are refused."""
    link = parent.get(name, getlink=True)
    if not isinstance(link, h5py.HardLink):
        raise MatFileError(path, f"{name!r} is a {type(link).__name__}; links to other objects or files are "
                                 "not read")
    return parent[name]


def _hdf5_value(path: Path, dataset: h5py.Dataset) -> MatValue:
    """A dataset as MATLAB sees it: axes reversed back, chars decoded, empties empty; its storage and declared
    size are checked before anything is read."""
    if dataset.is_virtual or dataset.external:
        raise MatFileError(path, f"{dataset.name!r} keeps its data outside this file (external or virtual "
                                 "storage); refused")
    if any(side > MAX_IMAGE_SIDE for side in dataset.shape):
        raise MatFileError(path, f"{dataset.name!r} declares shape {dataset.shape}, over {MAX_IMAGE_SIDE} a side")
    check_allocation(int(np.prod(dataset.shape, dtype=np.int64)) * dataset.dtype.itemsize, f"{path}: {dataset.name!r}")
    if dataset.attrs.get("MATLAB_empty", 0):
        return np.zeros((0,), dtype=dataset.dtype)  # MATLAB stores an empty array's shape as its data
    value = np.asarray(dataset[()]).T
    if _attr_text(dataset, "MATLAB_class") == "char":
        return "".join(map(chr, value.ravel()))
    return value


def _attr_text(dataset: h5py.Dataset, name: str) -> str:
    value = dataset.attrs.get(name, b"")
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _read_v5(path: Path, name: str) -> dict[str, MatValue] | MatValue:
    content = scipy.io.loadmat(path, variable_names=[name], squeeze_me=False, struct_as_record=True,
                               chars_as_strings=True)
    if name not in content:
        names = sorted(entry[0] for entry in scipy.io.whosmat(path))
        raise MatFileError(path, f"no variable {name!r} (file holds {names})")
    value = content[name]
    if value.dtype.names is None:
        return _v5_value(value)
    if value.size != 1:
        raise MatFileError(path, f"{name!r} is a {value.shape} struct array, expected a single struct")
    return {field: _v5_value(value[field].flat[0]) for field in value.dtype.names}


def _v5_value(value: np.ndarray) -> MatValue:
    value = np.asarray(value)
    if value.dtype.kind in "US":
        return "".join(str(part) for part in value.ravel())
    return value


def _slice_record(path: Path, file_id: int, fields: dict[str, MatValue]) -> SliceRecord:
    missing = [name for name in FIELDS if name not in fields]
    if missing:
        raise MatFileError(path, f"struct {STRUCT!r} lacks field(s) {missing}; expected {list(FIELDS)}")
    label = _label(path, fields["label"])
    pid = fields["PID"]
    if not isinstance(pid, str) or not pid.strip():
        raise MatFileError(path, f"PID must be a non-empty char array, got {pid!r}")
    image = fields["image"]
    if not isinstance(image, np.ndarray) or image.dtype.kind not in "iuf":
        raise MatFileError(path, "image is not a numeric array")
    if image.ndim != 2 or 0 in image.shape:
        raise MatFileError(path, f"image must be a non-empty 2-D array, got shape {image.shape}")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise MatFileError(path, "image holds NaN or infinite pixels")
    mask = fields["tumorMask"]
    if not isinstance(mask, np.ndarray) or mask.shape != image.shape:
        shape = mask.shape if isinstance(mask, np.ndarray) else type(mask).__name__
        raise MatFileError(path, f"tumorMask shape {shape} differs from image shape {image.shape}")
    border = fields["tumorBorder"]
    if not isinstance(border, np.ndarray) or border.dtype.kind not in "iuf":
        raise MatFileError(path, "tumorBorder is not a numeric array")
    return SliceRecord(file_id=file_id, image=image, label=label, subject=pid.strip(), mask=mask != 0,
                       border=border.astype(np.float64).ravel())


def _label(path: Path, value: MatValue) -> int:
    if not isinstance(value, np.ndarray) or value.size != 1 or value.dtype.kind not in "iuf":
        raise MatFileError(path, f"label must be one number, got {value!r}")
    number = float(value.flat[0])
    if number not in LABELS:
        raise MatFileError(path, f"label {number:g} outside 1..3 (1 meningioma, 2 glioma, 3 pituitary)")
    return int(number)


def _file_id(path: Path) -> int:
    if not _is_index(path.stem):
        raise MatFileError(path, "file name is not <index>.mat with a positive integer index (1, 2, ...)")
    return int(path.stem)


def _is_index(stem: str) -> bool:
    return stem.isascii() and stem.isdecimal() and int(stem) >= 1


def _sort_key(path: Path) -> tuple[int, int, str]:
    return (0, int(path.stem), path.name) if _is_index(path.stem) else (1, 0, path.name)


def _check_unique_ids(folder: Path, records: list[SliceRecord]) -> None:
    duplicates = [index for index, count in Counter(r.file_id for r in records).items() if count > 1]
    if duplicates:
        duplicate = duplicates[0]
        raise DataError(f"{folder} holds several files with index {duplicate} (e.g. 7.mat and 007.mat)")


def _attach_cvind(path: Path, records: list[SliceRecord]) -> None:
    folds = read_cvind(path)
    beyond = [record.file_id for record in records if record.file_id > folds.size]
    if beyond:
        raise DataError(f"{path} lists {folds.size} folds but the folder holds index {beyond[0]}")
    for record in records:
        record.cvind = int(folds[record.file_id - 1])
