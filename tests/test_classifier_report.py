"""capsule_classifier/report.py over fabricated fold summaries of two settings (and trust-step files)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from capsule_classifier.calibration import calibrate, calibration_metrics
from capsule_classifier.report import ReportError, build_report, find_summaries, main, markdown
from capsule_classifier.trust import FILES
from datasets.core import CLASS_NAMES
from experiment.atomic import atomic_write_json
from experiment.metrics import classification_metrics


def _fold(root: Path, model: str, tag: str, fold: int, errors: int) -> dict:
    y_true = np.arange(30) % 3
    y_pred = y_true.copy()
    y_pred[:errors] = (y_pred[:errors] + 1) % 3
    summary = {"model": model, "tag": tag, "split": "grouped", "k": 7, "image_size": 128, "fold": fold,
               "class_names": list(CLASS_NAMES), "test": classification_metrics(y_true, y_pred, CLASS_NAMES),
               "parameters": {"model": 1000, "resnet50": 23_507_907, "resnet50_over_model_without_decoder": 23507.9}}
    atomic_write_json(root / model / "grouped-k7" / tag / f"fold{fold}" / "summary.json", summary)
    return summary


def test_report_aggregates_and_compares(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    caps = [_fold(runs, "capsnet", "scratch", fold, errors) for fold, errors in enumerate((0, 3, 6))]
    _fold(runs, "resnet50", "synthetic", 0, 9)
    out = tmp_path / "report"
    main([str(runs / "capsnet"), str(runs / "resnet50" / "grouped-k7" / "synthetic" / "fold0"), "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    group = report["groups"]["capsnet/scratch/grouped-k7/128px"]
    accuracies = [s["test"]["accuracy"] for s in caps]
    assert group["aggregate"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert group["aggregate"]["accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert group["aggregate"]["confusion_matrix"] == np.sum([s["test"]["confusion_matrix"] for s in caps], 0).tolist()
    assert group["folds"] == [0, 1, 2] and "resnet50/synthetic/grouped-k7/128px" in report["groups"]
    markdown = (out / "report.md").read_text()
    assert "| capsnet/scratch/grouped-k7/128px | 3 | 0.9000 ± 0.1000 |" in markdown
    assert "| true \\ predicted | meningioma | glioma | pituitary |" in markdown
    for name in ("confusion", "folds"):
        assert (out / f"{name}-capsnet_scratch_grouped-k7_128px.png").read_bytes()[:4] == b"\x89PNG"
    assert "resnet50/synthetic" in capsys.readouterr().out


def test_report_rejects_duplicates_and_empty(tmp_path: Path) -> None:
    _fold(tmp_path / "a", "capsnet", "scratch", 0, 1)
    _fold(tmp_path / "b", "capsnet", "scratch", 0, 2)
    with pytest.raises(ReportError, match=r"fold\(s\) \[0\] appear more than once"):
        build_report(find_summaries([tmp_path / "a", tmp_path / "b"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no summary.json found"):
        find_summaries([tmp_path / "empty"])


def test_pretrained_setting_is_compared_with_scratch_fold_by_fold(tmp_path: Path) -> None:
    scratch = {fold: _fold(tmp_path, "capsnet", "scratch", fold, errors) for fold, errors in enumerate((6, 6, 3, 9))}
    synthetic = {fold: _fold(tmp_path, "capsnet", "synthetic", fold, errors) for fold, errors in enumerate((3, 5, 3))}
    _fold(tmp_path, "resnet50", "synthetic", 0, 0)  # no resnet50 baseline: not paired
    report = build_report(find_summaries([tmp_path]))
    [pair] = report["paired"]
    assert pair["setting"] == "capsnet/synthetic/grouped-k7/128px"
    assert pair["baseline"] == "capsnet/scratch/grouped-k7/128px" and pair["folds"] == [0, 1, 2]
    diffs = [synthetic[f]["test"]["accuracy"] - scratch[f]["test"]["accuracy"] for f in range(3)]
    accuracy = pair["accuracy"]
    assert accuracy["differences"] == pytest.approx(diffs)
    assert accuracy["mean"] == pytest.approx(np.mean(diffs)) and accuracy["std"] == pytest.approx(np.std(diffs, ddof=1))
    assert (accuracy["better"], accuracy["worse"], accuracy["equal"]) == (2, 0, 1)
    assert 0.0 < accuracy["wilcoxon_p"] <= 1.0
    text = markdown(report)
    assert "## Pretrained against trained from scratch, paired by fold" in text
    row = f"| capsnet/synthetic/grouped-k7/128px | capsnet/scratch/grouped-k7/128px | 3 | +{np.mean(diffs):.4f}"
    assert row in text


def test_models_are_compared_with_resnet50_under_the_same_pretraining(tmp_path: Path) -> None:
    caps = {fold: _fold(tmp_path, "capsnet", "scratch", fold, errors) for fold, errors in enumerate((3, 6, 0))}
    resnet = {fold: _fold(tmp_path, "resnet50", "scratch", fold, errors) for fold, errors in enumerate((6, 9, 3))}
    _fold(tmp_path, "capsnet", "synthetic", 0, 0)  # no resnet50/synthetic: not paired against resnet50
    report = build_report(find_summaries([tmp_path]))
    [pair] = report["paired_models"]
    assert pair["setting"] == "capsnet/scratch/grouped-k7/128px" and pair["folds"] == [0, 1, 2]
    assert pair["baseline"] == "resnet50/scratch/grouped-k7/128px"
    diffs = [caps[f]["test"]["macro_f1"] - resnet[f]["test"]["macro_f1"] for f in range(3)]
    assert pair["macro_f1"]["differences"] == pytest.approx(diffs) and pair["macro_f1"]["better"] == 3
    [pretrained] = report["paired"]  # the tag pairing is unaffected by the model pairing
    assert pretrained["setting"] == "capsnet/synthetic/grouped-k7/128px" and pretrained["folds"] == [0]
    text = markdown(report)
    assert "## Models against the ResNet50 baseline, paired by fold" in text
    accuracy = np.mean([caps[f]["test"]["accuracy"] - resnet[f]["test"]["accuracy"] for f in range(3)])
    assert f"| capsnet/scratch/grouped-k7/128px | resnet50/scratch/grouped-k7/128px | 3 | +{accuracy:.4f}" in text


def _trust(run_dir: Path, temperature: float, pointing_game: float) -> None:
    """The three files the trust step writes, for made-up test probabilities of 30 slices."""
    labels = np.arange(30) % 3
    raw = np.full((30, 3), 0.2)
    raw[np.arange(30), labels] = 0.6
    after = calibrate(torch.from_numpy(raw), temperature).numpy()
    files = {"calibration": {"temperature": temperature, "test": {"before": calibration_metrics(raw, labels),
                                                                   "after": calibration_metrics(after, labels)}},
             "out_of_scope": {"test_false_reject": 0.05, "sources": {"photographs": {"n": 4, "auroc": 1.0}}},
             "explanations": {"pointing_game": pointing_game, "mass_in_dilated_mask": 0.25}}
    for key, content in files.items():
        atomic_write_json(run_dir / FILES[key], content)


def test_trust_step_numbers_are_aggregated_where_every_fold_has_them(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for fold, (temperature, pointing) in enumerate([(0.5, 0.6), (0.7, 0.8)]):
        _fold(runs, "capsnet", "scratch", fold, 3)
        _trust(runs / "capsnet" / "grouped-k7" / "scratch" / f"fold{fold}", temperature, pointing)
    _fold(runs, "resnet50", "scratch", 0, 3)  # no trust step: no trust numbers
    main([str(runs), "--out", str(tmp_path / "report")])
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    trust = report["groups"]["capsnet/scratch/grouped-k7/128px"]["trust"]
    assert trust["temperature"]["mean"] == pytest.approx(0.6) and trust["pointing_game"]["mean"] == pytest.approx(0.7)
    assert trust["test_reliability"]["before"]["count"][9] == 60  # both folds' 30 slices at top probability 0.6
    assert trust["test_ece_before"]["mean"] == pytest.approx(trust["test_reliability"]["before"]["ece"])
    assert "trust" not in report["groups"]["resnet50/scratch/grouped-k7/128px"]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Calibration, out of scope and explanation maps" in markdown and "| 0.600 ± 0.141 |" in markdown
    assert (tmp_path / "report" / "reliability-capsnet_scratch_grouped-k7_128px.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "report" / "reliability-resnet50_scratch_grouped-k7_128px.png").exists()
