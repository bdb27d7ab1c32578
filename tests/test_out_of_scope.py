"""Out-of-scope detection end to end: a capsnet trained briefly on the embedded sample, calibrated and given its
detector by the trust step, answers "out of scope" for photographs and not for figshare test slices, through
model.pt and its ONNX export alike; the detector and threshold rules; the out-of-scope set built from volumes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from niftis import write_nifti
from PIL import Image
from scipy.stats import beta
from skimage import data as pictures
from tiny_models import SIZE, error_line, run_main, small_out_of_scope_set, trained_fold

from capsule_classifier.export import SCORE_NAME, THRESHOLD_KEY, export, onnx_outputs
from capsule_classifier.out_of_scope import (
    OutOfScopeDetector,
    allowed_rejects,
    choose_threshold,
    fit_detector,
    scores,
)
from capsule_classifier.predict import OUT_OF_SCOPE, main
from capsule_classifier.trust import fit_trust
from datasets.core import EMBEDDED_SAMPLE
from datasets.out_of_scope_set import TUMOUR_MARGIN_MM, build, load_out_of_scope
from experiment.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def trusted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The trained fold after the trust step, with an out-of-scope set of pictures, blanks and noise only (on one
    thread: tiny models run faster so on a loaded CPU)."""
    folder, threads = tmp_path_factory.mktemp("trusted"), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, parts = trained_fold(folder)
        written = fit_trust(folder, parts, load_out_of_scope(small_out_of_scope_set(folder / "oos", PICTURES), SIZE))
        export(model, folder / "model.onnx")
    finally:
        torch.set_num_threads(threads)
    return {"folder": folder, "pt": model, "onnx": folder / "model.onnx", "parts": parts, "written": written}


@pytest.fixture(scope="module")
def inputs(trusted: dict[str, Any]) -> dict[str, Path]:
    """Two photographs the set never held, and five figshare slices of the fold's test patients as PNGs."""
    root = trusted["folder"] / "inputs"
    (root / "photos").mkdir(parents=True)
    (root / "slices").mkdir()
    Image.fromarray(pictures.stereo_motorcycle()[0]).save(root / "photos" / "motorcycle.png")
    Image.fromarray(pictures.lfw_subset()[0]).convert("L").resize((250, 250)).save(root / "photos" / "face.png")
    with np.load(EMBEDDED_SAMPLE) as sample:
        position = {int(i): k for k, i in enumerate(sample["index"])}
        test_ids = trusted["parts"]["test"].file_ids
        for file_id in test_ids[np.linspace(0, len(test_ids) - 1, 5).round().astype(int)]:
            Image.fromarray(sample["image"][position[int(file_id)]]).save(root / "slices" / f"{file_id}.png")
    return {"photos": root / "photos", "slices": root / "slices"}


PICTURES = ("astronaut", "camera", "coffee", "coins", "moon", "page")
"""The pictures of the tests' out-of-scope sets (fewer than the real set, for speed)."""


