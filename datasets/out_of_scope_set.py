"""An out-of-scope set: images that are not T1-CE brain slices showing a tumour, built from ``../shared`` and
scikit-image alone (never from figshare, so never from a test fold), to choose and check the classifiers'
out-of-scope threshold.

    python -m datasets.out_of_scope_set [--source ../shared/data] [--out runs/out_of_scope]

Sources (``group``: the unit every split keeps whole):

* ``healthy_brain``: axial slices of the healthy IXI T1 volumes (``volumes_extra/healthy`` and ``volumes``;
  non-contrast T1, no tumour), through the middle of the head; group: the subject.
* ``tumour_free_brain``: axial slices of the tumour volumes whose segmentation sits beside them
  (``volumes_extra``), at least :data:`TUMOUR_MARGIN_MM` from any tumour voxel; group: the patient.
* ``photographs``: the pictures scikit-image ships (no download), whole and two corner crops; group: the picture.
* ``blank`` (constant images) and ``noise`` (Gaussian, uniform, salt-and-pepper, smooth); group: the image.

Brain slices are shown as figshare shows them (:func:`datasets.external_glioma.figshare_slice`). Every group is
assigned to the ``fit`` or the ``report`` part (alternating in name order within a source): the threshold is
chosen on ``fit`` and AUROC reported on ``report``. Written as PNGs to ``<out>/<source>/`` with
``<out>/README.json`` (provenance, part of every file), atomically and deterministically; derived data, never
committed. Sources whose files are missing are listed as skipped, so the set still builds without ``../shared``.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from datasets.core import DataError
from datasets.external_glioma import GLIOMA_GRADES, figshare_slice, png_bytes, segmentation_beside
from datasets.transforms import GEOMETRIES, preprocess_slice
from datasets.user_slices import read_slice
from datasets.volumes import CLASS_NAMES as VOLUME_CLASSES
from datasets.volumes import VolumeError, read_header, scan_volumes
from experiment.atomic import atomic_write_bytes, atomic_write_json
from experiment.cli import reports_user_errors, strip_debug_flag

VERSION = 1
"""Bump when the set's content changes, so an older folder is rebuilt."""
DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_OUT = Path("runs/out_of_scope")
SOURCES = ("healthy_brain", "tumour_free_brain", "photographs", "blank", "noise")
PARTS = ("fit", "report")
SLICE_SPACING_MM = 7.0
"""Figshare's slice spacing (6 mm slices, 1 mm gap): neighbouring slices of the set are not near-copies."""
MIN_HEAD_FRACTION = 0.7
"""Slices whose head (or brain) area is at least this share of the volume's largest: the middle of the head."""
TUMOUR_MARGIN_MM = 10.0
PHOTOGRAPHS = ("astronaut", "brick", "camera", "cell", "chelsea", "checkerboard", "clock", "coffee", "coins",
               "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
               "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text")
"""Pictures in scikit-image's own package data (``skimage.data``), read without any download."""
CROP_FRACTION = 2 / 3
NOISE_SIDE = 512


@dataclass
class OutOfScopeSet:
    """Preprocessed out-of-scope images: ``images`` uint8 (N, S, S) with ``files``, ``sources``, ``groups``
    and ``parts`` (``fit`` or ``report``) per image."""

    images: np.ndarray
    files: np.ndarray
    sources: np.ndarray
    groups: np.ndarray
    parts: np.ndarray

    def select(self, part: str | None = None, source: str | None = None) -> np.ndarray:
        """Boolean index of the images of ``part`` and ``source`` (None: any)."""
        return (self.parts == (part or self.parts)) & (self.sources == (source or self.sources))


