"""Grouped stratified folds: disjoint groups, balanced classes, determinism, the cvind protocol."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datasets.figshare import load_figshare
from datasets.splits import PARTS, fold_indices, load_or_make_folds, make_folds


@pytest.fixture(scope="module")
def sample():
    return load_figshare()


@pytest.mark.parametrize("k", [2, 5, 7, 10])
def test_groups_never_cross_parts_or_test_folds(sample, k: int) -> None:
    manifest = make_folds(sample, k=k, seed=3)
    seen_test = set()
    all_test = []
    for fold in range(k):
        index = fold_indices(manifest, sample, fold)
        groups = {part: set(sample.groups[index[part]]) for part in PARTS}
        assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
        assert not groups["val"] & groups["test"]
        assert not seen_test & groups["test"]
        seen_test |= groups["test"]
        all_test.extend(index["test"].tolist())
        assert sum(len(index[p]) for p in PARTS) == len(sample)
    assert sorted(all_test) == list(range(len(sample)))


def test_class_balance_of_test_folds(sample) -> None:
    manifest = make_folds(sample, k=7)
    overall = np.bincount(sample.labels, minlength=3) / len(sample)
    for fold in range(7):
        test = sample.labels[fold_indices(manifest, sample, fold)["test"]]
        share = np.bincount(test, minlength=3) / test.size
        assert np.abs(share - overall).max() < 0.12, (fold, share, overall)


def test_deterministic_for_a_seed(sample) -> None:
    assert make_folds(sample, seed=5) == make_folds(sample, seed=5)
    assert make_folds(sample, seed=5)["folds"] != make_folds(sample, seed=6)["folds"]


def test_cvind_protocol_uses_author_folds(sample) -> None:
    manifest = make_folds(sample, protocol="cvind", k=7)
    assert manifest["k"] == 5
    for fold in range(5):
        test = fold_indices(manifest, sample, fold)["test"]
        assert set(sample.cvind[test]) == {fold + 1}


def test_manifest_is_shared_on_disk(sample, tmp_path: Path) -> None:
    first, path = load_or_make_folds(sample, tmp_path, k=7, seed=1)
    second, same_path = load_or_make_folds(sample, tmp_path, k=7, seed=1)
    assert path == same_path and first == second and path.exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 1}, "between 2 and 10"),
    ({"k": 11}, "between 2 and 10"),
    ({"protocol": "imagewise"}, "unknown split protocol"),
    ({"val_fraction": 0.7}, "val_fraction"),
])
def test_bad_settings(sample, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_folds(sample, **kwargs)


@pytest.mark.parametrize("fold", [-1, 7, 2.5])
def test_fold_out_of_range(sample, fold) -> None:
    with pytest.raises(ValueError, match="fold must be an integer in 0..6"):
        fold_indices(make_folds(sample), sample, fold)
