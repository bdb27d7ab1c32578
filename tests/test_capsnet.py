"""Capsule network pieces: squash, routing shapes, margin loss, parameter budget, a tiny overfit."""
from __future__ import annotations

import pytest
import torch

from capsule_classifier import (
    BASELINE,
    BASELINE_RATIO,
    build_model,
    build_objective,
    model_entry,
    parameter_counts,
)
from capsule_classifier.capsnet import ClassCapsules, margin_loss, squash
from experiment.objectives import CrossEntropyObjective

pytestmark = pytest.mark.usefixtures("one_thread")


def test_squash_keeps_direction_and_bounds_norm() -> None:
    s = torch.randn(64, 16) * torch.logspace(-3, 2, 64).unsqueeze(1)
    v = squash(s)
    norms = v.norm(dim=-1)
    assert torch.all(norms < 1.0) and torch.all(norms >= 0.0)
    cosine = torch.nn.functional.cosine_similarity(v, s, dim=-1)
    assert torch.allclose(cosine, torch.ones(64), atol=1e-4)
    expected = s.norm(dim=-1) ** 2 / (1 + s.norm(dim=-1) ** 2)
    assert torch.allclose(norms, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("iterations", [1, 3])
def test_routing_output_shapes(iterations: int) -> None:
    routing = ClassCapsules(in_types=4, in_dim=8, num_classes=3, out_dim=16, iterations=iterations)
    primary = squash(torch.randn(5, 4, 8, 3, 3), dim=2)
    v = routing(primary)
    assert v.shape == (5, 3, 16)
    assert torch.all(v.norm(dim=-1) < 1.0)


def test_routing_gradient_reaches_transforms() -> None:
    routing = ClassCapsules(in_types=2, in_dim=4, num_classes=3, out_dim=6)
    routing(torch.randn(2, 2, 4, 2, 2)).norm(dim=-1).sum().backward()
    assert routing.weight.grad is not None and routing.weight.grad.abs().sum() > 0


def test_margin_loss_matches_hand_computation() -> None:
    lengths = torch.tensor([[0.95, 0.30, 0.05], [0.20, 0.60, 0.15]])
    targets = torch.tensor([0, 2])
    # sample 0: present 0.95 >= 0.9 -> 0; absent 0.30 -> 0.5 * 0.2^2 = 0.02; absent 0.05 -> 0
    # sample 1: absent 0.20 -> 0.5 * 0.1^2 = 0.005; absent 0.60 -> 0.5 * 0.5^2 = 0.125;
    #           present 0.15 -> (0.9 - 0.15)^2 = 0.5625
    expected = (0.02 + (0.005 + 0.125 + 0.5625)) / 2
    assert margin_loss(lengths, targets).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("size", [64, 128, 256])
def test_capsnet_is_far_smaller_than_resnet50(size: int) -> None:
    capsnet = build_model("capsnet", image_size=size)
    with torch.device("meta"):
        resnet = build_model("resnet50", image_size=size)
    caps_params = sum(p.numel() for p in capsnet.parameters())
    resnet_params = sum(p.numel() for p in resnet.parameters())
    assert caps_params <= resnet_params / 9
    no_decoder = sum(p.numel() for n, p in capsnet.named_parameters() if not n.startswith("decoder."))
    assert no_decoder < 200_000


def test_capsnet_forward_outputs() -> None:
    model = build_model("capsnet", image_size=32)
    out = model(torch.rand(3, 1, 32, 32))
    assert out["poses"].shape == (3, 3, 16) and out["lengths"].shape == (3, 3)
    assert out["reconstruction"].shape == (3, 1, 32, 32)
    assert "reconstruction" not in model.eval()(torch.rand(1, 1, 32, 32))  # training-time regulariser only
    assert "reconstruction" not in build_model("capsnet", image_size=32, decoder=False)(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="divisible by 32"):
        build_model("capsnet", image_size=40)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg")


def test_capsnet_overfits_a_tiny_batch() -> None:
    torch.manual_seed(0)
    model = build_model("capsnet", image_size=32)
    objective = build_objective("capsnet")
    images = torch.rand(8, 1, 32, 32)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = objective.loss(model(images), images, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        predictions = objective.scores(model(images)).argmax(1)
    assert losses[-1] < 0.5 * losses[0]
    assert torch.equal(predictions, targets)


def test_registry_holds_each_models_facts() -> None:
    capsnet = build_model("capsnet", image_size=64)
    counts = parameter_counts(capsnet, "capsnet", 64, 3)
    decoder = sum(p.numel() for p in capsnet.decoder.parameters())
    assert counts["model"] - counts["model_without_decoder"] == decoder > 0  # training-only parts left out
    assert counts[BASELINE_RATIO] == round(counts[BASELINE] / counts["model_without_decoder"], 2) > 9
    with torch.device("meta"):
        baseline = build_model(BASELINE, image_size=64)
    own = parameter_counts(baseline, BASELINE, 64, 3)
    assert own["model"] == own["model_without_decoder"] == own[BASELINE] and own[BASELINE_RATIO] == 1.0
    assert model_entry("resnet50").init_only_kwargs == ("weights",) and model_entry("capsnet").init_only_kwargs == ()
    assert isinstance(build_objective("resnet50", label_smoothing=0.1), CrossEntropyObjective)
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_objective("vgg")
