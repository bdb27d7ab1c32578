"""Generator training, resume, synthesis into shards and their bad inputs, on the embedded sample at 32 px."""
from __future__ import annotations

import errno
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

import generative_model
from capsule_classifier import build_model
from capsule_classifier.deploy import save_classifier
from capsule_classifier.export import export
from datasets import shards
from datasets.core import CLASS_NAMES, EMBEDDED_SAMPLE, DataError
from datasets.shards import ShardError, read_manifest, read_shards
from experiment.atomic import atomic_open
from experiment.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from experiment.engine import NonFiniteLossError
from experiment.rundir import RunDir, RunDirConflict
from generative_model import checkpoint, gallery, synthesize, train
from generative_model.assess import assess, read_meta
from generative_model.checkpoint import GENERATOR_FILE
from generative_model.folds import load_fold_data
from generative_model.pix2pix import Pix2Pix

CONFIGS = Path(generative_model.__file__).parent / "configs"
TINY = {"train": ["data.image_size=32", "condition.crop_size=32", "net.ngf=8", "net.ndf=8", "monitor.visdom=false",
                   "train.batch_size=8"],
        "synthesize": ["data.image_size=32", "batch_size=8"]}
ONE_EPOCH = ("train.epochs=1", "train.epochs_decay=0")
SUBJECTS_PER_CLASS = 9  # the fewest for 7 patient-wise folds and a validation share in each


def make_cfg(name: str, base: Path, *overrides: str) -> DictConfig:
    """Compose ``configs/<name>.yaml`` with tiny settings, the small bundle and every path under ``base``."""
    paths = [f"data.root={base / 'small.npz'}", f"data.splits_dir={base / 'splits'}",
             f"data.cache_dir={base / 'cache'}"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name=name, overrides=[*TINY[name], *paths, *overrides])


