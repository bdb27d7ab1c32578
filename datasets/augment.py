"""Random training augmentations for batches of slices and volumes (MONAI style, batched in torch).

Each augmentation is a deterministic transform (:class:`Flip`, :class:`Affine`,
:class:`ScaleShiftIntensity`) plus a random twin (``Rand*``) that draws per-sample parameters in
``randomize(n)`` from its own ``torch.Generator`` and delegates. :class:`RandCompose` reseeds every
twin from ``(seed, *keys)`` so an epoch's augmentation is reproducible (exact resume).

Transforms take and return float32 batches ``(N, C, H, W)`` (:class:`Flip` also volumes ``(N, C, T, H, W)``);
they never modify their input. They are for real training data only: validation, test and prediction see
no augmentation.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from experiment.seeding import torch_generator


def _check_batch(images: torch.Tensor, volumes: bool = False) -> None:
    if images.ndim not in ((4, 5) if volumes else (4,)) or not images.is_floating_point():
        expected = "(N, C, H, W) or (N, C, T, H, W)" if volumes else "(N, C, H, W)"
        raise ValueError(f"expected a float batch {expected}, got {tuple(images.shape)} {images.dtype}")


def _per_sample(value: torch.Tensor | float, n: int, device: torch.device) -> torch.Tensor:
    """``value`` as a float32 tensor of shape (n,) on ``device`` (a scalar is broadcast)."""
    tensor = torch.as_tensor(value, dtype=torch.float32, device=device)
    return tensor.expand(n) if tensor.ndim == 0 else tensor


class Flip:
    """Mirror the samples selected by ``mask`` (bool, (N,)) along ``axis``; all samples when ``mask`` is None.

    ``axis``: ``"horizontal"`` or ``"vertical"`` of a slice batch, or a spatial dimension (>= 2) of a slice
    or volume batch, e.g. the left-right dimension of ``(N, C, T, H, W)``.
    """

    AXES = {"horizontal": -1, "vertical": -2}

    def __init__(self, axis: str | int = "horizontal") -> None:
        if isinstance(axis, str) and axis not in self.AXES:
            raise ValueError(f"axis must be one of {sorted(self.AXES)} or a dimension >= 2, got {axis!r}")
        if isinstance(axis, int) and axis < 2:
            raise ValueError(f"axis must be a spatial dimension (>= 2) of (N, C, ...), got {axis}")
        self.dim = self.AXES[axis] if isinstance(axis, str) else axis

    def __call__(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_batch(images, volumes=True)
        if self.dim >= images.ndim:
            raise ValueError(f"cannot flip dimension {self.dim} of a batch {tuple(images.shape)}")
        flipped = images.flip(self.dim)
        if mask is None:
            return flipped
        return torch.where(mask.to(images.device).view(-1, *[1] * (images.ndim - 1)), flipped, images)


class Affine:
    """Rotate (radians), scale and translate (fraction of the image side) each sample about its
    centre with bilinear resampling and zero padding; parameters are scalars or (N,) tensors."""

    def __call__(self, images: torch.Tensor, rotate: torch.Tensor | float = 0.0,
                 scale: torch.Tensor | float = 1.0, translate: torch.Tensor | None = None) -> torch.Tensor:
        _check_batch(images)
        n, device = images.shape[0], images.device
        angle, zoom = _per_sample(rotate, n, device), _per_sample(scale, n, device)
        if torch.any(zoom <= 0):
            raise ValueError("scale must be positive")
        shift = torch.zeros(n, 2, device=device) if translate is None else translate.to(device).view(n, 2)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # affine_grid maps output to input coordinates in [-1, 1]: inverse rotation/scale, then shift.
        theta = torch.stack([torch.stack([cos, -sin, -2 * shift[:, 0]], 1),
                             torch.stack([sin, cos, -2 * shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class ScaleShiftIntensity:
    """``images * scale + shift`` per sample (intensity jitter on [0, 1] inputs), clamped to [0, 1]."""

    def __call__(self, images: torch.Tensor, scale: torch.Tensor | float = 1.0,
                 shift: torch.Tensor | float = 0.0) -> torch.Tensor:
        _check_batch(images)
        n, device = images.shape[0], images.device
        out = images * _per_sample(scale, n, device).view(-1, 1, 1, 1) + _per_sample(shift, n, device).view(-1, 1, 1, 1)
        return out.clamp(0.0, 1.0)


class RandomTransform:
    """Base of the random twins: owns a generator; ``randomize(n)`` draws, ``__call__`` applies."""

    def __init__(self) -> None:
        self.generator = torch.Generator()

    def set_generator(self, generator: torch.Generator) -> None:
        """Draw all future parameters from ``generator``."""
        self.generator = generator

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=self.generator)

    def _coin(self, n: int, prob: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator) < prob


class RandFlip(RandomTransform):
    """Flip each sample along ``axis`` (see :class:`Flip`) with probability ``prob``."""

    def __init__(self, axis: str | int = "horizontal", prob: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        self.flip, self.prob = Flip(axis), prob
        self.mask = torch.zeros(0, dtype=torch.bool)

    def randomize(self, n: int) -> None:
        self.mask = self._coin(n, self.prob)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.randomize(images.shape[0])
        return self.flip(images, self.mask)


class RandAffine(RandomTransform):
    """With probability ``prob`` per sample: rotation in ``±rotate_deg``, scale in ``1 ± scale``,
    translation in ``±translate`` (fraction of the side) on both axes."""

    def __init__(self, rotate_deg: float = 10.0, scale: float = 0.1, translate: float = 0.05,
                 prob: float = 0.8) -> None:
        super().__init__()
        if rotate_deg < 0 or not 0.0 <= scale < 1.0 or translate < 0 or not 0.0 <= prob <= 1.0:
            raise ValueError(f"bad RandAffine ranges: rotate_deg={rotate_deg}, scale={scale}, "
                             f"translate={translate}, prob={prob}")
        self.rotate, self.scale, self.translate, self.prob = math.radians(rotate_deg), scale, translate, prob
        self.affine = Affine()
        self.params: dict[str, torch.Tensor] = {}

    def randomize(self, n: int) -> None:
        active = self._coin(n, self.prob).float()
        self.params = {
            "rotate": self._uniform(n, -self.rotate, self.rotate) * active,
            "scale": 1.0 + self._uniform(n, -self.scale, self.scale) * active,
            "translate": torch.stack([self._uniform(n, -self.translate, self.translate),
                                      self._uniform(n, -self.translate, self.translate)], 1) * active[:, None],
        }

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.randomize(images.shape[0])
        return self.affine(images, **self.params)


class RandScaleShiftIntensity(RandomTransform):
    """With probability ``prob`` per sample: intensity scale in ``1 ± scale`` and shift in ``±shift``."""

    def __init__(self, scale: float = 0.1, shift: float = 0.05, prob: float = 0.8) -> None:
        super().__init__()
        if scale < 0 or shift < 0 or not 0.0 <= prob <= 1.0:
            raise ValueError(f"bad intensity jitter: scale={scale}, shift={shift}, prob={prob}")
        self.scale, self.shift, self.prob = scale, shift, prob
        self.jitter = ScaleShiftIntensity()
        self.params: dict[str, torch.Tensor] = {}

    def randomize(self, n: int) -> None:
        active = self._coin(n, self.prob).float()
        self.params = {"scale": 1.0 + self._uniform(n, -self.scale, self.scale) * active,
                       "shift": self._uniform(n, -self.shift, self.shift) * active}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.randomize(images.shape[0])
        return self.jitter(images, **self.params)


class RandCompose:
    """Apply random transforms in order; :meth:`reseed` gives each its own generator from ``(seed, *keys)``."""

    def __init__(self, transforms: Sequence[RandomTransform]) -> None:
        self.transforms = list(transforms)

    def reseed(self, seed: int, *keys: int) -> None:
        """Seed transform ``i`` from ``(seed, *keys, i)``: the same keys give the same augmentation."""
        for index, transform in enumerate(self.transforms):
            transform.set_generator(torch_generator(seed, *keys, index))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        for transform in self.transforms:
            images = transform(images)
        return images


def slice_augmentation(flip_prob: float = 0.5, rotate_deg: float = 10.0, scale: float = 0.1,
                       translate: float = 0.05, intensity_scale: float = 0.1, intensity_shift: float = 0.05,
                       prob: float = 0.8) -> RandCompose:
    """The default augmentation of real training slices: horizontal flip, small affine, intensity jitter.

    Only left-right flips: the brain is roughly symmetric about the mid-sagittal plane, top-bottom is not.
    """
    return RandCompose([RandFlip("horizontal", flip_prob), RandAffine(rotate_deg, scale, translate, prob),
                        RandScaleShiftIntensity(intensity_scale, intensity_shift, prob)])


def volume_augmentation(flip_dim: int, flip_prob: float = 0.5) -> RandCompose:
    """The training augmentation of volume batches ``(N, C, T, H, W)``: left-right flips along ``flip_dim``
    (the brain is roughly symmetric about the mid-sagittal plane)."""
    return RandCompose([RandFlip(flip_dim, flip_prob)])
