"""The fold count and per-fold run directories that ``capsule_classifier/train.py`` uses for a set of overrides,
so scripts (``scripts/cross_validate.sh``) ask instead of rebuilding what ``configs/train.yaml`` defines.

    python -m capsule_classifier.layout [KEY=VALUE ...]   # prints "k <n>", then "<fold> <run_dir>" per fold

Overrides that do not compose, or settings that cannot work, end it with one line and exit status 2.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from capsule_classifier.train import check_config, register
from datasets.core import fold_count
from experiment.cli import one_line, reports_user_errors, strip_debug_flag
from experiment.config import rename_legacy_overrides
from experiment.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def fold_run_dirs(overrides: Sequence[str]) -> list[str]:
    """The run directory of every fold of the split that ``overrides`` select (index = fold).

    Raises:
        ConfigError: overrides Hydra cannot compose, or settings that cannot work (see
            :func:`capsule_classifier.train.check_config`).
    """
    register()
    overrides = [o for o in rename_legacy_overrides(overrides) if not o.startswith("fold=")]
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = compose("train", overrides=overrides)
            check_config(cfg)
            k = fold_count(cfg.data.split, cfg.data.k)
            return [str(compose("train", overrides=[*overrides, f"fold={fold}"]).run_dir) for fold in range(k)]
    except (HydraException, OmegaConfBaseException) as error:
        cause = f" ({one_line(error.__cause__)})" if error.__cause__ is not None else ""
        raise ConfigError(f"{one_line(error)}{cause}") from error


@reports_user_errors
def main(argv: Sequence[str] | None = None) -> None:
    run_dirs = fold_run_dirs(strip_debug_flag(sys.argv[1:] if argv is None else argv))
    print(f"k {len(run_dirs)}")
    for fold, run_dir in enumerate(run_dirs):
        print(f"{fold} {run_dir}")


if __name__ == "__main__":
    main()
