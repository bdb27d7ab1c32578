"""The README grid of explanation maps: test slices of one cross-validation fold, one row per tumour type, with
maps whose peak fell inside the tumour (hit) and outside it (miss), the tumour outlined in green.

The maps are :func:`capsule_classifier.explain.explanation_maps` of the fold's model (the method of
``explanation_layer``); examples are spread evenly over each type's hits and misses, so the grid is the same on every
run. Run from the repository root::

    python -m benchmarks.explain_grid runs/bench_generalisation/after/capsnet/cvind-k5/scratch/fold0 \\
        --out docs/img/explanations.png
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from capsule_classifier.deploy import load_classifier
from capsule_classifier.evaluate import save_png
from capsule_classifier.explain import (
    explanation_layer,
    explanation_maps,
    grid_figure,
    localisation,
    map_method,
    overlay,
)
from capsule_classifier.trust import MODEL_FILE, fold_parts
from datasets.core import CLASS_NAMES
from experiment.cli import reports_user_errors, strip_debug_flag

log = logging.getLogger("explain_grid")

PER_KIND = 2
"""Hits and misses shown per tumour type."""


def spread(indices: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` of ``indices``, evenly spaced from first to last."""
    if len(indices) <= count:
        return indices
    return indices[np.linspace(0, len(indices) - 1, count).round().astype(int)]


def explanation_grid(run: Path, path: Path, per_kind: int = PER_KIND) -> Path:
    """Draw the grid of the module docstring for the fold in ``run`` to ``path``."""
    test = fold_parts(run)[0]["test"]
    classifier, meta = load_classifier(run / MODEL_FILE)
    layer = explanation_layer(meta["model_name"], classifier.model)
    maps, predicted = explanation_maps(classifier, layer, test.images)
    found = localisation(maps, test.masks)
    hits = np.array(found["hits"], dtype=bool)
    rows, per_class = [], []
    for label, name in enumerate(CLASS_NAMES):
        ofclass = test.labels == label
        chosen = [*spread(np.flatnonzero(ofclass & hits), per_kind), *spread(np.flatnonzero(ofclass & ~hits), per_kind)]
        rows.append([(overlay(test.images[i], maps[i], test.masks[i]),
                      f"{'hit' if hits[i] else 'miss'}: {name} -> {CLASS_NAMES[predicted[i]]}") for i in chosen])
        per_class.append(f"{name} {hits[ofclass].mean():.2f}")
    title = (f"{meta['model_name']} fold {meta.get('fold')} test slices: {map_method(layer)}\npointing game "
             f"{found['pointing_game']:.2f} (chance {found['chance_pointing_game']:.3f}): {', '.join(per_class)}; "
             "tumour outlined in green")
    log.info("%s", title)
    return save_png(path, grid_figure(rows, title))


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a fold run directory of capsule_classifier/train.py")
    parser.add_argument("--out", type=Path, default=Path("docs/img/explanations.png"), help="the PNG to write")
    parser.add_argument("--per-kind", type=int, default=PER_KIND, help="hits and misses shown per tumour type")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(strip_debug_flag(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    torch.set_num_threads(args.threads)
    print(f"wrote {explanation_grid(args.run, args.out, args.per_kind)}")


if __name__ == "__main__":
    main()
