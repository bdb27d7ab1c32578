"""A user's slices for prediction and evaluation: ``.mat`` (figshare ``cjdata``), ``.npy``, ``.png``, ``.jpg``.

Prediction needs only the image, so a ``.mat`` file is read by its ``cjdata.image`` whatever its name, and no
label, PID or index is required. Every reader checks the declared size before decoding: image sides against
:data:`datasets.core.MAX_IMAGE_SIDE`, bytes against :func:`datasets.core.check_allocation`; Pillow's
decompression-bomb warning is an error and only PNG and JPEG decoders are used; ``.npy`` files are read without
pickle and only when they hold real numbers. :func:`find_slices` walks folders (links that lead out of a folder
are not followed) and says which files it passed over and why.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datasets.core import MAX_IMAGE_SIDE, DataError, check_allocation
from datasets.matlab import CVIND_FILE, STRUCT, read_mat_variable

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
SUFFIXES = (".mat", ".npy", *PICTURE_SUFFIXES)
PICTURE_FORMATS = ("PNG", "JPEG")
"""The only Pillow decoders used, whatever a file's content claims."""
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "F")
"""Pillow modes read as numbers (16/32-bit); every other mode is converted to 8-bit grey."""


@dataclass(frozen=True)
class InputFile:
    """A file to read (``path``) and the name to show for it (relative to the folder it was found in)."""

    path: Path
    name: str


@dataclass
class InputScan:
    """What :func:`find_slices` found: slice files, and ``(name, reason)`` for files passed over."""

    files: list[InputFile] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def read_slice(path: str | os.PathLike) -> np.ndarray:
    """The raw 2-D slice stored in ``path`` (.mat ``cjdata.image``, .npy, .png, .jpg), real-valued and finite.

    Raises:
        DataError: an unsupported suffix, an unreadable, oversized or truncated file, or content that is not a
            finite, real, non-empty 2-D image; the message names the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported input type {suffix!r}; expected one of {SUFFIXES}")
    readers = {".mat": _read_mat_image, ".npy": _read_npy}
    image = readers.get(suffix, _read_picture)(path)
    _check_pixels(path, image)
    return image


def find_slices(inputs: list[str | os.PathLike]) -> InputScan:
    """The slice files named by ``inputs``; folders are walked recursively in sorted order.

    Names are relative to the folder when ``inputs`` is one folder, else the input as given joined with the
    path below it. Hidden files and folders are ignored; other files that cannot be slices (another suffix,
    the figshare ``cvind.mat``, links leading out of the folder) are listed in ``skipped``.

    Raises:
        DataError: an input that does not exist.
    """
    scan = InputScan()
    for item in map(Path, inputs):
        if item.is_dir():
            _walk(item, item if len(inputs) == 1 else None, scan)
        elif item.exists():
            _add(item, item.as_posix(), scan)
        else:
            raise DataError(f"input does not exist: {item}")
    return scan


def _walk(root: Path, relative_to: Path | None, scan: InputScan) -> None:
    inside, found = root.resolve(), InputScan()
    for folder, dirs, files in os.walk(root):  # links to folders are listed, never followed
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in (n for n in [*files, *dirs] if not n.startswith(".")):
            path = Path(folder) / name
            shown = path.relative_to(relative_to).as_posix() if relative_to else path.as_posix()
            if path.is_symlink() and not path.resolve().is_relative_to(inside):
                found.skipped.append((shown, f"a link leading out of {root}; not followed"))
            elif name in files:
                _add(path, shown, found)
    scan.files += sorted(found.files, key=lambda f: f.name)
    scan.skipped += sorted(found.skipped)


def _add(path: Path, shown: str, scan: InputScan) -> None:
    if path.suffix.lower() not in SUFFIXES:
        scan.skipped.append((shown, f"not a slice file (expected {', '.join(SUFFIXES)})"))
    elif path.name.lower() == CVIND_FILE:
        scan.skipped.append((shown, "the figshare folds file, not a slice"))
    else:
        scan.files.append(InputFile(path, shown))


def _read_mat_image(path: Path) -> np.ndarray:
    fields = read_mat_variable(path, STRUCT)
    image = fields.get("image") if isinstance(fields, dict) else None
    if not isinstance(image, np.ndarray):
        raise DataError(f"{path}: not a figshare slice ({STRUCT!r} is not a struct with an 'image' field)")
    return image


def _read_npy(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(handle)
    except Exception as error:  # numpy raises ValueError, OSError, SyntaxError for foreign files
        raise DataError(f"{path}: not a readable .npy file ({type(error).__name__}: {error})") from error
    if dtype.hasobject or dtype.names is not None:
        raise DataError(f"{path}: holds {'Python objects' if dtype.hasobject else 'records'} ({dtype}); "
                        "expected an array of real numbers")
    _check_kind(path, dtype)
    _check_declared(path, shape, dtype.itemsize)
    try:
        return np.load(path, allow_pickle=False)
    except Exception as error:  # a truncated body
        raise DataError(f"{path}: truncated or corrupt .npy file ({type(error).__name__}: {error})") from error


def _read_picture(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=PICTURE_FORMATS) as handle:
                wide = handle.mode in _WIDE_MODES
                _check_declared(path, (handle.height, handle.width), 4 if wide else len(handle.getbands()))
                return np.asarray(handle) if wide else np.asarray(handle.convert("L"))
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DataError(f"{path}: refused as a decompression bomb ({error})") from error
    except Exception as error:  # Pillow raises many types for damaged or foreign files
        raise DataError(f"{path}: cannot read it as {path.suffix.lower()} ({type(error).__name__}: {error})") \
            from error


def _check_declared(path: Path, shape: tuple[int, ...], itemsize: int) -> None:
    """Refuse a declared shape that is not 2-D, has a side over the limit or needs too many bytes."""
    if len(shape) != 2:
        raise DataError(f"{path}: expected a 2-D image, got an array of shape {tuple(shape)}")
    if max(shape) > MAX_IMAGE_SIDE:
        raise DataError(f"{path}: image of {shape[1]}x{shape[0]} px exceeds {MAX_IMAGE_SIDE} px a side; not decoded")
    check_allocation(int(np.prod(shape, dtype=np.int64)) * itemsize, f"{path}: a {shape[1]}x{shape[0]} image")


def _check_kind(path: Path, dtype: np.dtype) -> None:
    if dtype.kind == "c":
        raise DataError(f"{path}: complex-valued pixels ({dtype}); expected real numbers")
    if dtype.kind not in "biuf":
        raise DataError(f"{path}: expected numeric pixels, got dtype {dtype}")


def _check_pixels(path: Path, image: np.ndarray) -> None:
    _check_kind(path, image.dtype)
    if image.ndim != 2 or image.size == 0:
        raise DataError(f"{path}: expected a non-empty 2-D image, got an array of shape {image.shape}")
    if max(image.shape) > MAX_IMAGE_SIDE:
        raise DataError(f"{path}: image of {image.shape[1]}x{image.shape[0]} px exceeds {MAX_IMAGE_SIDE} px a side")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise DataError(f"{path}: {int((~np.isfinite(image)).sum())} pixels are NaN or infinite")
