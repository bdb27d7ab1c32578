"""Synthetic figshare ``.mat`` files in exactly the layout of the real release, for tests and benchmarks.

MATLAB v7.3 files are HDF5 with a 512-byte userblock whose first 128 bytes are MATLAB's text
header; every variable carries a ``MATLAB_class`` attribute (``struct`` groups list their fields
in ``MATLAB_fields``), char arrays are uint16 codes with ``MATLAB_int_decode = 2``, logicals are
uint8, empty arrays store their shape with ``MATLAB_empty = 1``, and arrays are written with
their axes reversed (column-major), so h5py shows the transpose of the MATLAB array. Large
arrays are deflate-compressed, as MATLAB's ``save -v7.3`` does by default. MATLAB v5 files are
written with :func:`scipy.io.savemat` (a dict becomes a struct).

Images are synthetic but shaped like the data: a bright elliptical brain inside a skull ring,
smooth intensity variation, noise, and a tumour whose pixels match its mask and border polygon
(enhancing blob for meningioma and pituitary, rim-enhancing for glioma).
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from scipy import ndimage
from skimage.draw import polygon

from datasets.core import SliceRecord

MatValue = np.ndarray | str | dict

CREATED = dt.datetime(2015, 9, 17, 10, 0, 0)
USERBLOCK = 512
_CLASSES = {"float64": "double", "float32": "single", "int16": "int16", "uint16": "uint16",
            "int32": "int32", "uint8": "uint8", "bool": "logical"}


def mat73_header(created: dt.datetime = CREATED, platform: str = "GLNXA64") -> bytes:
    """MATLAB's 128-byte v7.3 header: text padded to 116 bytes, 8-byte subsystem offset, version 0x0200, 'IM'."""
    text = (f"MATLAB 7.3 MAT-file, Platform: {platform}, Created on: {created.strftime('%a %b %d %H:%M:%S %Y')} "
            "HDF5 schema 1.00 .").encode("ascii")
    return text.ljust(116, b" ") + bytes(8) + b"\x00\x02" + b"IM"


def write_mat_v73(path: str | os.PathLike, variables: dict[str, MatValue], created: dt.datetime = CREATED) -> Path:
    """Write ``variables`` (MATLAB-shaped arrays, str for char, dict for struct) as a MATLAB v7.3 file."""
    path = Path(path)
    with h5py.File(path, "w", userblock_size=USERBLOCK) as handle:
        for name, value in variables.items():
            _write_h5_value(handle, name, value)
    with open(path, "r+b") as handle:
        handle.write(mat73_header(created))
    return path


def write_mat_v5(path: str | os.PathLike, variables: dict[str, MatValue]) -> Path:
    """Write ``variables`` as a MATLAB v5 file (what mirrors that re-save the data produce)."""
    path = Path(path)
    scipy.io.savemat(path, variables, format="5", do_compression=True)
    return path


def slice_fields(record: SliceRecord) -> dict[str, MatValue]:
    """The ``cjdata`` struct of ``record`` with MATLAB's shapes (1x1 label, 1xK border)."""
    border = np.zeros((0, 0)) if record.border is None else np.asarray(record.border, np.float64)[None, :]
    return {"label": np.array([[float(record.label)]]), "PID": record.subject, "image": record.image,
            "tumorBorder": border, "tumorMask": np.asarray(record.mask, dtype=bool)}


def write_slice(path: str | os.PathLike, record: SliceRecord, version: str = "7.3") -> Path:
    """Write one figshare slice file (``cjdata`` struct) as MATLAB v7.3 or v5."""
    writers = {"7.3": write_mat_v73, "5": write_mat_v5}
    if version not in writers:
        raise ValueError(f"version must be one of {sorted(writers)}, got {version!r}")
    return writers[version](path, {"cjdata": slice_fields(record)})


def write_cvind(path: str | os.PathLike, cvind: np.ndarray, version: str = "7.3") -> Path:
    """Write ``cvind.mat``: variable ``cvind``, 1xN doubles (fold id of ``<i>.mat`` at column ``i``)."""
    value = {"cvind": np.asarray(cvind, dtype=np.float64)[None, :]}
    return write_mat_v73(path, value) if version == "7.3" else write_mat_v5(path, value)


