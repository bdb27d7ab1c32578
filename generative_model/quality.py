"""How close the generator comes to real slices, written to the run's ``quality.json``.

Training writes its ``reconstruction`` section (SSIM and PSNR inside and outside the hole, on crops of the
fold's validation slices painted from their own conditions, plus ``quality-<class>.png`` grids);
``generative_model.assess`` adds the sections that need synthetic shards and the fold's real-data classifier.
The metric functions here take plain arrays.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import linalg
from skimage.metrics import structural_similarity

from datasets.core import CLASS_NAMES
from experiment.atomic import atomic_open, atomic_write_json
from generative_model.conditions import condition_preview
from generative_model.pairs import TrainingPairs
from generative_model.pix2pix import generate

log = logging.getLogger(__name__)

QUALITY_FILE = "quality.json"
GRID_GAP = 2
CORRELATION_CHUNK = 512  # slices per block of the correlation matrix


def comparison_grid(conditions: np.ndarray, reals: np.ndarray, fakes: np.ndarray) -> np.ndarray:
    """RGB uint8 grid, one row per example: condition preview | real | fake."""
    rows = []
    for condition, real, fake in zip(conditions, reals, fakes, strict=True):
        rows.append(join_tiles([condition_preview(condition), grey_rgb(real), grey_rgb(fake)], axis=1))
    return join_tiles(rows, axis=0)


def region_scores(real: np.ndarray, fake: np.ndarray, region: np.ndarray) -> tuple[float, float]:
    """SSIM (mean of the SSIM map) and PSNR (dB) of uint8 ``fake`` against ``real`` over the pixels of ``region``."""
    _, ssim_map = structural_similarity(real, fake, data_range=255, full=True, win_size=7)
    difference = real[region].astype(np.float64) - fake[region].astype(np.float64)
    mse = max(float(np.mean(difference ** 2)), 1e-10)
    return float(ssim_map[region].mean()), float(10.0 * np.log10(255.0 ** 2 / mse))


def reconstruction_report(generator: torch.nn.Module, held_out: TrainingPairs, out_dir: str | Path, *,
                          device: torch.device, batch_size: int = 16, examples_per_class: int = 4,
                          amp: bool = True) -> dict[str, Any]:
    """Paint ``held_out``'s centred tumour conditions, score the crops against the real ones inside and outside
    the hole, save ``quality-<class>.png`` (condition | real | fake) into ``out_dir`` and return the section.

    Raises:
        ValueError: no held-out slice with a tumour.
    """
    scored = np.flatnonzero(held_out.holes.any(axis=(1, 2)))  # a tumour lost at a small size leaves no hole
    if scored.size == 0:
        raise ValueError("the quality report needs at least one held-out slice with a tumour")
    conditions, reals, holes = (np.stack(part) for part in zip(*(held_out.pair(i) for i in scored), strict=True))
    labels = held_out.labels[scored]
    fakes = generate(generator, conditions, device=device, batch_size=batch_size, stochastic=False, amp=amp)
    scores = np.array([region_scores(real, fake, hole) + region_scores(real, fake, ~hole)
                       for real, fake, hole in zip(reals, fakes, holes, strict=True)])
    names = ("ssim_inside", "psnr_inside", "ssim_outside", "psnr_outside")
    report: dict[str, Any] = {"n": int(scored.size), "crop_size": held_out.crop,
                              **{name: _stats(scores[:, k]) for k, name in enumerate(names)},
                              "per_class": {}, "grids": []}
    for index, name in enumerate(CLASS_NAMES):
        members = np.flatnonzero(labels == index)
        report["per_class"][name] = {"n": int(members.size),
                                     **{key: _stats(scores[members, k]) for k, key in enumerate(names)}}
        if members.size:
            shown = members[:examples_per_class]
            path = Path(out_dir) / f"quality-{name}.png"
            save_png(path, comparison_grid(conditions[shown], reals[shown], fakes[shown]))
            report["grids"].append(path.name)
    log.info("held-out crops: SSIM inside/outside the hole %.3f/%.3f, PSNR %.2f/%.2f dB",
             report["ssim_inside"]["mean"], report["ssim_outside"]["mean"], report["psnr_inside"]["mean"],
             report["psnr_outside"]["mean"])
    return report


def update_quality(run_dir: str | Path, sections: dict[str, Any]) -> dict[str, Any]:
    """Merge ``sections`` into ``run_dir/quality.json`` (written atomically); return the whole report."""
    path = Path(run_dir) / QUALITY_FILE
    report = json.loads(path.read_text()) if path.is_file() else {}
    report.update(sections)
    atomic_write_json(path, report)
    return report


def agreement(predicted: np.ndarray, labels: Sequence[int] | np.ndarray) -> dict[str, Any]:
    """Share of ``predicted`` class indices equal to ``labels``, overall and per class present.

    Raises:
        ValueError: no labels, or not one prediction per label.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64).reshape(-1)
    if labels.size == 0 or predicted.size != labels.size:
        raise ValueError(f"need one prediction per label and at least one label, got {predicted.size} predictions, "
                         f"{labels.size} labels")
    hits = predicted == labels
    per_class = {name: float(hits[labels == i].mean()) for i, name in enumerate(CLASS_NAMES) if (labels == i).any()}
    return {"n": int(labels.size), "consistency": float(hits.mean()), "per_class": per_class}


