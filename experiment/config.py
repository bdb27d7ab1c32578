"""Typed Hydra schema for monitoring (``monitor.*``) shared by every entry point."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore

DEFAULT_VISDOM_PORT = 8097


@dataclass
class MonitorConfig:
    """Live visdom mirroring of the JSONL metrics. An unreachable server is reported once; training goes on."""

    visdom: bool = True
    server: str = "http://127.0.0.1"
    port: int = DEFAULT_VISDOM_PORT
    env: Optional[str] = None  # default: derived from the run directory
    queue_size: int = 256
    timeout_s: float = 2.0


def register() -> None:
    """Register ``monitor=default`` in Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(group="monitor", name="default", node=MonitorConfig)


def hydra_output_dir() -> str:
    """The run directory Hydra chose for this job (``hydra.run.dir`` or the multirun sweep subdir)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.output_dir
