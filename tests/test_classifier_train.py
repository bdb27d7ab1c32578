"""One fold of capsule_classifier/train.py on the embedded sample at 32 px: run directory, resume,
finished-fold skip, NaN stop, pretraining shards and bad input."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig
from tiny_models import small_out_of_scope_set
from torchvision.models import resnet50 as torchvision_resnet50

from capsule_classifier import train
from capsule_classifier.capsnet import CapsuleObjective
from capsule_classifier.data import load_pretrain_shards
from capsule_classifier.deploy import load_classifier
from datasets.shards import ShardError, write_shards
from experiment.batches import TrainBatches
from experiment.checkpoint import load_checkpoint
from experiment.engine import NonFiniteLossError

CONFIG_DIR = Path(train.__file__).resolve().parent / "configs"
PROJECT = CONFIG_DIR.parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    """The entry point's config for a tiny run under ``tmp_path``."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose("train", overrides=[
            f"out={tmp_path / 'runs'}", f"data.splits_dir={tmp_path / 'splits'}", "data.image_size=32",
            "monitor.visdom=false", "train.epochs=2", "train.batch_size=16", "train.patience=0",
            "eval_batch_size=64", "device=cpu", f"out_of_scope={small_out_of_scope_set(tmp_path / 'oos')}",
            *overrides])


def test_fold_writes_a_complete_run_dir_and_is_not_rerun(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "fold=1")
    summary = train.run(cfg)
    run_dir = Path(cfg.run_dir)
    assert run_dir == tmp_path / "runs" / "capsnet" / "grouped-k7" / "scratch" / "fold1"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "predictions.json", "model.pt", "calibration.json",
                 "reliability.png", "out_of_scope.json", "explanations.json"):
        assert (run_dir / name).is_file(), name
    assert summary["fold"] == 1 and summary["model"] == "capsnet" and summary["tag"] == "scratch"
    assert summary["parameters"]["resnet50"] > 9 * summary["parameters"]["model"]
    assert summary["parameters"]["model_without_decoder"] < summary["parameters"]["model"]
    assert summary["data"]["fingerprint"] and Path(summary["folds_file"]).is_file()
    predictions = json.loads((run_dir / "predictions.json").read_text())
    assert len(predictions["file_ids"]) == summary["test"]["n"] == summary["data"]["slices"]["test"]
    assert len(set(predictions["subjects"])) == summary["data"]["subjects"]["test"] > 0
    assert np.allclose(np.sum(predictions["probabilities"], axis=1), 1.0, atol=1e-4)
    assert np.allclose(np.sum(predictions["calibrated_probabilities"], axis=1), 1.0, atol=1e-4)
    assert summary["trust"]["temperature"] == predictions["temperature"] > 0
    assert {"test_ece_after", "test_false_reject", "auroc_photographs", "pointing_game"} <= summary["trust"].keys()
    assert predictions["y_pred"] == np.argmax(predictions["scores"], axis=1).tolist()
    accuracy = np.mean(np.array(predictions["y_pred"]) == np.array(predictions["y_true"]))
    assert summary["test"]["accuracy"] == pytest.approx(accuracy)
    classifier, meta = load_classifier(run_dir / "model.pt")
    assert meta["image_size"] == 32 and meta["model_name"] == "capsnet" and meta["geometry"] == "canonical"
    assert float(classifier.temperature) == pytest.approx(summary["trust"]["temperature"]) and classifier.detector
    stamp = (run_dir / "summary.json").stat().st_mtime_ns
    assert train.run(cfg)["test"] == summary["test"]
    assert (run_dir / "summary.json").stat().st_mtime_ns == stamp