def build(source: str | Path = DEFAULT_SOURCE, out: str | Path = DEFAULT_OUT,
          photographs: tuple[str, ...] = PHOTOGRAPHS) -> dict[str, Any]:
    """Write every image and ``README.json`` under ``out`` (``photographs``: which of :data:`PHOTOGRAPHS`);
    return the README's content."""
    source, out = Path(source), Path(out)
    entries: list[dict[str, str]] = []
    skipped: list[dict[str, str]] = []
    for name, images in (("healthy_brain", _healthy_slices(source, skipped)),
                         ("tumour_free_brain", _tumour_free_slices(source, skipped)),
                         ("photographs", _photographs(photographs)), ("blank", _blank()), ("noise", _noise())):
        for group, stem, image in images:
            file = f"{name}/{stem}.png"
            atomic_write_bytes(out / file, png_bytes(image))
            entries.append({"file": file, "source": name, "group": group})
    for name in SOURCES:
        groups = sorted({e["group"] for e in entries if e["source"] == name})
        for entry in (e for e in entries if e["source"] == name):
            entry["part"] = PARTS[groups.index(entry["group"]) % 2]
    listed = {e["file"] for e in entries}
    for stale in out.glob("*/*.png"):
        if stale.relative_to(out).as_posix() not in listed:
            stale.unlink()
    readme = {
        "what": "out-of-scope images (not T1-CE brain slices showing a tumour) for choosing and checking the "
                "out-of-scope threshold; built from ../shared and scikit-image only, never from figshare",
        "builder": "datasets/out_of_scope_set.py", "version": VERSION, "source": source.as_posix(),
        "split": "groups alternate between 'fit' (threshold) and 'report' (AUROC) in name order within a source",
        "slice_spacing_mm": SLICE_SPACING_MM, "min_head_fraction": MIN_HEAD_FRACTION,
        "tumour_margin_mm": TUMOUR_MARGIN_MM,
        "counts": {name: sum(e["source"] == name for e in entries) for name in SOURCES},
        "files": entries, "skipped": skipped,
    }
    atomic_write_json(out / "README.json", readme)
    return readme


def ensure_built(out: str | Path = DEFAULT_OUT, source: str | Path = DEFAULT_SOURCE) -> Path:
    """``out``, (re)built when it lacks a README.json of this :data:`VERSION`."""
    out = Path(out)
    try:
        current = json.loads((out / "README.json").read_text(encoding="utf-8")).get("version") == VERSION
    except (OSError, ValueError):
        current = False
    if not current:
        build(source, out)
    return out


def load_out_of_scope(folder: str | Path, image_size: int, geometry: str = GEOMETRIES[0]) -> OutOfScopeSet:
    """The set under ``folder``, read and preprocessed (in slice ``geometry``) as ``predict.py`` reads a user's
    files.

    Raises:
        DataError: no README.json, or a listed file that cannot be read.
    """
    folder = Path(folder)
    try:
        entries = json.loads((folder / "README.json").read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"{folder}: not an out-of-scope set (build it with python -m datasets.out_of_scope_set): "
                        f"{error}") from error
    images = np.stack([preprocess_slice(read_slice(folder / e["file"]), image_size, geometry=geometry)
                       for e in entries])
    return OutOfScopeSet(images, *(np.array([e[key] for e in entries]) for key in ("file", "source", "group",
                                                                                    "part")))


Slices = Iterator[tuple[str, str, np.ndarray]]
"""``(group, file stem, uint8 image)`` per image of one source."""


def _healthy_slices(source: Path, skipped: list[dict[str, str]]) -> Slices:
    """Axial slices through the middle of the head of every IXI subject once."""
    seen = set()
    for path in sorted([*source.glob("volumes/IXI*.nii*"), *source.glob("volumes_extra/healthy/IXI*.nii*")]):
        subject = path.name.split("-")[0]
        if subject in seen:
            continue
        seen.add(subject)
        yield from _volume_slices(path, subject, None, skipped)
    if not seen:
        skipped.append({"source": "healthy_brain", "reason": f"no IXI*.nii.gz under {source}/volumes*"})


