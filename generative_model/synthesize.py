"""Draw labelled synthetic slices from a trained generator and write them as pickle shards.

    python generative_model/synthesize.py [checkpoint=PATH] [fold=0] [count=7000] [proportions=balanced|real]
        [out=runs/shards/128px/fold0] [seed=0] [overwrite=false] [data.root=PATH] [judge=PATH/model.onnx]

Every image is a transplant among the fold's *training* slices (``generative_model.transplant``): a real tumour
mask of the intended class, at its own position, painted into another training patient's slice of the same
plane whose own tumour is painted over first; so its label is known and no held-out patient is involved.
Shard ``i`` draws everything from seeds derived from ``(seed, i)``: a killed run restarts at the first missing
shard and the finished set is byte-identical to an uninterrupted one. With ``judge=`` (the fold's real-data
classifier, ONNX) the finished set is assessed into the generator run's ``quality.json``
(``generative_model.assess``).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from datasets.config import check_data
from datasets.core import CLASS_NAMES
from datasets.shards import ShardWriter, file_sha256, read_manifest
from experiment.cli import reports_user_errors, run_hydra_app
from experiment.device import select_device
from experiment.errors import ConfigError
from experiment.progress import progress
from experiment.seeding import derive_seed
from generative_model import config
from generative_model.assess import assess
from generative_model.checkpoint import load_generator
from generative_model.conditions import scaled
from generative_model.folds import FoldData, load_fold_data
from generative_model.transplant import Donors

log = logging.getLogger(__name__)
config.register()

PROPORTIONS = ("balanced", "real")
_LOCATION_KEYS = ("out", "checkpoint", "run_dir", "overwrite", "judge")


def class_counts(count: int, proportions: str, train_counts: np.ndarray) -> np.ndarray:
    """Images per class summing to ``count``: equal shares (``balanced``) or the training set's class
    shares (``real``), remainders by largest fraction, ties to the lower class index.

    Raises:
        ConfigError: a count below 1 or an unknown ``proportions``.
    """
    if not isinstance(count, int) or count < 1:
        raise ConfigError(f"count must be a positive integer, got {count!r}")
    if proportions not in PROPORTIONS:
        raise ConfigError(f"proportions must be one of {PROPORTIONS}, got {proportions!r}")
    weights = np.ones(len(CLASS_NAMES)) if proportions == "balanced" else np.asarray(train_counts, dtype=np.float64)
    exact = count * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    for index in np.argsort(-(exact - counts), kind="stable")[: count - int(counts.sum())]:
        counts[index] += 1
    return counts


def label_plan(counts: np.ndarray, seed: int) -> np.ndarray:
    """The label of every image to draw (``counts[c]`` of class ``c``), shuffled by ``seed``."""
    labels = np.repeat(np.arange(len(counts)), counts)
    return labels[np.random.default_rng(derive_seed(seed)).permutation(labels.size)]


def check_config(cfg: DictConfig) -> None:
    """Refuse ``data.*``, ``count``, ``proportions``, ``transplant.*``, ``shard_size`` and ``batch_size`` values
    that cannot work, before anything is loaded.

    Raises:
        ConfigError: naming the key.
    """
    check_data(cfg.data)
    class_counts(cfg.count, cfg.proportions, np.ones(len(CLASS_NAMES)))
    for key, value in (("shard_size", cfg.shard_size), ("batch_size", cfg.batch_size),
                       ("transplant.tries", cfg.transplant.tries),
                       ("transplant.neighbours", cfg.transplant.neighbours)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    for key in ("margin", "feather"):
        if cfg.transplant[key] < 0:
            raise ConfigError(f"transplant.{key} must be a number >= 0, got {cfg.transplant[key]!r}")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Write (or finish) the shard set of ``cfg``; return its manifest.

    Raises:
        ConfigError: a setting that cannot work (:func:`check_config`, checked first), a fold out of range.
        CheckpointError: an unreadable or mismatched generator checkpoint, or one trained for another fold.
        DataError: bad data root, a class without training slices, no donor for a class's tumours.
        ShardError: ``out`` holds another generator's shards (without ``overwrite=true``), or a shard could
            not be written (disk full); shards written before stay valid and a re-run resumes.
    """
    check_config(cfg)
    device = select_device(cfg.device)
    generator, arch = load_generator(cfg.checkpoint, image_size=cfg.data.image_size, fold=cfg.fold, device=device)
    fold = load_fold_data(cfg.data, cfg.fold)
    train_counts = np.bincount(fold.data.labels[fold.train], minlength=len(CLASS_NAMES))
    counts = class_counts(cfg.count, cfg.proportions, train_counts)
    labels = label_plan(counts, cfg.seed)
    provenance = {
        "writer": "generative_model.synthesize",
        "checkpoint_sha256": file_sha256(cfg.checkpoint),
        "fold": fold.fold,
        "trained_on": fold.describe() if fold.fold is None else f"fold {fold.fold} training patients",
        "data_fingerprint": fold.data.fingerprint,
        "seed": int(cfg.seed),
        "class_counts": counts.tolist(),
        "device": device.type,
        "config": _settings(cfg),
    }
    writer = ShardWriter(cfg.out, provenance, overwrite=cfg.overwrite)
    if writer.complete:
        log.info("%s already holds this complete shard set", cfg.out)
        manifest = read_manifest(cfg.out)
    else:
        manifest = _write(cfg, writer, fold, generator, arch, labels, device)
    if cfg.judge is not None:
        assess(Path(cfg.out), Path(cfg.judge), Path(cfg.run_dir), seed=cfg.seed)
    return manifest


def _write(cfg: DictConfig, writer: ShardWriter, fold: FoldData, generator: torch.nn.Module, arch: dict[str, Any],
           labels: np.ndarray, device: torch.device) -> dict[str, Any]:
    """Write the missing shards of ``labels`` (transplants among the fold's training slices); return the manifest."""
    size = cfg.data.image_size
    donors = Donors(fold.data.subset(fold.train), crop=arch["crop_size"], erase_radius=arch["erase_radius"],
                    margin=scaled(cfg.transplant.margin, size), feather=scaled(cfg.transplant.feather, size),
                    tries=cfg.transplant.tries, neighbours=cfg.transplant.neighbours,
                    same_class=cfg.transplant.same_class)
    num_shards = math.ceil(labels.size / cfg.shard_size)
    for shard in progress(range(num_shards), desc="synthesise shards"):
        if writer.has(shard):
            continue
        shard_labels = labels[shard * cfg.shard_size:(shard + 1) * cfg.shard_size]
        rng = np.random.default_rng(derive_seed(cfg.seed, shard))
        torch.manual_seed(derive_seed(cfg.seed, shard, 1))
        plans = [donors.draw(int(label), rng) for label in shard_labels]
        images = donors.paint(generator, plans, device=device, batch_size=cfg.batch_size, stochastic=cfg.stochastic,
                              amp=cfg.amp)
        writer.write(shard, np.stack(images), shard_labels, donors.meta(plans))
    manifest = writer.finalize(num_shards)
    log.info("%d synthetic slices (%s) in %d shards at %s", manifest["num_images"],
             dict(zip(CLASS_NAMES, manifest["class_counts"], strict=True)), num_shards, cfg.out)
    return manifest


def _settings(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without the paths and flags that may change between a run and its resume."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    for key in _LOCATION_KEYS:
        settings.pop(key, None)
    return settings


@hydra.main(config_path="configs", config_name="synthesize", version_base=None)
def main(cfg: DictConfig) -> None:
    reports_user_errors(run)(cfg)


if __name__ == "__main__":
    run_hydra_app(main)
