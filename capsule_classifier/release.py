"""Release one model from a finished cross-validation study: train it on every patient, calibrate it and fit its
out-of-scope detector by the study's cross-validated rules, export it, and record where it came from.

    python capsule_classifier/release.py STUDY [--root PATH] [--out models/capsnet-figshare] [--epochs N]
        [--card MODEL_CARD.md] [--debug]

``STUDY`` is a folder of finished fold runs of one configuration (``fold*/`` of ``capsule_classifier/train.py``,
each through its trust step). No patient is left to hold out, so every choice comes from the folds:

* epochs N: the median of the folds' selected epochs, a half rounded up (``--epochs`` overrides). Training is
  the folds' fine-tuning stage on every patient (same model, augmentation, optimiser and seed), with the study's
  learning-rate schedule (over ``max(train.epochs, N)`` epochs) stopped after epoch N; no validation, no early
  stopping, the last epoch is kept;
* temperature: the median of the folds' fitted temperatures;
* out of scope: the detector is fitted on the release model's training slices as the trust step fits a fold's;
  its threshold leaves the share r = median of the folds' training false-reject rates of the training slices
  above it (the (k+1)-th highest of n scores, k = round(r n)): the folds' rule (a validation bound and a margin
  towards the out-of-scope set) carried over through the tail of the training scores.

Writes ``<out>.pt`` (the ``model.pt`` format), ``<out>.onnx`` (``export.py``, parity-checked, at most
:data:`MAX_ONNX_BYTES`) and, last, ``<out>.json`` (provenance: the folds' test metrics per fold and as mean ±
sample SD, calibration and out-of-scope numbers, the rules and their values, what was trained on, data
fingerprint, git commit, wall time); ``--card`` also writes a Markdown model card from that provenance alone.
Checkpoints go to ``<out>-run/``: re-running the command resumes, and returns at once once ``<out>.json`` exists.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch import nn

from capsule_classifier import model_entry
from capsule_classifier import out_of_scope as scope
from capsule_classifier.config import ClassifierTrainConfig
from capsule_classifier.deploy import ProbabilityModel, default_model, save_classifier
from capsule_classifier.export import export
from capsule_classifier.model_card import model_card
from capsule_classifier.report import read_json_object, summary_problem
from capsule_classifier.train import (
    PHASE_KEYS,
    build_augmentation,
    build_classifier,
    build_optimizer,
    build_scheduler,
    check_config,
    fit_settings,
    pretrain_tag,
    training_slices,
)
from capsule_classifier.trust import FILES, LEGACY_GEOMETRY, MODEL_FILE, aggregate_trust, read_trust
from datasets.core import CLASS_NAMES, SliceSet
from datasets.out_of_scope_set import SOURCES
from datasets.splits import load_data
from experiment.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from experiment.batches import TrainBatches
from experiment.checkpoint import load_checkpoint, load_model_state
from experiment.cli import reports_user_errors, strip_debug_flag
from experiment.device import describe, select_device
from experiment.engine import fit
from experiment.errors import UserError
from experiment.metrics import aggregate_folds, mean_std
from experiment.monitor import Monitor
from experiment.rundir import CONFIG_FILE, SUMMARY_FILE, RunDir, provenance

log = logging.getLogger(__name__)

MAX_ONNX_BYTES = 2 << 20
PHASE = "finetune"
"""The fold's stage the release repeats on every patient (its checkpoints and seed streams)."""
PER_FOLD_KEYS = ("fold", "run_dir", "device", "monitor", "data.root", "data.cache_dir")
"""Config keys folds of one study may differ in: the fold itself, and where it ran (the data is compared by the
fingerprint in ``summary.json``, whatever path named it)."""
EPOCH_RULE = "median of the folds' selected epochs, a half rounded up"
TEMPERATURE_RULE = "median of the folds' temperatures (each fitted on its validation patients)"
THRESHOLD_RULE = ("the (k+1)-th highest out-of-scope score of the n training slices, k = round(r n), r = median of "
                  "the folds' training false-reject rates: the folds' threshold rule carried over through the tail of "
                  "the training scores")


class ReleaseError(UserError, ValueError):
    """A study that cannot be released (the message names the folder), or a release over the size limit."""


@dataclass
class Fold:
    """One finished fold run of the study: its config, summary, trust-step files and deployed temperature."""

    path: Path
    config: DictConfig
    summary: dict[str, Any]
    trust: dict[str, Any]
    temperature: float


