"""Every kind of bad input of issue 18, written in the real on-disk layouts and fed to the lightest real command
that reads it: exit status 2, one line on stderr naming the input, no traceback, and nothing outside the input
read (files planted outside hold what a reader that followed them would accept, and a marker that must never
show up in any output; code planted in pickles must never run). The builders are shared with
``benchmarks/bad_input_corpus.py``, which runs many more variants through every command."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import hydra
import nibabel as nib
import numpy as np
import pytest
import torch
from niftis import brain, make_labels_csv, write_nifti
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError

import generative_model.checkpoint as gan_checkpoint
from datasets.core import DataError
from datasets.fixtures import USERBLOCK, make_records, mat73_header, write_mat_folder, write_slice
from datasets.shards import MANIFEST, shard_name, write_shards
from datasets.volume_splits import load_or_make_split, make_split
from datasets.volumes import VolumeRecord, VolumeScan
from experiment.checkpoint import CheckpointError
from experiment.cli import DEBUG_ENV, reports_user_errors, run_hydra_app
from experiment.errors import ConfigError
from generative_model.checkpoint import ARCH_KEYS, load_generator
from generative_model.conditions import CONDITION_CHANNELS

ROOT = Path(__file__).resolve().parents[1]
MARKER = "SENTINEL-OUTSIDE-5150"
"""Planted in files outside an input; a reader that never leaves its input never shows it."""
SHAPE = (20, 24, 18)
EXIT_USER_ERROR = 2

# ----------------------------------------------------------------------------------------------- running commands


def cli(tmp_path: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``python *args`` from the repository root: one thread, a cache under ``tmp_path``, no debug mode."""
    env = {key: value for key, value in os.environ.items() if key != DEBUG_ENV}
    env.update(OMP_NUM_THREADS="1", BRAIN_TUMOUR_CACHE=str(tmp_path / "cache"), PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=timeout)


def refused(result: subprocess.CompletedProcess[str], *names: str) -> str:
    """Assert an expected error: exit status 2, exactly one stderr line naming ``names``, no marker; return it."""
    assert result.returncode == EXIT_USER_ERROR, f"exit {result.returncode}:\n{result.stderr[-3000:]}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    for name in names:
        assert name in lines[0], lines[0]
    assert MARKER not in result.stdout + result.stderr
    return lines[0]


def leaked(root: Path, outside: Path) -> list[Path]:
    """Files under ``root`` but not under ``outside`` whose bytes hold :data:`MARKER`."""
    return [p for p in root.rglob("*") if p.is_file() and outside not in p.parents
            and MARKER.encode() in p.read_bytes()]


OUTPUT_KEY = {"capsule_classifier/train.py": "out", "spatiospatial/run.py": "out",
              "generative_model/train.py": "run_dir", "generative_model/synthesize.py": "out",
              "-m datasets.inspect": "out"}
"""Where each Hydra entry point writes, by the command that starts it."""
MONITORED = ("capsule_classifier/train.py", "spatiospatial/run.py", "generative_model/train.py")


def command_args(tmp_path: Path, command: str, *overrides: str) -> list[str]:
    """``command`` (a script or ``-m module``) with ``overrides`` and its outputs kept under ``tmp_path``."""
    paths = [f"{OUTPUT_KEY[command]}={tmp_path / 'out'}", f"data.splits_dir={tmp_path / 'splits'}"]
    monitor = ["monitor.visdom=false"] if command in MONITORED else []
    return [*command.split(), *overrides, *paths, *monitor]


