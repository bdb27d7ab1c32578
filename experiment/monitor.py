"""Training monitor: every record goes to ``metrics.jsonl`` (the record of truth) and is
mirrored to optional live sinks such as visdom. A sink may fail; the JSONL never skips."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from experiment.atomic import atomic_open
from experiment.rundir import RunDir

log = logging.getLogger(__name__)

RUNS_FOLDER = "runs"  # run directories live below it; see visdom_env_name


class Sink(Protocol):
    """A live mirror of monitor records (visdom). ``send`` must never block or raise."""

    def send(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class Monitor:
    """Streams scalars, image grids and confusion matrices of one run.

    Record kinds written to ``metrics.jsonl``:
      ``{"kind": "scalars", "phase", "epoch", "step", "values": {name: float}}``,
      ``{"kind": "image", "phase", "epoch", "step", "name", "path"}`` (PNG under ``images/``),
      ``{"kind": "confusion", "phase", "epoch", "step", "name", "matrix", "class_names"}``.
    """

    def __init__(self, run_dir: RunDir, sinks: Sequence[Sink] = ()) -> None:
        self.run_dir = run_dir
        self.sinks = list(sinks)

    def scalars(self, phase: str, epoch: int, step: int, values: dict[str, float], **extra: Any) -> None:
        """Record scalar values (losses, accuracy, macro-F1, learning rate, ...)."""
        record = {"kind": "scalars", "phase": phase, "epoch": epoch, "step": step,
                  "values": {k: float(v) for k, v in values.items()}, **extra}
        self._emit(record)

    def image(self, phase: str, epoch: int, step: int, name: str, grid: np.ndarray) -> Path:
        """Save ``grid`` (uint8, H x W or H x W x 3) as a PNG and record it."""
        from PIL import Image

        path = self.run_dir.path / "images" / f"{name}-e{epoch:04d}.png"
        with atomic_open(path, "wb") as handle:
            Image.fromarray(np.ascontiguousarray(grid)).save(handle, format="PNG")
        self._emit({"kind": "image", "phase": phase, "epoch": epoch, "step": step, "name": name,
                    "path": str(path.relative_to(self.run_dir.path))})
        return path

    def confusion(self, phase: str, epoch: int, step: int, name: str,
                  matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> None:
        """Record a confusion matrix (rows: true class, columns: predicted class)."""
        self._emit({"kind": "confusion", "phase": phase, "epoch": epoch, "step": step, "name": name,
                    "matrix": np.asarray(matrix).tolist(), "class_names": list(class_names)})

    def close(self) -> None:
        """Flush and close the live sinks."""
        for sink in self.sinks:
            sink.close()

    def _emit(self, record: dict[str, Any]) -> None:
        self.run_dir.log(record)
        for sink in self.sinks:
            sink.send({**record, "run": str(self.run_dir.path)})


def build_monitor(run_dir: RunDir, config: Any) -> Monitor:
    """A monitor for ``run_dir``: JSONL always, plus a visdom sink when ``config.visdom`` is true
    (``config`` is a :class:`experiment.config.MonitorConfig` node)."""
    sinks: list[Sink] = []
    if config is not None and config.visdom:
        from experiment.visdom_sink import VisdomSink

        sinks.append(VisdomSink(server=config.server, port=config.port,
                                env=config.env or visdom_env_name(run_dir.path),
                                queue_size=config.queue_size, timeout_s=config.timeout_s))
    return Monitor(run_dir, sinks)


def visdom_env_name(path: Path) -> str:
    """One visdom environment per run, named after its directory below the last ``runs`` folder
    (``runs/classifier/capsnet/grouped-k7/scratch/fold0`` -> ``classifier_capsnet_grouped-k7_scratch_fold0``;
    visdom groups environments by the part before the first ``_``), else after its last three parts."""
    parts = Path(path).resolve().parts
    runs = [i for i, part in enumerate(parts[:-1]) if part == RUNS_FOLDER]
    kept = parts[runs[-1] + 1:] if runs else parts[-3:]
    return "_".join(p for p in kept if p not in ("/", "")).replace(".", "-")