def read_study(study: Path) -> list[Fold]:
    """The study's ``fold*/`` runs, checked: at least two, finished, through the trust step, of one configuration
    (:data:`PER_FOLD_KEYS` aside) and one data fingerprint, trained from scratch.

    Raises:
        ReleaseError: naming the folder and what is wrong.
    """
    paths = sorted((p for p in study.glob("fold*") if p.is_dir() and p.name[4:].isdecimal()),
                   key=lambda p: int(p.name[4:])) if study.is_dir() else []
    if len(paths) < 2:
        raise ReleaseError(f"{study}: a study needs at least 2 fold run directories fold<k>/, found {len(paths)}")
    folds = [_read_fold(path) for path in paths]
    first = _setting(folds[0].config)
    for fold in folds[1:]:
        other = _setting(fold.config)
        changed = sorted(k for k in first.keys() | other.keys() if first.get(k, "<absent>") != other.get(k, "<absent>"))
        if changed:
            raise ReleaseError(f"{study}: {fold.path.name} and {folds[0].path.name} are not one configuration: "
                               f"config.yaml differs in {changed}")
    prints = {fold.summary["data"].get("fingerprint") for fold in folds}
    if len(prints) > 1:
        raise ReleaseError(f"{study}: the folds were trained on different data (fingerprints "
                           f"{sorted(map(str, prints))})")
    if pretrain_tag(OmegaConf.select(folds[0].config, "pretrain.shards")) == "synthetic":
        raise ReleaseError(f"{study}: the folds were pretrained on synthetic shards, which are fold-specific; "
                           "release.py trains from scratch, so release a study run without pretrain.shards")
    return folds


def _read_fold(path: Path) -> Fold:
    missing = [name for name in (CONFIG_FILE, SUMMARY_FILE, MODEL_FILE, *FILES.values()) if not (path / name).is_file()]
    if SUMMARY_FILE in missing:
        raise ReleaseError(f"{path} is not finished (no {SUMMARY_FILE}); finish it with capsule_classifier/train.py")
    if missing:
        raise ReleaseError(f"{path} lacks {missing}; run its trust step: python capsule_classifier/trust.py {path}")
    try:
        summary = json.loads((path / SUMMARY_FILE).read_text(encoding="utf-8"))
        config = OmegaConf.load(path / CONFIG_FILE)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise ReleaseError(f"{path}: unreadable {SUMMARY_FILE} or {CONFIG_FILE} ({type(error).__name__})") from error
    problem = summary_problem(summary) or ("" if isinstance(summary.get("selected_epoch"), int) and isinstance(
        summary.get("data"), dict) else "needs selected_epoch and data")
    if problem:
        raise ReleaseError(f"{path / SUMMARY_FILE} is not a classifier fold summary: {problem}")
    trust, state = read_trust(path), load_checkpoint(path / MODEL_FILE)
    calibration = state.get("calibration")
    temperature = calibration.get("temperature") if isinstance(calibration, dict) else None
    if (not isinstance(temperature, float) or "out_of_scope" not in state or trust is None
            or "train_false_reject" not in trust["out_of_scope"]):
        raise ReleaseError(f"{path}: {MODEL_FILE} has no trust fields (calibration, out_of_scope) or the trust step's "
                           f"files are unreadable; run python capsule_classifier/trust.py {path}")
    return Fold(path, config, summary, trust, temperature)


def _setting(config: DictConfig) -> dict[str, Any]:
    """The config as ``{dotted key: value}`` without :data:`PER_FOLD_KEYS`."""
    flat = _flat(OmegaConf.to_container(config, resolve=True))
    return {k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in PER_FOLD_KEYS)}


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {key: value for name, child in node.items() for key, value in _flat(child, f"{prefix}{name}.").items()}
    return {prefix[:-1]: node}


def median_epochs(selected: list[int]) -> int:
    """:data:`EPOCH_RULE`."""
    return math.floor(statistics.median(selected) + 0.5)


def release_threshold(scores: np.ndarray, rate: float) -> float:
    """The out-of-scope threshold that leaves ``round(rate * n)`` of the ``n`` training ``scores`` above it."""
    ranked = np.sort(scores)[::-1]
    return float(ranked[min(round(rate * len(ranked)), len(ranked) - 1)])


def training_config(folds: list[Fold], root: str | None) -> DictConfig:
    """The study's config (of its first fold) with ``data.root`` replaced by ``root`` when given and ``train.*``
    keys newer than the study at their schema defaults, checked as train.py checks it."""
    cfg = folds[0].config.copy()
    cfg.data = OmegaConf.merge({"geometry": LEGACY_GEOMETRY}, cfg.data, {} if root is None else {"root": root})
    cfg.train = OmegaConf.merge(OmegaConf.structured(ClassifierTrainConfig), cfg.train)
    check_config(cfg)
    return cfg