def inspect(tmp_path: Path, folder: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """``python -m datasets.inspect`` on the .mat folder ``folder``."""
    return cli(tmp_path, *command_args(tmp_path, "-m datasets.inspect", f"data.root={folder}", *overrides))


# ----------------------------------------------------------------------------------------------- shard folders


def shard_set(folder: Path, labels: np.ndarray | None = None) -> Path:
    """A finished set of two 32 px shards (12 images, every class unless ``labels`` says otherwise)."""
    labels = np.arange(12) % 3 if labels is None else labels
    images = np.random.default_rng(0).integers(0, 256, (len(labels), 32, 32), dtype=np.uint8)
    write_shards(folder, images, labels, shard_size=6, provenance={"writer": "tests.test_bad_inputs"})
    return folder


def edit_manifest(folder: Path, edit: Callable[[dict], None]) -> None:
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def replace_shard(folder: Path, payload: bytes, update_checksum: bool) -> None:
    """Overwrite the first shard; with ``update_checksum`` the manifest vouches for the new bytes."""
    (folder / shard_name(0)).write_bytes(payload)
    if update_checksum:
        edit_manifest(folder, lambda m: m["shards"][0].update(sha256=hashlib.sha256(payload).hexdigest()))


class _RunsCode:
    """Pickles to ``os.system("touch <marker>")``: proof of code execution if the marker file appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def code_pickle(marker: Path) -> bytes:
    return pickle.dumps({"images": _RunsCode(marker), "labels": np.zeros(6, np.int64), "meta": {}})


def pickle_bomb() -> bytes:
    """A few hundred bytes of nested shared lists that expand to 2**40 elements when turned into an array."""
    nested: list = [0]
    for _ in range(40):
        nested = [nested, nested]
    return pickle.dumps({"images": nested, "labels": nested, "meta": {}}, protocol=2)


def _outside_copy(folder: Path, name: str) -> None:
    """Point the first manifest entry at ``name``; a relative ``name`` gets an exact copy of the first shard
    where it leads, so a reader that followed it would accept what it found."""
    if not Path(name).is_absolute():
        target = (folder / name).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / shard_name(0), target)
    edit_manifest(folder, lambda m: m["shards"][0].update(file=name))


def _symlink_out(folder: Path, outside: Path) -> None:
    outside.mkdir(parents=True, exist_ok=True)
    shutil.move(folder / shard_name(0), outside / "x.pkl")
    (folder / shard_name(0)).symlink_to(outside / "x.pkl")


def _claim_every_class(manifest: dict) -> None:
    manifest["class_counts"] = [4, 4, 4]
    for entry in manifest["shards"]:
        entry["class_counts"] = [2, 2, 2]


def _lying_class_counts(folder: Path, outside: Path) -> None:
    """Shards of one class whose manifest claims all three (what once defeated the missing-class check)."""
    shutil.rmtree(folder)
    shard_set(folder, np.zeros(12, np.int64))
    edit_manifest(folder, _claim_every_class)


SHARD_DEFECTS: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "manifest names ../../x": (lambda f, o: _outside_copy(f, "../../x"), "does not name a shard-NNNNN.pkl"),
    "manifest names /etc/passwd": (lambda f, o: _outside_copy(f, "/etc/passwd"), "does not name a shard"),
    "shard symlink leads out": (_symlink_out, "symlink leading out"),
    "manifest lacks shards": (lambda f, o: edit_manifest(f, lambda m: m.pop("shards")), "lists no shards"),
    "manifest lacks class_counts": (lambda f, o: edit_manifest(f, lambda m: m.pop("class_counts")),
                                    "class_counts must be"),
    "class_counts lie": (_lying_class_counts, "does not match its manifest entry"),
    "nested-list pickle bomb": (lambda f, o: replace_shard(f, pickle_bomb(), True), "dict of numpy arrays"),
    "tampered shard": (lambda f, o: replace_shard(f, code_pickle(o / "ran"), False), "SHA-256"),
    "code in a checksummed shard": (lambda f, o: replace_shard(f, code_pickle(o / "ran"), True),
                                    "refused to load global"),
}
"""Defect -> (builder(shard folder, outside folder), what the one-line error says)."""


# ----------------------------------------------------------------------------------------------- .mat folders


def mat_folder(folder: Path, count: int = 6, per_patient: int = 2) -> Path:
    """``1.mat .. <count>.mat`` (v7.3, 32 px), ``per_patient`` slices per patient, classes by patient."""
    write_mat_folder(folder, count=count, size=32, small_size=None, slices_per_patient=per_patient, cvind=False)
    return folder


def _mat73(path: Path, build: Callable[[h5py.File], None]) -> None:
    with h5py.File(path, "w", userblock_size=USERBLOCK) as handle:
        build(handle)
    with open(path, "r+b") as handle:
        handle.write(mat73_header())


def _external_link(folder: Path, outside: Path) -> str:
    """``1.mat``'s struct is an HDF5 external link to a valid slice elsewhere whose patient id is the marker."""
    outside.mkdir(parents=True, exist_ok=True)
    record = make_records(1, size=32, small_size=None)[0]
    record.subject = MARKER
    write_slice(outside / "secret.mat", record)
    _mat73(folder / "1.mat", lambda h: h.__setitem__("cjdata", h5py.ExternalLink(str(outside / "secret.mat"),
                                                                                   "/cjdata")))
    return "1.mat"


def _replace_image(folder: Path, **dataset: object) -> str:
    with h5py.File(folder / "1.mat", "r+") as handle:
        del handle["cjdata/image"]
        handle["cjdata"].create_dataset("image", dtype="int16", **dataset).attrs["MATLAB_class"] = np.bytes_("int16")
    return "1.mat"


def _external_storage(folder: Path, outside: Path) -> str:
    """``1.mat``'s image keeps its pixels in a raw file elsewhere that holds the marker."""
    outside.mkdir(parents=True, exist_ok=True)
    raw = outside / "secret.bin"
    raw.write_bytes((MARKER.encode() * 100)[:32 * 32 * 2])
    return _replace_image(folder, shape=(32, 32), external=[(str(raw), 0, 32 * 32 * 2)])


def _declared_20000(folder: Path, outside: Path) -> str:
    """``1.mat`` declares a gzip-compressed 20000 x 20000 image in a file of a few KB."""
    return _replace_image(folder, shape=(20000, 20000), chunks=(500, 500), compression="gzip")


def _renamed(new_name: str) -> Callable[[Path, Path], str]:
    def rename(folder: Path, outside: Path) -> str:
        (folder / "1.mat").rename(folder / new_name)
        return new_name
    return rename


MAT_DEFECTS: dict[str, Callable[[Path, Path], str]] = {
    "HDF5 external link": _external_link,
    "HDF5 external storage": _external_storage,
    "20000x20000 gzip image": _declared_20000,
    "0.mat": _renamed("0.mat"),
    "non-ASCII digits": _renamed("\u0661\u0662.mat"),
}
"""Defect -> builder(folder, outside) that spoils one file of a valid folder and returns its name."""


# ----------------------------------------------------------------------------------------------- NIfTI volumes


def bad_volume(path: Path, defect: str) -> Path:
    """A brain-like volume whose header declares voxels of 1e-6 mm or 1000 mm, or a NaN affine."""
    data = brain(SHAPE, "LGG", 7)
    if defect == "NaN affine":
        header = nib.Nifti1Image(data, np.eye(4)).header
        header["srow_x"], header["sform_code"], header["qform_code"] = [np.nan, 0, 0, 0], 2, 0
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, None, header), str(path))
        return path
    return write_nifti(path, data, np.diag([*[VOLUME_DEFECTS[defect]] * 3, 1.0]))


