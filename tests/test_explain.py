"""Explanation maps: both models' maps have the input's shape, lie in [0, 1] and are deterministic; the map
follows a model's evidence (a bright blob), not the brightest pixels; the pointing game and mask mass on
hand-made maps; predict.py --explain writes one overlay per input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_models import SIZE, error_line, run_main, write_models

from capsule_classifier import build_model, build_objective
from capsule_classifier.deploy import ProbabilityModel
from capsule_classifier.explain import CAM_LAYERS, INPUT, explanation_maps, localisation, overlay
from capsule_classifier.predict import main
from datasets.slices import load_slices
from experiment.objectives import CrossEntropyObjective

BORDER = 4


@pytest.mark.parametrize("name", ["capsnet", "resnet50"])
def test_maps_have_the_input_shape_lie_in_unit_range_and_repeat(name: str, one_thread: None) -> None:
    torch.manual_seed(0)
    classifier = ProbabilityModel(build_model(name, image_size=SIZE), build_objective(name)).eval()
    images = load_slices(None, SIZE).images[::60]
    maps, predicted = explanation_maps(classifier, CAM_LAYERS[name], images)
    assert maps.shape == images.shape and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    peaks = maps.reshape(len(maps), -1).max(axis=1)
    assert np.all((peaks == 1.0) | (peaks == 0.0)) and (peaks == 1.0).any()  # each map is scaled to its peak
    with torch.no_grad():
        assert np.array_equal(predicted, classifier(torch.from_numpy(images[:, None] / 255.0).float()).argmax(1))
    again, _ = explanation_maps(classifier, CAM_LAYERS[name], images)
    assert np.array_equal(maps, again)


class BrightBlob(torch.nn.Module):
    """Class 0's logit counts bright pixels more than :data:`BORDER` px inside the image; the others are fixed."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        evidence = F.relu(images[:, 0, BORDER:-BORDER, BORDER:-BORDER] - 0.5).flatten(1).sum(1)
        return torch.stack([evidence, torch.ones_like(evidence), torch.zeros_like(evidence)], dim=1)


def test_the_input_map_points_at_the_models_evidence_not_at_the_brightest_pixels() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 80, size=(6, 32, 32)).astype(np.uint8)  # dark noise, never evidence
    images[:, :2], images[:, :, :2] = 255, 255  # a bright frame the model ignores
    blobs = np.zeros(images.shape, dtype=bool)
    for blob, (row, col) in zip(blobs, rng.integers(BORDER + 2, 32 - BORDER - 7, size=(6, 2)), strict=True):
        blob[row:row + 5, col:col + 5] = True
    images[blobs] = 230
    maps, predicted = explanation_maps(ProbabilityModel(BrightBlob(), CrossEntropyObjective()), INPUT, images)
    assert np.all(predicted == 0)
    found = localisation(maps, blobs)
    assert found["pointing_game"] == 1.0 and found["mass_in_dilated_mask"] > 0.9
    assert localisation(images.astype(np.float32), blobs)["pointing_game"] == 0.0  # brightness peaks on the frame


def test_pointing_game_and_mass_inside_the_dilated_mask() -> None:
    masks = np.zeros((2, 32, 32), dtype=bool)
    masks[:, 10:14, 10:14] = True
    maps = np.zeros((2, 32, 32), dtype=np.float32)
    maps[0, 11, 12] = 1.0  # peak inside, all mass inside
    maps[1, 30, 30], maps[1, 12, 12] = 1.0, 0.5  # peak outside, a third of the mass inside
    result = localisation(maps, masks)
    assert result["hits"] == [True, False] and result["pointing_game"] == 0.5
    assert result["mass_in_dilated_mask"] == pytest.approx((1.0 + 1 / 3) / 2)
    assert result["dilation_px"] == 1 and result["chance_pointing_game"] == pytest.approx(16 / 1024)
    assert result["chance_mass_in_dilated_mask"] == pytest.approx(32 / 1024)  # 4x4 grown by one: 6x6 minus corners
    assert localisation(np.zeros_like(maps), masks)["pointing_game"] == 0.0  # an empty map points nowhere


def test_overlay_is_an_enlarged_rgb_picture_with_the_mask_outlined() -> None:
    image = np.full((32, 32), 100, dtype=np.uint8)
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:16, 8:16] = True
    picture = overlay(image, np.zeros((32, 32), dtype=np.float32), mask)
    assert picture.shape == (256, 256, 3) and picture.dtype == np.uint8
    assert tuple(picture[8 * 8, 12 * 8]) == (0, 255, 0) and tuple(picture[0, 0]) == (100, 100, 100)


def test_predict_explain_writes_an_overlay_per_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = write_models(tmp_path / "models")
    inputs = tmp_path / "inputs"
    for index, image in enumerate(load_slices(None, 128).images[:3]):
        (inputs / f"p{index}").mkdir(parents=True)
        Image.fromarray(image).save(inputs / f"p{index}" / "scan.png")
    code, _, _ = run_main(main, [str(models["pt"]), str(inputs), "--explain", str(tmp_path / "maps"),
                                 "--out", str(tmp_path / "rows.csv")], capsys)
    assert code == 0
    written = sorted(p.relative_to(tmp_path / "maps").as_posix() for p in (tmp_path / "maps").rglob("*.png"))
    assert written == [f"p{i}/scan.png.png" for i in range(3)]
    with Image.open(tmp_path / "maps" / written[0]) as png:
        assert png.mode == "RGB" and png.size == (256, 256)
    assert "p0/scan.png.png" in (tmp_path / "rows.csv").read_text()
    code, _, err = run_main(main, [str(models["onnx"]), str(inputs), "--explain", str(tmp_path / "none")], capsys)
    assert code == 2 and "--explain needs the model.pt" in error_line(err) and not (tmp_path / "none").exists()
