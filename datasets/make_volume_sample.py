"""Rebuild the embedded 3D sample (``datasets/data/volumes/``) from ``../shared/data``, deterministically.

Each source volume is reoriented to RAS, resampled to :data:`SPACING` mm with the data layer's own
:func:`datasets.volumes.resample`, and stored as uint8 ``.nii.gz``: background (the volume's minimum) 0, the rest
scaled linearly from its 0.5th..99.5th percentile to 1..255. ``labels.csv`` (``path,label,subject``) lists them.
Sources and licences: ``datasets/data/volumes/README.md``. Run from the repository root::

    python -m datasets.make_volume_sample [--shared ../shared/data] [--out datasets/data/volumes]
"""
from __future__ import annotations

import argparse
import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from datasets.core import EMBEDDED_VOLUMES
from datasets.volumes import LABELS_CSV, resample

log = logging.getLogger(__name__)

SPACING = (3.0, 3.0, 3.0)
"""Voxel size (mm) of the stored sample; the 3D branch resamples it to its ``data.spacing``."""
PERCENTILES = (0.5, 99.5)
"""Foreground intensities between these percentiles map to 1..255; outside, they are clipped."""


@dataclass(frozen=True)
class Source:
    """One volume of the sample: ``source`` relative to ``../shared/data``, ``path`` relative to the sample."""

    source: str
    path: str
    label: str
    subject: str


SOURCES: tuple[Source, ...] = (
    Source("volumes_extra/HGG/BraTS2015_brats_2013_pat0001_1_t1c_zscore.nii.gz",
           "HGG/brats_2013_pat0001_t1c.nii.gz", "HGG", "brats_2013_pat0001"),
    Source("volumes_extra/HGG/BraTS2015_brats_2013_pat0002_1_t1c_zscore.nii.gz",
           "HGG/brats_2013_pat0002_t1c.nii.gz", "HGG", "brats_2013_pat0002"),
    Source("volumes_extra/HGG/BraTS2015_brats_2013_pat0003_1_t1c_zscore.nii.gz",
           "HGG/brats_2013_pat0003_t1c.nii.gz", "HGG", "brats_2013_pat0003"),
    Source("volumes_extra/HGG/BraTS2015_brats_2013_pat0004_1_t1c_zscore.nii.gz",
           "HGG/brats_2013_pat0004_t1c.nii.gz", "HGG", "brats_2013_pat0004"),
    Source("volumes/TCGA-FG-6692_t1c.nii.gz", "LGG/TCGA-FG-6692_t1c.nii.gz", "LGG", "TCGA-FG-6692"),
    Source("volumes_extra/LGG/TCGA-DU-7294_t1c_sri24.nii.gz", "LGG/TCGA-DU-7294_t1c.nii.gz", "LGG", "TCGA-DU-7294"),
    Source("volumes/IXI012-HH-1211_T1.nii.gz", "healthy/IXI012-HH-1211_T1.nii.gz", "healthy", "IXI012"),
    Source("volumes/IXI015-HH-1258_T1.nii.gz", "healthy/IXI015-HH-1258_T1.nii.gz", "healthy", "IXI015"),
    Source("volumes_extra/healthy/IXI013-HH-1212_T1.nii.gz", "healthy/IXI013-HH-1212_T1.nii.gz", "healthy",
           "IXI013"),
    Source("volumes_extra/healthy/IXI051-HH-1328_T1.nii.gz", "healthy/IXI051-HH-1328_T1.nii.gz", "healthy",
           "IXI051"),
)


def shrink(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """``image`` in RAS at :data:`SPACING` mm as uint8 (background 0, foreground 1..255), with its world affine."""
    image = nib.as_closest_canonical(image)
    data = np.asarray(image.dataobj, dtype=np.float32).reshape(image.shape[:3])
    foreground = data > data.min()
    data, foreground, affine = resample(data, foreground, image.affine, SPACING)
    low, high = np.percentile(data[foreground], PERCENTILES)
    scaled = 1 + np.rint(254 * np.clip((data - low) / max(high - low, 1e-6), 0, 1))
    out = nib.Nifti1Image(np.where(foreground, scaled, 0).astype(np.uint8), affine)
    out.header.set_xyzt_units("mm")
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    return out


def build(shared: Path, out: Path) -> list[Path]:
    """Write every :data:`SOURCES` volume and ``labels.csv`` under ``out``; returns the written paths.

    Raises:
        FileNotFoundError: a source volume missing under ``shared``.
    """
    written = []
    for source in SOURCES:
        target = out / source.path
        target.parent.mkdir(parents=True, exist_ok=True)
        nib.save(shrink(nib.load(shared / source.source)), target)
        log.info("%s -> %s (%d bytes)", source.source, target, target.stat().st_size)
        written.append(target)
    table = out / LABELS_CSV
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "label", "subject"])
        writer.writerows([s.path, s.label, s.subject] for s in SOURCES)
    return [*written, table]


def main(argv: list[str] | None = None) -> None:
    """Parse ``--shared`` and ``--out`` and rebuild the sample."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"), help="the shared data folder")
    parser.add_argument("--out", type=Path, default=EMBEDDED_VOLUMES, help="where the sample goes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = build(args.shared, args.out)
    log.info("%d files, %.2f MB", len(paths), sum(p.stat().st_size for p in paths) / 1e6)


if __name__ == "__main__":
    main()