VOLUME_DEFECTS = {"pixdim 1e-6 mm": 1e-6, "pixdim 1000 mm": 1000.0, "NaN affine": None}
"""Header defect -> the voxel size it declares (None: the affine itself is broken)."""


def volume_args(tmp_path: Path, root: Path, *overrides: str) -> list[str]:
    return command_args(tmp_path, "spatiospatial/run.py", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
                        "device=cpu", *overrides)


# ----------------------------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("defect", SHARD_DEFECTS)
def test_bad_shard_folders_are_refused_before_anything_outside_is_read(tmp_path: Path, defect: str) -> None:
    folder, outside = shard_set(tmp_path / "in" / "shards"), tmp_path / "outside"
    build, says = SHARD_DEFECTS[defect]
    build(folder, outside)
    start = time.monotonic()
    result = cli(tmp_path, "-m", "generative_model.consistency", str(folder), str(tmp_path / "model.onnx"))
    line = refused(result, str(folder), says)
    assert time.monotonic() - start < 60, "a bounded reader answers at once"
    assert not (outside / "ran").exists(), "code planted in a pickle ran"
    assert "model.onnx" not in line  # refused before the command went on to the classifier


def test_pretraining_shards_are_checked_before_training(tmp_path: Path) -> None:
    folder = shard_set(tmp_path / "in" / "shards")
    _outside_copy(folder, "../../x")
    result = cli(tmp_path, *command_args(tmp_path, "capsule_classifier/train.py", f"pretrain.shards={folder}"))
    refused(result, str(folder / MANIFEST), "../../x")


