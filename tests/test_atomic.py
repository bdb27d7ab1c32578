"""Atomic writes leave at most a temporary file when killed, and a resumed run or shard writer removes it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from datasets.shards import ShardWriter
from experiment.atomic import remove_temporaries
from experiment.rundir import RunDir

KILLED_WRITER = """
import sys, time
from experiment.atomic import atomic_open
with atomic_open(sys.argv[1], "wb") as handle:
    handle.write(b"half")
    handle.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def _kill_during_write(target: Path) -> Path:
    """Run a writer that is SIGKILLed inside ``atomic_open``; return the temporary file it left."""
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE,
                               cwd=Path(__file__).resolve().parents[1], text=True)
    assert process.stdout.readline().strip() == "writing"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    left = [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]
    assert len(left) == 1 and not target.exists()
    return left[0]


def test_a_resumed_run_directory_removes_what_a_killed_write_left(tmp_path: Path) -> None:
    images = tmp_path / "run" / "images"
    images.mkdir(parents=True)
    left = _kill_during_write(images / "grid-e0001.png")
    keep = images / "notes.tmp"  # a user's file that only looks temporary
    keep.write_text("mine")
    RunDir(tmp_path / "run")
    assert not left.exists() and keep.exists()


def test_a_resumed_shard_writer_removes_what_a_killed_write_left(tmp_path: Path) -> None:
    tmp_path.joinpath("shards").mkdir()
    left = _kill_during_write(tmp_path / "shards" / "shard-00000.pkl")
    writer = ShardWriter(tmp_path / "shards", {"g": 1})
    assert not left.exists()
    writer.write(0, np.zeros((2, 4, 4), np.uint8), np.array([0, 1]))
    assert writer.has(0)


def test_remove_temporaries_is_recursive_and_reports(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    stale = tmp_path / "a" / "b" / ".epoch-0003.pt.k2j4_x9q.tmp"
    stale.write_bytes(b"")
    assert remove_temporaries(tmp_path) == [stale] and not stale.exists()
