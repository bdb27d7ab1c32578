"""Typed Hydra schemas shared by every entry point: ``monitor.*``, the common ``train.*`` fields, and the
renames of configuration keys the README once taught under other names (old name -> new name, warned once)."""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from experiment.errors import ConfigError

DEFAULT_VISDOM_PORT = 8097

LEGACY_NAMES: dict[str, str] = {
    "training.amp": "amp",
    "training.cpu_bf16": "cpu_bf16",
    "training": "train",
    "data.seed": "data.split_seed",
    "data.folds_dir": "data.splits_dir",
    "epochs": "train.epochs",
    "epochs_decay": "train.epochs_decay",
    "keep_checkpoints": "train.keep_checkpoints",
    "log_every": "train.log_every",
    "preview_count": "train.preview_count",
    "optim.batch_size": "train.batch_size",
    "optim.lr": "train.lr",
    "optim.beta1": "train.beta1",
    "optim": "loss",
}
"""Old configuration key (or group prefix) -> its name now; the most specific entry wins."""


@dataclass
class MonitorConfig:
    """Live visdom mirroring of the JSONL metrics. An unreachable server is reported once; training goes on."""

    visdom: bool = True
    server: str = "http://127.0.0.1"
    port: int = DEFAULT_VISDOM_PORT
    env: Optional[str] = None  # default: derived from the run directory
    queue_size: int = 256
    timeout_s: float = 2.0


@dataclass
class TrainConfig:
    """``train.*`` fields every training loop has: epoch budget, batch size, learning rate, checkpoints kept."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    keep_checkpoints: int = 2


@dataclass
class SupervisedTrainConfig(TrainConfig):
    """``train.*`` of the classifiers (2D and 3D): AdamW weight decay, early-stopping patience on validation
    macro-F1 (0 = never), gradient-norm clipping (0 = off) and ``ema_decay``, the per-step decay of an
    exponential moving average of the weights that is validated, selected and saved instead of them (0 = off)."""

    weight_decay: float = 1e-4
    patience: int = 0
    grad_clip: float = 5.0
    ema_decay: float = 0.0


def register() -> None:
    """Register ``monitor=default`` in Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(group="monitor", name="default", node=MonitorConfig)


def check_train(train: Any, group: str = "train") -> None:
    """Refuse training settings that cannot work: ``epochs``, ``batch_size`` and ``lr`` must be positive,
    ``epochs_decay``, ``patience``, ``weight_decay`` and ``grad_clip`` not negative, ``ema_decay`` in [0, 1) (when
    the group has them).

    Raises:
        ConfigError: naming the key, e.g. ``train.epochs must be a positive integer, got 0``.
    """
    for key in ("epochs", "batch_size"):
        _need(train, group, key, lambda v: isinstance(v, int) and v >= 1, "a positive integer")
    _need(train, group, "lr", lambda v: isinstance(v, (int, float)) and v > 0, "a positive number")
    for key in ("epochs_decay", "patience", "keep_checkpoints"):
        _need(train, group, key, lambda v: isinstance(v, int) and v >= 0, "an integer >= 0")
    for key in ("weight_decay", "grad_clip"):
        _need(train, group, key, lambda v: isinstance(v, (int, float)) and v >= 0, "a number >= 0")
    _need(train, group, "ema_decay", lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "in [0, 1)")


def _need(node: Any, group: str, key: str, ok: Callable[[Any], bool], what: str) -> None:
    if key in node and not ok(node[key]):
        raise ConfigError(f"{group}.{key} must be {what}, got {node[key]!r}")


def rename_legacy_overrides(argv: Sequence[str]) -> list[str]:
    """Command-line overrides with every old key of :data:`LEGACY_NAMES` renamed, each rename warned once.

    Handles Hydra's ``+``, ``++`` and ``~`` prefixes; anything without ``=`` (flags, ``-m``) passes unchanged.
    """
    renamed = []
    for arg in argv:
        prefix = arg[: len(arg) - len(arg.lstrip("+~"))]
        key, sep, value = arg[len(prefix):].partition("=")
        new_key = _new_name(key) if (sep or prefix == "~") and not key.startswith("-") else key
        if new_key != key:
            warnings.warn(f"config key {key!r} is now {new_key!r}; the old name will go", FutureWarning,
                          stacklevel=2)
        renamed.append(f"{prefix}{new_key}{sep}{value}")
    return renamed


def _new_name(key: str) -> str:
    for old in sorted(LEGACY_NAMES, key=len, reverse=True):
        if key == old or key.startswith(old + "."):
            return LEGACY_NAMES[old] + key[len(old):]
    return key