@pytest.mark.parametrize("defect", MAT_DEFECTS)
def test_bad_mat_files_are_refused_without_reading_elsewhere(tmp_path: Path, defect: str) -> None:
    folder, outside = mat_folder(tmp_path / "mat"), tmp_path / "outside"
    name = MAT_DEFECTS[defect](folder, outside)
    assert (folder / name).stat().st_size < 64 * 1024
    start = time.monotonic()
    result = inspect(tmp_path, folder)
    refused(result, str(folder / name))
    assert time.monotonic() - start < 60
    assert leaked(tmp_path, outside) == []


def test_an_upper_case_mat_suffix_is_read_and_keys_the_cache(tmp_path: Path) -> None:
    folder = mat_folder(tmp_path / "mat", count=12, per_patient=1)
    (folder / "3.mat").rename(folder / "3.MAT")

    def fingerprint() -> str:
        result = inspect(tmp_path, folder, "data.k=2", "data.val_fraction=0.45", "data.image_size=32")
        assert result.returncode == 0, result.stderr[-3000:]
        return re.search(r"\(12 slices at 32x32, fingerprint (\w+)\)", result.stdout).group(1)

    before = fingerprint()
    replacement = make_records(12, size=32, small_size=None, slices_per_patient=1, seed=1)[2]
    replacement.subject = make_records(12, size=32, small_size=None, slices_per_patient=1)[2].subject
    write_slice(folder / "3.MAT", replacement)
    assert fingerprint() != before  # a replaced 3.MAT is read again, not served stale from the cache


def test_k_infeasible_for_a_small_set_names_the_smallest_class(tmp_path: Path) -> None:
    folder = mat_folder(tmp_path / "mat")  # 3 patients, one per class
    refused(inspect(tmp_path, folder, "data.k=2"), "2-fold split", str(folder), "meningioma has 1")


@pytest.mark.parametrize("defect", VOLUME_DEFECTS)
def test_bad_nifti_headers_are_refused_before_any_voxel_is_read(tmp_path: Path, defect: str) -> None:
    root = make_labels_csv(tmp_path / "volumes", per_class=1, shape=SHAPE)
    bad_volume(root / "LGG" / "LGG_0.nii.gz", defect)
    start = time.monotonic()
    refused(cli(tmp_path, *volume_args(tmp_path, root)), str(root / "LGG" / "LGG_0.nii.gz"))
    assert time.monotonic() - start < 60


