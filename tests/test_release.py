"""capsule_classifier/release.py on a study of two tiny folds (train.py at 32 px on the embedded sample): the
released model, its provenance and card, the cross-validated rules, resume and refusals; predict.py, evaluate.py
and scripts/predict.sh with the default model."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from test_classifier_train import PROJECT, make_cfg
from tiny_models import error_line, run_main

from capsule_classifier import deploy, evaluate, predict, release, train
from capsule_classifier.data import to_input
from capsule_classifier.deploy import MODEL_ENV, load_classifier
from datasets.core import CLASS_NAMES, EMBEDDED_SAMPLE
from datasets.slices import load_slices
from experiment.checkpoint import load_checkpoint, save_checkpoint

SELECTED = {0: 2, 1: 3}
"""The folds' selected epochs, set so that the median (2.5) needs its rounding rule: 3 epochs."""


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two finished folds of one configuration (gated capsnet, 3 epochs each, trust step included)."""
    root, threads = tmp_path_factory.mktemp("study"), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for fold, epoch in SELECTED.items():
            cfg = make_cfg(root, f"fold={fold}", "train.epochs=3", "+model.kwargs.attention=true")
            train.run(cfg)
            summary_path = Path(cfg.run_dir) / "summary.json"
            summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), "selected_epoch": epoch}))
    finally:
        torch.set_num_threads(threads)
    return Path(cfg.run_dir).parent


@pytest.fixture(scope="module")
def released(study: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The study released to ``models/tiny`` with a model card."""
    root, threads = tmp_path_factory.mktemp("release"), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        release.main([str(study), "--out", str(root / "models" / "tiny"), "--card", str(root / "MODEL_CARD.md")])
    finally:
        torch.set_num_threads(threads)
    slice_png = root / "slice.png"
    with np.load(EMBEDDED_SAMPLE) as sample:
        Image.fromarray(sample["image"][0]).save(slice_png)
    return {"root": root, "out": root / "models" / "tiny", "slice": slice_png,
            "record": json.loads((root / "models" / "tiny.json").read_text())}


