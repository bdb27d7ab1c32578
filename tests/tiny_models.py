"""Tiny classifiers on disk for prediction, evaluation and export tests (``model.pt`` files, good or with any
metadata overridden, or briefly trained on the embedded sample), running an entry point's ``main`` as the shell
would, and recording the files opened."""
from __future__ import annotations

import builtins
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from capsule_classifier import build_model, build_objective
from capsule_classifier.data import to_input
from capsule_classifier.deploy import save_classifier
from datasets.core import CLASS_NAMES, SliceSet
from datasets.out_of_scope_set import build
from datasets.slices import load_slices
from datasets.splits import fold_indices, make_folds
from experiment.checkpoint import save_checkpoint

SIZE = 32


def write_model_pt(path: Path, name: str = "capsnet", **overrides: Any) -> Path:
    """A ``model.pt`` of a seeded ``name`` at 32 px in the layout ``deploy.save_classifier`` writes, with any
    field (``image_size``, ``class_names``, ``model_kwargs``...) replaced by ``overrides``."""
    torch.manual_seed(0)
    model = build_model(name, image_size=SIZE).eval()
    state = {"model": model.state_dict(), "model_name": name, "model_kwargs": {}, "image_size": SIZE,
             "class_names": list(CLASS_NAMES), "fold": 0, "epoch": 1, **overrides}
    save_checkpoint(path, state)
    return path


def write_models(folder: Path) -> dict[str, Path]:
    """``{"pt": folder/model.pt, "onnx": folder/model.onnx}``: a tiny capsnet and its checked ONNX export."""
    from capsule_classifier.export import export

    checkpoint = write_model_pt(folder / "model.pt")
    export(checkpoint, folder / "model.onnx")
    return {"pt": checkpoint, "onnx": folder / "model.onnx"}


def trained_fold(folder: Path, epochs: int = 15) -> tuple[Path, dict[str, SliceSet]]:
    """A capsnet trained briefly (seeded) at 32 px on the training patients of fold 0 of a 3-fold patient-wise
    split of the embedded sample: its ``folder/model.pt`` (as train.py saves it) and the fold's parts."""
    data = load_slices(None, SIZE)
    parts = {name: data.subset(index) for name, index in
             fold_indices(make_folds(data, "grouped", k=3), data, 0).items()}
    torch.manual_seed(0)
    model, objective = build_model("capsnet", image_size=SIZE), build_objective("capsnet")
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    images, labels = to_input(parts["train"].images), torch.as_tensor(parts["train"].labels)
    order = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(labels), generator=order).split(32):
            loss, _ = objective.loss(model(images[batch]), images[batch], labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    save_classifier(folder / "model.pt", model.eval(), "capsnet", {}, SIZE, CLASS_NAMES, fold=0, epoch=epochs)
    return folder / "model.pt", parts


def small_out_of_scope_set(folder: Path, pictures: tuple[str, ...] = ("camera", "coffee")) -> Path:
    """A quick out-of-scope set in ``folder`` (built once): ``pictures``, blanks and noise; no brain volumes."""
    if not (folder / "README.json").is_file():
        build(folder / "no-volumes", folder, photographs=pictures)
    return folder


def run_main(main: Callable[[list[str]], None], argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str,
                                                                                                          str]:
    """``(exit code, stdout, stderr)`` of ``main(argv)``, as a shell would see them."""
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(stderr: str) -> str:
    """The one ``error:`` line of ``stderr``; fails when there is a traceback or more than one."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1, stderr
    return lines[0]


def record_opens(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The (resolved) paths the process opens through ``open`` from now until the test ends."""
    paths: list[Path] = []
    real_open = builtins.open

    def recording_open(file: object, *args: object, **kwargs: object) -> object:
        if isinstance(file, (str, os.PathLike)):
            paths.append(Path(file).resolve())
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    return paths
