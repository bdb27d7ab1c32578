"""ONNX export parity on real sample slices, and predict.py on real and synthetic inputs: folders searched
recursively, paths relative to the folder, rows written as CSV or JSON."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import SHARED_DATA
from PIL import Image
from tiny_models import error_line, run_main, write_model_pt

from capsule_classifier import build_model
from capsule_classifier import export as export_cli
from capsule_classifier.data import to_input
from capsule_classifier.deploy import ModelInputError, load_classifier, save_classifier
from capsule_classifier.export import ExportError, export, onnx_probabilities, sample_slices
from capsule_classifier.predict import Predictor, main
from datasets.core import CLASS_NAMES, DataError, SliceRecord
from datasets.fixtures import synthetic_slice, write_slice
from datasets.slices import load_slices
from datasets.transforms import preprocess_slice
from datasets.user_slices import InputFile, read_slice
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
        record = Predictor(model).predict_files([InputFile(real_slice, real_slice.name)])[0]
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
    (folder / "notes.txt").write_text("skipped")
    main([str(checkpoint), str(folder), "--json"])
    output = json.loads(capsys.readouterr().out)
    assert [p["path"] for p in output["predictions"]] == ["7.mat", "slice.npy"]
    assert output["skipped"] == [{"path": "notes.txt", "reason": "not a slice file (expected .mat, .npy, .png, "
                                                                  ".jpg, .jpeg)"}]
    first, second = (p["probabilities"] for p in output["predictions"])
    assert first == pytest.approx(second, abs=1e-4)  # the same pixels through .mat and .npy
    main([str(checkpoint), str(folder / "slice.npy")])
    table = capsys.readouterr().out
    assert "slice.npy" in table and "meningioma" in table.splitlines()[0]


def test_predict_recurses_names_files_relative_to_the_folder_and_writes_csv_and_json(
        checkpoint: Path, onnx_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "hospital"
    for index, folder in enumerate(["patient1", "patient2/series3", "patient2"]):
        (root / folder).mkdir(parents=True, exist_ok=True)
        image = synthetic_slice(np.random.default_rng(index), 64, index % 3 + 1)[0]
        Image.fromarray(np.clip(image / image.max() * 255, 0, 255).astype(np.uint8)).save(root / folder / "scan.png")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "scan.png").write_bytes(b"never read")
    code, out, _ = run_main(main, [str(onnx_path), str(root), "--out", str(tmp_path / "rows.json"), "--json"], capsys)
    assert code == 0
    names = ["patient1/scan.png", "patient2/scan.png", "patient2/series3/scan.png"]
    report = json.loads(out)
    assert [r["path"] for r in report["predictions"]] == names
    assert json.loads((tmp_path / "rows.json").read_text()) == report
    code, table, _ = run_main(main, [str(checkpoint), str(root), "--out", str(tmp_path / "rows.csv")], capsys)
    assert code == 0 and all(name in table for name in names)
    with open(tmp_path / "rows.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["path"] for r in rows] == names and {r["status"] for r in rows} == {"ok"}
    for row, record in zip(rows, report["predictions"], strict=True):  # model.pt and its ONNX export agree
        assert row["prediction"] == record["prediction"]
        assert [float(row[n]) for n in CLASS_NAMES] == pytest.approx(list(record["probabilities"].values()), abs=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hospital", "rows.csv", "rows.json"]  # no temporaries
    code, _, err = run_main(main, [str(checkpoint), str(root), "--out", str(tmp_path / "rows.txt")], capsys)
    assert code == 2 and "--out must end in .csv or .json" in err


def test_predict_reports_unreadable_files_without_stopping(checkpoint: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "volume.npy", np.zeros((4, 8, 8), dtype=np.float32))
    np.save(tmp_path / "slice.npy", np.arange(64.0).reshape(8, 8))
    files = [InputFile(tmp_path / name, name) for name in ("volume.npy", "slice.npy")]
    failed, predicted = Predictor(checkpoint).predict_files(files)
    assert "expected a 2-D image" in failed["error"] and "prediction" not in failed
    assert predicted["prediction"] in CLASS_NAMES and predicted["warnings"] == [
        "tiny image (8x8 px, under the model's 32 px)"]
    (tmp_path / "slice.tif").write_bytes(b"x")
    with pytest.raises(DataError, match="unsupported input type"):
        read_slice(tmp_path / "slice.tif")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read it as .png"):
        read_slice(tmp_path / "broken.png")


def test_export_cli_reports_bad_checkpoints_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write_model_pt(tmp_path / "model.pt", image_size=100000)
    code, out, err = run_main(export_cli.main, [str(model)], capsys)
    assert code == 2 and out == "" and "model.pt: image_size 100000" in error_line(err)
    assert not (tmp_path / "model.onnx").exists()
    code, _, err = run_main(export_cli.main, [str(tmp_path / "missing.pt")], capsys)
    assert code == 2 and "missing.pt" in error_line(err)


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


def test_the_model_geometry_travels_to_prediction(tmp_path: Path, real_slice: Path) -> None:
    model = write_model_pt(tmp_path / "model.pt", geometry="resize")
    export(model, tmp_path / "model.onnx")
    assert {p.key: p.value for p in onnx.load(tmp_path / "model.onnx").metadata_props}["geometry"] == "resize"
    raw = read_slice(real_slice)
    stretched = preprocess_slice(raw, SIZE, geometry="resize")
    assert not np.array_equal(stretched, preprocess_slice(raw, SIZE))  # the two geometries differ on this slice
    for path in (model, tmp_path / "model.onnx"):
        assert np.array_equal(Predictor(path).preprocess(raw), stretched)
    assert np.array_equal(Predictor(write_model_pt(tmp_path / "plain.pt")).preprocess(raw), preprocess_slice(raw, SIZE))
    with pytest.raises(ModelInputError, match="geometry 'fisheye' is not one of"):
        Predictor(write_model_pt(tmp_path / "odd.pt", geometry="fisheye"))
