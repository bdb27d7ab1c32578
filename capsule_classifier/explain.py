"""Explanation maps: where a classifier looked, and how well that matches the tumour masks.

Each model has the map that localises best of those measured (:func:`explanation_layer`):

* capsnet with its tumour attention gate (``model.kwargs.attention=true``): the gate itself, the sigmoid map
  that multiplies the stride-8 features (so the capsules see only what it lets through), upsampled (bilinear)
  to the input. It is where this model looked by construction, not a post-hoc estimate;
* capsnet without the gate: integrated gradients (Sundararajan et al., 2017) of the predicted class capsule's
  length, from a black image to the input in :data:`IG_STEPS` midpoint steps; the magnitude of gradient x input
  (evidence for or against the class), smoothed by a Gaussian of :data:`SMOOTHING` of the side. Grad-CAM does not
  localise on capsnet: at every layer its peak sat off the head, on the image border or on the skull (pointing game
  0.00-0.17 on two cross-validation folds, against about 0.32 for this map);
* resnet50: Grad-CAM (Selvaraju et al., 2017) of ``layer4`` weighted by the gradient of the predicted logit,
  upsampled (bilinear) to the input.

Maps are divided by their maximum, so they lie in [0, 1] (all zero when nothing supports the class), and are
deterministic: eval mode, no sampling.

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
from torch import nn

from capsule_classifier.activations import captured
from capsule_classifier.capsnet import has_attention_gate
from capsule_classifier.data import to_input

if TYPE_CHECKING:
    from capsule_classifier.deploy import ProbabilityModel
    from experiment.engine import Objective

INPUT = "input"
"""The 'layer' of integrated gradients: attribution to the input pixels."""
ATTENTION = "attention"
"""The 'layer' of a gated capsnet: its attention gate (:class:`capsule_classifier.capsnet.CapsNet`)."""
CAM_LAYERS = {"capsnet": INPUT, "resnet50": "layer4"}
"""Where each ungated model's map is taken: :data:`INPUT` for integrated gradients, else the block Grad-CAM
weighs."""
IG_STEPS = 16
SMOOTHING = 1 / 32
"""Gaussian sigma of the integrated-gradients map, as a share of the side: 4 px at 128 px."""
DILATION_FRACTION = 1 / 32
"""Mask dilation for the mass share: 4 px at 128 px, about 8 mm of a figshare slice."""
BATCH = 32
OVERLAY_MIN_SIDE = 256
OVERLAY_ALPHA = 0.5


def explanation_layer(model_name: str, model: nn.Module) -> str:
    """Where the map of ``model`` (of family ``model_name``) is taken: :data:`ATTENTION` for a model with an
    attention gate, else ``CAM_LAYERS[model_name]``."""
    return ATTENTION if has_attention_gate(model) else CAM_LAYERS[model_name]


def map_method(layer: str) -> str:
    """The name of the map :func:`explanation_maps` draws at ``layer``."""
    if layer == ATTENTION:
        return "the tumour attention gate that weighs the features the capsules see, upsampled"
    if layer == INPUT:
        return "integrated gradients x input of the predicted class, magnitude, smoothed"
    return f"Grad-CAM of the predicted class at {layer}"


def explanation_maps(classifier: ProbabilityModel, layer: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps (float32 (N, S, S) in [0, 1]; :func:`map_method` of ``layer``) of uint8 slices ``(N, S, S)`` for the
    predicted classes, and those classes (int64 (N,))."""
    model, objective = classifier.model.eval(), classifier.objective
    maps, predicted = [], []
    for start in range(0, len(images), BATCH):
        batch = to_input(images[start:start + BATCH])
        with torch.no_grad():
            classes = objective.scores(model(batch)).argmax(dim=1)
        if layer == ATTENTION:
            raw = attention_map(model, batch)
        elif layer == INPUT:
            raw = integrated_gradients(model, objective, batch, classes)
        else:
            raw = grad_cam(model, objective, layer, batch, classes)
        peak = raw.flatten(1).max(dim=1).values.view(-1, 1, 1)
        maps.append(torch.where(peak > 0, raw / peak.clamp_min(1e-12), torch.zeros_like(raw)).clamp(0, 1))
        predicted.append(classes)
    return torch.cat(maps).numpy().astype(np.float32), torch.cat(predicted).numpy()


def attention_map(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The attention gate (N, S, S) in [0, 1] of a gated model for the input ``batch`` (N, 1, S, S)."""
    with torch.no_grad():
        gate = model(batch)["attention_logits"].float().sigmoid()
    return F.interpolate(gate, size=batch.shape[2:], mode="bilinear", align_corners=False)[:, 0]


def grad_cam(model: nn.Module, objective: Objective, layer: str, batch: torch.Tensor,
             classes: torch.Tensor) -> torch.Tensor:
    """Unscaled Grad-CAM (N, S, S) of ``classes`` at ``layer`` for the input ``batch`` (N, 1, S, S)."""
    with captured(model, [layer]) as activations, torch.enable_grad():
        scores = objective.scores(model(batch))
        activation = activations[layer]
        gradient, = torch.autograd.grad(scores.gather(1, classes[:, None]).sum(), activation)
    cam = F.relu((gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1, keepdim=True)).detach()
    return F.interpolate(cam, size=batch.shape[2:], mode="bilinear", align_corners=False)[:, 0]


def integrated_gradients(model: nn.Module, objective: Objective, batch: torch.Tensor,
                         classes: torch.Tensor) -> torch.Tensor:
    """Unscaled integrated gradients x input (N, S, S) of ``classes`` from a black image to ``batch``
    (N, 1, S, S): magnitude, smoothed."""
    total = torch.zeros_like(batch)
    for step in range(IG_STEPS):
        scaled = (batch * ((step + 0.5) / IG_STEPS)).requires_grad_(True)
        with torch.enable_grad():
            scores = objective.scores(model(scaled))
            gradient, = torch.autograd.grad(scores.gather(1, classes[:, None]).sum(), scaled)
        total += gradient
    evidence = (total * batch / IG_STEPS).abs()[:, 0].numpy()
    sigma = SMOOTHING * batch.shape[-1]
    return torch.from_numpy(np.stack([ndimage.gaussian_filter(one, sigma) for one in evidence]))


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
