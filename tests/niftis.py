"""Tiny NIfTI volumes in the exact BraTS 2019 / IXI / labels-CSV layouts, for tests.

Each volume is an ellipsoidal "brain" on a zero background; gliomas carry a blob (bright for HGG, dim for
LGG), so a model can tell the classes apart. Affines default to 1 mm RAS.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

BLOB_INTENSITY = {"HGG": 3.0, "LGG": 0.3, "healthy": None}


def brain(shape: Sequence[int], label: str, seed: int) -> np.ndarray:
    """An ellipsoid filling ~45% of ``shape`` (tissue ~1 +- noise), with a class-dependent blob."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = (grid ** 2).sum(0) < 0.8 ** 2
    data = np.where(inside, 1.0 + 0.1 * rng.standard_normal(shape), 0.0)
    if BLOB_INTENSITY[label] is not None:
        centre = rng.uniform(-0.3, 0.3, size=3)[:, None, None, None]
        blob = ((grid - centre) ** 2).sum(0) < 0.3 ** 2
        data[blob & inside] = BLOB_INTENSITY[label]
    return (data * 100).astype(np.float32)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save ``data`` as NIfTI-1 at ``path`` (parents created; 1 mm RAS unless ``affine``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def make_brats_ixi(root: Path, hgg: int = 3, lgg: int = 3, ixi: int = 3, shape: Sequence[int] = (20, 24, 18),
                   modalities: Sequence[str] = ("t1", "t1ce", "t2", "flair")) -> Path:
    """``root/HGG/<case>/<case>_<modality>.nii.gz``, ``root/LGG/...`` and ``root/IXI-T1/IXI<n>-HH-<n>-T1.nii.gz``."""
    for group, count in (("HGG", hgg), ("LGG", lgg)):
        for i in range(count):
            case = f"BraTS19_TCIA0{i}_{100 + i}_1"
            for modality in modalities:
                seed = 1000 * (group == "HGG") + 10 * i + len(modality)
                write_nifti(root / group / case / f"{case}_{modality}.nii.gz", brain(shape, group, seed))
    for i in range(ixi):
        write_nifti(root / "IXI-T1" / f"IXI{i + 2:03d}-HH-{1200 + i}-T1.nii.gz", brain(shape, "healthy", 500 + i))
    return root


def make_labels_csv(root: Path, per_class: int = 3, shape: Sequence[int] = (20, 24, 18)) -> Path:
    """``root/labels.csv`` (``path,label``) and ``root/<label>/<label>_<n>.nii.gz``, like volumes_extra."""
    rows = ["path,label"]
    for label in BLOB_INTENSITY:
        for i in range(per_class):
            relative = f"{label}/{label}_{i}.nii.gz"
            write_nifti(root / relative, brain(shape, label, 100 * len(label) + i))
            rows.append(f"{relative},{label}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root
