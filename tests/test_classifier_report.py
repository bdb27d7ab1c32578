"""capsule_classifier/report.py over fabricated fold summaries of two settings (and trust-step files)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from capsule_classifier.calibration import calibrate, calibration_metrics
from capsule_classifier.report import (
    EXTERNAL_CHECK,
    STUDY_FILE,
    ReportError,
    build_report,
    find_summaries,
    main,
    markdown,
)
from capsule_classifier.trust import FILES
from datasets.core import CLASS_NAMES
from experiment.atomic import atomic_write_json
from experiment.metrics import classification_metrics


def _fold(root: Path, model: str, tag: str, fold: int, errors: int, seed: int | None = None, **extra: object) -> dict:
    """A fold summary (``seed``: in ``root/seed<seed>/``, the study's layout; ``extra``: more summary keys)."""
    y_true = np.arange(30) % 3
    y_pred = y_true.copy()
    y_pred[:errors] = (y_pred[:errors] + 1) % 3
    summary = {"model": model, "tag": tag, "split": "grouped", "k": 7, "image_size": 128, "fold": fold,
               "class_names": list(CLASS_NAMES), "test": classification_metrics(y_true, y_pred, CLASS_NAMES),
               "parameters": {"model": 1000, "resnet50": 23_507_907, "resnet50_over_model_without_decoder": 23507.9},
               **({} if seed is None else {"seed": seed}), **extra}
    where = root if seed is None else root / f"seed{seed}" / "classifier"
    atomic_write_json(where / model / "grouped-k7" / tag / f"fold{fold}" / "summary.json", summary)
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


def _run_dir(root: Path, model: str, tag: str, fold: int, seed: int) -> Path:
    return root / f"seed{seed}" / "classifier" / model / "grouped-k7" / tag / f"fold{fold}"


def test_runs_are_paired_by_fold_and_seed(tmp_path: Path) -> None:
    errors = {(0, 0): (6, 3), (1, 0): (9, 3), (2, 0): (3, 3), (0, 1): (6, 0), (1, 1): (3, 6), (2, 1): (9, 9)}
    scratch = {run: _fold(tmp_path, "capsnet", "scratch", run[0], e[0], seed=run[1]) for run, e in errors.items()}
    synthetic = {run: _fold(tmp_path, "capsnet", "synthetic", run[0], e[1], seed=run[1]) for run, e in errors.items()
                 if run != (2, 1)}  # one run missing: it has no pair
    report = build_report(find_summaries([tmp_path]))
    group = report["groups"]["capsnet/scratch/grouped-k7/128px"]
    assert group["folds"] == [0, 1, 2, 0, 1, 2] and group["seeds"] == [0, 0, 0, 1, 1, 1]  # a fold per seed, no clash
    accuracies = [s["test"]["accuracy"] for s in scratch.values()]
    assert group["aggregate"]["accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1))  # over folds x seeds
    [pair] = report["paired"]
    runs = list(zip(pair["folds"], pair["seeds"], strict=True))
    assert runs == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1)]
    diffs = [synthetic[run]["test"]["macro_f1"] - scratch[run]["test"]["macro_f1"] for run in runs]
    assert pair["macro_f1"]["differences"] == pytest.approx(diffs)
    assert (pair["macro_f1"]["better"], pair["macro_f1"]["worse"], pair["macro_f1"]["equal"]) == (3, 1, 1)
    assert "0/s0: " in markdown(report) and "1/s1: " in markdown(report)
    _fold(tmp_path / "again", "capsnet", "scratch", 1, 0, seed=1)
    with pytest.raises(ReportError, match=r"fold\(s\) \[1\] appear more than once with the same seed"):
        build_report(find_summaries([tmp_path, tmp_path / "again"]))


