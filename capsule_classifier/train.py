"""Train and test one fold of the 2D classifier protocol.

    python capsule_classifier/train.py model=capsnet fold=3 data.root=PATH pretrain.shards=PATH
    python capsule_classifier/train.py -m model=capsnet fold=0,1,2,3,4,5,6
    torchrun --nproc_per_node=2 capsule_classifier/train.py model=capsnet fold=0

Stage 1 (optional) pretrains on synthetic shards; stage 2 fine-tunes on the fold's real training
patients with augmentation, selects the epoch with the best validation macro-F1 and evaluates it
once on the fold's test patients; then the trust step (:mod:`capsule_classifier.trust`) calibrates it on the
validation patients, fits its out-of-scope detector (training patients + the ``out_of_scope`` set) and checks
its explanation maps against the test patients' tumour masks. The run directory (deterministic, see
``configs/train.yaml``) receives ``config.yaml``, ``metrics.jsonl``, ``checkpoints/``, ``model.pt``
(deployable: calibrated, with its detector and slice geometry), ``predictions.json`` (test file ids, subjects,
labels, scores, probabilities, calibrated probabilities), ``calibration.json``, ``reliability.png``,
``out_of_scope.json``, ``explanations.json`` and ``summary.json`` (written last: a fold with a summary is
finished and is not rerun).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from capsule_classifier import build_model, build_objective, model_entry, parameter_counts
from capsule_classifier import config as classifier_config
from capsule_classifier.calibration import calibrate
from capsule_classifier.capsnet import has_attention_gate
from capsule_classifier.data import SliceDataset, load_pretrain_shards
from capsule_classifier.deploy import save_classifier
from capsule_classifier.trust import fit_trust, headline_numbers
from datasets import config as data_config
from datasets.augment import RandCompose, slice_augmentation
from datasets.config import data_identity
from datasets.core import CLASS_NAMES, SliceSet, fold_count
from datasets.out_of_scope_set import ensure_built, load_out_of_scope
from datasets.shards import read_manifest
from datasets.splits import load_fold
from experiment import config as experiment_config
from experiment.atomic import atomic_write_json
from experiment.batches import TrainBatches, eval_batches
from experiment.checkpoint import load_checkpoint, load_model_state
from experiment.cli import reports_user_errors, run_hydra_app
from experiment.device import describe
from experiment.distributed import barrier, cleanup, is_main_process, rank, setup_device, world_size
from experiment.engine import FitResult, FitSettings, Objective, evaluate, fit
from experiment.errors import ConfigError
from experiment.monitor import Monitor, build_monitor
from experiment.rundir import RunDir
from experiment.seeding import seed_everything

log = logging.getLogger(__name__)

PHASE_KEYS = {"pretrain": 1, "finetune": 2}
"""Seed keys of the two stages' sampling and augmentation streams."""
SCHEDULES = ("cosine", "step")


def pretrain_tag(shards: str | None) -> str:
    """Run-directory tag: ``synthetic`` with pretraining shards, ``scratch`` without."""
    return "scratch" if shards in (None, "", "None", "null") else "synthetic"


def register() -> None:
    """Register the config groups and resolvers ``configs/train.yaml`` uses (idempotent)."""
    data_config.register()
    experiment_config.register()
    classifier_config.register()
    OmegaConf.register_new_resolver("pretrain_tag", pretrain_tag, replace=True)


register()


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW without weight decay on norms and biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, epochs: int, step_size: int,
                    gamma: float) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch learning-rate schedule: ``cosine`` (to zero over ``epochs``) or ``step``."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    raise ConfigError(f"train.schedule must be {' or '.join(map(repr, SCHEDULES))}, got {schedule!r}")


def build_classifier(cfg: DictConfig) -> tuple[nn.Module, Objective]:
    """The configured model (its initial weights depend on ``cfg.seed`` alone) and its objective."""
    seed_everything(cfg.seed)
    model = build_model(cfg.model.name, num_classes=len(CLASS_NAMES), image_size=cfg.data.image_size,
                        **OmegaConf.to_container(cfg.model.kwargs, resolve=True))
    return model, build_objective(cfg.model.name, **OmegaConf.to_container(cfg.model.objective, resolve=True))