def train_on_all(cfg: DictConfig, data: SliceSet, epochs: int, run_dir: RunDir,
                 device: torch.device) -> tuple[nn.Module, Any]:
    """The study's model after ``epochs`` epochs of the fold's fine-tuning on every slice of ``data`` (resumed
    from ``run_dir``), on the CPU in eval mode, with its objective."""
    model, objective = build_classifier(cfg)
    model = model.to(device)
    batches = TrainBatches(training_slices(model, data), data.labels, cfg.train.batch_size, cfg.seed,
                           key=PHASE_KEYS[PHASE], balanced=cfg.train.balanced,
                           augmentation=build_augmentation(cfg.augment))
    optimizer = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.train.schedule, max(epochs, cfg.train.epochs), cfg.train.step_size,
                                cfg.train.gamma)
    result = fit(model, objective, optimizer, scheduler, batches, None, fit_settings(cfg, PHASE, epochs, patience=0),
                 run_dir, Monitor(run_dir), device, CLASS_NAMES)
    load_model_state(model, load_checkpoint(result.best_path)["model"], str(result.best_path))
    return model.cpu().eval(), objective


def release_detector(model: nn.Module, objective: Any, name: str, data: SliceSet,
                 rate: float) -> tuple[scope.OutOfScopeDetector, np.ndarray]:
    """The out-of-scope detector fitted on ``data`` (the training slices) as the trust step fits a fold's, with
    the :data:`THRESHOLD_RULE` threshold for the folds' median training false-reject ``rate``; and the training
    slices' scores."""
    layers = scope.FEATURE_LAYERS[name]
    _, features = scope.outputs(ProbabilityModel(model, objective), data.images, layers)
    joined = scope.joined(features, layers)
    detector = scope.fit_detector(joined, data.labels, layers)
    scores = scope.scores(detector, joined)
    detector.threshold = release_threshold(scores, rate)
    return detector, scores


def cross_validation(study: Path, folds: list[Fold]) -> dict[str, Any]:
    """The folds' numbers: per fold, and as mean ± sample SD (test metrics, calibration, out of scope, maps)."""
    per_fold = [{"fold": f.summary["fold"], "run_dir": str(f.path), "selected_epoch": f.summary["selected_epoch"],
                 "test_accuracy": f.summary["test"]["accuracy"], "test_macro_f1": f.summary["test"]["macro_f1"],
                 "test_f1": {c: f.summary["test"]["per_class"][c]["f1"] for c in f.summary["class_names"]},
                 "temperature": f.temperature, "threshold": f.trust["out_of_scope"]["threshold"],
                 "train_false_reject": f.trust["out_of_scope"]["train_false_reject"],
                 "caught": {s: v["caught"] for s, v in f.trust["out_of_scope"]["sources"].items()}}
                for f in folds]
    caught = {source: mean_std([row["caught"][source] for row in per_fold]) for source in SOURCES
              if all(source in row["caught"] for row in per_fold)}
    return {"study": str(study), "folds": [row["fold"] for row in per_fold], "split": folds[0].summary.get("split"),
            "k": folds[0].summary.get("k"), "per_fold": per_fold,
            "test": aggregate_folds([f.summary["test"] for f in folds]),
            "trust": aggregate_trust([{"fold": f.summary["fold"], **f.trust} for f in folds]), "caught": caught}


def outputs(out: Path) -> dict[str, Path]:
    """``<out>.pt``, ``<out>.onnx``, ``<out>.json`` and the run folder ``<out>-run`` (a suffix of ``out`` among
    these is dropped first)."""
    stem = out.with_suffix("") if out.suffix.lower() in (".pt", ".onnx", ".json") else out
    return {**{kind: stem.parent / f"{stem.name}.{kind}" for kind in ("pt", "onnx", "json")},
            "run": stem.parent / f"{stem.name}-run"}