def write_subset(source: Path, target: Path, keep: np.ndarray) -> None:
    """A bundle ``.npz`` holding the slices ``keep`` of ``source``."""
    with np.load(source) as bundle:
        np.savez(target, **{name: bundle[name][keep] for name in bundle.files})


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``small.npz``: the patients with the fewest slices of each class of the embedded sample."""
    folder = tmp_path_factory.mktemp("generator")
    with np.load(EMBEDDED_SAMPLE) as sample:
        subjects, labels = sample["subject"], sample["label"]
    chosen = []
    for label in (1, 2, 3):
        ids, counts = np.unique(subjects[labels == label], return_counts=True)
        chosen.extend(ids[np.argsort(counts, kind="stable")[:SUBJECTS_PER_CLASS]])
    write_subset(EMBEDDED_SAMPLE, folder / "small.npz", np.isin(subjects, chosen))
    return folder


def steps_per_epoch(cfg: DictConfig) -> int:
    return math.ceil(load_fold_data(cfg.data, cfg.fold).train.size / cfg.train.batch_size)


@pytest.fixture(scope="module")
def trained(base: Path) -> Path:
    """A generator trained for one epoch on fold 0 (shared by the synthesis tests)."""
    run_dir = base / "trained"
    train.run(make_cfg("train", base, *ONE_EPOCH, f"run_dir={run_dir}"))
    return run_dir / GENERATOR_FILE


def synth_cfg(base: Path, checkpoint: Path, out: Path, *overrides: str) -> DictConfig:
    return make_cfg("synthesize", base, f"checkpoint={checkpoint}", f"out={out}", "count=50", "shard_size=16",
                    *overrides)


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.pkl"))}


def test_training_writes_run_directory(trained: Path) -> None:
    run_dir = trained.parent
    summary = RunDir(run_dir).read_summary()
    assert summary["fold"] == 0 and "fold 0 training patients only" in summary["trained_on"]
    assert summary["params"]["generator"] > 0 and summary["data_fingerprint"]
    assert summary["quality"]["n"] > 0 and summary["quality"]["ssim_inside"]["mean"] > 0
    assert (run_dir / "quality.json").is_file() and list(run_dir.glob("quality-*.png"))
    records = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"image"' in line]
    assert records, "the condition | real | fake grid is logged every epoch"


@pytest.mark.parametrize("lambda_cls", [0.0, 1.0])
def test_resume_after_interruption_equals_uninterrupted_run(base: Path, monkeypatch: pytest.MonkeyPatch,
                                                            lambda_cls: float) -> None:
    settings = ["train.epochs=1", "train.epochs_decay=1", f"loss.lambda_cls={lambda_cls}"]
    runs = base / f"cls{lambda_cls:g}"
    train.run(make_cfg("train", base, *settings, f"run_dir={runs / 'straight'}"))

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("killed after the first checkpoint")

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "prune_checkpoints", killed)
        with pytest.raises(KeyboardInterrupt):
            train.run(make_cfg("train", base, *settings, f"run_dir={runs / 'resumed'}"))
    assert not (runs / "resumed" / GENERATOR_FILE).exists()
    with pytest.raises(FileExistsError, match="resume=true"):
        train.run(make_cfg("train", base, *settings, f"run_dir={runs / 'resumed'}"))
    train.run(make_cfg("train", base, *settings, "resume=true", f"run_dir={runs / 'resumed'}"))

    straight = load_checkpoint(runs / "straight" / "checkpoints" / "epoch-0002.pt")
    resumed = load_checkpoint(runs / "resumed" / "checkpoints" / "epoch-0002.pt")
    for part in ("G", "D"):
        assert straight[part].keys() == resumed[part].keys()
        for key, value in straight[part].items():
            assert torch.equal(value, resumed[part][key]), f"{part}.{key} differs after resume"
    assert any(key.startswith("class_head") for key in straight["D"]) == (lambda_cls > 0)
    epoch_records = [r for r in RunDir(runs / "resumed").read_metrics() if r.get("phase") == "epoch"]
    assert [r["epoch"] for r in epoch_records] == [1, 2]
    assert all(("G_cls" in r["values"]) == (lambda_cls > 0) for r in epoch_records)


def test_resume_with_another_architecture_is_refused(base: Path, trained: Path) -> None:
    run_dir = base / "arch"
    train.run(make_cfg("train", base, *ONE_EPOCH, f"run_dir={run_dir}"))
    other = make_cfg("train", base, "train.epochs=2", "train.epochs_decay=0", "net.ngf=4", "resume=true",
                     f"run_dir={run_dir}")
    with pytest.raises(RunDirConflict, match=r"differs in \['net'\]"):
        train.run(other)
    (run_dir / "identity.json").unlink()  # without the run's identity, the checkpoint's arch still guards it
    with pytest.raises(CheckpointError, match="trained with generator"):
        train.run(other)
    plain = make_cfg("train", base, "train.epochs=2", "train.epochs_decay=0", "loss.lambda_cls=0", "resume=true",
                     f"run_dir={run_dir}")
    (run_dir / "identity.json").unlink(missing_ok=True)  # the class head is checked in the checkpoint too
    with pytest.raises(CheckpointError, match=r"with the class objective; resume with loss.lambda_cls > 0"):
        train.run(plain)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = base / "nan"
    cfg = make_cfg("train", base, "train.epochs=2", "train.epochs_decay=0", f"run_dir={run_dir}")
    first_epoch = steps_per_epoch(cfg)
    real_step = Pix2Pix.optimize_parameters
    calls = {"n": 0}

    def diverging(self: Pix2Pix) -> dict[str, float]:
        calls["n"] += 1
        losses = real_step(self)
        return {**losses, "G_L1": float("nan")} if calls["n"] > first_epoch else losses

    monkeypatch.setattr(Pix2Pix, "optimize_parameters", diverging)
    with pytest.raises(NonFiniteLossError, match="epoch-0001.pt"):
        train.run(cfg)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch-0001.pt"]
    assert not (run_dir / GENERATOR_FILE).exists()


@pytest.mark.parametrize(("override", "error", "match"), [
    ("data.root=/nonexistent/figshare", DataError, "does not exist"),
    ("fold=7", ValueError, "fold must be an integer in 0..6"),
    ("fold=-1", ValueError, "fold must be an integer in 0..6"),
])
def test_bad_data_or_fold_is_refused(base: Path, override: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        train.run(make_cfg("train", base, override, f"run_dir={base / 'bad'}"))
    assert not (base / "bad").exists()


def test_empty_root_and_missing_class_are_refused(base: Path) -> None:
    empty = base / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no figshare"):
        train.run(make_cfg("train", base, f"data.root={empty}", f"run_dir={base / 'bad'}"))
    bundle = base / "no_pituitary.npz"
    with np.load(base / "small.npz") as small:
        write_subset(base / "small.npz", bundle, small["label"] != 3)
    with pytest.raises(ValueError, match="pituitary has 0"):  # the patient-wise split needs every class
        train.run(make_cfg("train", base, f"data.root={bundle}", f"run_dir={base / 'bad'}"))
    with pytest.raises(DataError, match="pituitary"):
        train.run(make_cfg("train", base, f"data.root={bundle}", "fold=null", f"run_dir={base / 'bad'}"))


@pytest.mark.parametrize(("proportions", "expected"), [("balanced", [17, 17, 16]), ("real", None)])
def test_shard_labels_and_counts_are_exact(base: Path, trained: Path, proportions: str, expected: list | None) -> None:
    out = base / f"shards-{proportions}"
    manifest = synthesize.run(synth_cfg(base, trained, out, f"proportions={proportions}"))
    images, labels, read_back = read_shards(out)
    if expected is None:
        summary = RunDir(trained.parent).read_summary()
        train_counts = np.array(summary["train_class_counts"])
        expected = synthesize.class_counts(50, "real", train_counts).tolist()
        assert abs(expected[1] / 50 - train_counts[1] / train_counts.sum()) < 0.02
    assert images.shape == (50, 32, 32) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=3).tolist() == expected == manifest["class_counts"]
    assert [entry["count"] for entry in manifest["shards"]] == [16, 16, 16, 2]
    assert read_back["provenance"]["fold"] == 0 and len(read_back["provenance"]["checkpoint_sha256"]) == 64


def test_synthesis_uses_training_patients_only(base: Path, trained: Path) -> None:
    out = base / "fold-only"
    synthesize.run(synth_cfg(base, trained, out))
    meta = read_meta(out, read_manifest(out))
    fold = load_fold_data(make_cfg("synthesize", base).data, 0)
    data = fold.data
    train_ids = set(data.file_ids[fold.train])
    held_out = set(data.file_ids[np.setdiff1d(np.arange(len(data)), fold.train)])
    for key in ("mask_file_id", "donor_file_id"):
        assert set(meta[key]) <= train_ids and not set(meta[key]) & held_out, key
    assert set(meta["donor_subject"]) <= set(data.subjects[fold.train])
    assert not set(meta["donor_subject"]) & set(data.subjects[fold.val])
    assert (meta["donor_subject"] != meta["mask_subject"]).all()
    _, labels, _ = read_shards(out)
    by_id = dict(zip(data.file_ids, data.labels, strict=True))
    assert [by_id[i] for i in meta["mask_file_id"]] == labels.tolist()  # each tumour mask has the shard's label


def test_judge_assessment_and_gallery(base: Path, trained: Path) -> None:
    torch.manual_seed(1)
    model = build_model("capsnet", image_size=32).eval()
    save_classifier(base / "judge.pt", model, "capsnet", {}, 32, CLASS_NAMES, fold=0, epoch=1)
    judge = Path(export(base / "judge.pt", base / "judge.onnx")["onnx"])
    out = base / "judged"
    synthesize.run(synth_cfg(base, trained, out, f"judge={judge}", f"run_dir={trained.parent}"))
    quality = json.loads((trained.parent / "quality.json").read_text())
    assert quality["reconstruction"]["n"] > 0  # training's section is kept
    assert set(quality["consistency"]["per_class"]) == set(CLASS_NAMES) and quality["consistency"]["n"] == 50
    assert 0 <= quality["ceiling"]["consistency"] <= 1 and quality["judge"]["features"]
    assert quality["frechet"]["synthetic_vs_train"] >= 0 and quality["frechet"]["val_vs_train"] >= 0
    memory = quality["memorisation"]
    assert -1 <= memory["tumour_window"]["val"]["mean"] <= 1 and memory["slice"]["synthetic"]["p99"] <= 1 + 1e-6
    unfinished = base / "unfinished"
    unfinished.mkdir()
    shutil.copy(trained.parent / "config.yaml", unfinished)
    with pytest.raises(DataError, match="not a finished generator run"):
        assess(out, judge, unfinished)
    picture = gallery.gallery(trained.parent, out, base / "gallery.png", per_class=2)
    with Image.open(picture) as image:
        assert image.size[0] > 4 * 32 and image.size[1] > 3 * 32


def test_synthesis_is_deterministic_and_resumes_identically(base: Path, trained: Path) -> None:
    first, second = base / "det-a", base / "det-b"
    synthesize.run(synth_cfg(base, trained, first))
    synthesize.run(synth_cfg(base, trained, second))
    reference = shard_bytes(first)
    assert len(reference) == 4 and reference == shard_bytes(second)
    (second / "shard-00003.pkl").unlink()
    (second / "shard-00001.pkl").unlink()
    (second / "manifest.json").unlink()
    synthesize.run(synth_cfg(base, trained, second))
    assert shard_bytes(second) == reference
    assert (first / "manifest.json").read_text() == (second / "manifest.json").read_text()


def test_disk_full_publishes_no_partial_shard(base: Path, trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = base / "full"
    synthesize.run(synth_cfg(base, trained, base / "full-reference"))
    real_write = shards.atomic_write_bytes

    def full_disk(path: Path, data: bytes) -> None:
        if Path(path).name == "shard-00002.pkl":
            with atomic_open(path, "wb") as handle:
                handle.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    with monkeypatch.context() as patch:
        patch.setattr(shards, "atomic_write_bytes", full_disk)
        with pytest.raises(ShardError, match="No space left on device"):
            synthesize.run(synth_cfg(base, trained, out))
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".log")) == [
        "shard-00000.pkl", "shard-00001.pkl", "writer.json"]
    synthesize.run(synth_cfg(base, trained, out))
    assert shard_bytes(out) == shard_bytes(base / "full-reference")


def test_shards_of_another_generator_are_refused_unless_overwrite(base: Path, trained: Path) -> None:
    out = base / "other"
    synthesize.run(synth_cfg(base, trained, out))
    before = shard_bytes(out)
    with pytest.raises(ShardError, match="overwrite=true"):
        synthesize.run(synth_cfg(base, trained, out, "seed=1"))
    assert shard_bytes(out) == before
    synthesize.run(synth_cfg(base, trained, out, "seed=1", "overwrite=true"))
    assert shard_bytes(out) != before


def test_bad_checkpoints_are_refused(base: Path, trained: Path) -> None:
    out = base / "never"
    with pytest.raises(CheckpointError, match="paints 32 px"):
        synthesize.run(synth_cfg(base, trained, out, "data.image_size=64"))
    with pytest.raises(CheckpointError, match="trained for fold 0"):
        synthesize.run(synth_cfg(base, trained, out, "fold=1"))
    corrupt = base / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        synthesize.run(synth_cfg(base, corrupt, out))
    state = load_checkpoint(trained)
    state["arch"] = {**state["arch"], "ngf": 16}
    save_checkpoint(base / "mismatched.pt", state)
    with pytest.raises(CheckpointError, match="does not match"):
        synthesize.run(synth_cfg(base, base / "mismatched.pt", out))
    with pytest.raises(CheckpointError, match="not found"):
        synthesize.run(synth_cfg(base, base / "missing.pt", out))
    assert not out.exists() or not list(out.glob("shard-*"))
