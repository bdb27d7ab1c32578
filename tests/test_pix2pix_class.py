"""The AC-GAN class objective of the pix2pix step (``loss.lambda_cls``): the discriminator's class head and the
generator's class term (tiny sizes, CPU)."""
from __future__ import annotations

import copy

import pytest
import torch

from generative_model.conditions import CONDITION_CHANNELS, HEALTHY, NUM_CLASSES
from generative_model.losses import GANLoss, class_loss
from generative_model.networks import define_D, define_G
from generative_model.pix2pix import CLASS_LOSS_NAMES, LOSS_NAMES, Pix2Pix

SIZE = 32
LAMBDA_L1 = 100.0
CPU = torch.device("cpu")


def _model(discriminator: torch.nn.Module, generator: torch.nn.Module, lambda_cls: float) -> Pix2Pix:
    return Pix2Pix(generator=generator, discriminator=discriminator, lr=1e-3, beta1=0.5, gan_mode="vanilla",
                   lambda_l1=LAMBDA_L1, epochs=1, epochs_decay=0, device=CPU, lambda_cls=lambda_cls)


def _networks(num_classes: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return (define_G(input_nc=CONDITION_CHANNELS, image_size=SIZE, ngf=8),
            define_D(input_nc=CONDITION_CHANNELS + 1, ndf=8, num_classes=num_classes))


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Conditions, real images whose class shows as a stripe direction (or a checkerboard), and labels with
    one healthy pair."""
    generator = torch.Generator().manual_seed(1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, HEALTHY, 1])
    coords = torch.arange(SIZE)
    rows, cols = (coords[:, None] // 4).expand(SIZE, SIZE), (coords[None, :] // 4).expand(SIZE, SIZE)
    patterns = torch.stack([rows % 2, cols % 2, (rows + cols) % 2]).float()
    real = patterns[labels.clamp(min=0)] * 1.2 - 0.6 + 0.1 * torch.randn(len(labels), SIZE, SIZE, generator=generator)
    condition = torch.rand(len(labels), CONDITION_CHANNELS, SIZE, SIZE, generator=generator)
    return condition, real.unsqueeze(1).clamp(-1, 1), labels


def _generator_grads(model: Pix2Pix) -> list[torch.Tensor]:
    model.optimizer_G.zero_grad(set_to_none=True)
    model.forward()
    for parameter in model.netD.parameters():
        parameter.requires_grad_(False)
    model.backward_G()
    return [p.grad.clone() for p in model.netG.parameters()]


def test_without_a_class_weight_there_is_no_head_and_no_class_loss() -> None:
    plain = define_D(input_nc=CONDITION_CHANNELS + 1, ndf=8)
    headed = define_D(input_nc=CONDITION_CHANNELS + 1, ndf=8, num_classes=NUM_CLASSES)
    assert not any(key.startswith("class_head") for key in plain.state_dict())
    assert set(headed.state_dict()) - set(plain.state_dict()) == {"class_head.0.weight", "class_head.0.bias",
                                                                    "class_head.4.weight", "class_head.4.bias"}
    with pytest.raises(RuntimeError, match="no class head"):
        plain.classify(torch.rand(1, CONDITION_CHANNELS + 1, SIZE, SIZE))
    generator, _ = _networks(0)
    with pytest.raises(ValueError, match="class head"):
        _model(plain, generator, lambda_cls=1.0)
    model = _model(plain, generator, lambda_cls=0.0)
    condition, real, labels = _batch()
    model.set_input(condition, real, labels=labels)
    assert set(model.optimize_parameters()) == set(LOSS_NAMES) - set(CLASS_LOSS_NAMES)
    headed_model = _model(headed, generator, lambda_cls=1.0)
    with pytest.raises(ValueError, match="labels"):
        headed_model.set_input(condition, real)


def test_class_loss_skips_healthy_pairs() -> None:
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 9.0]], requires_grad=True)
    only_first = class_loss(logits[:1], torch.tensor([0]))
    assert torch.equal(class_loss(logits, torch.tensor([0, HEALTHY])), only_first)
    none = class_loss(logits, torch.tensor([HEALTHY, HEALTHY]))
    none.backward()
    assert float(none.detach()) == 0.0 and float(logits.grad.abs().sum()) == 0.0


def test_zero_weight_is_the_old_generator_loss_and_a_positive_one_adds_the_class_gradient() -> None:
    generator, headed = _networks(NUM_CLASSES)
    plain = define_D(input_nc=CONDITION_CHANNELS + 1, ndf=8)
    plain.load_state_dict({k: v for k, v in headed.state_dict().items() if not k.startswith("class_head")})
    condition, real, labels = _batch()
    old = _model(plain, copy.deepcopy(generator), lambda_cls=0.0)
    new = _model(copy.deepcopy(headed), copy.deepcopy(generator), lambda_cls=2.0)
    for model in (old, new):
        model.set_input(condition, real, labels=labels)
    old_grads, new_grads = _generator_grads(old), _generator_grads(new)

    fake = generator(condition)  # the old objective by hand: adversarial + lambda_l1 x L1
    reference = (GANLoss("vanilla")(plain(torch.cat([condition, fake], 1)), True)
                 + LAMBDA_L1 * (fake - real).abs().mean())
    expected_old = torch.autograd.grad(reference, list(generator.parameters()))
    for got, want in zip(old_grads, expected_old, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert set(old.losses) == {"G_GAN", "G_L1"}

    blind = torch.cat([torch.zeros_like(condition), generator(condition)], 1)  # the head sees the image only
    cls = class_loss(headed.classify(blind), labels)
    assert float(cls.detach()) == pytest.approx(float(new.losses["G_cls"].detach()), rel=1e-6)
    expected_extra = torch.autograd.grad(cls, list(generator.parameters()))
    assert any(float(extra.abs().max()) > 0 for extra in expected_extra)
    for got, base, extra in zip(new_grads, old_grads, expected_extra, strict=True):
        torch.testing.assert_close(got, base + 2.0 * extra, rtol=1e-4, atol=1e-6)


def test_class_head_learns_the_class_of_real_images() -> None:
    generator, headed = _networks(NUM_CLASSES)
    model = _model(headed, generator, lambda_cls=1.0)
    model.set_input(*_batch()[:2], labels=_batch()[2])
    steps = [model.optimize_parameters() for _ in range(50)]  # the 0.02-std head starts slowly
    assert set(steps[0]) == set(LOSS_NAMES)
    d_cls = [step["D_cls"] for step in steps]
    assert d_cls[0] > 0.9 and d_cls[-1] < 0.5 * d_cls[0], d_cls
    condition, real, labels = _batch()
    with torch.no_grad():
        logits = headed.classify(torch.cat([torch.zeros_like(condition), real], 1))
    labelled = labels != HEALTHY
    assert torch.equal(logits.argmax(1)[labelled], labels[labelled])
