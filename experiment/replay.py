"""Replay a run directory into visdom, so a run can be watched after the fact.

    python -m experiment.replay RUN_DIR [--port 8097] [--server http://127.0.0.1] [--env NAME]

Reads ``metrics.jsonl`` (read-only; a last line cut short by a kill is skipped) and the image PNGs
it references, clears the target environment (by default the run's own, the one it streamed to
live) and draws its final state: every scalar curve in full, the last image grid and confusion
matrix of each name. The windows are the ones :class:`experiment.visdom_sink.VisdomSink` draws.
Records are checked before anything is drawn: an image must be a PNG inside the run directory, within
Pillow's decompression-bomb limit. A bad log or an unreachable server ends it with one line, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

from experiment.cli import reports_user_errors, strip_debug_flag
from experiment.config import MonitorConfig
from experiment.errors import UserError
from experiment.monitor import visdom_env_name
from experiment.rundir import METRICS_FILE
from experiment.visdom_sink import RecordPlotter, connect

log = logging.getLogger(__name__)

_FIELDS = {"scalars": {"phase": str, "step": (int, float), "values": dict},
           "image": {"phase": str, "epoch": int, "name": str, "path": str},
           "confusion": {"phase": str, "epoch": int, "name": str, "matrix": list, "class_names": list}}
"""The fields (and their JSON types) the plotter reads from each record kind it draws."""


class ReplayError(UserError, ValueError):
    """A run directory whose metrics log cannot be replayed, or a visdom server that cannot be reached."""


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` without modifying it (the run may still be writing), each
    checked to hold what its kind's window needs; an image record must name a PNG inside ``run_dir``.

    Raises:
        ReplayError: no metrics log, or a line (other than a partial last one) that is not a usable record.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise ReplayError(f"{path}: no metrics log; is {run_dir} a run directory?")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ReplayError(f"{path}: unreadable ({error})") from error
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # the writer was killed (or is writing) mid-line
                log.warning("%s:%d: skipping a partial last line", path, number)
                continue
            raise ReplayError(f"{path}:{number}: not a JSON record ({error})") from error
        _check_record(record, Path(run_dir), f"{path}:{number}")
        records.append(record)
    return records


def _check_record(record: Any, run_dir: Path, where: str) -> None:
    """Raise :class:`ReplayError` naming ``where`` unless ``record`` holds its kind's fields."""
    if not isinstance(record, dict):
        raise ReplayError(f"{where}: a record must be a JSON object")
    kind = record.get("kind")
    fields = _FIELDS.get(kind, {}) if isinstance(kind, str) else {}
    wrong = sorted(name for name, types in fields.items()
                   if not isinstance(record.get(name), types) or isinstance(record.get(name), bool))
    if wrong:
        raise ReplayError(f"{where}: {kind} record lacks or mistypes {wrong}")
    if kind == "scalars" and not all(_number(v) for v in record["values"].values()):
        raise ReplayError(f"{where}: scalars record holds a value that is not a number")
    if kind == "confusion" and not all(isinstance(row, list) and len(row) == len(record["class_names"])
                                       and all(map(_number, row)) for row in record["matrix"]):
        raise ReplayError(f"{where}: confusion matrix is not a table of numbers, one column per class")
    if kind == "image":
        _check_image(run_dir, record["path"], where)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_image(run_dir: Path, name: str, where: str) -> None:
    """An image record's file must be a PNG inside ``run_dir`` within Pillow's decompression-bomb limit."""
    from PIL import Image

    path = (run_dir / name).resolve()
    if not path.is_relative_to(run_dir.resolve()) or not path.is_file():
        raise ReplayError(f"{where}: image {name!r} is not a file inside the run directory {run_dir}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=["PNG"]):
                pass
    except (OSError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ReplayError(f"{where}: image {path} is not a PNG within Pillow's size limit ({error})") from error


def replay(run_dir: Path, *, server: str, port: int, env: str | None = None, timeout_s: float = 10.0) -> str:
    """Draw ``run_dir``'s records into visdom environment ``env`` (default: the run's own) and return
    its name.

    Raises:
        ReplayError: a bad metrics log (:func:`read_records`).
        ConnectionError: the server cannot be reached.
    """
    run_dir = Path(run_dir)
    records = read_records(run_dir)
    env = env or visdom_env_name(run_dir)
    viz = connect(server, port, env, timeout_s)
    viz.delete_env(env)  # a replay shows the run once, not appended to an earlier replay
    plotter = RecordPlotter(viz, env)
    # Each window's final state, in the order the windows first appeared (the live layout): all
    # points of every scalar curve, the last record of each image or confusion matrix.
    windows: dict[tuple[str, str], Any] = {}
    for record in records:
        kind = record.get("kind")
        if kind == "scalars":
            for name, value in record["values"].items():
                steps, values = windows.setdefault(("scalars", name), defaultdict(lambda: ([], [])))[record["phase"]]
                steps.append(record["step"])
                values.append(value)
        elif kind in ("image", "confusion"):
            windows[(kind, record["name"])] = {**record, "run": str(run_dir)}  # keeps its first position
    for (kind, name), state in windows.items():
        if kind == "scalars":
            for phase, (steps, values) in state.items():
                plotter.line(name, phase, steps, values)
        else:
            plotter.draw(state)
    log.info("replayed %d records of %s into %s:%s/env/%s", len(records), run_dir, server, port, env)
    return env


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    defaults = MonitorConfig()
    parser = argparse.ArgumentParser(description="Replay a run directory's metrics.jsonl into visdom.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--server", default=defaults.server, help=f"visdom server URL (default {defaults.server})")
    parser.add_argument("--port", type=int, default=defaults.port, help=f"visdom port (default {defaults.port})")
    parser.add_argument("--env", default=None, help="target environment (default: the run's own)")
    args = parser.parse_args(strip_debug_flag(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        env = replay(args.run_dir, server=args.server, port=args.port, env=args.env)
    except ConnectionError as error:
        raise ReplayError(f"visdom server {args.server}:{args.port} unreachable ({error}); start one with "
                          "scripts/monitor.sh") from error
    print(f"{args.server}:{args.port}/env/{env}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
