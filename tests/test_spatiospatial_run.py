"""The 3D entry point end to end on tiny generated volumes and the embedded sample: Hydra overrides, old names,
resume, multirun."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from niftis import make_labels_csv

import spatiospatial.run as spatiospatial_run
from datasets.core import EMBEDDED_VOLUMES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "spatiospatial" / "configs"


def _overrides(tmp_path: Path, data: Path) -> list[str]:
    return [f"data.root={data}", f"data.cache_dir={tmp_path}/cache", f"data.splits_dir={tmp_path}/splits",
            "data.shape=[12,12,12]", "data.spacing=[1.5,1.5,1.5]", f"out={tmp_path}/runs", "monitor.visdom=false",
            "device=cpu", "train.num_workers=0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_labels_csv(tmp_path_factory.mktemp("volumes"), per_class=4)


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name="config", overrides=overrides)


def test_override_run_then_finished_then_resumed(tmp_path: Path, data: Path) -> None:
    overrides = [*_overrides(tmp_path, data), "model=mc3_18", "data.time_axis=y", "train.epochs=2",
                 "train.batch_size=3"]
    cfg = _compose(overrides)
    summary = spatiospatial_run.run(cfg)
    run_dir = Path(cfg.run_dir)
    assert run_dir == tmp_path / "runs" / "mc3_18" / "auto-t1ce-ty-bs3-lr0.001-seed0"
    assert summary["model"] == "mc3_18" and summary["input_shape"] == [1, 12, 12, 12]
    assert summary["parameters"] > 1e7 and summary["forward_flops"] > 1e8
    assert summary["volumes"] == {"train": [2, 2, 2], "val": [1, 1, 1], "test": [1, 1, 1]}
    assert summary["test"]["n"] == 3 and 0.0 <= summary["test"]["macro_f1"] <= 1.0
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "train" / "best.pt").is_file()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "scalars" and r["phase"] == "train"] == [1, 2]
    assert [r["kind"] for r in records if r["phase"] == "test"] == ["scalars", "confusion"]

    assert spatiospatial_run.run(cfg) == summary  # finished: read back, not rerun
    (run_dir / "summary.json").unlink()
    longer = spatiospatial_run.run(_compose([*overrides, "train.epochs=3"]))
    assert longer["epochs_run"] == 3
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "scalars" and r["phase"] == "train"] == [1, 2, 3]
    assert sum(r["phase"] == "test" for r in records) == 2  # the test records were replaced, not repeated


def test_two_value_multirun_under_the_old_names(tmp_path: Path, data: Path) -> None:
    old = ["training.batch_size=3,6", "training.epochs=1", "training.cpu_bf16=true", "data.seed=0"]
    result = subprocess.run([sys.executable, "spatiospatial/run.py", "-m", "model=mc3_18", *old,
                             *_overrides(tmp_path, data)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for key, new in (("training.batch_size", "train.batch_size"), ("training.cpu_bf16", "cpu_bf16"),
                     ("data.seed", "data.split_seed")):
        assert result.stderr.count(f"FutureWarning: config key {key!r} is now {new!r}") == 1
    for batch_size in (3, 6):
        run_dir = tmp_path / "runs" / "mc3_18" / f"auto-t1ce-tz-bs{batch_size}-lr0.001-seed0"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["model"] == "mc3_18" and summary["epochs_run"] == 1
        assert f"test accuracy {summary['test']['accuracy']:.4f}" in result.stdout


def test_default_data_is_the_embedded_sample(tmp_path: Path) -> None:
    overrides = [f"data.cache_dir={tmp_path}/cache", f"data.splits_dir={tmp_path}/splits", "data.shape=[16,16,16]",
                 "data.spacing=[12,12,12]", f"out={tmp_path}/runs", "monitor.visdom=false", "device=cpu",
                 "model=mc3_18", "train.epochs=1"]
    cfg = _compose(overrides)
    assert cfg.data.root is None and cfg.train.flip and cfg.data.val_fraction == 0.2
    summary = spatiospatial_run.run(cfg)
    assert Path(summary["data_root"]) == EMBEDDED_VOLUMES
    assert sum(map(sum, summary["volumes"].values())) == 10 and summary["test"]["n"] >= 2
    assert Path(summary["split"]).parent == tmp_path / "splits"
