"""The three video ResNets: one-channel stem, three-class head, local Kinetics weights, cost profile."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import video

from spatiospatial import MODEL_NAMES, build_model, profile

TINY = (1, 8, 16, 16)  # (C, T, H, W)
KINETICS_PARAMETERS = {"r3d_18": 33_371_472, "mc3_18": 11_695_440, "r2plus1d_18": 31_505_325}
"""torchvision's documented sizes of the RGB, 400-class models."""
STEM = {"r3d_18": 64 * 3 * 7 * 7, "mc3_18": 64 * 3 * 7 * 7, "r2plus1d_18": 45 * 7 * 7}
"""Stem weights per input channel."""


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_and_one_training_step(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, in_channels=1)
    assert model.stem[0].in_channels == 1 and model.fc.out_features == 3
    assert _count(model) == KINETICS_PARAMETERS[name] - 2 * STEM[name] - (512 + 1) * (400 - 3)
    images, labels = torch.randn(2, *TINY), torch.tensor([0, 2])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.fc.weight.detach().clone()
    model.train()
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.fc.weight)
    model.eval()
    with torch.no_grad():
        assert model(images).shape == (2, 3)


def test_kinetics_weights_from_a_local_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    kinetics = video.r2plus1d_18(weights=None)
    path = tmp_path / "r2plus1d_18-kinetics.pth"
    torch.save(kinetics.state_dict(), path)
    model = build_model("r2plus1d_18", num_classes=3, in_channels=1, weights_path=path)
    torch.testing.assert_close(model.layer3[0].conv1[0][0].weight, kinetics.layer3[0].conv1[0][0].weight)
    torch.testing.assert_close(model.stem[0].weight, kinetics.stem[0].weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.stem[3].weight, kinetics.stem[3].weight)
    two = build_model("r2plus1d_18", num_classes=3, in_channels=2, weights_path=path)
    grey = torch.randn(1, 1, 4, 16, 16)
    with torch.no_grad():  # a grey clip: the adapted stems answer like the RGB stem
        rgb = kinetics.stem[0](grey.expand(-1, 3, -1, -1, -1))
        torch.testing.assert_close(model.stem[0](grey), rgb, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(two.stem[0](grey.expand(-1, 2, -1, -1, -1)), rgb, rtol=1e-4, atol=1e-5)


def test_bad_names_and_weight_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown 3D model 'resnet50'"):
        build_model("resnet50")
    with pytest.raises(RuntimeError, match="cannot read Kinetics weights"):
        build_model("r3d_18", weights_path=tmp_path / "missing.pth")
    path = tmp_path / "mc3.pth"
    torch.save(video.mc3_18(weights=None).state_dict(), path)
    with pytest.raises(RuntimeError, match=f"Kinetics weights {path} do not match VideoResNet"):
        build_model("r2plus1d_18", weights_path=path)


def test_profile_counts_parameters_and_flops() -> None:
    model = build_model("r3d_18")
    small, large = profile(model, (1, 8, 16, 16)), profile(model, (1, 16, 32, 32))
    assert small["parameters"] == large["parameters"] == _count(model)
    # convolutions dominate: 8x the voxels costs about 8x the FLOPs
    assert 7.0 < large["forward_flops"] / small["forward_flops"] < 8.5
    stem = model.stem[0]
    out_voxels = 8 * 8 * 8  # stride (1, 2, 2) on 8x16x16
    stem_flops = 2 * stem.out_channels * stem.in_channels * 3 * 7 * 7 * out_voxels
    assert small["forward_flops"] > stem_flops
