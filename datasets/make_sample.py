"""Regenerate the embedded sample ``datasets/data/figshare_sample_128.npz`` from the shared bundle.

Takes whole patients (``subject`` of ``figshare_subjects.csv``): ``--per-cell`` patients of at most
``--max-len`` slices from every (label, cvind) cell, so all three classes and all five ``cvind`` folds are
present and a 7-fold patient-wise split has several patients per class in every fold. Same array names and
dtypes as the bundle, plus ``subject`` (uint16) and ``plane`` (str) per slice.

    python -m datasets.make_sample --bundle ../shared/data/figshare_cheng_128.npz
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from datasets.core import EMBEDDED_SAMPLE
from datasets.figshare import read_bundle_slices
from experiment.atomic import atomic_open


def select_subjects(subjects: np.ndarray, label: np.ndarray, cvind: np.ndarray, per_cell: int, max_len: int,
                    seed: int) -> np.ndarray:
    """Indices of whole patients: ``per_cell`` patients of at most ``max_len`` slices per (label, cvind) cell."""
    rng = np.random.default_rng(seed)
    sizes = dict(zip(*np.unique(subjects, return_counts=True), strict=True))
    chosen = []
    for lab in np.unique(label):
        for fold in np.unique(cvind):
            cell = [s for s in np.unique(subjects[(label == lab) & (cvind == fold)]) if sizes[s] <= max_len]
            chosen.extend(rng.choice(cell, size=min(per_cell, len(cell)), replace=False).tolist())
    return np.flatnonzero(np.isin(subjects, chosen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("../shared/data/figshare_cheng_128.npz"))
    parser.add_argument("--out", type=Path, default=EMBEDDED_SAMPLE)
    parser.add_argument("--per-cell", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=14)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    bundle = read_bundle_slices(args.bundle)
    arrays = bundle.arrays
    keep = select_subjects(bundle.subjects, arrays["label"], arrays["cvind"], args.per_cell, args.max_len,
                           args.seed)
    with np.load(args.bundle, allow_pickle=False) as raw:
        subset = {name: raw[name][keep] for name in raw.files}
    subset.update(subject=bundle.subjects[keep].astype(np.uint16), plane=bundle.planes[keep])
    with atomic_open(args.out, "wb") as handle:
        np.savez_compressed(handle, **subset)
    print(f"wrote {args.out}: {keep.size} slices, {len(np.unique(subset['subject']))} subjects, "
          f"{args.out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