def test_the_control_is_its_own_group_and_baseline(tmp_path: Path) -> None:
    for fold in range(3):
        for tag, errors in (("scratch", 6), ("synthetic", 3), ("control", 4 + fold)):
            _fold(tmp_path, "capsnet", tag, fold, errors, seed=0)
        atomic_write_json(_run_dir(tmp_path, "capsnet", "control", fold, 0) / STUDY_FILE,
                          {"row": "capsnet-control", "control": {"train_epochs": 94 + fold, "rule": "the rule"}})
    report = build_report(find_summaries([tmp_path]))
    assert set(report["groups"]) == {f"capsnet/{tag}/grouped-k7/128px" for tag in ("scratch", "synthetic", "control")}
    control = report["groups"]["capsnet/control/grouped-k7/128px"]
    assert [run["control_epochs"] for run in control["per_fold"]] == [94, 95, 96]
    [pretrained] = report["paired"]  # the control is not compared as if it were pretrained
    assert pretrained["setting"] == "capsnet/synthetic/grouped-k7/128px"
    [against_control] = report["paired_control"]
    assert against_control["baseline"] == "capsnet/control/grouped-k7/128px"
    assert against_control["setting"] == "capsnet/synthetic/grouped-k7/128px"
    assert against_control["accuracy"]["differences"] == pytest.approx([1 / 30, 2 / 30, 3 / 30])
    [control_pair] = report["paired_control_scratch"]
    assert control_pair["setting"] == "capsnet/control/grouped-k7/128px"
    text = markdown(report)
    assert "## Pretrained against the compute-matched control, paired by fold and seed" in text
    assert "capsnet/control/grouped-k7/128px: training epochs per run (fold order) [94, 95, 96]." in text
    assert "Compute-matched control: the rule." in text


def test_study_table_shows_n_a_where_runs_lack_numbers(tmp_path: Path) -> None:
    trust = {"test_ece_after": 0.04, "auroc_healthy_brain": 0.9, "pointing_game": 0.5}
    _fold(tmp_path, "capsnet", "scratch", 0, 3, seed=0, trust=trust, wall_time_s=600.0)
    _fold(tmp_path, "capsnet", "scratch", 1, 3, seed=0, trust={**trust, "auroc_healthy_brain": 0.7},
          wall_time_s=720.0)
    _fold(tmp_path, "resnet50", "scratch", 0, 3, seed=0)  # an old summary: no trust numbers, no wall time
    atomic_write_json(_run_dir(tmp_path, "capsnet", "scratch", 0, 0) / EXTERNAL_CHECK / "report.json",
                      {"recall": {"glioma": 0.75}})
    atomic_write_json(_run_dir(tmp_path, "capsnet", "scratch", 1, 0) / EXTERNAL_CHECK / "report.json", {"recall": {}})
    main([str(tmp_path), "--out", str(tmp_path / "report")])
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    capsnet = report["groups"]["capsnet/scratch/grouped-k7/128px"]["study"]
    assert capsnet["auroc_healthy_brain"] == pytest.approx({"mean": 0.8, "std": np.std([0.9, 0.7], ddof=1), "n": 2})
    assert capsnet["external_glioma_recall"] == {"mean": 0.75, "std": 0.0, "n": 1}
    assert capsnet["generator_wall_time_s"] is None
    assert all(value is None for value in report["groups"]["resnet50/scratch/grouped-k7/128px"]["study"].values())
    rows = {line.split(" | ")[0]: line for line in (tmp_path / "report" / "report.md").read_text().splitlines()
            if line.startswith("| ") and ("(1 x 1)" in line or "(2 x 1)" in line)}
    capsnet_row, resnet_row = rows["| capsnet/scratch/grouped-k7/128px"], rows["| resnet50/scratch/grouped-k7/128px"]
    assert "| 0.040 ± 0.000 | 0.800 ± 0.141 | 0.500 ± 0.000 | 0.750 ± 0.000 (1 of 2) | 11m 00s ± 1m 25s | n/a |" \
        in capsnet_row
    assert resnet_row.endswith("| n/a | n/a | n/a | n/a | n/a | n/a |")
