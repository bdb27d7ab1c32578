"""pix2pix networks (after junyanz/pytorch-CycleGAN-and-pix2pix ``models/networks.py``):
a U-Net generator built from one self-nesting skip block whose depth follows the image size,
and the PatchGAN discriminator (``n_layers=3`` is the 70x70 PatchGAN), optionally with an AC-GAN class head."""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["INIT_GAIN", "NLayerDiscriminator", "UnetGenerator", "define_D", "define_G", "get_norm_layer",
           "init_weights", "unet_depth"]

INIT_GAIN = 0.02
"""Standard deviation of the normal initialisation (pix2pix paper, section 6.2)."""
IMAGE_SIZES = (32, 64, 128, 256)
"""Sizes the generator adapts to: one down-sampling per halving down to 1x1 (32 is for tests)."""
MAX_FEATURE_MULT = 8

NormFactory = Callable[[int], nn.Module]


def get_norm_layer(norm_type: str = "instance") -> NormFactory:
    """A factory ``channels -> norm layer`` for ``batch``, ``instance`` (no running stats, so an image's
    output does not depend on its batch) or ``none``.

    Raises:
        ValueError: an unknown name.
    """
    factories: dict[str, NormFactory] = {
        "batch": functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True),
        "instance": functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False),
        "none": lambda channels: nn.Identity(),
    }
    if norm_type not in factories:
        raise ValueError(f"unknown norm layer {norm_type!r}; choose one of {sorted(factories)}")
    return factories[norm_type]


