"""The fold count and per-fold run directories that ``capsule_classifier/train.py`` uses for a set of overrides,
so scripts (``scripts/cross_validate.sh``) ask instead of rebuilding what ``configs/train.yaml`` defines.

    python -m capsule_classifier.layout [KEY=VALUE ...]   # prints "k <n>", then "<fold> <run_dir>" per fold
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir

from capsule_classifier.train import register
from datasets.core import fold_count
from experiment.config import rename_legacy_overrides

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def fold_run_dirs(overrides: Sequence[str]) -> list[str]:
    """The run directory of every fold of the split that ``overrides`` select (index = fold)."""
    register()
    overrides = [o for o in rename_legacy_overrides(overrides) if not o.startswith("fold=")]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose("train", overrides=overrides)
        k = fold_count(cfg.data.split, cfg.data.k)
        return [str(compose("train", overrides=[*overrides, f"fold={fold}"]).run_dir) for fold in range(k)]


def main(argv: Sequence[str] | None = None) -> None:
    run_dirs = fold_run_dirs(sys.argv[1:] if argv is None else argv)
    print(f"k {len(run_dirs)}")
    for fold, run_dir in enumerate(run_dirs):
        print(f"{fold} {run_dir}")


if __name__ == "__main__":
    main()
