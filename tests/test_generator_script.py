"""``scripts/synthesize.sh`` end to end: train a tiny generator on the embedded sample, then write shards."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import yaml

from datasets.shards import read_shards

ROOT = Path(__file__).resolve().parents[1]
CI_LIMIT_S = 120


def test_synthesize_script_trains_and_writes_valid_shards(tmp_path: Path) -> None:
    out, run_dir = tmp_path / "shards", tmp_path / "run"
    command = ["bash", str(ROOT / "scripts" / "synthesize.sh"), "data.image_size=32", "condition.crop_size=32",
               "net.ngf=8", "net.ndf=8", "epochs=1", "train.epochs_decay=0", "train.batch_size=16",
               "monitor.visdom=false", "count=40", "shard_size=16", "batch_size=7", "proportions=real", f"out={out}",
               f"run_dir={run_dir}",
               f"data.splits_dir={tmp_path / 'splits'}", f"data.cache_dir={tmp_path / 'cache'}"]
    start = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=CI_LIMIT_S)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    assert elapsed < CI_LIMIT_S
    assert "config key 'epochs' is now 'train.epochs'" in result.stderr  # the old name still works
    trained = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert trained["train"]["epochs"] == 1 and trained["train"]["batch_size"] == 16 and "batch_size" not in trained
    images, labels, manifest = read_shards(out)
    assert images.shape == (40, 32, 32) and len(manifest["shards"]) == 3
    assert np.bincount(labels, minlength=3).tolist() == manifest["class_counts"]
    assert manifest["provenance"]["config"]["batch_size"] == 7
    assert (run_dir / "generator.pt").is_file() and (run_dir / "summary.json").is_file()

    rerun = subprocess.run([*command, f"checkpoint={run_dir / 'generator.pt'}"], cwd=ROOT, capture_output=True,
                           text=True, timeout=CI_LIMIT_S)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "already holds this complete shard set" in rerun.stdout + rerun.stderr


def test_synthesize_script_rejects_a_bare_word(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(ROOT / "scripts" / "synthesize.sh"), "fold"], cwd=ROOT,
                            capture_output=True, text=True, timeout=CI_LIMIT_S)
    assert result.returncode == 2 and "key=value" in result.stderr
