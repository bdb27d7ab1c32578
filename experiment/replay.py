"""Replay a run directory into visdom, so a run can be watched after the fact.

    python -m experiment.replay RUN_DIR [--port 8097] [--server http://127.0.0.1] [--env NAME]

Reads ``metrics.jsonl`` (read-only; a last line cut short by a kill is skipped) and the image PNGs
it references, clears the target environment (by default the run's own, the one it streamed to
live) and draws its final state: every scalar curve in full, the last image grid and confusion
matrix of each name. The windows are the ones :class:`experiment.visdom_sink.VisdomSink` draws.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from experiment.config import MonitorConfig
from experiment.monitor import visdom_env_name
from experiment.rundir import METRICS_FILE
from experiment.visdom_sink import RecordPlotter, connect

log = logging.getLogger(__name__)


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` without modifying it (the run may still be writing)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics log; is {run_dir} a run directory?")
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):  # the writer was killed (or is writing) mid-line
                log.warning("%s:%d: skipping a partial last line", path, number)
                continue
            raise ValueError(f"{path}:{number}: not a JSON record ({error})") from error
    return records


def replay(run_dir: Path, *, server: str, port: int, env: str | None = None, timeout_s: float = 10.0) -> str:
    """Draw ``run_dir``'s records into visdom environment ``env`` (default: the run's own) and return
    its name; raises ``ConnectionError`` when the server cannot be reached."""
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


def main(argv: list[str] | None = None) -> int:
    defaults = MonitorConfig()
    parser = argparse.ArgumentParser(description="Replay a run directory's metrics.jsonl into visdom.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--server", default=defaults.server, help=f"visdom server URL (default {defaults.server})")
    parser.add_argument("--port", type=int, default=defaults.port, help=f"visdom port (default {defaults.port})")
    parser.add_argument("--env", default=None, help="target environment (default: the run's own)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        env = replay(args.run_dir, server=args.server, port=args.port, env=args.env)
    except (FileNotFoundError, ValueError) as error:
        log.error("%s", error)
        return 1
    except ConnectionError as error:
        log.error("visdom server %s:%s unreachable (%s); start one with scripts/monitor.sh",
                  args.server, args.port, error)
        return 1
    print(f"{args.server}:{args.port}/env/{env}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
