"""Which step of ``scripts/synthesize.sh`` each command-line override belongs to: the training config, the
synthesis config, or both, decided by which composed config defines its key (old key names renamed first).

    python -m generative_model.route [key=value ...]   # one "<step><TAB><override>" line per step it goes to

A key neither config defines, or an argument that is not an override, is refused with exit status 2.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from experiment.config import rename_legacy_overrides
from experiment.errors import ConfigError
from generative_model import config

STEPS = ("train", "synthesize")
"""The entry points, by config name (``generative_model/configs/<step>.yaml``), in the order they run."""
CONFIGS = Path(__file__).resolve().parent / "configs"
_ABSENT = object()


def route(overrides: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """Each override with the steps whose config defines its key, in order.

    Raises:
        ConfigError: an argument without ``=`` (other than a ``~key`` deletion), or a key no step defines.
    """
    config.register()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        composed = {step: compose(config_name=step, return_hydra_config=True) for step in STEPS}
    routed = []
    for override in overrides:
        if "=" not in override and not override.startswith("~"):
            raise ConfigError(f"expected key=value overrides, got {override!r}")
        key = override.lstrip("+~").partition("=")[0].partition("@")[0].replace("/", ".")  # group/option@package
        steps = tuple(step for step in STEPS if _defines(composed[step], key))
        if not steps:
            raise ConfigError(f"no step defines {key!r} (in {override!r}); see generative_model/configs/"
                             f"{{{','.join(STEPS)}}}.yaml")
        routed.append((override, steps))
    return routed


def _defines(cfg: DictConfig, key: str) -> bool:
    return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=False) is not _ABSENT


def main(argv: Sequence[str]) -> int:
    """Print the routes of ``argv`` (renamed from old key names); 2 with a one-line error when one is refused."""
    try:
        routed = route(rename_legacy_overrides(argv))
    except ConfigError as error:
        print(f"synthesize.sh: {error}", file=sys.stderr)
        return 2
    for override, steps in routed:
        for step in steps:
            print(f"{step}\t{override}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
