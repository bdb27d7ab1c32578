"""Draw labelled synthetic slices from a trained generator and write them as pickle shards.

    python generative_model/synthesize.py [checkpoint=PATH] [fold=0] [count=7000] [proportions=balanced|real]
        [out=runs/shards/128px/fold0] [seed=0] [overwrite=false] [data.root=PATH]

Every image is rendered from an augmented condition of one of the fold's *training* slices (see
``generative_model.conditions``), so its label is known and no held-out patient is involved. Shard ``i``
draws everything from seeds derived from ``(seed, i)``: a killed run restarts at the first missing shard
and the finished set is byte-identical to an uninterrupted one.
"""
from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from datasets.config import check_data
from datasets.core import CLASS_NAMES
from datasets.shards import ShardWriter, file_sha256, read_manifest
from experiment.cli import hydra_argv, reports_user_errors
from experiment.device import select_device
from experiment.errors import ConfigError
from experiment.progress import progress
from experiment.seeding import derive_seed
from generative_model import config
from generative_model.checkpoint import load_generator
from generative_model.conditions import (
    AugmentGeometry,
    Geometry,
    RandAffine,
    RandElasticTumour,
    RandFlip,
    RandTumourTransplant,
    brain_masks,
    render_conditions,
)
from generative_model.folds import FoldData, load_fold_data
from generative_model.pix2pix import generate

log = logging.getLogger(__name__)
config.register()

PROPORTIONS = ("balanced", "real")
_LOCATION_KEYS = ("out", "checkpoint", "run_dir", "overwrite")


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


def build_augment(augment: Any, brains: np.ndarray, labels: np.ndarray) -> AugmentGeometry:
    """Transplant into a same-class brain, elastic tumour warp, flip, then a small affine (``augment.*``).

    Raises:
        ConfigError: an ``augment.*`` value a transform refuses (a probability outside [0, 1], ...), naming it.
    """
    steps = [(("transplant_prob",), lambda: RandTumourTransplant(brains, labels, prob=augment.transplant_prob)),
             (("elastic_alpha", "elastic_sigma"),
              lambda: RandElasticTumour(alpha=augment.elastic_alpha, sigma=augment.elastic_sigma)),
             (("flip_prob",), lambda: RandFlip(prob=augment.flip_prob)),
             (("rotate_deg", "translate", "scale"), lambda: RandAffine(
                 rotate_deg=augment.rotate_deg, translate=augment.translate, scale=tuple(augment.scale)))]
    return AugmentGeometry([_configured(keys, make) for keys, make in steps])


def _configured(keys: tuple[str, ...], make: Callable[[], Any]) -> Any:
    """``make()``, its refusal of a setting reported as a :class:`ConfigError` naming ``augment.<keys>``."""
    try:
        return make()
    except ValueError as error:  # the transforms' own checks of their settings
        raise ConfigError(f"{', '.join(f'augment.{key}' for key in keys)}: {error}") from error


def check_config(cfg: DictConfig) -> None:
    """Refuse ``data.*``, ``count``, ``proportions``, ``augment.*``, ``shard_size`` and ``batch_size`` values that
    cannot work, before anything is loaded.

    Raises:
        ConfigError: naming the key.
    """
    check_data(cfg.data)
    class_counts(cfg.count, cfg.proportions, np.ones(len(CLASS_NAMES)))
    build_augment(cfg.augment, np.zeros((0, 1, 1), dtype=bool), np.zeros(0, dtype=np.int64))
    for key in ("shard_size", "batch_size"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{key} must be a positive integer, got {cfg[key]!r}")


def draw_shard(generator: torch.nn.Module, fold: FoldData, brains: np.ndarray, augment: AugmentGeometry,
               labels: np.ndarray, *, seed: int, shard: int, device: torch.device, batch_size: int,
               stochastic: bool, amp: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Images of one shard (uint8 ``N x S x S`` for ``labels``) and per-image meta, from seeds ``(seed, shard)``.

    ``brains`` are the brain masks of ``fold.train`` in order; meta records the training slice each tumour
    came from (``source_file_id``) and whose brain it sits in (``host_file_id``).
    """
    rng = np.random.default_rng(derive_seed(seed, shard))
    torch.manual_seed(derive_seed(seed, shard, 1))
    train_labels = fold.data.labels[fold.train]
    pools = {c: np.flatnonzero(train_labels == c) for c in range(len(CLASS_NAMES))}
    geometries, sources = [], []
    for label in labels:
        source = int(rng.choice(pools[int(label)]))
        row = fold.train[source]
        real = Geometry(brain=brains[source], tumour=fold.data.masks[row], label=int(label), host=source)
        geometries.append(augment(real, rng))
        sources.append(row)
    conditions = render_conditions(geometries)
    images = generate(generator, conditions, device=device, batch_size=batch_size, stochastic=stochastic, amp=amp)
    meta = {"source_file_id": fold.data.file_ids[np.array(sources, dtype=np.int64)],
            "host_file_id": fold.data.file_ids[fold.train[np.array([g.host for g in geometries], dtype=np.int64)]]}
    return images, meta


def run(cfg: DictConfig) -> dict[str, Any]:
    """Write (or finish) the shard set of ``cfg``; return its manifest.

    Raises:
        ConfigError: a setting that cannot work (:func:`check_config`, checked first), a fold out of range.
        CheckpointError: an unreadable or mismatched generator checkpoint, or one trained for another fold.
        DataError: bad data root, a class without training slices.
        ShardError: ``out`` holds another generator's shards (without ``overwrite=true``), or a shard could
            not be written (disk full); shards written before stay valid and a re-run resumes.
    """
    check_config(cfg)
    device = select_device(cfg.device)
    generator = load_generator(cfg.checkpoint, image_size=cfg.data.image_size, fold=cfg.fold, device=device)
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
        return read_manifest(cfg.out)
    brains = brain_masks(fold.data.images[fold.train], fold.data.masks[fold.train])
    augment = build_augment(cfg.augment, brains, fold.data.labels[fold.train])
    num_shards = math.ceil(labels.size / cfg.shard_size)
    for shard in progress(range(num_shards), desc="synthesise shards"):
        if writer.has(shard):
            continue
        shard_labels = labels[shard * cfg.shard_size:(shard + 1) * cfg.shard_size]
        images, meta = draw_shard(generator, fold, brains, augment, shard_labels, seed=cfg.seed, shard=shard,
                                  device=device, batch_size=cfg.batch_size, stochastic=cfg.stochastic, amp=cfg.amp)
        writer.write(shard, images, shard_labels, meta)
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
    sys.argv = hydra_argv(sys.argv)
    main()
