"""Class consistency of synthetic shards under an exported real-data classifier (ONNX on disk)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from capsule_classifier import build_model
from capsule_classifier.data import to_input
from capsule_classifier.deploy import load_classifier, save_classifier
from capsule_classifier.export import export
from datasets.core import CLASS_NAMES
from datasets.shards import write_shards
from generative_model.consistency import RESULT_FILE, shard_consistency

SIZE = 32


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.manual_seed(1)
    model = build_model("capsnet", image_size=SIZE).eval()
    checkpoint = tmp_path_factory.mktemp("clf") / "model.pt"
    save_classifier(checkpoint, model, "capsnet", {}, SIZE, CLASS_NAMES, fold=0, epoch=1)
    return checkpoint, Path(export(checkpoint, checkpoint.with_suffix(".onnx"))["onnx"])


def test_consistency_matches_pytorch_predictions(classifier, tmp_path: Path) -> None:
    checkpoint, onnx_file = classifier
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, SIZE, SIZE), dtype=np.uint8)
    labels = np.arange(40) % 3
    write_shards(tmp_path, images, labels, shard_size=16, provenance={"generator": "test"})
    result = shard_consistency(tmp_path, onnx_file)
    model, _ = load_classifier(checkpoint)
    with torch.no_grad():
        expected = float((model(to_input(images)).argmax(1).numpy() == labels).mean())
    assert result["consistency"] == pytest.approx(expected)
    assert result["n"] == 40 and set(result["per_class"]) == set(CLASS_NAMES)
    assert json.loads((tmp_path / RESULT_FILE).read_text())["consistency"] == result["consistency"]


def test_image_size_mismatch_is_refused(classifier, tmp_path: Path) -> None:
    _, onnx_file = classifier
    write_shards(tmp_path, np.zeros((3, 64, 64), np.uint8), np.arange(3))
    with pytest.raises(ValueError, match="64x64"):
        shard_consistency(tmp_path, onnx_file)