def release(study: str | os.PathLike, out: str | os.PathLike, root: str | None = None,
            epochs: int | None = None) -> dict[str, Any]:
    """Release ``study`` to ``out`` (see the module docstring); return the provenance, read back when this release
    already finished.

    Raises:
        UserError: a study that cannot be released (:func:`read_study`), a bad setting, data other than the study's,
            a run folder of another release, a failed ONNX parity check or an ONNX over :data:`MAX_ONNX_BYTES`.
    """
    study, paths = Path(study), outputs(Path(out))
    folds = read_study(study)
    cfg = training_config(folds, root)
    selected = [f.summary["selected_epoch"] for f in folds]
    count = median_epochs(selected) if epochs is None else epochs
    identity = {"study": str(study.resolve()), "folds": [f.summary["fold"] for f in folds],
                "data_fingerprint": folds[0].summary["data"]["fingerprint"], "model": cfg.model.name,
                "model_kwargs": OmegaConf.to_container(cfg.model.kwargs, resolve=True), "seed": cfg.seed,
                "epochs": count}
    finished = read_json_object(paths["json"])
    if finished.get("identity") == identity and paths["pt"].is_file() and paths["onnx"].is_file():
        log.info("already released: %s", paths["json"])
        return finished
    run_dir = RunDir(paths["run"])
    run_dir.claim(identity)
    data = load_data(cfg.data)
    if data.fingerprint != identity["data_fingerprint"]:
        raise ReleaseError(f"the data at {cfg.data.root or 'the embedded sample'} (fingerprint {data.fingerprint}) is "
                           f"not the data of {study} ({identity['data_fingerprint']}); pass --root")
    device = select_device(cfg.device)
    model, objective = train_on_all(cfg, data, count, run_dir, device)
    rates = [f.trust["out_of_scope"]["train_false_reject"] for f in folds]
    detector, scores = release_detector(model, objective, cfg.model.name, data, statistics.median(rates))
    temperature = statistics.median(f.temperature for f in folds)
    init_only = model_entry(cfg.model.name).init_only_kwargs
    save_classifier(paths["pt"], model, cfg.model.name,
                    {k: v for k, v in identity["model_kwargs"].items() if k not in init_only}, cfg.data.image_size,
                    CLASS_NAMES, epoch=count, geometry=cfg.data.geometry, study=identity["study"],
                    calibration={"temperature": temperature, "fitted_on": TEMPERATURE_RULE},
                    out_of_scope={**detector.metadata(), "target_false_reject": scope.TARGET_FALSE_REJECT,
                                  "train_false_reject": statistics.median(rates)})
    exported = _export(paths, run_dir)
    record = {**provenance(), "identity": identity, "files": {kind: str(paths[kind]) for kind in ("pt", "onnx")},
              "model": {"name": cfg.model.name, "kwargs": identity["model_kwargs"], "image_size": cfg.data.image_size,
                        "geometry": cfg.data.geometry, "class_names": list(CLASS_NAMES)},
              "cross_validation": cross_validation(study, folds),
              "epochs": {"value": count, "rule": EPOCH_RULE if epochs is None else "set by --epochs",
                         "selected": selected},
              "calibration": {"temperature": temperature, "rule": TEMPERATURE_RULE,
                              "folds": [f.temperature for f in folds]},
              "out_of_scope": {"threshold": detector.threshold, "rule": THRESHOLD_RULE, "score": scope.SCORE,
                               "layers": list(detector.layers), "folds_train_false_reject": rates,
                               "median_train_false_reject": statistics.median(rates),
                               "train_false_reject": float((scores > detector.threshold).mean())},
              "training": {"slices": len(data), "patients": len(set(data.subjects.tolist())),
                           "class_counts": dict(zip(CLASS_NAMES, np.bincount(data.labels, minlength=len(CLASS_NAMES))
                                                    .tolist(), strict=True)),
                           "source": data.source, "data_fingerprint": data.fingerprint, "seed": cfg.seed,
                           "train": OmegaConf.to_container(cfg.train), "augment": OmegaConf.to_container(cfg.augment),
                           "device": describe(device), "wall_time_s": run_dir.elapsed()},
              "export": exported}
    atomic_write_json(paths["json"], record)
    return record


def _export(paths: dict[str, Path], run_dir: RunDir) -> dict[str, Any]:
    """Export ``<out>.pt`` (into the run folder first) and keep it as ``<out>.onnx`` unless it is too large."""
    staged = run_dir.path / "model.onnx"
    report = export(paths["pt"], staged)
    size = staged.stat().st_size
    if size > MAX_ONNX_BYTES:
        raise ReleaseError(f"{paths['onnx']}: the ONNX export is {size} bytes, over the {MAX_ONNX_BYTES} bytes a "
                           f"released model may have; not written (staged at {staged})")
    atomic_write_bytes(paths["onnx"], staged.read_bytes())
    return {**report, "onnx": str(paths["onnx"]), "bytes": size}


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="folder of the study's fold<k>/ run directories")
    parser.add_argument("--root", help="the data (default: the study's data.root)")
    parser.add_argument("--out", type=Path, default=default_model().with_suffix(""),
                        help="output path without suffix (default: the default model of predict.py)")
    parser.add_argument("--epochs", type=int, help="epochs to train (default: the median of the selected epochs)")
    parser.add_argument("--card", type=Path, help="also write a Markdown model card here")
    args = parser.parse_args(strip_debug_flag(sys.argv[1:] if argv is None else argv))
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be a positive integer, got {args.epochs}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    record = release(args.study, args.out, args.root, args.epochs)
    if args.card is not None:
        atomic_write_text(args.card, model_card(record))
    print(f"released {record['files']['onnx']} ({record['epochs']['value']} epochs, T = "
          f"{record['calibration']['temperature']:.4g}, threshold {record['out_of_scope']['threshold']:.4g})")


if __name__ == "__main__":
    main()