def test_release_follows_the_cross_validated_rules(study: Path, released: dict[str, Any],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    record, out = released["record"], released["out"]
    folds = [load_checkpoint(study / f"fold{k}" / "model.pt") for k in SELECTED]
    rates = [json.loads((study / f"fold{k}" / "out_of_scope.json").read_text())["train_false_reject"] for k in SELECTED]
    assert record["epochs"]["value"] == 3 and record["epochs"]["selected"] == [2, 3]
    assert load_checkpoint(out.with_suffix(".pt"))["epoch"] == 3
    assert (out.parent / "tiny-run" / "checkpoints" / "finetune" / "epoch-0003.pt").is_file()
    classifier, meta = load_classifier(out.with_suffix(".pt"))
    assert meta["image_size"] == 32 and meta["model_name"] == "capsnet" and meta["model_kwargs"]["attention"]
    metrics = (out.parent / "tiny-run" / "metrics.jsonl").read_text().splitlines()
    assert all("train_attention" in json.loads(line)["values"] for line in metrics if '"scalars"' in line)
    temperatures = [f["calibration"]["temperature"] for f in folds]
    assert record["calibration"]["temperature"] == pytest.approx(np.median(temperatures))
    assert float(classifier.temperature) == pytest.approx(record["calibration"]["temperature"])
    data = load_slices(None, 32)
    assert record["training"]["slices"] == len(data) and record["training"]["patients"] == len(set(data.subjects))
    with torch.no_grad():
        _, scores = classifier.scored(to_input(data.images))
    expected = round(np.median(rates) * len(data))
    assert classifier.detector.threshold == record["out_of_scope"]["threshold"]
    assert record["out_of_scope"]["train_false_reject"] == expected / len(data)
    assert abs(int((scores > classifier.detector.threshold).sum()) - expected) <= 1  # float32 vs float64 features
    accuracies = [json.loads((study / f"fold{k}" / "summary.json").read_text())["test"]["accuracy"] for k in SELECTED]
    assert record["cross_validation"]["test"]["accuracy"]["values"] == accuracies
    assert record["cross_validation"]["folds"] == [0, 1] and record["export"]["bytes"] < release.MAX_ONNX_BYTES
    card = (released["root"] / "MODEL_CARD.md").read_text()
    accuracy = record["cross_validation"]["test"]["accuracy"]
    assert f"{accuracy['mean']:.3f} ± {accuracy['std']:.3f}" in card and "CC BY 4.0" in card
    assert "not for diagnosis" in card
    assert f"{record['out_of_scope']['threshold']:.4g}" in card and f"{len(data)} T1-CE slices" in card
    code, stdout, err = run_main(predict.main, [str(out) + ".onnx", str(released["slice"]), "--json"], capsys)
    assert code == 0, err
    row = json.loads(stdout)["predictions"][0]
    assert row["prediction"] in (*CLASS_NAMES, predict.OUT_OF_SCOPE) and sum(row["probabilities"].values()) == \
        pytest.approx(1.0, abs=1e-4)


def test_finished_release_returns_at_once(study: Path, released: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished release was retrained")

    monkeypatch.setattr(release, "load_data", refuse)
    monkeypatch.setattr(release, "fit", refuse)
    stamp = released["out"].with_suffix(".json").stat().st_mtime_ns
    code, stdout, err = run_main(release.main, [str(study), "--out", str(released["out"])], capsys)
    assert code == 0 and "released" in stdout, err
    assert released["out"].with_suffix(".json").stat().st_mtime_ns == stamp


def test_onnx_over_the_size_limit_is_refused(study: Path, released: dict[str, Any], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                             one_thread: None) -> None:
    shutil.copytree(released["out"].parent / "tiny-run", tmp_path / "big-run")
    last = tmp_path / "big-run" / "checkpoints" / "finetune" / "epoch-0003.pt"
    stamp = last.stat().st_mtime_ns
    monkeypatch.setattr(release, "MAX_ONNX_BYTES", 1000)
    code, _, err = run_main(release.main, [str(study), "--out", str(tmp_path / "big")], capsys)
    assert code == 2 and "over the 1000 bytes" in error_line(err) and not (tmp_path / "big.onnx").exists()
    assert last.stat().st_mtime_ns == stamp  # the copied run resumed finished: nothing was retrained


def _drop_trust_fields(fold: Path) -> None:
    state = load_checkpoint(fold / "model.pt")
    save_checkpoint(fold / "model.pt", {k: v for k, v in state.items() if k not in ("calibration", "out_of_scope")})


BAD_STUDIES = {
    "one fold": (lambda s: shutil.rmtree(s / "fold1"), "at least 2 fold run directories"),
    "another learning rate": (lambda s: (s / "fold1" / "config.yaml").write_text(
        (s / "fold1" / "config.yaml").read_text().replace("lr: 0.002", "lr: 0.001")), "differs in ['pretrain.lr', "
                                                                                      "'train.lr']"),
    "unfinished fold": (lambda s: (s / "fold1" / "summary.json").unlink(), "is not finished"),
    "no out_of_scope.json": (lambda s: (s / "fold0" / "out_of_scope.json").unlink(), "lacks ['out_of_scope.json']"),
    "no trust fields": (lambda s: _drop_trust_fields(s / "fold1"), "has no trust fields"),
}


@pytest.mark.parametrize("kind", list(BAD_STUDIES))
def test_bad_study_is_one_line(kind: str, study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "study"
    shutil.copytree(study, copy, ignore=shutil.ignore_patterns("checkpoints"))
    spoil, message = BAD_STUDIES[kind]
    spoil(copy)
    code, out, err = run_main(release.main, [str(copy), "--out", str(tmp_path / "model")], capsys)
    assert code == 2 and out == "" and message in error_line(err)
    assert not (tmp_path / "model-run").exists()


def test_predict_and_evaluate_use_the_default_model(released: dict[str, Any], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(MODEL_ENV, raising=False)
    monkeypatch.setattr(deploy, "DEFAULT_MODEL", released["out"].with_suffix(".onnx"))
    code, stdout, err = run_main(predict.main, [str(released["slice"]), "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["model"] == str(released["out"].with_suffix(".onnx"))
    (tmp_path / "data" / "glioma").mkdir(parents=True)
    shutil.copy(released["slice"], tmp_path / "data" / "glioma" / "a.png")
    code, _, err = run_main(evaluate.main, [str(tmp_path / "data"), "--out", str(tmp_path / "eval")], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["model"] == str(released["out"].with_suffix(".onnx")) and report["n_scored"] == 1
    code, _, err = run_main(predict.main, [str(released["out"].with_suffix(".onnx"))], capsys)
    assert code == 2 and "no INPUT" in error_line(err)
    monkeypatch.setattr(deploy, "DEFAULT_MODEL", tmp_path / "missing.onnx")
    for main, args in ((predict.main, [str(released["slice"])]), (evaluate.main, [str(tmp_path / "data")])):
        code, _, err = run_main(main, args, capsys)
        assert code == 2 and "missing.onnx" in error_line(err) and "release.py" in error_line(err)


def test_predict_sh_runs_from_anywhere_with_the_env_model(released: dict[str, Any], tmp_path: Path) -> None:
    script = PROJECT / "scripts" / "predict.sh"
    assert os.access(script, os.X_OK)
    shutil.copy(released["slice"], tmp_path / "mine.png")
    env = {**os.environ, MODEL_ENV: str(released["out"].with_suffix(".onnx")), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(script), "mine.png", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["model"] == env[MODEL_ENV] and report["predictions"][0]["path"] == "mine.png"
