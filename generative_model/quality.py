"""How close synthetic slices come to real ones: SSIM and PSNR of images rendered from held-out real
conditions against the real slices, example grids per class, and the class-consistency score."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from datasets.core import CLASS_NAMES, SliceSet
from experiment.atomic import atomic_open, atomic_write_json
from generative_model.conditions import Geometry, brain_masks, condition_preview, render_conditions
from generative_model.pix2pix import generate

log = logging.getLogger(__name__)

QUALITY_FILE = "quality.json"
GRID_GAP = 2


def comparison_grid(conditions: np.ndarray, reals: np.ndarray, fakes: np.ndarray) -> np.ndarray:
    """RGB uint8 grid, one row per example: condition preview | real | fake."""
    rows = []
    for condition, real, fake in zip(conditions, reals, fakes, strict=True):
        tiles = [condition_preview(condition), _grey_rgb(real), _grey_rgb(fake)]
        rows.append(_join(tiles, axis=1))
    return _join(rows, axis=0)


def quality_report(generator: torch.nn.Module, held_out: SliceSet, out_dir: str | Path, *, device: torch.device,
                   batch_size: int = 16, examples_per_class: int = 4, amp: bool = True) -> dict:
    """Render ``held_out``'s own conditions, score them against the real slices and write
    ``quality.json`` plus ``quality-<class>.png`` (condition | real | fake) into ``out_dir``.

    Returns the report: ``n``, ``ssim`` and ``psnr`` (mean/std, overall and per class), grid file names.
    Raises:
        ValueError: ``held_out`` is empty.
    """
    if len(held_out) == 0:
        raise ValueError("the quality report needs at least one held-out slice")
    out_dir = Path(out_dir)
    brains = brain_masks(held_out.images, held_out.masks)
    conditions = render_conditions([Geometry(brain=brain, tumour=tumour, label=int(label)) for brain, tumour, label
                                    in zip(brains, held_out.masks, held_out.labels, strict=True)])
    fakes = generate(generator, conditions, device=device, batch_size=batch_size, stochastic=False, amp=amp)
    pairs = list(zip(held_out.images, fakes, strict=True))
    ssim = np.array([structural_similarity(real, fake, data_range=255) for real, fake in pairs])
    psnr = np.array([peak_signal_noise_ratio(real, fake, data_range=255) for real, fake in pairs])
    report: dict = {"n": len(held_out), "ssim": _stats(ssim), "psnr": _stats(psnr), "per_class": {}, "grids": []}
    for index, name in enumerate(CLASS_NAMES):
        members = np.flatnonzero(held_out.labels == index)
        report["per_class"][name] = {"n": int(members.size), "ssim": _stats(ssim[members]),
                                     "psnr": _stats(psnr[members])}
        if members.size:
            shown = members[:examples_per_class]
            grid = comparison_grid(conditions[shown], held_out.images[shown], fakes[shown])
            path = out_dir / f"quality-{name}.png"
            with atomic_open(path, "wb") as handle:
                Image.fromarray(grid).save(handle, format="PNG")
            report["grids"].append(path.name)
    atomic_write_json(out_dir / QUALITY_FILE, report)
    log.info("quality on %d held-out slices: SSIM %.3f, PSNR %.2f dB", len(held_out), report["ssim"]["mean"],
             report["psnr"]["mean"])
    return report


def class_consistency(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                      labels: Sequence[int] | np.ndarray) -> dict:
    """Share of synthetic ``images`` (uint8 ``N x S x S``) that a classifier trained on real data assigns
    to their intended class ``labels``, overall and per class.

    ``predict`` maps uint8 images to class indices (0..2); plug in any real-data classifier.
    Raises:
        ValueError: no images, or ``predict`` returned the wrong number of predictions.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(images) == 0 or len(images) != labels.size:
        raise ValueError(f"need one label per image and at least one image, got {len(images)} images, "
                         f"{labels.size} labels")
    predicted = np.asarray(predict(images), dtype=np.int64).reshape(-1)
    if predicted.size != labels.size:
        raise ValueError(f"predict returned {predicted.size} predictions for {labels.size} images")
    hits = predicted == labels
    per_class = {name: float(hits[labels == i].mean()) for i, name in enumerate(CLASS_NAMES) if (labels == i).any()}
    return {"n": int(labels.size), "consistency": float(hits.mean()), "per_class": per_class}


def _stats(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    return {"mean": float(values.mean()), "std": float(values.std())}


def _grey_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(image, dtype=np.uint8)[..., None], 3, axis=-1)


def _join(tiles: list[np.ndarray], axis: int) -> np.ndarray:
    """Concatenate RGB tiles along ``axis`` with a black gap of :data:`GRID_GAP` pixels."""
    gap_shape = list(tiles[0].shape)
    gap_shape[axis] = GRID_GAP
    gap = np.zeros(gap_shape, dtype=np.uint8)
    parts = [part for tile in tiles for part in (tile, gap)][:-1]
    return np.concatenate(parts, axis=axis)