def class_consistency(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                      labels: Sequence[int] | np.ndarray) -> dict[str, Any]:
    """Share of synthetic ``images`` (uint8 ``N x S x S``) that a classifier trained on real data assigns
    to their intended class ``labels``, overall and per class (``predict``: uint8 images -> class indices).

    Raises:
        ValueError: no images, or ``predict`` returned the wrong number of predictions.
    """
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"need one label per image and at least one image, got {len(images)} images, "
                         f"{len(labels)} labels")
    predicted = np.asarray(predict(images)).reshape(-1)
    if predicted.size != len(labels):
        raise ValueError(f"predict returned {predicted.size} predictions for {len(labels)} images")
    return agreement(predicted, labels)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N, D)`` (the FID formula)."""
    mean_a, mean_b = features_a.mean(0), features_b.mean(0)
    cov_a = np.atleast_2d(np.cov(features_a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(features_b, rowvar=False))
    root = linalg.sqrtm(cov_a @ cov_b)
    root = root.real if np.iscomplexobj(root) else root
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2.0 * root))


def max_correlation(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """For each query image, its highest Pearson correlation with any reference image (same shape)."""
    def standardised(images: np.ndarray) -> np.ndarray:
        flat = images.reshape(len(images), -1).astype(np.float32)
        flat -= flat.mean(1, keepdims=True)
        return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-6)

    refs = standardised(references)
    return np.concatenate([(standardised(queries[i:i + CORRELATION_CHUNK]) @ refs.T).max(1)
                           for i in range(0, len(queries), CORRELATION_CHUNK)])


def summary_stats(values: np.ndarray) -> dict[str, float] | None:
    """Mean, std and the 50/95/99th percentiles of ``values`` (None when empty)."""
    if values.size == 0:
        return None
    return {**_stats(values), **{f"p{q}": float(np.percentile(values, q)) for q in (50, 95, 99)}}


def save_png(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 array as a PNG, atomically."""
    with atomic_open(path, "wb") as handle:
        Image.fromarray(rgb).save(handle, format="PNG")


def grey_rgb(image: np.ndarray) -> np.ndarray:
    """A uint8 grey image as RGB."""
    return np.repeat(np.asarray(image, dtype=np.uint8)[..., None], 3, axis=-1)


def join_tiles(tiles: list[np.ndarray], axis: int) -> np.ndarray:
    """Concatenate RGB tiles along ``axis`` with a black gap of :data:`GRID_GAP` pixels."""
    gap_shape = list(tiles[0].shape)
    gap_shape[axis] = GRID_GAP
    gap = np.zeros(gap_shape, dtype=np.uint8)
    parts = [part for tile in tiles for part in (tile, gap)][:-1]
    return np.concatenate(parts, axis=axis)


def _stats(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    return {"mean": float(values.mean()), "std": float(values.std())}