def _tumour_free_slices(source: Path, skipped: list[dict[str, str]]) -> Slices:
    """Axial brain slices far from the tumour, one volume per patient, of the segmented tumour volumes."""
    try:
        scan = scan_volumes(source / "volumes_extra", layout="csv", strict=False)
    except VolumeError as error:
        skipped.append({"source": "tumour_free_brain", "reason": str(error)})
        return
    seen = set()
    for record in scan.records:
        segmentation = segmentation_beside(record.path)
        if VOLUME_CLASSES[record.label] not in GLIOMA_GRADES or segmentation is None or record.subject in seen:
            continue
        seen.add(record.subject)
        yield from _volume_slices(record.path, record.subject, segmentation, skipped)


def _volume_slices(path: Path, subject: str, segmentation: Path | None, skipped: list[dict[str, str]]) -> Slices:
    """Slices :data:`SLICE_SPACING_MM` apart where the head is large and (with a segmentation) no tumour is near."""
    try:
        image = nib.as_closest_canonical(read_header(path))
        data = np.asarray(image.dataobj, dtype=np.float32).reshape(image.shape[:3])
        zooms = np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0))
        low, high = np.percentile(data, [1.0, 99.5])
        area = (data > low + 0.1 * (high - low)).sum(axis=(0, 1))
        keep = area >= MIN_HEAD_FRACTION * area.max()
        if segmentation is not None:
            tumour = np.asarray(nib.as_closest_canonical(read_header(segmentation)).dataobj, dtype=np.float32)
            near = ndimage.binary_dilation(np.rint(tumour).reshape(data.shape).any(axis=(0, 1)),
                                           iterations=max(1, round(TUMOUR_MARGIN_MM / zooms[2])))
            keep &= ~near
        anchor, step = int(area.argmax()), max(1, round(SLICE_SPACING_MM / zooms[2]))
        for z in (z for z in np.flatnonzero(keep).tolist() if (z - anchor) % step == 0):
            yield subject, f"{subject}_z{z}", figshare_slice(data[:, :, z:z + 1], image.affine, path)
    except VolumeError as error:
        skipped.append({"source": path.name, "reason": str(error)})


def _photographs(names: tuple[str, ...]) -> Slices:
    """Each picture whole and cropped to its top-left and bottom-right corners (:data:`CROP_FRACTION` of each
    side)."""
    from skimage import data as pictures

    for name in names:
        picture = np.asarray(getattr(pictures, name)())
        picture = picture[..., :3] if picture.ndim == 3 else picture
        if picture.dtype != np.uint8:
            picture = np.rint(np.clip(picture, 0, 1) * 255).astype(np.uint8)
        height, width = (round(n * CROP_FRACTION) for n in picture.shape[:2])
        yield name, name, picture
        yield name, f"{name}_top_left", np.ascontiguousarray(picture[:height, :width])
        yield name, f"{name}_bottom_right", np.ascontiguousarray(picture[-height:, -width:])


def _blank() -> Slices:
    for value in (0, 128, 255):
        yield f"constant{value}", f"constant{value}", np.full((NOISE_SIDE, NOISE_SIDE), value, dtype=np.uint8)


def _noise() -> Slices:
    """Two seeded images of each kind of noise."""
    shape = (NOISE_SIDE, NOISE_SIDE)
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        kinds = {"gaussian": rng.normal(128, 40, shape), "uniform": rng.uniform(0, 255, shape),
                 "salt_pepper": np.choose(np.digitize(rng.random(shape), [0.1, 0.9]), [0.0, 128.0, 255.0]),
                 "smooth": ndimage.gaussian_filter(rng.normal(0, 1, shape), 8 * (seed + 1))}
        for kind, values in kinds.items():
            span = np.ptp(values) or 1.0
            name = f"{kind}{seed}"
            yield name, name, np.rint((values - values.min()) * (255.0 / span)).astype(np.uint8)


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="shared data folder (volumes*)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(strip_debug_flag(sys.argv[1:] if argv is None else argv))
    readme = build(args.source, args.out)
    counts = ", ".join(f"{name} {count}" for name, count in readme["counts"].items())
    print(f"wrote {sum(readme['counts'].values())} images to {args.out} ({counts}); skipped {len(readme['skipped'])}")


if __name__ == "__main__":
    main()