def predictions(model: Path, folder: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    code, out, err = run_main(main, [str(model), str(folder), "--json"], capsys)
    assert code == 0, err
    return json.loads(out)["predictions"]


def test_photographs_are_out_of_scope_and_figshare_slices_are_not(trusted: dict[str, Any], inputs: dict[str, Path],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    detection = trusted["written"]["out_of_scope"]
    assert detection["val_false_reject"] <= 0.05
    assert detection["sources"]["photographs"]["auroc"] > 0.95
    for model in (trusted["pt"], trusted["onnx"]):
        photos = predictions(model, inputs["photos"], capsys)
        assert [p["prediction"] for p in photos] == [OUT_OF_SCOPE] * 2
        slices = predictions(model, inputs["slices"], capsys)
        assert sum(p["prediction"] == OUT_OF_SCOPE for p in slices) <= 1
        threshold = detection["threshold"]
        assert all(p["out_of_scope_score"] > threshold for p in photos)
        assert min(p["out_of_scope_score"] for p in photos) > max(p["out_of_scope_score"] for p in slices)


def test_model_pt_and_onnx_carry_calibration_and_the_detector(trusted: dict[str, Any], inputs: dict[str, Path],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    state = load_checkpoint(trusted["pt"])
    calibration = trusted["written"]["calibration"]
    assert state["calibration"]["temperature"] == calibration["temperature"] != 1.0
    assert state["out_of_scope"]["threshold"] == trusted["written"]["out_of_scope"]["threshold"]
    assert (trusted["folder"] / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert calibration["val"]["after"]["ece"] <= calibration["val"]["before"]["ece"]
    model = onnx.load(trusted["onnx"])
    metadata = {p.key: p.value for p in model.metadata_props}
    assert float(metadata["temperature"]) == pytest.approx(calibration["temperature"])
    assert float(metadata[THRESHOLD_KEY]) == trusted["written"]["out_of_scope"]["threshold"]
    assert [o.name for o in model.graph.output] == ["probabilities", SCORE_NAME]
    test = trusted["parts"]["test"].images[:8]
    probabilities, score = onnx_outputs(trusted["onnx"], test)
    assert score.shape == (8,) and np.allclose(probabilities.sum(1), 1.0, atol=1e-5)
    by_pt = predictions(trusted["pt"], inputs["slices"], capsys)
    by_onnx = predictions(trusted["onnx"], inputs["slices"], capsys)
    for a, b in zip(by_pt, by_onnx, strict=True):
        assert a["prediction"] == b["prediction"]
        assert a["out_of_scope_score"] == pytest.approx(b["out_of_scope_score"], rel=1e-3)


@pytest.mark.parametrize("change, message", [
    (lambda s: s["calibration"].update(temperature=-1.0), "calibration.temperature must be a positive number"),
    (lambda s: s["out_of_scope"].update(means=torch.zeros(3, 5)), "inconsistent shapes"),
    (lambda s: s["out_of_scope"].update(layers=["nowhere"]), "are not modules of the model"),
    (lambda s: s["out_of_scope"].update(threshold=float("nan")), "threshold must be a finite number"),
])
def test_tampered_trust_metadata_is_one_line(trusted: dict[str, Any], tmp_path: Path, change: Any, message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    state = load_checkpoint(trusted["pt"])
    change(state)
    save_checkpoint(tmp_path / "model.pt", state)
    code, _, err = run_main(main, [str(tmp_path / "model.pt"), str(trusted["folder"] / "inputs" / "slices")], capsys)
    assert code == 2 and message in error_line(err)


def test_allowed_rejects_bound_the_false_reject_rate() -> None:
    assert [allowed_rejects(n, 0.05) for n in (10, 59, 100, 300, 1000)] == [0, 0, 1, 8, 38]
    for n in (100, 300, 1000):  # the bound holds at the count allowed and fails one above it
        k = allowed_rejects(n, 0.05)
        assert beta.ppf(0.95, k + 1, n - k) <= 0.05 < beta.ppf(0.95, k + 2, n - k - 1)


def test_detector_scores_and_threshold_rule() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 200)
    features = rng.normal(0, 1, (600, 6)) + 4.0 * np.eye(3, 6)[labels]
    detector = fit_detector(features, labels, ["layer"])
    inside = scores(detector, rng.normal(0, 1, (300, 6)) + 4.0 * np.eye(3, 6)[np.repeat(np.arange(3), 100)])
    outside = scores(detector, rng.normal(0, 1, (50, 6)) + 12.0)
    assert 0.5 < np.median(inside) < 2.0 and outside.min() > inside.max()
    threshold = choose_threshold(inside, outside)
    lowest = np.sort(inside)[::-1][allowed_rejects(300, 0.05)]
    assert (inside > lowest).sum() == allowed_rejects(300, 0.05) and (outside > threshold).all()
    assert threshold == pytest.approx((lowest + inside.max()) / 2)
    near = np.array([np.quantile(inside, 0.99)])  # an out-of-scope score among the highest in-scope ones
    assert choose_threshold(inside, near) == pytest.approx((lowest + near[0]) / 2)
    rebuilt = OutOfScopeDetector.from_metadata({**detector.metadata(), "threshold": threshold}, 3)
    assert rebuilt.threshold == threshold and np.allclose(scores(rebuilt, features[:5]), scores(detector, features[:5]))
    with pytest.raises(ValueError, match="no training slices of class"):
        fit_detector(features[:400], np.r_[labels[:200], labels[400:600]], ["layer"])


def fake_shared(root: Path) -> Path:
    """An IXI volume and a segmented glioma volume (tumour at axial indices 12-14 of 30, 3.5 mm apart)."""
    x, y = np.meshgrid(np.arange(40), np.arange(48), indexing="ij")
    head = (((x - 20) / 17) ** 2 + ((y - 24) / 21) ** 2 < 1)[..., None] * np.ones(30)
    affine = np.diag([5.0, 5.0, 3.5, 1.0])
    write_nifti(root / "volumes" / "IXI001-HH-1_T1.nii.gz", (100 * head).astype(np.float32), affine)
    tumour = np.zeros(head.shape, dtype=np.uint8)
    tumour[15:20, 15:20, 12:15] = 1
    write_nifti(root / "volumes_extra" / "HGG" / "caseA_t1ce.nii.gz", (100 * head + 200 * tumour).astype(np.float32),
                affine)
    write_nifti(root / "volumes_extra" / "HGG" / "caseA_seg.nii.gz", tumour, affine)
    (root / "volumes_extra" / "labels.csv").write_text("path,label,subject\nHGG/caseA_t1ce.nii.gz,HGG,A\n")
    return root


def test_out_of_scope_set_sources_parts_and_determinism(tmp_path: Path) -> None:
    source = fake_shared(tmp_path / "shared")
    readme = build(source, tmp_path / "set", PICTURES)
    counts = readme["counts"]
    assert counts["healthy_brain"] == 15 and counts["photographs"] == 3 * len(PICTURES) and counts["blank"] == 3
    assert counts["noise"] == 8 and readme["skipped"] == []
    margin = round(TUMOUR_MARGIN_MM / 3.5)
    tumour_free = [int(e["file"].split("_z")[1][:-4]) for e in readme["files"] if e["source"] == "tumour_free_brain"]
    assert tumour_free and all(z < 12 - margin or z > 14 + margin for z in tumour_free)
    for source_name in ("photographs", "noise"):
        parts = {}
        for entry in (e for e in readme["files"] if e["source"] == source_name):
            parts.setdefault(entry["group"], set()).add(entry["part"])
        assert all(len(p) == 1 for p in parts.values())  # a group never straddles the parts
        assert {p.pop() for p in parts.values()} == {"fit", "report"}
    loaded = load_out_of_scope(tmp_path / "set", SIZE)
    assert loaded.images.shape == (len(readme["files"]), SIZE, SIZE) and loaded.select("report", "blank").sum() == 1
    (tmp_path / "set" / "noise" / "stale.png").write_bytes(b"old")
    again = build(source, tmp_path / "set", PICTURES)
    assert again == readme and not (tmp_path / "set" / "noise" / "stale.png").exists()
    empty = build(tmp_path / "nothing", tmp_path / "bare", PICTURES[:1])
    assert {s["source"] for s in empty["skipped"]} == {"healthy_brain", "tumour_free_brain"}
    assert empty["counts"]["healthy_brain"] == 0 and empty["counts"]["photographs"] == 3
