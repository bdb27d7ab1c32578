"""ONNX export parity on real sample slices, and predict.py on real and synthetic inputs and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import SHARED_DATA
from PIL import Image

from capsule_classifier import build_model
from capsule_classifier.data import to_input
from capsule_classifier.deploy import load_classifier, save_classifier
from capsule_classifier.export import ExportError, export, onnx_probabilities, sample_slices
from capsule_classifier.predict import ModelInputError, Predictor, main, read_slice
from datasets.core import CLASS_NAMES, DataError, SliceRecord
from datasets.fixtures import synthetic_slice, write_slice
from datasets.slices import load_slices
from datasets.transforms import preprocess_slice
from experiment.checkpoint import CheckpointError

SIZE = 32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model("capsnet", image_size=SIZE).eval()
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_classifier(path, model, "capsnet", {}, SIZE, CLASS_NAMES, fold=0, epoch=1)
    return path


@pytest.fixture(scope="module")
def onnx_path(checkpoint: Path) -> Path:
    out = checkpoint.with_suffix(".onnx")
    report = export(checkpoint, out)
    assert report["max_abs_probability_difference"] < 1e-4 and report["opset"] == 17
    return out


@pytest.fixture
def real_slice(tmp_path: Path) -> Path:
    """A real figshare JPEG from ../shared/data, else an embedded sample slice saved as PNG."""
    jpgs = sorted((SHARED_DATA / "samples_jpg").glob("*.jpg"))
    if jpgs:
        return jpgs[0]
    path = tmp_path / "embedded.png"
    Image.fromarray(load_slices(None, 128).images[0]).save(path)
    return path


def test_onnx_matches_pytorch_on_real_slices_with_dynamic_batch(checkpoint: Path, onnx_path: Path) -> None:
    classifier, meta = load_classifier(checkpoint)
    images = sample_slices(SIZE, count=5)
    with torch.no_grad():
        expected = classifier(to_input(images)).numpy()
    got = onnx_probabilities(onnx_path, images)
    assert got.shape == (5, 3) and np.abs(got - expected).max() < 1e-4
    assert np.allclose(got.sum(1), 1.0, atol=1e-5)
    assert onnx_probabilities(onnx_path, images[:1]).shape == (1, 3)
    metadata = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}
    assert json.loads(metadata["class_names"]) == list(CLASS_NAMES) and metadata["image_size"] == str(SIZE)


def test_export_refuses_a_model_outside_tolerance(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export(checkpoint, tmp_path / "bad.onnx", tolerance=-1.0)
    assert not (tmp_path / "bad.onnx").exists()


def test_predict_real_slice_with_checkpoint_and_onnx(checkpoint: Path, onnx_path: Path, real_slice: Path) -> None:
    expected_input = preprocess_slice(read_slice(real_slice), SIZE)
    classifier, _ = load_classifier(checkpoint)
    with torch.no_grad():
        expected = classifier(to_input(expected_input[None])).numpy()[0]
    for model in (checkpoint, onnx_path):
        record = Predictor(model).predict_files([real_slice])[0]
        probabilities = np.array([record["probabilities"][name] for name in CLASS_NAMES])
        assert np.abs(probabilities - expected).max() < 1e-4
        assert record["prediction"] == CLASS_NAMES[int(expected.argmax())]


def test_predict_cli_reads_mat_npy_and_folders(checkpoint: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    image, mask, border = synthetic_slice(np.random.default_rng(1), 64, 2)
    folder = tmp_path / "inputs"
    folder.mkdir()
    write_slice(folder / "7.mat", SliceRecord(7, image, 2, "P1", mask, border))
    np.save(folder / "slice.npy", image.astype(np.float32))
    (folder / "notes.txt").write_text("ignored")
    main([str(checkpoint), str(folder), "--json"])
    output = json.loads(capsys.readouterr().out)
    assert [Path(p["path"]).name for p in output["predictions"]] == ["7.mat", "slice.npy"]
    first, second = (p["probabilities"] for p in output["predictions"])
    assert first == pytest.approx(second, abs=1e-4)  # the same pixels through .mat and .npy
    main([str(checkpoint), str(folder / "slice.npy")])
    table = capsys.readouterr().out
    assert "slice.npy" in table and "meningioma" in table.splitlines()[0]


def test_predict_rejects_bad_inputs(checkpoint: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "volume.npy", np.zeros((4, 8, 8), dtype=np.float32))
    with pytest.raises(DataError, match="expected a 2-D image"):
        Predictor(checkpoint).predict_files([tmp_path / "volume.npy"])
    (tmp_path / "slice.tif").write_bytes(b"x")
    with pytest.raises(DataError, match="unsupported input type"):
        read_slice(tmp_path / "slice.tif")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read it as .png"):
        read_slice(tmp_path / "broken.png")


def test_bad_checkpoints_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        Predictor(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        Predictor(tmp_path / "corrupt.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a classifier checkpoint"):
        Predictor(tmp_path / "other.pt")


def test_onnx_input_mismatch_is_refused(onnx_path: Path, tmp_path: Path) -> None:
    model = onnx.load(onnx_path)
    for prop in model.metadata_props:
        if prop.key == "image_size":
            prop.value = "64"
    onnx.save(model, tmp_path / "wrong-size.onnx")
    with pytest.raises(ModelInputError, match="does not match the classifier input"):
        Predictor(tmp_path / "wrong-size.onnx")
    del model.metadata_props[:]
    onnx.save(model, tmp_path / "no-metadata.onnx")
    with pytest.raises(ModelInputError, match="lacks image_size/class_names"):
        Predictor(tmp_path / "no-metadata.onnx")