def training_slices(model: nn.Module, part: SliceSet) -> SliceDataset:
    """``part``'s slices and labels for fine-tuning, with its tumour masks when ``model`` has an attention gate
    (the gate learns from them)."""
    return SliceDataset(part.images, part.labels, part.masks if has_attention_gate(model) else None)


def build_augmentation(augment: DictConfig) -> RandCompose | None:
    """The training augmentation of ``augment.*`` (None when ``augment.enabled`` is false)."""
    return slice_augmentation(**{k: v for k, v in augment.items() if k != "enabled"}) if augment.enabled else None


def fit_settings(cfg: DictConfig, phase: str, epochs: int, patience: int) -> FitSettings:
    """The engine settings of one training ``phase`` of ``epochs`` from ``cfg.train`` and the precision flags."""
    return FitSettings(phase=phase, epochs=epochs, seed=cfg.seed, patience=patience, amp=cfg.amp,
                       cpu_bf16=cfg.cpu_bf16, grad_clip=cfg.train.grad_clip,
                       keep_checkpoints=cfg.train.keep_checkpoints, ema_decay=cfg.train.ema_decay)


def check_config(cfg: DictConfig) -> None:
    """Refuse settings that cannot work before any data is loaded: ``data.*``, ``train.*`` and ``pretrain.*``
    (see :func:`datasets.config.check_data`, :func:`experiment.config.check_train`), the schedule, the
    evaluation batch size, and a ``pretrain.shards`` folder without a valid manifest.

    Raises:
        ConfigError: naming the key; ShardError: naming the shard folder.
    """
    data_config.check_data(cfg.data)
    experiment_config.check_train(cfg.train)
    experiment_config.check_train(cfg.pretrain, "pretrain")
    checks = [("train.schedule", cfg.train.schedule in SCHEDULES, " or ".join(map(repr, SCHEDULES))),
              ("train.step_size", isinstance(cfg.train.step_size, int) and cfg.train.step_size >= 1,
               "a positive integer"),
              ("train.gamma", cfg.train.gamma > 0, "a positive number"),
              ("eval_batch_size", isinstance(cfg.eval_batch_size, int) and cfg.eval_batch_size >= 1,
               "a positive integer")]
    for key, ok, what in checks:
        if not ok:
            raise ConfigError(f"{key} must be {what}, got {OmegaConf.select(cfg, key)!r}")
    if pretrain_tag(cfg.pretrain.shards) == "synthetic":
        read_manifest(cfg.pretrain.shards)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, select and test one fold; return its summary (read back when the fold already finished).

    Raises:
        UserError: a bad setting (:func:`check_config`, checked first), bad data or shards, a fold out of range,
            a run directory of another experiment, or a diverged loss; the message names the input.
    """
    check_config(cfg)
    device, distributed = setup_device(cfg.device)
    run_dir = RunDir(cfg.run_dir)
    try:
        data, index, folds_path = load_fold(cfg.data, cfg.fold)
        if is_main_process():
            run_dir.claim({**data_identity(cfg.data, data.fingerprint), "fold": cfg.fold, "seed": cfg.seed,
                           "model": cfg.model.name, "model_kwargs": OmegaConf.to_container(cfg.model.kwargs),
                           "pretrain_shards": cfg.pretrain.shards})
        finished = run_dir.read_summary()
        if finished is not None:
            log.info("fold already finished: %s", run_dir.summary_path)
            return finished
        parts = {name: data.subset(indices) for name, indices in index.items()}
        return _run_fold(cfg, run_dir, device, distributed, data, parts, folds_path)
    finally:
        cleanup()


def _run_fold(cfg: DictConfig, run_dir: RunDir, device: torch.device, distributed: bool, data: SliceSet,
              parts: dict[str, SliceSet], folds_path: Path) -> dict[str, Any]:
    k = fold_count(cfg.data.split, cfg.data.k)
    model_kwargs = OmegaConf.to_container(cfg.model.kwargs, resolve=True)
    model, objective = build_classifier(cfg)
    model = model.to(device)
    trained: nn.Module = DistributedDataParallel(model) if distributed else model
    if is_main_process():
        run_dir.write_config(cfg)
        monitor = build_monitor(run_dir, cfg.monitor)
    else:
        monitor = Monitor(run_dir)
    val_batches = _eval_batches(parts["val"], cfg)
    pretrain_info = None
    augmentation = build_augmentation(cfg.augment)  # one transform, reseeded per phase and epoch (PHASE_KEYS)
    try:
        if pretrain_tag(cfg.pretrain.shards) == "synthetic":
            pretrain_info = _pretrain(cfg, trained, objective, val_batches, augmentation, run_dir, monitor, device)
            barrier()  # rank 0 writes best.pt; every rank starts fine-tuning from it
            load_model_state(model, load_checkpoint(run_dir.checkpoints / "pretrain" / "best.pt")["model"],
                             "pretrain best.pt")
        train = parts["train"]
        batches = TrainBatches(training_slices(model, train), train.labels, cfg.train.batch_size,
                               cfg.seed, key=PHASE_KEYS["finetune"], balanced=cfg.train.balanced,
                               augmentation=augmentation, rank=rank(), world_size=world_size())
        result = _fit_phase(cfg, "finetune", trained, objective, batches, val_batches, cfg.train.epochs,
                            cfg.train.lr, run_dir, monitor, device)
        summary: dict[str, Any] = {}
        if is_main_process():
            load_model_state(model, load_checkpoint(result.best_path)["model"], str(result.best_path))
            summary = _test_and_save(cfg, model, objective, parts, result, model_kwargs, run_dir, device, data,
                                     folds_path, k, pretrain_info)
        barrier()
        return summary if is_main_process() else {}
    finally:
        monitor.close()


def _pretrain(cfg: DictConfig, trained: nn.Module, objective: Objective, val_batches: DataLoader,
              augmentation: RandCompose | None, run_dir: RunDir, monitor: Monitor,
              device: torch.device) -> dict[str, Any]:
    """Stage 1 on synthetic shards, augmented like the real slices (selected on the real validation patients);
    return its provenance."""
    images, labels, shard_manifest = load_pretrain_shards(cfg.pretrain.shards, cfg.data.image_size,
                                                          cfg.pretrain.strict)
    batches = TrainBatches(SliceDataset(images, labels), labels, cfg.train.batch_size, cfg.seed,
                           key=PHASE_KEYS["pretrain"], balanced=cfg.pretrain.balanced, augmentation=augmentation,
                           rank=rank(), world_size=world_size())
    result = _fit_phase(cfg, "pretrain", trained, objective, batches, val_batches, cfg.pretrain.epochs,
                        cfg.pretrain.lr, run_dir, monitor, device, patience=0)
    return {"shards": str(Path(cfg.pretrain.shards).resolve()), "num_images": int(labels.shape[0]),
            "class_counts": shard_manifest.get("class_counts"), "image_size": shard_manifest.get("image_size"),
            "provenance": shard_manifest.get("provenance", {}), "best_epoch": result.best_epoch,
            "best_val": _headline(result.best_val)}


def _fit_phase(cfg: DictConfig, phase: str, trained: nn.Module, objective: Objective, batches: TrainBatches,
               val_batches: DataLoader, epochs: int, lr: float, run_dir: RunDir, monitor: Monitor,
               device: torch.device, patience: int | None = None) -> FitResult:
    optimizer = build_optimizer(trained, lr, cfg.train.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.train.schedule, epochs, cfg.train.step_size, cfg.train.gamma)
    settings = fit_settings(cfg, phase, epochs, cfg.train.patience if patience is None else patience)
    return fit(trained, objective, optimizer, scheduler, batches, val_batches, settings, run_dir, monitor, device,
               CLASS_NAMES)


def _test_and_save(cfg: DictConfig, model: nn.Module, objective: Objective, parts: dict[str, SliceSet],
                   result: FitResult, model_kwargs: dict[str, Any], run_dir: RunDir, device: torch.device,
                   data: SliceSet, folds_path: Path, k: int, pretrain_info: dict[str, Any] | None) -> dict[str, Any]:
    """Evaluate the selected model once on the test patients; write model.pt, run the trust step, write
    predictions and summary.json."""
    test = parts["test"]
    metrics, y_true, y_score = evaluate(model, objective, _eval_batches(test, cfg), device, CLASS_NAMES, cfg.amp,
                                        cfg.cpu_bf16)
    init_only = model_entry(cfg.model.name).init_only_kwargs
    deploy_kwargs = {k: v for k, v in model_kwargs.items() if k not in init_only}
    save_classifier(run_dir.path / "model.pt", model, cfg.model.name, deploy_kwargs, cfg.data.image_size,
                    CLASS_NAMES, fold=int(cfg.fold), epoch=int(result.best_epoch), geometry=cfg.data.geometry)
    out_of_scope = load_out_of_scope(ensure_built(cfg.out_of_scope), cfg.data.image_size, cfg.data.geometry)
    trust = fit_trust(run_dir.path, parts, out_of_scope)
    probabilities = objective.probabilities(torch.from_numpy(y_score))
    temperature = trust["calibration"]["temperature"]
    atomic_write_json(run_dir.path / "predictions.json", {
        "class_names": list(CLASS_NAMES), "file_ids": test.file_ids.tolist(), "subjects": test.subjects.tolist(),
        "y_true": y_true.tolist(), "y_pred": y_score.argmax(1).tolist(), "scores": y_score.tolist(),
        "probabilities": probabilities.numpy().round(6).tolist(), "temperature": temperature,
        "calibrated_probabilities": calibrate(probabilities, temperature).numpy().round(6).tolist()})
    summary = {
        "model": cfg.model.name, "model_kwargs": model_kwargs, "fold": int(cfg.fold), "split": cfg.data.split,
        "k": k, "tag": cfg.tag, "class_names": list(CLASS_NAMES), "pretrained": pretrain_info is not None,
        "image_size": int(cfg.data.image_size), "seed": int(cfg.seed),
        "test": metrics, "val": result.best_val, "selected_epoch": result.best_epoch,
        "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
        "parameters": parameter_counts(model, cfg.model.name, cfg.data.image_size, len(CLASS_NAMES)),
        "data": {"source": data.source, "fingerprint": data.fingerprint,
                 "slices": {name: len(part) for name, part in parts.items()},
                 "subjects": {name: len(set(part.subjects.tolist())) for name, part in parts.items()}},
        "folds_file": str(folds_path), "pretrain": pretrain_info, "device": describe(device),
        "world_size": world_size(), "checkpoint": "model.pt", "predictions": "predictions.json",
        "trust": headline_numbers(trust),
    }
    run_dir.write_summary(summary)
    log.info("fold %d test: accuracy %.4f, macro-F1 %.4f (epoch %d) -> %s", cfg.fold, metrics["accuracy"],
             metrics["macro_f1"], result.best_epoch, run_dir.summary_path)
    return run_dir.read_summary() or summary


def _eval_batches(part: SliceSet, cfg: DictConfig) -> DataLoader:
    return eval_batches(SliceDataset(part.images, part.labels), cfg.eval_batch_size)


def _headline(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(metrics[k]) for k in ("accuracy", "macro_f1", "loss") if k in metrics}


@hydra.main(config_path="configs", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    summary = reports_user_errors(run)(cfg)
    if summary:
        print(f"{cfg.model.name} fold {cfg.fold}: test accuracy {summary['test']['accuracy']:.4f}, "
              f"macro-F1 {summary['test']['macro_f1']:.4f} -> {cfg.run_dir}")


if __name__ == "__main__":
    run_hydra_app(main)
