"""pix2pix networks, GAN loss and the training step (tiny sizes, CPU)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from generative_model.conditions import CONDITION_CHANNELS
from generative_model.losses import GANLoss
from generative_model.networks import INIT_GAIN, UnetSkipConnectionBlock, define_D, define_G, get_norm_layer, unet_depth
from generative_model.pix2pix import LinearDecay, Pix2Pix, images_to_tensor, tensor_to_images


@pytest.mark.parametrize(("size", "depth"), [(32, 5), (64, 6), (128, 7), (256, 8)])
def test_unet_depth_follows_image_size(size: int, depth: int) -> None:
    generator = define_G(input_nc=CONDITION_CHANNELS, image_size=size, ngf=2)
    blocks = [m for m in generator.modules() if isinstance(m, UnetSkipConnectionBlock)]
    assert unet_depth(size) == depth == len(blocks)
    out = generator(torch.rand(1, CONDITION_CHANNELS, size, size))
    assert out.shape == (1, 1, size, size)
    assert out.abs().max() <= 1.0


def test_dropout_sits_in_the_deep_blocks_only_when_asked() -> None:
    with_dropout = define_G(input_nc=CONDITION_CHANNELS, image_size=128, ngf=2, use_dropout=True)
    without = define_G(input_nc=CONDITION_CHANNELS, image_size=128, ngf=2, use_dropout=False)
    assert sum(isinstance(m, nn.Dropout) for m in with_dropout.modules()) == 2  # 7 levels - 5 fixed ones
    assert not any(isinstance(m, nn.Dropout) for m in without.modules())


def test_bad_sizes_and_names_raise() -> None:
    with pytest.raises(ValueError, match="image sizes"):
        define_G(input_nc=CONDITION_CHANNELS, image_size=100)
    with pytest.raises(ValueError, match="norm layer"):
        get_norm_layer("group")
    with pytest.raises(ValueError, match="init_type"):
        define_D(input_nc=6, init_type="uniform")
    with pytest.raises(ValueError, match="gan_mode"):
        GANLoss("wgan")


def test_patchgan_is_70x70_with_three_layers() -> None:
    discriminator = define_D(input_nc=CONDITION_CHANNELS + 1, ndf=4, n_layers=3)
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    receptive = 1
    for conv in reversed(convs):
        receptive = (receptive - 1) * conv.stride[0] + conv.kernel_size[0]
    assert receptive == 70
    assert discriminator(torch.rand(2, CONDITION_CHANNELS + 1, 64, 64)).shape == (2, 1, 6, 6)


def test_init_weights_uses_the_named_gain() -> None:
    torch.manual_seed(0)
    generator = define_G(input_nc=CONDITION_CHANNELS, image_size=64, ngf=16)
    weights = torch.cat([m.weight.detach().flatten() for m in generator.modules() if isinstance(m, nn.Conv2d)])
    assert abs(float(weights.std()) - INIT_GAIN) < 0.002
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in generator.modules()
               if isinstance(m, nn.Conv2d) and m.bias is not None)


@pytest.mark.parametrize("mode", ["vanilla", "lsgan"])
def test_gan_loss_targets_follow_the_flag(mode: str) -> None:
    loss = GANLoss(mode)
    assert "real_label" not in loss.state_dict()
    confident_real = torch.full((2, 1, 4, 4), 5.0 if mode == "vanilla" else 1.0)
    assert float(loss(confident_real, True)) < float(loss(confident_real, False))


def test_linear_decay_schedule() -> None:
    decay = LinearDecay(epochs=2, epochs_decay=3)
    assert [decay(e) for e in range(5)] == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.25])


def test_image_round_trip() -> None:
    images = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8).numpy()
    assert (tensor_to_images(images_to_tensor(images)) == images).all()


def test_l1_loss_falls_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = Pix2Pix(generator=define_G(input_nc=CONDITION_CHANNELS, image_size=32, ngf=8),
                    discriminator=define_D(input_nc=CONDITION_CHANNELS + 1, ndf=8),
                    lr=1e-3, beta1=0.5, gan_mode="vanilla", lambda_l1=100.0, epochs=1, epochs_decay=0,
                    device=torch.device("cpu"))
    condition = (torch.rand(4, CONDITION_CHANNELS, 32, 32) > 0.5).float()
    real = condition[:, :1] * 1.6 - 0.8  # a target the generator can learn from its condition
    model.set_input(condition, real)
    losses = [model.optimize_parameters()["G_L1"] for _ in range(10)]
    assert losses[-1] < 0.95 * losses[0], losses
    assert sum(b < a for a, b in zip(losses[:-1], losses[1:], strict=True)) >= 8, losses
    assert set(model.optimize_parameters()) == {"G_GAN", "G_L1", "D_real", "D_fake"}
