"""Two-process DistributedDataParallel (gloo on the CPU) through torchrun, on the embedded sample at 32 px."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from experiment.checkpoint import load_checkpoint

PROJECT = Path(__file__).resolve().parents[1]


def test_two_process_gloo_training(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(PROJECT / "capsule_classifier" / "train.py"), "model=capsnet", "fold=0", "data.image_size=32",
               "train.epochs=2", "train.batch_size=16", "train.patience=0", "monitor.visdom=false", "device=cpu",
               f"out={tmp_path / 'runs'}", f"data.splits_dir={tmp_path / 'splits'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "capsnet" / "grouped-k7" / "scratch" / "fold0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs_run"] == 2
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "scalars"] == [1, 2]  # rank 0 alone writes
    state = load_checkpoint(run_dir / "checkpoints" / "finetune" / "epoch-0002.pt")["model"]
    assert not any(key.startswith("module.") for key in state)
    assert all(torch.isfinite(value).all() for value in state.values() if value.is_floating_point())
