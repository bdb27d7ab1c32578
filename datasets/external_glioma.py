"""A small, glioma-only external check built from ``../shared/data/volumes_extra`` alone.

    python -m datasets.external_glioma [--source ../shared/data/volumes_extra] [--out runs/external/glioma]
    python capsule_classifier/evaluate.py MODEL runs/external/glioma

From every glioma volume (``HGG`` or ``LGG`` in ``labels.csv``) whose tumour segmentation sits beside it
(``<case>_seg.nii.gz``, or ``<case>_seg_auto.nii.gz``, an automatic one), one patient once: axial slices through
the tumour, in the format of the figshare slices the classifiers learn from. All glioma volumes there are
post-contrast T1 (T1-CE), the figshare contrast; README.json records each file's contrast and segmentation.

* Tumour: any segmentation label > 0. A slice qualifies with at least :data:`MIN_TUMOUR_MM2` of tumour, the
  median figshare tumour area; of those, every slice :data:`SLICE_SPACING_MM` apart (figshare's 6 mm slices and
  1 mm gap) counting from the largest, so neighbours are not near-copies.
* Geometry: resampled in-plane to figshare's 0.49 mm pixels (linear), shown as figshare shows axial slices
  (anterior at the top, the patient's right on the image left), centred on a canvas of at least 512 px.
* Intensity: clipped to the slice's 0.5-99.5 percentiles and scaled to 8 bits, as the figshare JPEGs are
  display-scaled; the classifiers' own preprocessing runs on top, as on any user image.

Written to ``<out>/glioma/<volume>_z<k>.png`` (``k``: axial index in the volume's RAS grid) with
``<out>/README.json`` (provenance), atomically and deterministically; derived data, never committed. It is a
quick check of how a model meets gliomas from other scanners and hospitals (BraTS: skull-stripped,
registered, 1 mm), only 7 patients and one class: no stand-in for a multi-class external test set, and not
the hidden collection of issue 15.
"""
from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from datasets.core import MAX_IMAGE_SIDE, check_allocation
from datasets.transforms import RobustNormalize
from datasets.volumes import CLASS_NAMES, VolumeError, VolumeRecord, read_header, resample, resampled_grid, scan_volumes
from experiment.atomic import atomic_write_bytes, atomic_write_json
from experiment.cli import reports_user_errors, strip_debug_flag

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "volumes_extra"
DEFAULT_OUT = Path("runs/external/glioma")
CLASS_FOLDER = "glioma"
GLIOMA_GRADES = ("HGG", "LGG")
PIXEL_MM = 0.49
"""Figshare's in-plane pixel size (512 x 512 slices)."""
CANVAS_PX = 512
MIN_TUMOUR_MM2 = 826.0
"""Median tumour area of the figshare slices (856 px at 256 px, i.e. 0.98 mm pixels, over the 3,049 slices of
512 px origin, all classes; the figshare glioma median is 1,175 mm2)."""
SLICE_SPACING_MM = 7.0
"""Figshare's slice spacing: 6 mm slices with a 1 mm gap."""

_SEGMENTATION = re.compile(r"^(?P<case>.+)_seg(?P<auto>_auto)?\.nii(\.gz)?$")
_NIFTI = re.compile(r"\.nii(\.gz)?$")
_POST_CONTRAST = re.compile(r"t1c|t1post|t1gd", re.IGNORECASE)
_SLICE_FILE = re.compile(r"_z\d+\.png$")


def build(source: str | Path = DEFAULT_SOURCE, out: str | Path = DEFAULT_OUT) -> dict[str, Any]:
    """Write the check's slices and README.json under ``out``; return the README's content.

    Raises:
        VolumeError: ``source`` missing or without a usable ``labels.csv``, or no glioma slice at all.
    """
    source, out = Path(source), Path(out)
    scan = scan_volumes(source, layout="csv", strict=False)
    volumes, skipped, subjects = [], [], {}
    for record in scan.records:
        if CLASS_NAMES[record.label] not in GLIOMA_GRADES:
            continue
        name = record.path.relative_to(scan.root).as_posix()
        segmentation = segmentation_beside(record.path)
        if segmentation is None:
            skipped.append({"path": name, "reason": "no tumour segmentation beside it"})
        elif record.subject in subjects:
            skipped.append({"path": name, "reason": f"same patient ({record.subject}) as {subjects[record.subject]}"})
        else:
            subjects[record.subject] = name
            try:
                entry = _volume_slices(record, segmentation, name, out / CLASS_FOLDER)
            except VolumeError as error:
                skipped.append({"path": name, "reason": str(error)})
                continue
            if entry["slices"]:
                volumes.append(entry)
            else:
                skipped.append({"path": name, "reason": f"no axial slice with >= {MIN_TUMOUR_MM2:g} mm2 of tumour"})
    written = {s["file"] for v in volumes for s in v["slices"]}
    if not written:
        raise VolumeError(f"no glioma slice with >= {MIN_TUMOUR_MM2:g} mm2 of tumour under {source}")
    for stale in (out / CLASS_FOLDER).glob("*.png"):
        if _SLICE_FILE.search(stale.name) and f"{CLASS_FOLDER}/{stale.name}" not in written:
            stale.unlink()
    readme = {
        "what": "small glioma-only external check: axial post-contrast T1 slices through gliomas of other "
                "hospitals (BraTS), in the figshare slice format; not the hidden external collection",
        "builder": "datasets/external_glioma.py", "source": source.as_posix(), "class": CLASS_FOLDER,
        "plane": "axial", "tumour": "any segmentation label > 0", "min_tumour_area_mm2": MIN_TUMOUR_MM2,
        "slice_spacing_mm": SLICE_SPACING_MM, "pixel_mm": PIXEL_MM, "canvas_min_px": CANVAS_PX,
        "orientation": "anterior at the top, the patient's right on the image left",
        "intensity": "clipped to the slice's 0.5-99.5 percentiles, scaled to 0-255 (8-bit PNG)",
        "slices": len(written), "volumes": volumes, "skipped": skipped,
    }
    atomic_write_json(out / "README.json", readme)
    return readme


