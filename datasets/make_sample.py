"""Regenerate the embedded sample ``datasets/data/figshare_sample_128.npz`` from the shared bundle.

Takes whole ``series`` groups: ``--per-cell`` series from every (label, cvind) cell, preferring
short series, so all three classes and all five ``cvind`` folds are present and a 7-fold grouped
split has several groups per class in every fold. Same array names and dtypes as the bundle.

    python -m datasets.make_sample --bundle ../shared/data/figshare_cheng_128.npz
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from datasets.figshare import BUNDLE_ARRAYS, EMBEDDED_SAMPLE, read_bundle
from experiment.atomic import atomic_open


def select_series(series: np.ndarray, label: np.ndarray, cvind: np.ndarray, per_cell: int, max_len: int,
                  seed: int) -> np.ndarray:
    """Indices of whole series: ``per_cell`` series of at most ``max_len`` slices per (label, cvind) cell."""
    rng = np.random.default_rng(seed)
    chosen = []
    for lab in np.unique(label):
        for fold in np.unique(cvind):
            cell = np.unique(series[(label == lab) & (cvind == fold)])
            short = [s for s in cell if (series == s).sum() <= max_len
                     and len(np.unique(cvind[series == s])) == 1]
            chosen.extend(rng.choice(short, size=min(per_cell, len(short)), replace=False).tolist())
    return np.flatnonzero(np.isin(series, chosen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("../shared/data/figshare_cheng_128.npz"))
    parser.add_argument("--out", type=Path, default=EMBEDDED_SAMPLE)
    parser.add_argument("--per-cell", type=int, default=6)
    parser.add_argument("--max-len", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    arrays = read_bundle(args.bundle)
    keep = select_series(arrays["series"], arrays["label"], arrays["cvind"], args.per_cell, args.max_len, args.seed)
    with np.load(args.bundle, allow_pickle=False) as bundle:
        names = [n for n in bundle.files if n in BUNDLE_ARRAYS or n == "orig_size"]
        subset = {name: bundle[name][keep] for name in names}
    with atomic_open(args.out, "wb") as handle:
        np.savez_compressed(handle, **subset)
    print(f"wrote {args.out}: {keep.size} slices, {len(np.unique(subset['series']))} series, "
          f"{args.out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
