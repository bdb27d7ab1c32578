"""Patient-wise stratified folds: disjoint patients, balanced classes, determinism, the cvind protocol, checked
manifests, and (on the full shared bundle) no patient in two parts of any fold under either protocol."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, require_shared

from datasets.core import DataError
from datasets.slices import load_slices
from datasets.splits import PARTS, fold_indices, load_folds, load_or_make_folds, make_folds


@pytest.fixture(scope="module")
def sample():
    return load_slices()


@pytest.mark.parametrize("k", [2, 5, 7, 10])
def test_patients_never_cross_parts_or_test_folds(sample, k: int) -> None:
    assert_patient_wise(sample, make_folds(sample, k=k, seed=3))


def assert_patient_wise(data, manifest: dict) -> None:
    """No patient in two parts of a fold or in two test folds; every slice tested exactly once."""
    seen_test: set[str] = set()
    all_test = []
    for fold in range(manifest["k"]):
        index = fold_indices(manifest, data, fold)
        subjects = {part: set(data.subjects[index[part]]) for part in PARTS}
        assert not subjects["train"] & subjects["val"] and not subjects["train"] & subjects["test"]
        assert not subjects["val"] & subjects["test"]
        assert not seen_test & subjects["test"]
        assert all(subjects[part] for part in PARTS)
        seen_test |= subjects["test"]
        all_test.extend(index["test"].tolist())
        assert sum(len(index[p]) for p in PARTS) == len(data)
    assert sorted(all_test) == list(range(len(data)))


@pytest.mark.parametrize("protocol, k", [("grouped", 7), ("cvind", 5)])
def test_full_shared_bundle_is_patient_wise(tmp_path: Path, protocol: str, k: int) -> None:
    data = load_slices(require_shared(SHARED_DATA / "figshare_cheng_128.npz"), cache_dir=tmp_path / "cache")
    assert len(set(data.subjects)) == 233
    manifest = make_folds(data, protocol=protocol, k=k)
    assert manifest["k"] == k
    assert_patient_wise(data, manifest)


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
    ({"k": 1}, r"data.k must be an integer in 2..10, got 1"),
    ({"k": 11}, r"data.k must be an integer in 2..10, got 11"),
    ({"protocol": "imagewise"}, "data.split must be one of"),
    ({"val_fraction": 0.7}, r"data.val_fraction must be in \(0, 0.5\), got 0.7"),
])
def test_bad_settings(sample, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_folds(sample, **kwargs)


def test_too_few_patients_names_the_smallest_class(sample) -> None:
    few = sorted(set(sample.subjects[sample.labels == 0]))[:4]
    keep = np.flatnonzero((sample.labels != 0) | np.isin(sample.subjects, few))
    with pytest.raises(ValueError, match=r"needs at least 7 patients per class; meningioma has 4"):
        make_folds(sample.subset(keep), k=7)


def test_cvind_refuses_a_patient_in_two_author_folds(sample) -> None:
    moved = sample.subset(np.arange(len(sample)))
    moved.cvind = moved.cvind.copy()
    moved.cvind[0] = moved.cvind[0] % 5 + 1
    with pytest.raises(DataError, match=f"subject {moved.subjects[0]} .* lies in cvind folds"):
        make_folds(moved, protocol="cvind")


def _edited_manifest(sample, tmp_path: Path, edit) -> Path:
    manifest, path = load_or_make_folds(sample, tmp_path, k=7)
    edit(manifest["folds"][2])
    path.write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda f: f["test"]["file_ids"].append(f["train"]["file_ids"][0]), "fold 2 has file id .* in both train and test"),
    (lambda f: f["val"]["subjects"].append(f["train"]["subjects"][0]), "fold 2 has subject .* in both train and val"),
    (lambda f: f["train"]["file_ids"].append(999999), "fold 2 train names file id 999999"),
    (lambda f: f.pop("val"), "is unreadable or malformed .*KeyError"),
])
def test_hand_edited_manifest_is_refused(sample, tmp_path: Path, edit, message: str) -> None:
    path = _edited_manifest(sample, tmp_path, edit)
    with pytest.raises(DataError, match=f"fold manifest {re.escape(str(path))}.*{message}"):
        load_or_make_folds(sample, tmp_path, k=7)


def test_truncated_manifest_is_refused_with_its_path(sample, tmp_path: Path) -> None:
    _, path = load_or_make_folds(sample, tmp_path, k=7)
    path.write_text(path.read_text()[:100])
    with pytest.raises(DataError, match=f"fold manifest {re.escape(str(path))} is unreadable .*JSONDecodeError"):
        load_folds(path)


def test_test_folds_must_not_overlap(sample, tmp_path: Path) -> None:
    manifest, path = load_or_make_folds(sample, tmp_path, k=7)
    manifest["folds"][3] = manifest["folds"][1]
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="fold 3's test slices also appear in another fold's test part"):
        load_folds(path)


@pytest.mark.parametrize("fold", [-1, 7, 2.5])
def test_fold_out_of_range(sample, fold) -> None:
    with pytest.raises(ValueError, match="fold must be an integer in 0..6"):
        fold_indices(make_folds(sample), sample, fold)
