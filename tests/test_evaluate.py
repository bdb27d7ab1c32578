"""evaluate.py on a folder tree and on a CSV, honest about absent classes; the glioma-only external check built
from NIfTI volumes with segmentations (synthetic, and the real ../shared volumes when present)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, require_shared
from niftis import write_nifti
from PIL import Image
from sklearn.metrics import f1_score
from tiny_models import error_line, record_opens, run_main, write_models

from capsule_classifier.evaluate import main
from capsule_classifier.predict import Predictor
from datasets.core import CLASS_NAMES
from datasets.external_glioma import CLASS_FOLDER, MIN_TUMOUR_MM2, PIXEL_MM, build
from datasets.fixtures import synthetic_slice
from datasets.user_slices import InputFile


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_models(tmp_path_factory.mktemp("models"))


def slice_png(path: Path, seed: int, label: int = 2) -> Path:
    image = synthetic_slice(np.random.default_rng(seed), 64, label)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(image / image.max() * 255, 0, 255).astype(np.uint8)).save(path)
    return path


def evaluate_cli(model: Path, data: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    code, stdout, _ = run_main(main, [str(model), str(data), "--out", str(out)], capsys)
    assert code == 0 and "accuracy" in stdout
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads((out / "report.json").read_text())


def test_folder_tree_scores_class_folders_and_reports_the_rest(models: dict[str, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    labelled = {"Glioma/a.png": 2, "Glioma/deep/b.png": 2, "MENINGIOMA/c.png": 1, "pituitary/d.png": 3}
    for seed, (name, label) in enumerate(labelled.items()):
        slice_png(data / name, seed, label)
    slice_png(data / "healthy" / "e.png", 7)
    slice_png(data / "healthy" / "f.png", 8)
    slice_png(data / "stray.png", 9)
    (data / "notes.md").write_text("not data")
    (data / "Glioma" / "cut.png").write_bytes(slice_png(tmp_path / "whole.png", 10).read_bytes()[:200])
    report = evaluate_cli(models["pt"], data, tmp_path / "out", capsys)
    assert report["out_of_set"] == {"healthy": 2}
    assert {item["path"] for item in report["unscored"]} == {"stray.png", "Glioma/cut.png"}
    assert {p["path"]: p["label"] for p in report["predictions"]} == {
        name: CLASS_NAMES[label - 1] for name, label in labelled.items()}
    truth = [CLASS_NAMES.index(p["label"]) for p in report["predictions"]]
    predicted = [CLASS_NAMES.index(p["prediction"]) for p in report["predictions"]]
    assert report["n_scored"] == 4 and report["classes_absent"] == []
    assert report["accuracy"] == pytest.approx(np.mean(np.equal(truth, predicted)))
    assert report["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro", labels=[0, 1, 2]))
    assert [sum(row) for row in report["confusion_matrix"]] == [1, 2, 1]
    direct = Predictor(models["pt"]).predict_files([InputFile(data / "Glioma/a.png", "a")])[0]
    assert next(p for p in report["predictions"] if p["path"] == "Glioma/a.png")["probabilities"] == \
        direct["probabilities"]
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert f"| accuracy | {report['accuracy']:.4f} |" in markdown and "`healthy` (2 files)" in markdown


def test_a_class_absent_from_the_data_gets_no_recall(models: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    for seed in range(3):
        slice_png(tmp_path / "data" / "glioma" / f"{seed}.png", seed)
    report = evaluate_cli(models["onnx"], tmp_path / "data", tmp_path / "out", capsys)
    assert report["classes_present"] == ["glioma"] and report["classes_absent"] == ["meningioma", "pituitary"]
    assert list(report["recall"]) == ["glioma"] and report["accuracy"] == report["recall"]["glioma"]
    assert report["macro_f1"] == report["per_class"]["glioma"]["f1"]
    assert len(report["confusion_matrix"]) == 1 and sum(report["confusion_matrix"][0]) == 3
    assert "Absent from the data: meningioma, pituitary" in (tmp_path / "out" / "report.md").read_text()


def test_csv_paths_stay_inside_its_folder(models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    slice_png(data / "imgs" / "a.png", 1)
    slice_png(data / "imgs" / "b.png", 2, 1)
    slice_png(data / "imgs" / "c.png", 3)
    outside = slice_png(tmp_path / "outside.png", 4)
    rows = [("imgs/a.png", "glioma"), ("imgs/b.png", "Meningioma"), ("imgs/c.png", "healthy"),
            ("../outside.png", "glioma"), (str(outside), "glioma"), ("imgs/missing.png", "pituitary")]
    with open(data / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    opened = record_opens(monkeypatch)
    report = evaluate_cli(models["onnx"], data / "labels.csv", tmp_path / "out", capsys)
    assert outside.resolve() not in opened
    assert [p["path"] for p in report["predictions"]] == ["imgs/a.png", "imgs/b.png"]
    assert report["out_of_set"] == {"healthy": 1} and report["classes_absent"] == ["pituitary"]
    reasons = {item["path"]: item["reason"] for item in report["unscored"]}
    assert "outside the CSV's folder" in reasons["../outside.png"] and "outside" in reasons[str(outside)]
    assert "file not found" in reasons["imgs/missing.png"]


def test_nothing_to_score_is_one_line(models: dict[str, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    slice_png(tmp_path / "data" / "healthy" / "a.png", 1)
    code, _, err = run_main(main, [str(models["pt"]), str(tmp_path / "data"), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "nothing to score" in error_line(err) and "data" in error_line(err)
    code, _, err = run_main(main, [str(models["pt"]), str(tmp_path / "nope")], capsys)
    assert code == 2 and "nope" in error_line(err)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ the external glioma check

SHAPE, VOXEL_MM = (40, 48, 12), (5.0, 5.0, 3.5)
RADII = {3: 3, 4: 4, 5: 5, 6: 6, 7: 5, 8: 4}
"""Tumour disc radius (voxels) per axial index: 28 voxels (700 mm2) at z=3 stays under the threshold."""


def glioma_volume(folder: Path, case: str, contrast: str, seg_suffix: str | None) -> Path:
    """A RAS volume (5 x 5 x 3.5 mm): head 100, a tumour disc 300 and a bright block at the front right, plus
    its segmentation ``<case><seg_suffix>`` when given."""
    x, y = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    data = np.zeros(SHAPE, dtype=np.float32)
    tumour = np.zeros(SHAPE, dtype=np.uint8)
    data[((x - 20) / 17) ** 2 + ((y - 24) / 21) ** 2 < 1] = 100
    for z, radius in RADII.items():
        disc = (x - 18) ** 2 + (y - 22) ** 2 <= radius ** 2
        data[disc, z], tumour[disc, z] = 300, 2
    data[30:35, 36:41] = 1000  # the patient's right (high x), anterior (high y)
    affine = np.diag([*VOXEL_MM, 1.0])
    write_nifti(folder / f"{case}_{contrast}.nii.gz", data, affine)
    if seg_suffix:
        write_nifti(folder / f"{case}{seg_suffix}.nii.gz", tumour, affine)
    return folder / f"{case}_{contrast}.nii.gz"


def glioma_source(root: Path) -> Path:
    """A ``volumes_extra``-like folder: labels.csv, HGG/LGG volumes with segmentations beside them, and others."""
    glioma_volume(root / "HGG", "caseA", "t1ce", "_seg")
    glioma_volume(root / "HGG", "caseD", "t1ce", "_seg")  # same patient
    glioma_volume(root / "HGG", "caseB", "t1ce", None)  # no segmentation
    glioma_volume(root / "LGG", "caseC", "t1c", "_seg_auto")
    glioma_volume(root / "healthy", "IXI001", "T1", None)
    (root / "labels.csv").write_text("path,label,subject\nHGG/caseA_t1ce.nii.gz,HGG,A\n"
                                     "HGG/caseD_t1ce.nii.gz,HGG,A\nHGG/caseB_t1ce.nii.gz,HGG,B\n"
                                     "LGG/caseC_t1c.nii.gz,LGG,C\nhealthy/IXI001_T1.nii.gz,healthy,IXI001\n")
    return root


def test_external_glioma_slices_in_the_figshare_format(tmp_path: Path) -> None:
    source = glioma_source(tmp_path / "volumes_extra")
    readme = build(source, tmp_path / "check")
    assert [v["volume"] for v in readme["volumes"]] == ["HGG/caseA_t1ce.nii.gz", "LGG/caseC_t1c.nii.gz"]
    assert {s["path"]: s["reason"] for s in readme["skipped"]} == {
        "HGG/caseD_t1ce.nii.gz": "same patient (A) as HGG/caseA_t1ce.nii.gz",
        "HGG/caseB_t1ce.nii.gz": "no tumour segmentation beside it"}
    first, second = readme["volumes"]
    assert [s["z"] for s in first["slices"]] == [4, 6, 8]  # >= 826 mm2 from z=4 to 8, 7 mm apart from the largest
    assert all(s["tumour_mm2"] >= MIN_TUMOUR_MM2 for s in first["slices"])
    assert (first["segmentation_kind"], second["segmentation_kind"]) == ("reference", "automatic")
    assert {v["contrast"] for v in readme["volumes"]} == {"T1-CE"}
    files = sorted((tmp_path / "check" / CLASS_FOLDER).iterdir())
    assert [f"{CLASS_FOLDER}/{f.name}" for f in files] == sorted(s["file"] for v in readme["volumes"]
                                                                 for s in v["slices"])
    with Image.open(files[0]) as png:
        assert png.mode == "L" and png.size == (512, 512)
        picture = np.asarray(png)
    rows, cols = np.nonzero(picture > 140)  # the front-right block (at half its height): top of the picture, left
    assert rows.mean() < 256 and cols.mean() < 256
    assert np.ptp(cols) + 1 == pytest.approx(5 * VOXEL_MM[0] / PIXEL_MM, abs=3)  # 25 mm at 0.49 mm a pixel


def test_external_glioma_build_is_deterministic_and_clears_stale_slices(tmp_path: Path) -> None:
    source = glioma_source(tmp_path / "volumes_extra")
    first, second = tmp_path / "one", tmp_path / "two"
    build(source, first)
    (first / CLASS_FOLDER / "gone_z1.png").write_bytes(b"stale")
    build(source, first)
    build(source, second)
    assert sorted(p.name for p in (first / CLASS_FOLDER).iterdir()) == sorted(
        p.name for p in (second / CLASS_FOLDER).iterdir())
    for path in [first / "README.json", *(first / CLASS_FOLDER).iterdir()]:
        assert path.read_bytes() == (second / path.relative_to(first)).read_bytes()


def test_evaluate_on_the_external_check(models: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    readme = build(glioma_source(tmp_path / "volumes_extra"), tmp_path / "check")
    report = evaluate_cli(models["pt"], tmp_path / "check", tmp_path / "out", capsys)
    assert report["n_scored"] == readme["slices"] and report["unscored"] == []
    assert report["classes_present"] == ["glioma"] and report["classes_absent"] == ["meningioma", "pituitary"]


def test_external_glioma_check_from_the_shared_volumes(tmp_path: Path) -> None:
    source = require_shared(SHARED_DATA / "volumes_extra")
    readme = build(source, tmp_path / "check")
    assert len(readme["volumes"]) == 7 and readme["slices"] >= 40
    assert {v["contrast"] for v in readme["volumes"]} == {"T1-CE"}
    assert {v["grade"] for v in readme["volumes"]} == {"HGG", "LGG"}
    assert len({v["subject"] for v in readme["volumes"]}) == 7
    assert {s["path"] for s in readme["skipped"]} == {"HGG/BraTS2015_brats_2013_pat0001_1_t1c_zscore.nii.gz",
                                                      "HGG/BraTS20_Training_001_t1ce.nii.gz"}
    for entry in readme["volumes"]:
        with Image.open(tmp_path / "check" / entry["slices"][0]["file"]) as png:
            assert png.mode == "L" and min(png.size) >= 512