def segmentation_beside(volume: Path) -> Path | None:
    """The tumour map beside ``volume``: ``<case>_seg`` before ``<case>_seg_auto``, the longest matching case."""
    stem = _NIFTI.sub("", volume.name)
    found = []
    for path in volume.parent.iterdir():
        match = _SEGMENTATION.match(path.name)
        if match and (stem == match["case"] or stem.startswith(match["case"] + "_")):
            found.append((match["auto"] is not None, -len(match["case"]), path.name, path))
    return min(found)[-1] if found else None


def _volume_slices(record: VolumeRecord, segmentation: Path, name: str, folder: Path) -> dict[str, Any]:
    """Write the qualifying slices of one volume; return its README entry."""
    image, tumour_map = (nib.as_closest_canonical(read_header(p)) for p in (record.path, segmentation))
    shape = image.shape[:3]
    if tumour_map.shape[:3] != shape or not np.allclose(tumour_map.affine, image.affine, atol=1e-3):
        raise VolumeError(f"{segmentation}: its grid differs from {record.path}'s")
    zooms = np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0))
    tumour = np.rint(np.asarray(tumour_map.dataobj, dtype=np.float32).reshape(shape)) > 0
    area = tumour.sum(axis=(0, 1)) * zooms[0] * zooms[1]
    anchor, step = int(area.argmax()), max(1, round(SLICE_SPACING_MM / zooms[2]))
    chosen = [z for z in np.nonzero(area >= MIN_TUMOUR_MM2)[0].tolist() if (z - anchor) % step == 0]
    data = np.asarray(image.dataobj, dtype=np.float32).reshape(shape)
    if not np.isfinite(data).all():
        raise VolumeError(f"{record.path}: NaN or infinite voxels")
    slices = []
    for z in chosen:
        file = f"{CLASS_FOLDER}/{_NIFTI.sub('', record.path.name)}_z{z}.png"
        picture = figshare_slice(data[:, :, z:z + 1], image.affine, record.path)
        atomic_write_bytes(folder.parent / file, png_bytes(picture))
        slices.append({"file": file, "z": z, "tumour_mm2": round(float(area[z]), 1)})
    post_contrast = bool(_POST_CONTRAST.search(record.path.name))
    return {"volume": name, "subject": record.subject, "grade": CLASS_NAMES[record.label],
            "contrast": "T1-CE" if post_contrast else "not marked post-contrast in the file name",
            "segmentation": segmentation.name,
            "segmentation_kind": "automatic" if _SEGMENTATION.match(segmentation.name)["auto"] else "reference",
            "voxel_mm": np.round(zooms, 4).tolist(), "slices": slices}


def figshare_slice(slab: np.ndarray, affine: np.ndarray, source: Path) -> np.ndarray:
    """One axial slab ``(X, Y, 1)`` of a RAS volume as a figshare-like uint8 slice: 0.49 mm pixels, anterior up,
    the patient's right on the left, centred on a canvas of at least 512 px, percentile-scaled."""
    spacing = (PIXEL_MM, PIXEL_MM, float(np.sqrt((affine[:3, 2] ** 2).sum())))
    grid = resampled_grid(slab.shape, affine, spacing)[1]
    if max(grid[:2]) > MAX_IMAGE_SIDE:
        raise VolumeError(f"{source}: a slice at {PIXEL_MM} mm would be {grid[0]}x{grid[1]} px, over "
                          f"{MAX_IMAGE_SIDE} px a side")
    check_allocation(int(np.prod(grid)) * 4 * 3, f"{source}: resampling a slice to {grid}")
    resampled = resample(slab, np.ones(slab.shape, dtype=bool), affine, spacing)[0][:, :, 0]
    picture = resampled.T[::-1, ::-1]
    values, counts = np.unique(picture, return_counts=True)
    pad = [(max(0, CANVAS_PX - n) // 2, max(0, CANVAS_PX - n) - max(0, CANVAS_PX - n) // 2) for n in picture.shape]
    return RobustNormalize()(np.pad(picture, pad, constant_values=values[counts.argmax()]))


def png_bytes(image: np.ndarray) -> bytes:
    """``image`` (uint8, grey or RGB) encoded as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="volumes_extra folder (labels.csv)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(strip_debug_flag(sys.argv[1:] if argv is None else argv))
    readme = build(args.source, args.out)
    print(f"wrote {readme['slices']} glioma slices from {len(readme['volumes'])} volumes to "
          f"{args.out / CLASS_FOLDER} (skipped {len(readme['skipped'])}); provenance in {args.out / 'README.json'}")


if __name__ == "__main__":
    main()
