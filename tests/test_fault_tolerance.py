"""The whole protocol survives SIGKILL at random moments: re-running it finishes the job, the final
report equals an uninterrupted run's, and no file in the run tree is truncated or unparseable."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

from tree_check import unreadable_files

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=capsnet", "synthetic=true", "data.image_size=32", "data.k=2", "gan.train.epochs=1",
        "gan.train.epochs_decay=1", "gan.net.ngf=8", "gan.net.ndf=8", "gan.condition.crop_size=32", "gan.count=60",
        "gan.shard_size=20", "train.epochs=3", "train.batch_size=16", "pretrain.epochs=1", "monitor.visdom=false"]
KILLS = 4


def _command(out: Path, *extra: str) -> list[str]:
    return ["bash", "scripts/cross_validate.sh", *TINY, f"out={out}", f"data.splits_dir={out}/folds", *extra]


def _run_to_end(out: Path, env: dict[str, str], *extra: str) -> None:
    result = subprocess.run(_command(out, *extra), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


def _kill_after_progress(out: Path, env: dict[str, str], new_files: int, delay: float) -> bool:
    """Start the protocol and SIGKILL its whole process group once ``new_files`` more files exist in ``out``
    (plus ``delay`` seconds, to land mid-write); True if it was still running. Progress-based, so the kills
    land inside the protocol however fast or loaded the machine is."""
    count = lambda: sum(1 for p in out.rglob("*") if p.is_file()) if out.exists() else 0  # noqa: E731
    target = count() + new_files
    process = subprocess.Popen(_command(out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    while process.poll() is None and count() < target:
        time.sleep(0.2)
    time.sleep(delay)
    if process.poll() is not None:
        return False
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return True


def _test_results(report_dir: Path) -> dict:
    """The report's numbers, without wall times and run-directory paths (which differ by design)."""
    text = (report_dir / "report.json").read_text()
    return json.loads(text, object_hook=lambda d: {k: v for k, v in d.items() if k != "runs" and "time" not in k})


def test_protocol_survives_random_sigkills(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BRAIN_TUMOUR_CACHE": str(tmp_path / "cache")}
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    _run_to_end(clean, env)

    rng = random.Random(1234)
    kills = attempts = 0
    while kills < KILLS and attempts < 3 * KILLS:  # each killed run makes progress, so one may finish
        kills += _kill_after_progress(killed, env, rng.randint(3, 12), rng.uniform(0.0, 2.0))
        attempts += 1
    assert kills == KILLS, f"only {kills} of {attempts} runs were still going when killed"
    _run_to_end(killed, env)

    report = "report/capsnet-synthetic"
    assert _test_results(killed / report) == _test_results(clean / report)
    assert (killed / report / "model.onnx").is_file()
    assert unreadable_files(killed) == []

    # Once a real-only run shares the out= folder, the synthetic report also pairs the two fold by fold.
    _run_to_end(killed, env, "synthetic=false")
    _run_to_end(killed, env)
    [pair] = json.loads((killed / report / "report.json").read_text())["paired"]
    assert pair["folds"] == [0, 1] and pair["baseline"] == "capsnet/scratch/grouped-k2/32px"
