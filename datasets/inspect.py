"""Summarise a figshare data root: slices and patients per class and per fold, and a shard
round trip (the foundation step of ``scripts/demo.sh``).

    python -m datasets.inspect [data.root=PATH] [data.split=cvind] [data.k=5]
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from datasets import config as data_config
from datasets.core import CLASS_NAMES, SliceSet
from datasets.shards import read_shards, write_shards
from datasets.slices import class_counts_table
from datasets.splits import PARTS, fold_indices, load_data, load_or_make_folds
from experiment.cli import reports_user_errors, run_hydra_app

log = logging.getLogger(__name__)
data_config.register()


def folds_table(data: SliceSet, manifest: dict) -> str:
    """Slices/patients per class for each fold's train, val and test parts."""
    header = f"{'fold':<6}{'part':<7}" + "".join(f"{n:>18}" for n in CLASS_NAMES) + f"{'total':>14}"
    lines = [header, " " * 13 + "".join(f"{'slices/subjects':>18}" for _ in CLASS_NAMES)]
    for fold in range(len(manifest["folds"])):
        index = fold_indices(manifest, data, fold)
        for part in PARTS:
            sub = data.subset(index[part])
            cells = [f"{int((sub.labels == c).sum())}/{len(set(sub.subjects[sub.labels == c]))}"
                     for c in range(len(CLASS_NAMES))]
            lines.append(f"{fold:<6}{part:<7}" + "".join(f"{c:>18}" for c in cells)
                         + f"{len(sub)}/{len(set(sub.subjects))}".rjust(14))
    return "\n".join(lines)


def run(cfg: DictConfig) -> dict:
    """Load the data, build the folds, round-trip a shard set; return what was printed as numbers."""
    data = load_data(cfg.data)
    manifest, path = load_or_make_folds(data, cfg.data.splits_dir, cfg.data.split, cfg.data.k,
                                        cfg.data.split_seed, cfg.data.val_fraction)
    print(f"data: {data.source}  ({len(data)} slices at {data.image_size}x{data.image_size}, "
          f"fingerprint {data.fingerprint})")
    print(class_counts_table(data))
    print(f"\nfolds: {manifest['protocol']} k={manifest['k']} -> {path}")
    print(folds_table(data, manifest))
    shard_dir = Path(cfg.out) / "shards-roundtrip"
    written = write_shards(shard_dir, data.images, data.labels, {"file_id": data.file_ids}, shard_size=256,
                           provenance={"writer": "datasets.inspect", "data": data.fingerprint}, overwrite=True)
    images, labels, _ = read_shards(shard_dir)
    same = bool(np.array_equal(images, data.images) and np.array_equal(labels, data.labels))
    print(f"\nshards: {len(written['shards'])} written to {shard_dir}, read back {len(labels)} images, "
          f"identical={same}")
    return {"slices": len(data), "subjects": len(set(data.subjects)), "folds": manifest["k"], "shards_identical": same}


@reports_user_errors
def checked_run(cfg: DictConfig) -> dict:
    """:func:`run` after refusing ``data.*`` settings that cannot work (one line, exit status 2, like any
    expected error)."""
    data_config.check_data(cfg.data)
    return run(cfg)


@hydra.main(config_path="configs", config_name="inspect", version_base=None)
def main(cfg: DictConfig) -> None:
    checked_run(cfg)


if __name__ == "__main__":
    run_hydra_app(main)