def test_lenient_mode_skips_every_kind_of_bad_header(tmp_path: Path) -> None:
    root = make_labels_csv(tmp_path / "volumes", per_class=1, shape=SHAPE)
    bad = [bad_volume(root / "bad" / f"bad{i}.nii.gz", defect) for i, defect in enumerate(VOLUME_DEFECTS)]
    with open(root / "labels.csv", "a", encoding="utf-8") as table:
        table.writelines(f"bad/{path.name},healthy\n" for path in bad)
    (root / "healthy" / "healthy_0.nii.gz").unlink()  # the two volumes left cannot make a test part
    table = (root / "labels.csv").read_text().replace("healthy/healthy_0.nii.gz,healthy\n", "")
    (root / "labels.csv").write_text(table)
    result = cli(tmp_path, *volume_args(tmp_path, root, "data.strict=false"))
    refused(result, "has no test volumes")  # the bad files were skipped: the run got as far as the split
    for path in bad:
        assert f"skipping {path}" in result.stdout


@pytest.mark.parametrize(("command", "override"), [
    ("capsule_classifier/train.py", "train.epochs=0"),
    ("capsule_classifier/train.py", "train.epochs=-3"),
    ("generative_model/train.py", "train.batch_size=0"),
    ("spatiospatial/run.py", "train.lr=-0.1"),
    ("-m datasets.inspect", "data.image_size=100"),
    ("capsule_classifier/train.py", "fold=99"),  # known only once the data is loaded: the manifest's k
])
def test_bad_settings_are_refused_in_one_line(tmp_path: Path, command: str, override: str) -> None:
    size = [] if command == "spatiospatial/run.py" or "image_size" in override else ["data.image_size=32"]
    line = refused(cli(tmp_path, *command_args(tmp_path, command, override, *size)), override.partition("=")[0])
    assert override.partition("=")[2] in line


@pytest.fixture(scope="module")
def folds_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A .mat folder and the fold manifest ``datasets.inspect`` wrote for it (k=2)."""
    base = tmp_path_factory.mktemp("folds")
    folder = mat_folder(base / "mat", count=12, per_patient=1)
    result = inspect(base, folder, "data.k=2", "data.val_fraction=0.45")
    assert result.returncode == 0, result.stderr[-3000:]
    [path] = (base / "splits").glob("folds-*.json")
    return folder, path


def _overlapping(text: str) -> str:
    """The manifest with fold 0's first test slice also in its training part."""
    manifest = json.loads(text)
    fold = manifest["folds"][0]
    fold["train"]["file_ids"].append(fold["test"]["file_ids"][0])
    return json.dumps(manifest)