def synthetic_slice(rng: np.random.Generator, size: int, label: int,
                    dtype: type = np.int16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A brain-like ``size x size`` image, its tumour mask and border (x1, y1, ... 1-based) for ``label`` 1..3."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64) / size
    centre = 0.5 + rng.normal(0, 0.02, 2)
    radii = np.array([0.42, 0.36]) * rng.uniform(0.9, 1.05, 2)
    radius = np.hypot((rows - centre[0]) / radii[0], (cols - centre[1]) / radii[1])
    brain = radius < 1.0
    skull = (radius >= 1.0) & (radius < 1.08)
    shading = 1.0 + 0.15 * np.sin(2 * np.pi * (rows * rng.uniform(0.5, 1.5) + cols * rng.uniform(0.5, 1.5)))
    image = 380.0 * brain * shading + 650.0 * skull
    mask, border = _tumour(rng, size, label, centre, radii)
    if label == 2:  # glioma: enhancing rim around a darker necrotic core
        core = ndimage.binary_erosion(mask, iterations=max(1, size // 64))
        image = image + 320.0 * (mask & ~core) - 120.0 * core
    else:
        image = image + 300.0 * mask
    image = ndimage.gaussian_filter(image, sigma=max(0.5, size / 256)) + rng.normal(0, 12.0, image.shape)
    image = np.clip(image, 0, None)
    if np.issubdtype(dtype, np.integer):
        image = np.rint(image)
    return image.astype(dtype), mask, border


def _tumour(rng: np.random.Generator, size: int, label: int, centre: np.ndarray,
            radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tumour polygon by class (meningioma near the skull, glioma in a hemisphere, pituitary central-low)."""
    angle = rng.uniform(0, 2 * np.pi)
    offsets = {1: 0.75 * np.array([np.sin(angle), np.cos(angle)]),
               2: np.array([rng.uniform(-0.5, 0.5), rng.choice([-0.45, 0.45])]),
               3: np.array([0.25, 0.0]) + rng.normal(0, 0.03, 2)}
    scale = {1: 0.10, 2: 0.14, 3: 0.07}[label] * rng.uniform(0.8, 1.2)
    row, col = (centre + offsets[label] * radii) * size
    theta = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    wobble = 1.0 + 0.12 * np.sin(3 * theta + rng.uniform(0, 2 * np.pi))
    ys = row + scale * size * wobble * np.sin(theta)
    xs = col + 0.8 * scale * size * wobble * np.cos(theta)
    mask = np.zeros((size, size), dtype=bool)
    mask[polygon(ys, xs, mask.shape)] = True  # pixel centres inside the polygon, 0-based
    border = np.round(np.column_stack([xs + 1, ys + 1]).ravel(), 4)  # MATLAB: x = column, y = row, 1-based
    return mask, border


def make_records(count: int, size: int = 64, small_size: int | None = 32, small_every: int = 4,
                 slices_per_patient: int = 3, seed: int = 0) -> list[SliceRecord]:
    """``count`` slices (file ids 1..count) in runs of one patient each, like the release.

    Patient ``p`` has label ``p % 3 + 1`` and fold ``p % 5 + 1``; every ``small_every``-th patient's
    slices are ``small_size`` (the release mixes 512 and 256) unless ``small_size`` is None.
    """
    rng = np.random.default_rng(seed)
    num_patients = -(-count // slices_per_patient)
    pids = rng.choice(np.arange(100000, 999999), size=num_patients, replace=False)
    records = []
    for index in range(count):
        patient = index // slices_per_patient
        label = patient % 3 + 1
        small = small_size is not None and small_every > 0 and patient % small_every == small_every - 1
        image, mask, border = synthetic_slice(rng, small_size if small else size, label)
        records.append(SliceRecord(file_id=index + 1, image=image, label=label, subject=str(pids[patient]),
                                   mask=mask, border=border, cvind=patient % 5 + 1))
    return records


def write_mat_folder(folder: str | os.PathLike, count: int = 12, size: int = 64, small_size: int | None = 32,
                     small_every: int = 4, slices_per_patient: int = 3, seed: int = 0, version: str = "7.3",
                     cvind: bool = True) -> list[SliceRecord]:
    """Write ``1.mat .. <count>.mat`` (and ``cvind.mat``) into ``folder``; returns the expected records."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records = make_records(count, size=size, small_size=small_size, small_every=small_every,
                           slices_per_patient=slices_per_patient, seed=seed)
    for record in records:
        write_slice(folder / f"{record.file_id}.mat", record, version=version)
    if cvind:
        write_cvind(folder / "cvind.mat", np.array([r.cvind for r in records]), version=version)
    else:
        for record in records:
            record.cvind = 0  # what a reader reports without cvind.mat
    return records


def _write_h5_value(parent: h5py.Group, name: str, value: MatValue) -> None:
    if isinstance(value, dict):
        group = parent.create_group(name)
        group.attrs["MATLAB_class"] = np.bytes_("struct")
        names = np.empty(len(value), dtype=object)
        names[:] = [np.frombuffer(key.encode("ascii"), dtype="S1") for key in value]
        group.attrs.create("MATLAB_fields", names, dtype=h5py.vlen_dtype(np.dtype("S1")))
        for key, field in value.items():
            _write_h5_value(group, key, field)
        return
    if isinstance(value, str):
        data, matlab_class = np.array([[ord(c) for c in value]], dtype=np.uint16), "char"
    else:
        data = np.atleast_2d(np.asarray(value))
        matlab_class = _CLASSES[data.dtype.name]
        data = data.astype(np.uint8) if data.dtype == bool else data
    if data.size == 0:  # MATLAB stores an empty array's dimensions as uint64 data
        dataset = parent.create_dataset(name, data=np.array(data.shape, dtype=np.uint64))
        dataset.attrs["MATLAB_empty"] = np.uint8(1)
    else:
        compress = {"compression": "gzip", "compression_opts": 3} if data.size >= 256 else {}
        dataset = parent.create_dataset(name, data=np.ascontiguousarray(data.T), **compress)
    dataset.attrs["MATLAB_class"] = np.bytes_(matlab_class)
    if matlab_class == "char":
        dataset.attrs["MATLAB_int_decode"] = np.int32(2)
