"""Explanation maps: where a classifier looked, and how well that matches the tumour masks.

The map is Grad-CAM (Selvaraju et al., 2017) for the predicted class: ResNet50's last convolutional block
(``layer4``) weighted by the gradient of the predicted logit; for capsnet the last convolution before the
primary capsules (``features``), weighted by the gradient of the predicted class capsule's length. Maps are
upsampled (bilinear) to the input size and divided by their maximum, so they lie in [0, 1] (all zero when no
location supports the class). They are deterministic: eval mode, no sampling.

Against a tumour mask: the pointing game (is the map's peak inside the mask?) and the share of the map's mass
inside the mask dilated by :data:`DILATION_FRACTION` of the side. ``chance`` is what a map spread evenly (or a
peak placed at random) would score: the masks' share of the image.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from capsule_classifier.activations import captured
from capsule_classifier.data import to_input

if TYPE_CHECKING:
    from capsule_classifier.deploy import ProbabilityModel

CAM_LAYERS = {"capsnet": "features", "resnet50": "layer4"}
"""The convolution block whose activations Grad-CAM weighs, per model."""
DILATION_FRACTION = 1 / 32
"""Mask dilation for the mass share: 4 px at 128 px, about 8 mm of a figshare slice."""
BATCH = 32
OVERLAY_MIN_SIDE = 256
OVERLAY_ALPHA = 0.5


def explanation_maps(classifier: ProbabilityModel, layer: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps (float32 (N, S, S) in [0, 1]) of uint8 slices ``(N, S, S)`` for the predicted classes,
    and those classes (int64 (N,))."""
    model, objective = classifier.model.eval(), classifier.objective
    maps, predicted = [], []
    for start in range(0, len(images), BATCH):
        with captured(model, [layer]) as activations, torch.enable_grad():
            scores = objective.scores(model(to_input(images[start:start + BATCH])))
            classes = scores.argmax(dim=1)
            activation = activations[layer]
            gradient, = torch.autograd.grad(scores.gather(1, classes[:, None]).sum(), activation)
        cam = F.relu((gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1, keepdim=True)).detach()
        cam = F.interpolate(cam, size=images.shape[1:], mode="bilinear", align_corners=False)[:, 0]
        peak = cam.flatten(1).max(dim=1).values.view(-1, 1, 1)
        maps.append(torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam)).clamp(0, 1))
        predicted.append(classes)
    return torch.cat(maps).numpy().astype(np.float32), torch.cat(predicted).numpy()


def localisation(maps: np.ndarray, masks: np.ndarray) -> dict[str, Any]:
    """Pointing game, map mass inside the dilated masks and their chance levels, over slices ``(N, S, S)``;
    ``hits`` says per slice whether the peak fell inside the mask."""
    side = maps.shape[-1]
    radius = max(1, round(side * DILATION_FRACTION))
    dilated = np.stack([ndimage.binary_dilation(mask, iterations=radius) for mask in masks])
    flat = maps.reshape(len(maps), -1)
    hits = masks.reshape(len(masks), -1)[np.arange(len(maps)), flat.argmax(axis=1)] & (flat.max(axis=1) > 0)
    total = flat.sum(axis=1)
    inside = np.where(total > 0, (flat * dilated.reshape(len(maps), -1)).sum(axis=1) / np.maximum(total, 1e-12), 0.0)
    return {"n": int(len(maps)), "pointing_game": float(hits.mean()), "mass_in_dilated_mask": float(inside.mean()),
            "chance_pointing_game": float(masks.mean()), "chance_mass_in_dilated_mask": float(dilated.mean()),
            "dilation_px": radius, "hits": hits.tolist()}


def overlay(image: np.ndarray, cam: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """An RGB uint8 picture of slice ``image`` (S, S) under the map ``cam`` (jet colours where the map is high),
    with the outline of ``mask`` in green when given; enlarged to at least :data:`OVERLAY_MIN_SIDE` px."""
    from matplotlib import colormaps

    grey = np.repeat(image[..., None].astype(np.float32) / 255.0, 3, axis=2)
    weight = OVERLAY_ALPHA * cam[..., None]
    picture = grey * (1 - weight) + colormaps["jet"](cam)[..., :3] * weight
    if mask is not None:
        picture[mask & ~ndimage.binary_erosion(mask)] = (0.0, 1.0, 0.0)
    factor = max(1, -(-OVERLAY_MIN_SIDE // image.shape[0]))
    picture = np.repeat(np.repeat(picture, factor, axis=0), factor, axis=1)
    return np.rint(np.clip(picture, 0, 1) * 255).astype(np.uint8)


def grid_figure(rows: Sequence[Sequence[tuple[np.ndarray, str]]], title: str) -> Any:
    """A grid of overlay pictures, one row per group, each with its caption."""
    from matplotlib.figure import Figure

    columns = max(len(row) for row in rows)
    figure = Figure(figsize=(2.0 * columns, 2.2 * len(rows) + 0.4), layout="constrained")
    figure.suptitle(title, fontsize=9)
    grid = figure.subplots(len(rows), columns, squeeze=False)
    for row, cells in zip(grid, rows, strict=True):
        for axes, (picture, caption) in zip(row, cells, strict=False):
            axes.imshow(picture)
            axes.set_title(caption, fontsize=7)
    for axes in grid.flat:
        axes.axis("off")
    return figure
