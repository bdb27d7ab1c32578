"""Synthesis by transplant: a real tumour mask of class c, at its own canonical position, painted into a donor
slice of the same plane from another training patient, after the donor's own tumour is painted over with
healthy tissue.

Both the mask and the donor come from the slices this object is given (synthesis gives the fold's training
slices only). The donor is one of the ``neighbours`` slices of other patients, same plane, that look most like
the mask's own slice (correlation at 32 px), so the anatomy around the tumour matches: a pituitary tumour
lands in a slice through the sella, not through the ventricles. With ``same_class`` (the default) the donors
show a tumour of the mask's class: healing erases a donor's tumour but not its mass effect or oedema, and a
fold's real-data classifier recognised only 25% of pituitary tumours painted into glioma donors as pituitary
(91% in pituitary donors; runs/gen19, cvind fold 0). A draw is accepted when the mask's hole lies
inside the donor's head (eroded by ``margin``) and both holes fit one generator crop (slices whose tumour mask
is empty, e.g. a tiny tumour lost at a small size, are neither masks nor donors).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from datasets.core import DataError, SliceSet
from generative_model.conditions import (
    HEALTHY,
    brain_masks,
    crop_origin,
    disk,
    encode,
    hole_of,
    inside_window,
    paste,
    window,
)
from generative_model.pix2pix import generate


@dataclass(frozen=True)
class Transplant:
    """One synthetic slice: class ``label``, the tumour mask of slice ``mask`` painted into slice ``donor``
    (indices into the :class:`Donors` slices)."""

    label: int
    mask: int
    donor: int


class Donors:
    """Plans and paints transplants among ``slices`` (uint8 images, masks, labels, subjects, planes).

    Args:
        crop: the generator's crop side; erase_radius: its hole dilation (pixels at this slice size).
        margin: pixels between a transplanted hole and the donor's head outline.
        feather: Gaussian sigma of the pasted crop's fade, pixels.
        tries: (mask, donor) draws before :meth:`draw` gives up.
        neighbours: how many of the most similar slices (same plane, other patients) are a mask's donors.
        same_class: donors only among slices whose tumour is of the mask's class.
    Raises:
        DataError: a class with no mask that fits a crop, when drawn.
    """

    def __init__(self, slices: SliceSet, *, crop: int, erase_radius: float, margin: float, feather: float,
                 tries: int, neighbours: int, same_class: bool = True) -> None:
        self.slices, self.crop, self.feather, self.tries = slices, int(crop), float(feather), int(tries)
        self.holes = np.stack([hole_of(mask, erase_radius) for mask in slices.masks])
        self.band = max(1, math.ceil(2 * feather))
        self.origins = [crop_origin(hole, self.crop) for hole in self.holes]
        fits = np.array([inside_window(hole, origin, self.crop, self.band)
                         for hole, origin in zip(self.holes, self.origins, strict=True)])
        heads = brain_masks(slices.images, slices.masks)
        self.inner = np.stack([ndimage.binary_erosion(head, structure=disk(margin)) if margin > 0 else head
                               for head in heads])
        fits &= self.holes.any(axis=(1, 2))  # an empty mask heals nothing and cannot be transplanted
        self.masks_of = {c: np.flatnonzero(fits & (slices.labels == c)) for c in np.unique(slices.labels)}
        self.donors_of = _nearest_donors(slices, fits, neighbours, same_class)

    def draw(self, label: int, rng: np.random.Generator) -> Transplant:
        """A transplant of class ``label`` drawn from ``rng``.

        Raises:
            DataError: no accepted (mask, donor) pair within ``tries`` draws.
        """
        masks = self.masks_of.get(label, np.empty(0, dtype=np.int64))
        for _ in range(self.tries if masks.size else 0):
            mask = int(rng.choice(masks))
            donors = self.donors_of[mask]
            if donors.size == 0:
                continue
            donor = int(rng.choice(donors))
            if not (self.holes[mask] & ~self.inner[donor]).any():
                return Transplant(label=int(label), mask=mask, donor=donor)
        raise DataError(f"no tumour of class {label} fits a donor slice of its plane in {self.tries} draws "
                        f"({masks.size} masks fit a {self.crop} px crop); try transplant.tries or a smaller margin")

    def paint(self, generator: torch.nn.Module, plans: list[Transplant], *, device: torch.device, batch_size: int,
              stochastic: bool, amp: bool) -> np.ndarray:
        """The uint8 synthetic slices of ``plans``: each donor healed, then its new tumour painted in."""
        slices = self.slices
        healed = self._paint(generator, [slices.images[p.donor] for p in plans], [p.donor for p in plans],
                             [HEALTHY] * len(plans), device=device, batch_size=batch_size, stochastic=stochastic,
                             amp=amp)
        return self._paint(generator, healed, [p.mask for p in plans], [p.label for p in plans], device=device,
                           batch_size=batch_size, stochastic=stochastic, amp=amp)

    def _paint(self, generator: torch.nn.Module, images: list[np.ndarray], regions: list[int], labels: list[int],
               **render: object) -> list[np.ndarray]:
        """Erase the hole of slice ``regions[k]`` from ``images[k]``, paint it as ``labels[k]``, paste it back."""
        conditions = []
        for image, region, label in zip(images, regions, labels, strict=True):
            origin, hole = self.origins[region], self.holes[region]
            tumour = np.zeros_like(hole) if label == HEALTHY else self.slices.masks[region]
            crop = window(image, origin, self.crop)
            conditions.append(encode(crop, window(hole, origin, self.crop), window(tumour, origin, self.crop), label))
        painted = generate(generator, np.stack(conditions), **render)
        return [paste(image, crop, window(self.holes[region], self.origins[region], self.crop),
                      self.origins[region], self.feather)
                for image, crop, region in zip(images, painted, regions, strict=True)]

    def meta(self, plans: list[Transplant]) -> dict[str, np.ndarray]:
        """Per-image shard meta of ``plans``: where the tumour and the anatomy came from, and the tumour mask
        (bit-packed within its ``crop`` window at ``mask_origin``)."""
        slices = self.slices
        masks = np.array([p.mask for p in plans], dtype=np.int64)
        donors = np.array([p.donor for p in plans], dtype=np.int64)
        origins = np.array([self.origins[m] for m in masks], dtype=np.int16).reshape(-1, 2)
        bits = np.stack([np.packbits(window(slices.masks[m], self.origins[m], self.crop)) for m in masks])
        return {"mask_file_id": slices.file_ids[masks], "mask_subject": slices.subjects[masks],
                "donor_file_id": slices.file_ids[donors], "donor_subject": slices.subjects[donors],
                "mask_origin": origins, "mask_bits": bits}


def _nearest_donors(slices: SliceSet, usable: np.ndarray, count: int, same_class: bool) -> list[np.ndarray]:
    """For each slice, the ``count`` usable slices of other patients in its plane (and, with ``same_class``, of its
    class) that correlate best with it (images block-averaged to 32 px), best first."""
    factor = max(1, slices.image_size // 32)
    side = slices.image_size // factor * factor
    small = slices.images[:, :side, :side].reshape(len(slices), side // factor, factor, -1, factor).mean(axis=(2, 4))
    flat = small.reshape(len(slices), -1)
    flat = flat - flat.mean(1, keepdims=True)
    flat /= np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-6)
    donors = []
    for index in range(len(slices)):
        candidates = np.flatnonzero(usable & (slices.planes == slices.planes[index])
                                    & (slices.subjects != slices.subjects[index])
                                    & ((slices.labels == slices.labels[index]) | (not same_class)))
        order = np.argsort(-(flat[candidates] @ flat[index]), kind="stable")
        donors.append(candidates[order[:count]])
    return donors


def unpack_masks(meta: dict[str, np.ndarray], image_size: int, crop: int) -> np.ndarray:
    """The bool ``(N, S, S)`` tumour masks of synthetic shard meta written by :meth:`Donors.meta`."""
    masks = np.zeros((len(meta["mask_origin"]), image_size, image_size), dtype=bool)
    for mask, origin, bits in zip(masks, meta["mask_origin"], meta["mask_bits"], strict=True):
        window(mask, tuple(int(o) for o in origin), crop)[...] = np.unpackbits(bits)[:crop * crop].reshape(crop, crop)
    return masks
