"""The run directory every training entry point writes:

``config.yaml`` (resolved config), ``metrics.jsonl`` (one JSON record per line),
``checkpoints/`` (atomic epoch checkpoints) and ``summary.json`` (final metrics, parameter
count, wall time, git commit, data fingerprint).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experiment.atomic import atomic_write_json, atomic_write_text, remove_temporaries
from experiment.distributed import is_main_process
from experiment.errors import UserError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
IDENTITY_FILE = "identity.json"
CHECKPOINT_DIR = "checkpoints"


class RunDirConflict(UserError, RuntimeError):
    """A run directory already holds a different experiment."""


class RunDir:
    """A run directory. Opening it (in the main process) repairs a metrics log whose last line a kill cut
    short and removes the temporary files that killed atomic writes left behind."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)
        self._started = time.monotonic()
        self.resumed_elapsed = 0.0
        if is_main_process():
            for stale in remove_temporaries(self.path):
                log.info("removed %s, left by a killed write", stale)
            self._repair_metrics()

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    def claim(self, identity: dict[str, Any]) -> None:
        """Bind this directory to one experiment (data fingerprint, split, fold, model, ...).

        The first call records ``identity``; a later run with a different identity is refused, so a
        resume never continues checkpoints trained on other data, another split or another model.

        Raises:
            RunDirConflict: the directory already belongs to a different experiment.
        """
        identity = json.loads(json.dumps(identity, default=_plain))
        path = self.path / IDENTITY_FILE
        if path.exists():
            recorded = json.loads(path.read_text(encoding="utf-8"))
            if recorded != identity:
                changed = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
                raise RunDirConflict(
                    f"run directory {self.path} belongs to another experiment (differs in {changed}); "
                    "choose another run directory or delete this one")
            return
        atomic_write_json(path, identity)

    def write_config(self, config: Any) -> None:
        """Write the resolved config (an OmegaConf node or a plain dict) as ``config.yaml``."""
        from omegaconf import OmegaConf

        node = config if OmegaConf.is_config(config) else OmegaConf.create(config)
        atomic_write_text(self.path / CONFIG_FILE, OmegaConf.to_yaml(node, resolve=True))

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON record (a line) to ``metrics.jsonl`` and flush it to the OS."""
        line = json.dumps({"time": round(time.time(), 3), **record}, default=_plain) + "\n"
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(line)

    def read_metrics(self) -> list[dict[str, Any]]:
        """All records of ``metrics.jsonl`` in order."""
        if not self.metrics_path.exists():
            return []
        with open(self.metrics_path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def rewind_metrics(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Keep only the records for which ``keep`` is true (used on resume to drop records
        written after the checkpoint being resumed from, so a resumed log equals an uninterrupted one)."""
        records = [r for r in self.read_metrics() if keep(r)]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r, default=_plain) + "\n" for r in records))

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` with provenance (git commit, wall time, host) added."""
        atomic_write_json(self.summary_path, {**provenance(), "wall_time_s": self.elapsed(), **summary})

    def read_summary(self) -> dict[str, Any] | None:
        """The summary, or ``None`` when the run has not finished."""
        if not self.summary_path.exists():
            return None
        return json.loads(self.summary_path.read_text(encoding="utf-8"))

    def elapsed(self) -> float:
        """Wall seconds of this run: since this process opened it, plus ``resumed_elapsed``
        (the time a resumed run had already spent, restored from its checkpoint)."""
        return round(time.monotonic() - self._started + self.resumed_elapsed, 2)

    def _repair_metrics(self) -> None:
        """Drop a trailing partial line (the writer was killed mid-append)."""
        path = self.metrics_path
        if not path.exists():
            return
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            atomic_write_text(path, data[: data.rfind(b"\n") + 1].decode("utf-8"))


def git_commit() -> str | None:
    """The project's current git commit, or ``None`` outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def provenance() -> dict[str, Any]:
    """Where and when a result was produced."""
    return {
        "git_commit": git_commit(),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
    }


def _plain(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