@pytest.mark.parametrize(("edit", "says"), [
    (lambda text: text[: len(text) // 2], "unreadable or malformed"),
    (_overlapping, "in both train and test"),
], ids=["truncated", "hand-edited overlap"])
def test_broken_folds_files_are_refused_naming_the_file(tmp_path: Path, folds_file: tuple[Path, Path],
                                                        edit: Callable[[str], str], says: str) -> None:
    folder, original = folds_file
    path = tmp_path / "splits" / original.name
    path.parent.mkdir()
    path.write_text(edit(original.read_text()))
    refused(inspect(tmp_path, folder, "data.k=2", "data.val_fraction=0.45"), str(path), says)


# ----------------------------------------------------------------------------------------------- Hydra apps


@pytest.mark.parametrize(("command", "override", "key"), [
    ("capsule_classifier/train.py", "data.split=foo", "data.split"),
    ("capsule_classifier/train.py", "device=cuda:99", "device"),
    ("generative_model/train.py", "train.epochs=abc", "train.epochs"),
    ("generative_model/synthesize.py", "nosuch=1", "nosuch"),
    ("spatiospatial/run.py", "train.epochs=abc", "train.epochs"),
    ("-m datasets.inspect", "data.k=99", "data.k"),
])
def test_hydra_apps_refuse_bad_overrides_in_one_line(tmp_path: Path, command: str, override: str, key: str) -> None:
    line = refused(cli(tmp_path, *command_args(tmp_path, command, override, "data.image_size=32")), key)
    prog = command.split(".")[-1] + ".py" if command.startswith("-m") else Path(command).name
    assert line.startswith(f"{prog}: error: ")
    assert "Traceback" not in line and "HYDRA_FULL_ERROR" not in line


def test_debug_keeps_the_traceback_of_a_bad_override(tmp_path: Path) -> None:
    result = cli(tmp_path, *command_args(tmp_path, "-m datasets.inspect", "nosuch=1", "--debug"))
    assert result.returncode not in (0, EXIT_USER_ERROR)
    assert "Traceback (most recent call last)" in result.stderr and "nosuch" in result.stderr


def _refuse(*args: str) -> str:
    raise ConfigError("data.split must be one of ('grouped', 'cvind'), got 'foo'")


def _raise(error: BaseException) -> None:
    raise error


@pytest.fixture
def hydra_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Run a throwaway ``@hydra.main`` app through :func:`run_hydra_app` in this process; its task raises ``error``
    inside :func:`reports_user_errors` (as every app's does), or with ``error=None`` reads a missing key (a bug)."""
    monkeypatch.setattr(sys, "argv", ["app.py"])
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    (tmp_path / "app.yaml").write_text("size: 32\n")
    OmegaConf.register_new_resolver("test_refuse", _refuse, replace=True)

    def run(error: BaseException | None, *overrides: str) -> None:
        @hydra.main(config_path=str(tmp_path), config_name="app", version_base=None)
        def main(cfg: DictConfig) -> None:
            if error is not None:
                reports_user_errors(_raise)(error)
            OmegaConf.set_struct(cfg, True)
            cfg.missing_key  # noqa: B018 (an OmegaConf error raised by the app itself: a bug)

        run_hydra_app(main, ["app.py", f"hydra.run.dir={tmp_path / 'run'}", "hydra.output_subdir=null", *overrides])
    return run


@pytest.mark.parametrize("error", [RuntimeError("a bug"), None], ids=["exception", "omegaconf error in the app"])
def test_unexpected_errors_in_a_hydra_app_keep_their_traceback(hydra_app: Callable[..., None],
                                                               error: BaseException | None) -> None:
    with pytest.raises(type(error) if error else ConfigAttributeError):
        hydra_app(error)


@pytest.mark.parametrize(("error", "overrides", "says"), [
    (DataError("data file /x/y.mat is truncated"), (), "data file /x/y.mat is truncated"),
    (None, ("nosuch=1",), "Could not override 'nosuch'; To append to your config use +nosuch=1"),
    (None, ("size=[",), "override 'size=['"),
    (None, ("hydra.run.dir=${test_refuse:}",), "data.split must be one of ('grouped', 'cvind'), got 'foo'"),
], ids=["user error", "unknown key", "unparsable", "resolver refuses"])
def test_expected_errors_in_a_hydra_app_are_one_line(hydra_app: Callable[..., None], capsys: pytest.CaptureFixture[str],
                                                     error: BaseException | None, overrides: tuple, says: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        hydra_app(error, *overrides)
    assert exit_info.value.code == EXIT_USER_ERROR
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("app.py: error: ") and says in line
    assert os.environ.get("HYDRA_FULL_ERROR") is None  # left as it was


# ----------------------------------------------------------------------------------------------- generator files


VALID_ARCH = {"input_nc": CONDITION_CHANNELS, "output_nc": 1, "crop_size": 32, "slice_size": 32,
              "erase_radius": 1.0, "ngf": 4, "norm": "instance", "use_dropout": False}


@pytest.mark.parametrize(("key", "value"), [
    ("ngf", 10 ** 6), ("ngf", 0), ("ngf", "64"), ("crop_size", 4096), ("crop_size", 64), ("slice_size", 100000),
    ("input_nc", 3), ("output_nc", 2), ("erase_radius", float("nan")), ("norm", ["instance"]), ("norm", "group"),
    ("use_dropout", "yes"),
])
def test_generator_architecture_is_bounded_before_anything_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    key: str, value: object) -> None:
    assert set(VALID_ARCH) == ARCH_KEYS
    path = tmp_path / "generator.pt"
    torch.save({"G": {}, "arch": {**VALID_ARCH, key: value}, "epoch": 1, "fold": 0}, path)
    if key != "norm":
        monkeypatch.setattr(gan_checkpoint, "define_G", lambda **arch: pytest.fail(f"built {arch}"))
    with pytest.raises(CheckpointError, match=f"checkpoint {re.escape(str(path))}: .*{key if key != 'norm' else ''}"):
        load_generator(path, image_size=32, fold=0, device=torch.device("cpu"))


# ----------------------------------------------------------------------------------------------- volume splits


def _scan(subjects_per_class: int = 3) -> VolumeScan:
    records = [VolumeRecord(Path(f"/v/{label}-{i}.nii.gz"), label, f"s{label}-{i}")
               for label in range(3) for i in range(subjects_per_class)]
    return VolumeScan(Path("/v"), "csv", "t1ce", records)


def _edited_split(edit: Callable[[dict], None]) -> Callable[[str], str]:
    def apply(text: str) -> str:
        manifest = json.loads(text)
        edit(manifest["parts"])
        return json.dumps(manifest)
    return apply


VOLUME_SPLIT_DEFECTS: dict[str, tuple[Callable[[str], str], str]] = {
    "truncated": (lambda text: text[: len(text) // 2], "is unreadable or malformed .*JSONDecodeError"),
    "not an object": (lambda text: "[1, 2]", "is unreadable or malformed"),
    "parts lack subjects": (_edited_split(lambda p: p["val"].pop("subjects")), "is unreadable or malformed"),
    "subjects overlap": (_edited_split(lambda p: p["test"]["subjects"].append(p["train"]["subjects"][0])),
                         "has subject .* in both train and test"),
    "volumes overlap": (_edited_split(lambda p: p["val"]["paths"].append(p["train"]["paths"][0])),
                        "has volume .* in both train and val"),
    "unknown subject": (_edited_split(lambda p: p["train"]["subjects"].append("nobody")),
                        "train names subject nobody, which the data does not hold"),
    "unknown volume": (_edited_split(lambda p: p["test"]["paths"].append("../../etc/passwd")),
                       "test names volume ../../etc/passwd"),
    "subject left out": (_edited_split(lambda p: p["train"]["subjects"].pop()), "leaves subject .* out of every part"),
}


@pytest.mark.parametrize("defect", VOLUME_SPLIT_DEFECTS)
def test_broken_volume_split_files_are_refused_naming_the_file(tmp_path: Path, defect: str) -> None:
    scan = _scan()
    _, path = load_or_make_split(scan, tmp_path)
    edit, says = VOLUME_SPLIT_DEFECTS[defect]
    path.write_text(edit(path.read_text()))
    with pytest.raises(DataError, match=f"split manifest {re.escape(str(path))}.* {says}"):
        load_or_make_split(scan, tmp_path)


def test_a_subject_with_two_labels_is_refused_naming_both_volumes(tmp_path: Path) -> None:
    scan = _scan()
    load_or_make_split(scan, tmp_path)
    scan.records.append(VolumeRecord(Path("/v/extra.nii.gz"), 2, "s0-0"))
    for attempt in (lambda: make_split(scan), lambda: load_or_make_split(scan, tmp_path)):
        with pytest.raises(DataError, match=r"subject s0-0 .*/v/0-0.nii.gz is HGG, /v/extra.nii.gz is healthy"):
            attempt()


def test_a_truncated_volume_split_stops_the_run_in_one_line(tmp_path: Path) -> None:
    root = make_labels_csv(tmp_path / "volumes", per_class=1, shape=SHAPE)
    refused(cli(tmp_path, *volume_args(tmp_path, root)), "has no test volumes")  # ... after writing its split
    [path] = (tmp_path / "splits").glob("volumes-*.json")
    path.write_text(path.read_text()[:50])
    refused(cli(tmp_path, *volume_args(tmp_path, root)), f"split manifest {path} is unreadable or malformed")