def test_resume_equals_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = make_cfg(tmp_path, "train.epochs=3", "out=" + str(tmp_path / "full"))
    train.run(full)
    broken = make_cfg(tmp_path, "train.epochs=3", "out=" + str(tmp_path / "resumed"))
    original = TrainBatches.__call__

    def crash_at_epoch_3(self: TrainBatches, epoch: int):
        if epoch == 3:
            raise KeyboardInterrupt("simulated kill")
        return original(self, epoch)

    monkeypatch.setattr(TrainBatches, "__call__", crash_at_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train.run(broken)
    assert not (Path(broken.run_dir) / "summary.json").exists()
    monkeypatch.setattr(TrainBatches, "__call__", original)
    train.run(broken)
    final = {name: load_checkpoint(Path(c.run_dir) / "checkpoints" / "finetune" / "epoch-0003.pt")
             for name, c in (("full", full), ("resumed", broken))}
    assert final["full"]["model"].keys() == final["resumed"]["model"].keys()
    for key, value in final["full"]["model"].items():
        assert torch.equal(value, final["resumed"]["model"][key]), key
    summaries = [json.loads((Path(c.run_dir) / "summary.json").read_text()) for c in (full, broken)]
    assert summaries[0]["test"] == summaries[1]["test"]

    def scalars(cfg: DictConfig) -> list:
        lines = (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()
        return [(r["epoch"], r["values"]) for r in map(json.loads, lines) if r["kind"] == "scalars"]

    assert scalars(full) == scalars(broken)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = CapsuleObjective.loss
    calls = {"n": 0}

    def poisoned(self, output, images, targets):
        loss, parts = original(self, output, images, targets)
        calls["n"] += 1
        return (loss * float("nan"), parts) if calls["n"] > 25 else (loss, parts)

    monkeypatch.setattr(CapsuleObjective, "loss", poisoned)
    cfg = make_cfg(tmp_path, "train.epochs=3")
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        train.run(cfg)
    folder = Path(cfg.run_dir) / "checkpoints" / "finetune"
    assert (folder / "epoch-0001.pt").is_file()
    assert not (Path(cfg.run_dir) / "summary.json").exists()


def test_fold_out_of_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fold must be an integer in 0..6"):
        train.run(make_cfg(tmp_path, "fold=7"))


def test_unknown_schedule_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cosine' or 'step"):
        train.run(make_cfg(tmp_path, "train.schedule=linear"))


def _shards(folder: Path, size: int, labels: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(len(labels), size, size), dtype=np.uint8)
    write_shards(folder, images, labels, shard_size=16, provenance={"writer": "test", "fold": 0})
    return folder


def test_shards_of_another_size_are_resized_or_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = _shards(tmp_path / "shards", 40, np.arange(30) % 3)
    with pytest.raises(ShardError, match="40x40 images but the classifier uses 32x32"):
        load_pretrain_shards(folder, 32, strict=True)
    with caplog.at_level(logging.WARNING):
        images, labels, manifest = load_pretrain_shards(folder, 32, strict=False)
    assert images.shape == (30, 32, 32) and images.dtype == np.uint8 and "resizing" in caplog.text
    assert manifest["provenance"]["writer"] == "test"


def test_shards_lacking_a_class_are_refused(tmp_path: Path) -> None:
    folder = _shards(tmp_path / "shards", 32, np.array([0, 1] * 10))
    with pytest.raises(ShardError, match=r"no images of class\(es\) \['pituitary'\]"):
        load_pretrain_shards(folder, 32, strict=False)


def test_pretraining_then_finetuning(tmp_path: Path) -> None:
    shards = _shards(tmp_path / "shards", 32, np.arange(48) % 3)
    cfg = make_cfg(tmp_path, f"pretrain.shards={shards}", "pretrain.epochs=1", "train.epochs=1")
    summary = train.run(cfg)
    assert "/synthetic/fold0" in cfg.run_dir and summary["pretrained"] and summary["tag"] == "synthetic"
    assert summary["pretrain"]["num_images"] == 48 and summary["pretrain"]["provenance"]["writer"] == "test"
    assert (Path(cfg.run_dir) / "checkpoints" / "pretrain" / "best.pt").is_file()
    phases = {json.loads(line)["phase"] for line in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()}
    assert phases == {"pretrain", "finetune"}


def test_config_groups_are_typed_and_old_names_still_work(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "model=resnet50")
    assert cfg.train.lr == 0.001 and cfg.train.schedule == "cosine"  # the model's budget over the schema
    assert cfg.pretrain.lr == cfg.train.lr and cfg.augment.flip_prob == 0.5
    for bad in ("train.schedul=step", "augment.rotate=5", "pretrain.epochs=many"):
        with pytest.raises(ConfigCompositionException):
            make_cfg(tmp_path, bad)
    done = subprocess.run([sys.executable, "capsule_classifier/train.py", "--cfg", "job", "data.folds_dir=OLD"],
                          cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "splits_dir: OLD" in done.stdout
    assert done.stderr.count("FutureWarning: config key 'data.folds_dir' is now 'data.splits_dir'") == 1


def test_resnet50_fold_takes_its_facts_from_the_registry(tmp_path: Path) -> None:
    weights = tmp_path / "imagenet.pt"
    torch.save(torchvision_resnet50(weights=None).state_dict(), weights)
    cfg = make_cfg(tmp_path, "model=resnet50", f"model.kwargs.weights={weights}", "train.epochs=1",
                   "model.objective.label_smoothing=0.1")
    summary = train.run(cfg)
    counts = summary["parameters"]
    assert counts["model"] == counts["model_without_decoder"] == counts["resnet50"] > 2e7
    _, meta = load_classifier(Path(cfg.run_dir) / "model.pt")
    assert meta["model_name"] == "resnet50" and meta["model_kwargs"] == {}  # the ImageNet file is init-only
    assert summary["model_kwargs"] == {"weights": str(weights)}
    predictions = json.loads((Path(cfg.run_dir) / "predictions.json").read_text())
    logits = torch.tensor(predictions["scores"])
    assert np.allclose(predictions["probabilities"], logits.softmax(1).numpy(), atol=1e-5)
