"""Random training augmentations for batches of slices and volumes (MONAI style, batched in torch).

Each augmentation is a deterministic transform (:class:`Flip`, :class:`Affine`, :class:`ScaleShiftIntensity`,
:class:`BiasField`, a ``torchvision.transforms.v2.functional`` op such as Gaussian blur or anti-aliased resize,
or Pillow's JPEG codec) plus a random twin (``Rand*``) that draws per-sample parameters in ``randomize(n)`` from
its own ``torch.Generator`` and delegates. :class:`RandCompose` reseeds every twin from ``(seed, *keys)`` so an
epoch's augmentation is reproducible (exact resume). The appearance twins (:func:`slice_augmentation` with the
``robust`` settings) span what another hospital's images differ in: bias field, blur and resolution, Rician
noise, contrast curves and JPEG export.

Transforms take and return float32 batches ``(N, C, H, W)`` (:class:`Flip` also volumes ``(N, C, T, H, W)``);
they never modify their input. They are for training data only (real slices and synthetic ones in
pretraining): validation, test and prediction see no augmentation.
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image

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
    """Base of the random twins: owns a generator; ``randomize(n)`` draws, ``__call__`` applies.
    ``geometric`` transforms move pixels (and so move masks along, see :meth:`RandCompose.pair`)."""

    geometric = False

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

    geometric = True

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

    geometric = True

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


class BiasField:
    """Multiply each sample by a smooth field ``exp(sum_k c_k P_i(y) P_j(x))``: products of Legendre polynomials
    of total degree ``1..degree`` over the image (MONAI's ``RandBiasField`` model), clamped to [0, 1]."""

    def __init__(self, degree: int = 3) -> None:
        if degree < 1:
            raise ValueError(f"degree must be at least 1, got {degree}")
        self.degree = degree
        self.orders = [(i, j) for i in range(degree + 1) for j in range(degree + 1 - i) if i + j > 0]
        self._basis: dict[tuple[int, int], torch.Tensor] = {}

    def basis(self, height: int, width: int) -> torch.Tensor:
        """The ``(K, height, width)`` polynomial products (cached per size)."""
        if (height, width) not in self._basis:
            orders = torch.arange(self.degree + 1)
            y, x = (torch.special.legendre_polynomial_p(torch.linspace(-1, 1, n)[:, None], orders)
                    for n in (height, width))
            self._basis[height, width] = torch.stack([y[:, i, None] * x[None, :, j] for i, j in self.orders])
        return self._basis[height, width]

    def __call__(self, images: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        _check_batch(images)
        basis = self.basis(*images.shape[-2:]).to(images.device)
        field = torch.exp(torch.einsum("nk,khw->nhw", coefficients.to(images.device), basis))
        return (images * field[:, None]).clamp(0.0, 1.0)


class RandBiasField(RandomTransform):
    """With probability ``prob`` per sample: a :class:`BiasField` with coefficients in ``±coeff``."""

    def __init__(self, coeff: float = 0.3, degree: int = 3, prob: float = 0.3) -> None:
        super().__init__()
        _check_strength("bias field", coeff, prob)
        self.field, self.coeff, self.prob = BiasField(degree), coeff, prob
        self.coefficients = torch.zeros(0, len(self.field.orders))

    def randomize(self, n: int) -> None:
        active = self._coin(n, self.prob).float()[:, None]
        draws = self._uniform(n * len(self.field.orders), -self.coeff, self.coeff)
        self.coefficients = draws.view(n, -1) * active

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.randomize(images.shape[0])
        return self.field(images, self.coefficients)


class RandGamma(RandomTransform):
    """With probability ``prob`` per sample: the contrast curve ``x ** g``, ``log g`` uniform in
    ``±log(1 + gamma)`` (darker or brighter mid-tones, black and white kept)."""

    def __init__(self, gamma: float = 0.4, prob: float = 0.3) -> None:
        super().__init__()
        _check_strength("gamma", gamma, prob)
        self.log_gamma, self.prob = math.log1p(gamma), prob
        self.exponents = torch.ones(0)

    def randomize(self, n: int) -> None:
        active = self._coin(n, self.prob).float()
        self.exponents = torch.exp(self._uniform(n, -self.log_gamma, self.log_gamma) * active)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _check_batch(images)
        self.randomize(images.shape[0])
        return images.clamp(0.0, 1.0) ** self.exponents.to(images.device).view(-1, 1, 1, 1)


class RandRicianNoise(RandomTransform):
    """With probability ``prob`` per sample: MRI magnitude noise ``|x + s (n1 + i n2)|``, ``s`` uniform in
    ``[0, std]`` (of the [0, 1] range), clamped to [0, 1]."""

    def __init__(self, std: float = 0.05, prob: float = 0.3) -> None:
        super().__init__()
        _check_strength("noise", std, prob)
        self.std, self.prob = std, prob
        self.sigmas = torch.zeros(0)

    def randomize(self, n: int) -> None:
        self.sigmas = self._uniform(n, 0.0, self.std) * self._coin(n, self.prob).float()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _check_batch(images)
        self.randomize(images.shape[0])
        out = images.clone()
        chosen = torch.nonzero(self.sigmas > 0).flatten()  # noise is drawn for these samples only
        noise = torch.randn((2, len(chosen), *images.shape[1:]), generator=self.generator).to(images.device)
        sigma = self.sigmas[chosen].to(images.device).view(-1, 1, 1, 1)
        out[chosen] = torch.hypot(images[chosen] + sigma * noise[0], sigma * noise[1]).clamp(0.0, 1.0)
        return out


class _PerSample(RandomTransform):
    """A twin that applies a library op (torchvision, Pillow) to the selected samples one at a time, as its
    parameter differs per sample: subclasses ``draw`` one parameter per sample and ``apply`` it to a
    ``(C, H, W)`` image."""

    def __init__(self, prob: float) -> None:
        super().__init__()
        self.prob = prob
        self.selected, self.params = torch.zeros(0, dtype=torch.bool), torch.zeros(0)

    def draw(self, n: int) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, image: torch.Tensor, param: float) -> torch.Tensor:
        raise NotImplementedError

    def randomize(self, n: int) -> None:
        self.selected, self.params = self._coin(n, self.prob), self.draw(n)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _check_batch(images)
        self.randomize(images.shape[0])
        out = images.clone()
        for index in torch.nonzero(self.selected).flatten().tolist():
            out[index] = self.apply(images[index], float(self.params[index]))
        return out


class RandGaussianBlur(_PerSample):
    """With probability ``prob`` per sample: Gaussian blur with ``sigma`` uniform in ``[0.25, sigma]`` pixels."""

    def __init__(self, sigma: float = 1.0, prob: float = 0.3) -> None:
        super().__init__(prob)
        _check_strength("blur", sigma, prob)
        self.sigma = max(sigma, 0.25)

    def draw(self, n: int) -> torch.Tensor:
        return self._uniform(n, 0.25, self.sigma)

    def apply(self, image: torch.Tensor, param: float) -> torch.Tensor:
        size = 2 * math.ceil(3 * param) + 1
        return TF.gaussian_blur(image, [size, size], [param, param])


class RandLowResolution(_PerSample):
    """With probability ``prob`` per sample: resolution loss, an anti-aliased resize to a share of the side
    uniform in ``[1 - downsample, 1]`` and back (bilinear)."""

    def __init__(self, downsample: float = 0.5, prob: float = 0.3) -> None:
        super().__init__(prob)
        if not 0.0 <= downsample < 1.0:
            raise ValueError(f"downsample must be in [0, 1), got {downsample}")
        _check_strength("resolution loss", downsample, prob)
        self.downsample = downsample

    def draw(self, n: int) -> torch.Tensor:
        return self._uniform(n, 1.0 - self.downsample, 1.0)

    def apply(self, image: torch.Tensor, param: float) -> torch.Tensor:
        side = list(image.shape[-2:])
        small = TF.resize(image, [max(4, round(param * s)) for s in side], antialias=True)
        return TF.resize(small, side, antialias=False).clamp(0.0, 1.0)


class RandJPEG(_PerSample):
    """With probability ``prob`` per sample: JPEG re-encoding (Pillow's libjpeg) at a quality drawn uniformly
    from ``min_quality..95``."""

    def __init__(self, min_quality: int = 30, prob: float = 0.3) -> None:
        super().__init__(prob)
        if not 1 <= min_quality <= 95:
            raise ValueError(f"JPEG quality must be in 1..95, got {min_quality}")
        _check_strength("JPEG", 1.0, prob)
        self.min_quality = int(min_quality)

    def draw(self, n: int) -> torch.Tensor:
        return torch.randint(self.min_quality, 96, (n,), generator=self.generator)

    def apply(self, image: torch.Tensor, param: float) -> torch.Tensor:
        pixels = image.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
        decoded = [_jpeg(channel, int(param)) for channel in pixels]
        return torch.from_numpy(np.stack(decoded)).to(image.device, image.dtype).div_(255.0)


def _jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    """A uint8 image after a JPEG round trip at ``quality``."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded)


def _check_strength(name: str, strength: float, prob: float) -> None:
    if strength < 0 or not 0.0 <= prob <= 1.0:
        raise ValueError(f"bad {name} augmentation: strength={strength}, prob={prob}")


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

    def pair(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` and their masks ``(N, K, H, W)`` (float) under the same draws: geometric transforms move
        both alike, the others change the images only. The images come out as ``self(images)`` would."""
        channels = images.shape[1]
        for transform in self.transforms:
            if transform.geometric:
                moved = transform(torch.cat([images, masks.to(images.dtype)], 1))
                images, masks = moved[:, :channels], moved[:, channels:]
            else:
                images = transform(images)
        return images, masks


@dataclass
class SliceAugment:
    """Settings of :func:`slice_augmentation`; the defaults are the ``robust`` augmentation, :data:`BASIC` the
    former one.

    ``flip_prob``: left-right flips; ``rotate_deg``, ``scale`` (zoom / field of view, ``1 ± scale``) and
    ``translate`` (share of the side): the affine; ``prob``: per-slice chance of the affine and of the intensity
    jitter (``intensity_scale``, ``intensity_shift``). Appearance, each with probability ``appearance_prob`` and
    left out at 0: ``bias_field`` (largest coefficient of the log field), ``blur_sigma`` (largest Gaussian sigma,
    px), ``downsample`` (largest share of resolution lost), ``noise_std`` (largest Rician sigma, share of the
    range), ``gamma`` (curve ``x ** g``, ``g`` within ``1 + gamma`` either way), ``jpeg_quality`` (lowest quality).
    """

    flip_prob: float = 0.5
    rotate_deg: float = 10.0
    scale: float = 0.15
    translate: float = 0.05
    intensity_scale: float = 0.1
    intensity_shift: float = 0.05
    prob: float = 0.8
    appearance_prob: float = 0.3
    bias_field: float = 0.3
    blur_sigma: float = 1.0
    downsample: float = 0.5
    noise_std: float = 0.04
    gamma: float = 0.4
    jpeg_quality: int = 30


BASIC = SliceAugment(scale=0.1, bias_field=0.0, blur_sigma=0.0, downsample=0.0, noise_std=0.0, gamma=0.0,
                     jpeg_quality=0)
"""The augmentation before the robust settings: flip, affine and intensity jitter only."""


def slice_augmentation(settings: SliceAugment | None = None, **overrides: float) -> RandCompose:
    """The augmentation of training slices: horizontal flip, affine (rotation, zoom, shift), then bias field,
    blur, resolution loss, Rician noise and gamma (each with probability ``appearance_prob``, left out at strength
    0), intensity jitter, JPEG re-encoding. ``settings`` (default: robust) with ``overrides`` by field name.

    Only left-right flips: the brain is roughly symmetric about the mid-sagittal plane, top-bottom is not.
    :data:`BASIC` gives the former augmentation, draw for draw.
    """
    s = replace(settings or SliceAugment(), **overrides)
    appearance = [(s.bias_field, lambda: RandBiasField(s.bias_field, prob=s.appearance_prob)),
                  (s.blur_sigma, lambda: RandGaussianBlur(s.blur_sigma, s.appearance_prob)),
                  (s.downsample, lambda: RandLowResolution(s.downsample, s.appearance_prob)),
                  (s.noise_std, lambda: RandRicianNoise(s.noise_std, s.appearance_prob)),
                  (s.gamma, lambda: RandGamma(s.gamma, s.appearance_prob))]
    transforms: list[RandomTransform] = [RandFlip("horizontal", s.flip_prob),
                                         RandAffine(s.rotate_deg, s.scale, s.translate, s.prob)]
    transforms += [build() for strength, build in appearance if strength > 0]
    transforms.append(RandScaleShiftIntensity(s.intensity_scale, s.intensity_shift, s.prob))
    if s.jpeg_quality > 0:
        transforms.append(RandJPEG(s.jpeg_quality, s.appearance_prob))
    return RandCompose(transforms)


def volume_augmentation(flip_dim: int, flip_prob: float = 0.5) -> RandCompose:
    """The training augmentation of volume batches ``(N, C, T, H, W)``: left-right flips along ``flip_dim``
    (the brain is roughly symmetric about the mid-sagittal plane)."""
    return RandCompose([RandFlip(flip_dim, flip_prob)])
