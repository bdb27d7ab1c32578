"""Judge a fold's synthetic shards against the fold's real slices; the result goes into the generator run's
``quality.json`` (beside training's ``reconstruction`` section).

    python -m generative_model.assess SHARDS JUDGE.onnx RUN_DIR [--seed 0]

``JUDGE.onnx`` is the fold's classifier trained on real slices only (``capsule_classifier/export.py``); the
generator and the classifier meet only through these files. Sections written:

* ``ceiling``: the judge's accuracy on the fold's real validation slices, overall and per class;
* ``consistency``: the share of synthetic slices it assigns to their intended class, overall and per class;
* ``frechet``: the Fréchet distance on the judge's features between synthetic and real training slices (the
  synthetic set subsampled to the validation size), against real validation vs real training as reference;
* ``memorisation``: each slice's highest correlation with any real training slice, for synthetic and real
  validation slices, whole slice (synthetic anatomy is a training donor's by design, so this is high) and in
  the tumour window (the ``crop`` x ``crop`` window around the tumour, compared with the training slices'
  tumour windows).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from datasets.core import DataError
from datasets.shards import read_shards, safe_loads
from experiment.cli import reports_user_errors, strip_debug_flag
from experiment.seeding import derive_seed
from generative_model.conditions import crop_origin, hole_of, window
from generative_model.consistency import OnnxJudge
from generative_model.folds import load_run_fold
from generative_model.quality import agreement, frechet_distance, max_correlation, summary_stats, update_quality

log = logging.getLogger(__name__)


def read_meta(folder: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """The per-image meta of a shard set already read (and so checksummed) by ``read_shards``, concatenated."""
    parts = [safe_loads((folder / entry["file"]).read_bytes())["meta"] for entry in manifest["shards"]]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def tumour_windows(images: np.ndarray, masks: np.ndarray, crop: int, radius: float) -> np.ndarray:
    """The ``crop`` x ``crop`` window around each slice's dilated tumour (as the generator crops it)."""
    return np.stack([window(image, crop_origin(hole_of(mask, radius), crop), crop)
                     for image, mask in zip(images, masks, strict=True)])


def run_arch(run_dir: Path) -> dict[str, Any]:
    """The generator design a finished run records in its ``summary.json`` (crop size, erase radius, ...).

    Raises:
        DataError: no readable summary with an ``arch`` (the run has not finished).
    """
    path = Path(run_dir) / "summary.json"
    try:
        arch = json.loads(path.read_text(encoding="utf-8"))["arch"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: not a finished generator run (no summary with its arch): {error}") from error
    if not isinstance(arch, dict):
        raise DataError(f"{path}: arch must be a mapping")
    return arch


def assess(shards: Path, judge_path: Path, run_dir: Path, *, seed: int = 0) -> dict[str, Any]:
    """Write the judge-based sections of ``run_dir/quality.json`` for ``shards``; return them.

    Raises:
        DataError / ShardError: unreadable shards, judge or run directory, or shards of another fold.
    """
    fold = load_run_fold(run_dir)
    arch = run_arch(run_dir)
    images, labels, manifest = read_shards(shards)
    if manifest.get("provenance", {}).get("fold") != fold.fold:
        raise DataError(f"{shards} holds shards of fold {manifest.get('provenance', {}).get('fold')}, but {run_dir} "
                        f"is the generator of fold {fold.fold}")
    meta = read_meta(Path(shards), manifest)
    data = fold.data
    judge = OnnxJudge(judge_path, images.shape[-1])
    _, train_features = judge(data.images[fold.train])
    val_probs, val_features = judge(data.images[fold.val])
    synth_probs, synth_features = judge(images)
    rng = np.random.default_rng(derive_seed(seed, 19))
    subset = rng.choice(len(images), size=min(len(images), fold.val.size), replace=False)
    crop, radius = arch["crop_size"], arch["erase_radius"]
    synth_windows = np.stack([window(image, tuple(int(o) for o in origin), crop)
                              for image, origin in zip(images, meta["mask_origin"], strict=True)])
    train_windows = tumour_windows(data.images[fold.train], data.masks[fold.train], crop, radius)
    val_windows = tumour_windows(data.images[fold.val], data.masks[fold.val], crop, radius)
    sections = {
        "judge": {"classifier": str(judge_path), "features": judge.feature_name, "shards": str(shards),
                  "synthetic": int(len(images)), "train": int(fold.train.size), "val": int(fold.val.size)},
        "ceiling": agreement(val_probs.argmax(1), data.labels[fold.val]),
        "consistency": agreement(synth_probs.argmax(1), labels),
        "frechet": {"synthetic_vs_train": frechet_distance(synth_features[subset], train_features),
                    "val_vs_train": frechet_distance(val_features, train_features),
                    "synthetic_all_vs_train": frechet_distance(synth_features, train_features),
                    "synthetic_n": int(subset.size)},
        "memorisation": {
            "slice": {"synthetic": summary_stats(max_correlation(images, data.images[fold.train])),
                      "val": summary_stats(max_correlation(data.images[fold.val], data.images[fold.train]))},
            "tumour_window": {"synthetic": summary_stats(max_correlation(synth_windows, train_windows)),
                              "val": summary_stats(max_correlation(val_windows, train_windows))}},
    }
    update_quality(run_dir, sections)
    log.info("judge %s: consistency %s (ceiling %s), Frechet synthetic %.3f vs val %.3f", judge_path,
             sections["consistency"]["per_class"], sections["ceiling"]["per_class"],
             sections["frechet"]["synthetic_vs_train"], sections["frechet"]["val_vs_train"])
    return sections


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", type=Path, help="a finished shard folder of the fold")
    parser.add_argument("judge", type=Path, help="model.onnx of the fold's classifier trained on real data only")
    parser.add_argument("run_dir", type=Path, help="the fold's generator run directory (config.yaml, quality.json)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic subsample for the Frechet distance")
    args = parser.parse_args(strip_debug_flag(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sections = assess(args.shards, args.judge, args.run_dir, seed=args.seed)
    print(json.dumps({key: sections[key] for key in ("ceiling", "consistency", "frechet")}, indent=2))


if __name__ == "__main__":
    main()