def init_weights(net: nn.Module, init_type: str = "normal", init_gain: float = INIT_GAIN) -> nn.Module:
    """Initialise conv/linear weights (``normal``, ``xavier``, ``kaiming`` or ``orthogonal``), zero their
    biases, and set batch-norm scales to N(1, ``init_gain``).

    Raises:
        ValueError: an unknown ``init_type``.
    """
    initialisers: dict[str, Callable[[torch.Tensor], object]] = {
        "normal": lambda w: nn.init.normal_(w, 0.0, init_gain),
        "xavier": lambda w: nn.init.xavier_normal_(w, gain=init_gain),
        "kaiming": lambda w: nn.init.kaiming_normal_(w, a=0, mode="fan_in"),
        "orthogonal": lambda w: nn.init.orthogonal_(w, gain=init_gain),
    }
    if init_type not in initialisers:
        raise ValueError(f"unknown init_type {init_type!r}; choose one of {sorted(initialisers)}")

    def init(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            initialisers[init_type](module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, init_gain)
            nn.init.zeros_(module.bias)

    return net.apply(init)


def unet_depth(image_size: int) -> int:
    """Number of down-samplings that take ``image_size`` to 1x1 (256 -> 8, 128 -> 7, 64 -> 6).

    Raises:
        ValueError: a size outside :data:`IMAGE_SIZES`.
    """
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"the U-Net generator supports image sizes {IMAGE_SIZES}, got {image_size}")
    return image_size.bit_length() - 1


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: down-conv, the nested ``submodule``, up-conv, and a skip connection
    (``x | block(x)`` along channels) everywhere except the outermost level.

    Args:
        outer_nc: channels entering (and, except outermost, leaving) this level.
        inner_nc: channels of the down-conv output.
        input_nc: input channels when they differ from ``outer_nc`` (the outermost level).
        submodule: the next-inner level, ``None`` for the innermost.
        outermost / innermost: position flags.
        norm_layer: norm factory from :func:`get_norm_layer`.
        use_dropout: 50% dropout after the up-conv (the generator's noise source in pix2pix).
    """

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None = None,
                 submodule: nn.Module | None = None, outermost: bool = False, innermost: bool = False,
                 norm_layer: NormFactory = nn.BatchNorm2d, use_dropout: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        use_bias = not isinstance(norm_layer(1), nn.BatchNorm2d)
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu, uprelu = nn.LeakyReLU(0.2, True), nn.ReLU(True)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            layers = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            layers = [downrelu, downconv, uprelu, upconv, norm_layer(outer_nc)]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            layers = [downrelu, downconv, norm_layer(inner_nc), submodule, uprelu, upconv, norm_layer(outer_nc)]
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """U-Net from ``num_downs`` nested :class:`UnetSkipConnectionBlock`; input side ``2**num_downs``.

    Output: ``output_nc`` channels in ``[-1, 1]`` (tanh).
    """

    def __init__(self, input_nc: int, output_nc: int, num_downs: int, ngf: int = 64,
                 norm_layer: NormFactory = nn.BatchNorm2d, use_dropout: bool = False) -> None:
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"num_downs must be at least 5, got {num_downs}")
        block = UnetSkipConnectionBlock(ngf * MAX_FEATURE_MULT, ngf * MAX_FEATURE_MULT, innermost=True,
                                        norm_layer=norm_layer)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * MAX_FEATURE_MULT, ngf * MAX_FEATURE_MULT, submodule=block,
                                            norm_layer=norm_layer, use_dropout=use_dropout)
        for mult in (4, 2, 1):
            block = UnetSkipConnectionBlock(ngf * mult, ngf * mult * 2, submodule=block, norm_layer=norm_layer)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True,
                                             norm_layer=norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator: ``n_layers`` stride-2 convs then two stride-1 convs, one logit per patch
    (``n_layers=3``: 70x70 receptive field). Input: condition and image concatenated along channels.

    ``num_classes > 0`` adds an AC-GAN class head (Odena et al. 2017) on the trunk (every layer but the last):
    a 1x1 conv and LeakyReLU (the trunk's features are instance-normed, so their plain spatial mean says little),
    global average pooling and a linear layer to ``num_classes`` logits, read by :meth:`classify`. With
    ``num_classes=0`` the network has exactly the parameters (and state-dict keys) of the plain PatchGAN.
    """

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3,
                 norm_layer: NormFactory = nn.BatchNorm2d, num_classes: int = 0) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        use_bias = not isinstance(norm_layer(1), nn.BatchNorm2d)
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kernel_size=4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            previous, mult = mult, min(2 ** n, MAX_FEATURE_MULT)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * previous, ndf * mult, kernel_size=4, stride=stride, padding=1, bias=use_bias),
                       norm_layer(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        self.class_head = None if not num_classes else nn.Sequential(
            nn.Conv2d(ndf * mult, ndf * mult, kernel_size=1), nn.LeakyReLU(0.2, True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ndf * mult, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, num_classes)`` of input ``x`` from the class head.

        Raises:
            RuntimeError: the network was built without a class head.
        """
        if self.class_head is None:
            raise RuntimeError("this discriminator has no class head (built with num_classes=0)")
        return self.class_head(self.model[:-1](x))


def define_G(*, input_nc: int, output_nc: int = 1, image_size: int = 256, ngf: int = 64, norm: str = "instance",
             use_dropout: bool = True, init_type: str = "normal", init_gain: float = INIT_GAIN) -> UnetGenerator:
    """The U-Net generator for ``image_size`` (depth from :func:`unet_depth`), initialised."""
    net = UnetGenerator(input_nc, output_nc, unet_depth(image_size), ngf=ngf, norm_layer=get_norm_layer(norm),
                        use_dropout=use_dropout)
    return init_weights(net, init_type, init_gain)


def define_D(*, input_nc: int, ndf: int = 64, n_layers: int = 3, norm: str = "instance",
             init_type: str = "normal", init_gain: float = INIT_GAIN, num_classes: int = 0) -> NLayerDiscriminator:
    """The PatchGAN discriminator (``n_layers=3``: 70x70 patches), with a ``num_classes``-way class head when
    that is positive, initialised."""
    net = NLayerDiscriminator(input_nc, ndf=ndf, n_layers=n_layers, norm_layer=get_norm_layer(norm),
                              num_classes=num_classes)
    return init_weights(net, init_type, init_gain)
