"""Bad-input corpus: every kind of bad input of issue 18, and plain misuse, through every command that reads it.

Each case builds its input in a fresh folder (real on-disk layouts, with the builders of
``tests/test_bad_inputs.py``), runs the real command in a subprocess and sorts the ending into one of:

* ``clear``: exit status 2 and exactly one stderr line naming the input, no traceback (for ``data.strict=false``
  cases: the run goes on and names the skipped file);
* ``traceback``: a Python traceback on stderr;
* ``unclear``: refused without a traceback, but not in one line naming the input with exit status 2 (e.g. Hydra's
  own multi-line report of an override it cannot merge, exit status 1);
* ``wrong``: the bad input was accepted, the command hung, or a marker planted outside the input showed up in an
  output (something outside the input was read);
* ``code execution``: a command planted in a pickle ran.

Goal: at least 95% ``clear``, no ``wrong``, no ``code execution``. Run from the repository root (a few minutes)::

    python -m benchmarks.bad_input_corpus [--jobs 2] [--only TEXT] [--verbose]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import CompletedProcess, TimeoutExpired

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the builders and NIfTI writers the tests use

from niftis import make_labels_csv, write_nifti  # noqa: E402
from test_bad_inputs import (  # noqa: E402
    MARKER,
    MAT_DEFECTS,
    SHAPE,
    SHARD_DEFECTS,
    VOLUME_DEFECTS,
    bad_volume,
    cli,
    code_pickle,
    command_args,
    edit_manifest,
    mat_folder,
    replace_shard,
    shard_set,
    volume_args,
)

from datasets.fixtures import make_records, write_mat_v5, write_mat_v73  # noqa: E402
from datasets.shards import MANIFEST, shard_name  # noqa: E402
from experiment.cli import DEBUG_ENV  # noqa: E402

OUTCOMES = ("clear", "traceback", "unclear", "wrong", "code execution")
TIMEOUT_S = 300


@dataclass
class Probe:
    """What a case runs and expects: ``argv`` after the interpreter (or a ``bash`` command line), the texts the
    one line must name, ``skip`` for lenient runs that should go on, and where planted code would leave a mark."""

    argv: list[str]
    names: tuple[str, ...]
    skip: bool = False
    ran: Path | None = None
    outside: Path | None = None
    bash: bool = False


@dataclass
class Case:
    name: str
    build: Callable[[Path, Path], Probe]  # (case folder, shared setup folder) -> probe


@dataclass
class Result:
    case: str
    outcome: str
    seconds: float
    detail: str = ""
    lines: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- running and sorting


def run_case(case: Case, setup: Path) -> Result:
    with tempfile.TemporaryDirectory(prefix="corpus-") as name:
        tmp = Path(name)
        start = time.monotonic()
        try:
            probe = case.build(tmp, setup)
            result = _run(tmp, probe)
        except TimeoutExpired:
            return Result(case.name, "wrong", time.monotonic() - start, f"no answer within {TIMEOUT_S} s")
        outcome, detail = classify(result, probe, tmp)
        return Result(case.name, outcome, time.monotonic() - start, detail, result.stderr.splitlines()[-3:])


def _run(tmp: Path, probe: Probe) -> CompletedProcess[str]:
    if not probe.bash:
        return cli(tmp, *probe.argv, timeout=TIMEOUT_S)
    env = {key: value for key, value in os.environ.items() if key != DEBUG_ENV}
    env.update(OMP_NUM_THREADS="1", BRAIN_TUMOUR_CACHE=str(tmp / "cache"))
    return subprocess.run(probe.argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def classify(result: CompletedProcess[str], probe: Probe, tmp: Path) -> tuple[str, str]:
    """The outcome of one run (see the module docstring) and a short reason."""
    if probe.ran is not None and probe.ran.exists():
        return "code execution", f"{probe.ran} was created"
    output = result.stdout + result.stderr
    outside = probe.outside or tmp / "outside"
    if MARKER in output or _leaked(tmp, outside):
        return "wrong", "a marker planted outside the input showed up"
    if "Traceback (most recent call last)" in result.stderr:
        return "traceback", result.stderr.strip().splitlines()[-1][:200]
    lines = result.stderr.splitlines()
    if probe.skip:
        named = all(name in output for name in probe.names)
        return ("clear", "skipped") if named and result.returncode in (0, 2) else ("wrong", "not reported as skipped")
    if result.returncode == 0:
        return "wrong", "accepted"
    if result.returncode == 2 and len(lines) == 1 and all(name in lines[0] for name in probe.names):
        return "clear", lines[0][:200]
    return "unclear", f"exit {result.returncode}, {len(lines)} stderr lines: {' | '.join(lines[-2:])[:200]}"


def _leaked(tmp: Path, outside: Path) -> bool:
    return any(MARKER.encode() in p.read_bytes() for p in tmp.rglob("*")
               if p.is_file() and outside not in p.parents and p.stat().st_size < 64 << 20)


# ----------------------------------------------------------------------------------------------- shared setup


def prepare(setup: Path) -> None:
    """A tiny fold-0 generator (32 px) for the synthesis cases, trained once on the embedded sample."""
    result = cli(setup, *command_args(setup, "generative_model/train.py", *SMALL, *SMALL_CROP, "net.ngf=8",
                                      "net.ndf=8", "train.epochs=1", "train.epochs_decay=0", "train.batch_size=32"),
                 timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"setup failed: {result.stderr[-2000:]}")


def generator(setup: Path) -> Path:
    return setup / "out" / "generator.pt"


# ----------------------------------------------------------------------------------------------- cases


TRAIN = "capsule_classifier/train.py"
GAN = "generative_model/train.py"
SYNTH = "generative_model/synthesize.py"
VOLUMES = "spatiospatial/run.py"
INSPECT = "-m datasets.inspect"
SMALL = ("data.image_size=32",)
SMALL_CROP = ("condition.crop_size=32",)
"""The generator's crops at 32 px (the default 64 px crops do not fit 32 px slices)."""


def _label(command: str) -> str:
    """``capsule_classifier/train.py``, ``datasets.inspect``, ... for case names."""
    return command.split()[-1]


def entry_args(tmp: Path, setup: Path, command: str, *overrides: str) -> list[str]:
    """``command`` with ``overrides`` at 32 px (2D), the synthesis cases' generator, outputs under ``tmp``."""
    small = [] if command == VOLUMES or any("image_size" in o for o in overrides) else list(SMALL)
    small += list(SMALL_CROP) if small and command == GAN and not any("crop_size" in o for o in overrides) else []
    checkpoint = [f"checkpoint={generator(setup)}"] if command == SYNTH else []
    return command_args(tmp, command, *overrides, *small, *checkpoint)


def hydra(command: str, override: str, name: str | None = None) -> Case:
    """A Hydra entry point run with one bad ``override`` on the embedded data; the line must name ``name``
    (default: the key, or the path a path-valued key names)."""
    def build(tmp: Path, setup: Path) -> Probe:
        return Probe(entry_args(tmp, setup, command, override), (name or _named(override),))
    return Case(f"{_label(command)} | setting: {override}", build)


def shard_case(command: str, defect: str) -> Case:
    def build(tmp: Path, setup: Path) -> Probe:
        folder, outside = shard_set(tmp / "in" / "shards"), tmp / "outside"
        builder, _ = SHARD_DEFECTS[defect] if defect in SHARD_DEFECTS else (EXTRA_SHARD_DEFECTS[defect], "")
        builder(folder, outside)
        if command == TRAIN:
            argv = entry_args(tmp, setup, TRAIN, f"pretrain.shards={folder}", "train.epochs=1", "pretrain.epochs=1")
        else:
            argv = ["-m", "generative_model.consistency", str(folder), str(tmp / "model.onnx")]
        return Probe(argv, (str(folder),), ran=outside / "ran")
    return Case(f"{_label(command)} | shards: {defect}", build)


def _truncate_shard(folder: Path, outside: Path) -> None:
    path = folder / shard_name(0)
    path.write_bytes(path.read_bytes()[:100])


def _float_images(folder: Path, outside: Path) -> None:
    replace_shard(folder, pickle.dumps({"images": np.zeros((6, 32, 32)), "labels": np.zeros(6, np.int64),
                                        "meta": {}}), True)


def _manifest_link_out(folder: Path, outside: Path) -> None:
    outside.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).rename(outside / MANIFEST)
    (folder / MANIFEST).symlink_to(outside / MANIFEST)


EXTRA_SHARD_DEFECTS: dict[str, Callable[[Path, Path], None]] = {
    "manifest not JSON": lambda f, o: (f / MANIFEST).write_text("{not json"),
    "manifest is a list": lambda f, o: (f / MANIFEST).write_text("[1, 2]"),
    "manifest declares 100000 px images": lambda f, o: edit_manifest(f, lambda m: m.update(
        image_size=[100000, 100000])),
    "manifest declares 8192 px images x 10^6": lambda f, o: edit_manifest(f, lambda m: (
        m.update(image_size=[8192, 8192], num_images=10**6, class_counts=[10**6, 0, 0]),
        m["shards"][0].update(count=10**6, class_counts=[10**6, 0, 0]))),
    "num_images lies": lambda f, o: edit_manifest(f, lambda m: m.update(num_images=999)),
    "shard listed twice": lambda f, o: edit_manifest(f, lambda m: m["shards"].append(m["shards"][0])),
    "shard missing": lambda f, o: (f / shard_name(1)).unlink(),
    "shard truncated": _truncate_shard,
    "sha256 not hex": lambda f, o: edit_manifest(f, lambda m: m["shards"][0].update(sha256="zz")),
    "wrong format tag": lambda f, o: edit_manifest(f, lambda m: m.update(format="other")),
    "float images in a checksummed shard": _float_images,
    "code in shard 1, checksum kept": lambda f, o: (f / shard_name(1)).write_bytes(code_pickle(o / "ran")),
    "manifest symlink leads out": _manifest_link_out,
    "folder missing": lambda f, o: shutil.rmtree(f),
}


def mat_case(command: str, defect: str, strict: bool = True) -> Case:
    def build(tmp: Path, setup: Path) -> Probe:
        folder, outside = mat_folder(tmp / "mat"), tmp / "outside"
        builder = MAT_DEFECTS.get(defect) or EXTRA_MAT_DEFECTS[defect]
        name = builder(folder, outside)
        lenient = () if strict else ("data.strict=false",)
        argv = entry_args(tmp, setup, command, f"data.root={folder}", *lenient)
        return Probe(argv, (str(folder / name) if strict else name,), skip=not strict)
    mode = "" if strict else " (data.strict=false)"
    return Case(f"{_label(command)} | .mat: {defect}{mode}", build)


def _rewrite(folder: Path, edit: Callable[[dict], None], version: str = "7.3") -> str:
    record = make_records(1, size=32, small_size=None)[0]
    fields = {"label": np.array([[1.0]]), "PID": record.subject, "image": record.image,
              "tumorBorder": record.border[None, :], "tumorMask": record.mask}
    edit(fields)
    (write_mat_v5 if version == "5" else write_mat_v73)(folder / "1.mat", {"cjdata": fields})
    return "1.mat"


def _soft_link(folder: Path, outside: Path) -> str:
    with h5py.File(folder / "1.mat", "r+") as handle:
        del handle["cjdata/image"]
        handle["cjdata/image"] = h5py.SoftLink("/cjdata/tumorMask")
    return "1.mat"


def _virtual(folder: Path, outside: Path) -> str:
    outside.mkdir(parents=True, exist_ok=True)
    with h5py.File(outside / "source.h5", "w") as source:
        source["x"] = np.full((32, 32), 5150, np.int16)
    layout = h5py.VirtualLayout(shape=(32, 32), dtype="int16")
    layout[:] = h5py.VirtualSource(str(outside / "source.h5"), "x", shape=(32, 32))
    with h5py.File(folder / "1.mat", "r+") as handle:
        del handle["cjdata/image"]
        handle["cjdata"].create_virtual_dataset("image", layout).attrs["MATLAB_class"] = np.bytes_("int16")
    return "1.mat"


def _overwrite(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return path.name


def _duplicate_id(folder: Path, outside: Path) -> str:
    (folder / "002.mat").write_bytes((folder / "2.mat").read_bytes())
    return ""


EXTRA_MAT_DEFECTS: dict[str, Callable[[Path, Path], str]] = {
    "HDF5 soft link": _soft_link,
    "HDF5 virtual dataset": _virtual,
    "truncated file": lambda f, o: _overwrite(f / "1.mat", (f / "1.mat").read_bytes()[:700]),
    "random bytes": lambda f, o: _overwrite(f / "1.mat", b"\x00garbage" * 64),
    "label 7": lambda f, o: _rewrite(f, lambda d: d.update(label=np.array([[7.0]]))),
    "no PID": lambda f, o: _rewrite(f, lambda d: d.pop("PID")),
    "3-D image": lambda f, o: _rewrite(f, lambda d: d.update(image=np.zeros((4, 4, 4), np.int16))),
    "mask of another shape": lambda f, o: _rewrite(f, lambda d: d.update(tumorMask=np.zeros((8, 8), bool))),
    "NaN pixels": lambda f, o: _rewrite(f, lambda d: d.update(image=np.full((32, 32), np.nan))),
    "v5 label 7": lambda f, o: _rewrite(f, lambda d: d.update(label=np.array([[7.0]])), "5"),
    "v5 complex image": lambda f, o: _rewrite(f, lambda d: d.update(image=np.ones((32, 32)) * 1j), "5"),
    "7.mat and 007.mat": _duplicate_id,
}


def volume_case(defect: str, strict: bool = True) -> Case:
    def build(tmp: Path, setup: Path) -> Probe:
        root = make_labels_csv(tmp / "volumes", per_class=1, shape=SHAPE)
        path = root / "LGG" / "LGG_0.nii.gz"
        if defect in VOLUME_DEFECTS:
            bad_volume(path, defect)
        else:
            EXTRA_VOLUME_DEFECTS[defect](path)
        lenient = () if strict else ("data.strict=false",)
        return Probe(volume_args(tmp, root, *lenient), (str(path),), skip=not strict)
    return Case(f"{_label(VOLUMES)} | NIfTI: {defect}{'' if strict else ' (data.strict=false)'}", build)


def _nifti_header(path: Path, **fields: object) -> None:
    import nibabel as nib
    from niftis import brain

    data = brain(SHAPE, "LGG", 7)
    header = nib.Nifti1Image(data, np.eye(4)).header
    for key, value in fields.items():
        header[key] = value
    nib.save(nib.Nifti1Image(data, None, header), str(path))


def _declared_shape(path: Path, shape: tuple[int, int, int]) -> None:
    """A small volume whose header declares ``shape`` (nibabel would rewrite ``dim`` on save: patch the bytes)."""
    import nibabel as nib

    data = bytearray(nib.Nifti1Image(np.ones(SHAPE, np.float32), np.eye(4)).to_bytes())
    data[40:56] = struct.pack("<8h", 3, *shape, 1, 1, 1, 1)  # the header's dim field
    path.write_bytes(gzip.compress(bytes(data)))


EXTRA_VOLUME_DEFECTS: dict[str, Callable[[Path], object]] = {
    "not NIfTI bytes": lambda p: p.write_bytes(b"\x1f\x8b garbage"),
    "4-D volume": lambda p: write_nifti(p, np.ones((8, 8, 8, 3), np.float32)),
    "all-zero volume": lambda p: write_nifti(p, np.zeros(SHAPE, np.float32)),
    "NaN voxels": lambda p: write_nifti(p, np.full(SHAPE, np.nan, np.float32)),
    "parallel voxel axes": lambda p: _nifti_header(p, srow_x=[1, 0, 0, 0], srow_y=[1, 0, 0, 0], srow_z=[0, 0, 1, 0],
                                                   sform_code=2, qform_code=0),
    "declares 30000^3 voxels": lambda p: _declared_shape(p, (30000, 30000, 30000)),
}


def report_case(defect: str) -> Case:
    def build(tmp: Path, setup: Path) -> Probe:
        runs, out = tmp / "runs", tmp / "report"
        name = REPORT_DEFECTS[defect](runs, out)
        return Probe(["capsule_classifier/report.py", str(runs), "--out", str(out)], (name,))
    return Case(f"capsule_classifier/report.py | {defect}", build)


def _summary(runs: Path, fold: int = 0, **changes: object) -> Path:
    """A fold summary as ``capsule_classifier/train.py`` writes it, with ``changes``."""
    from datasets.core import CLASS_NAMES
    from experiment.metrics import classification_metrics

    labels = np.arange(30) % 3
    summary = {"model": "capsnet", "tag": "scratch", "split": "grouped", "k": 7, "image_size": 128, "fold": fold,
               "class_names": list(CLASS_NAMES), "test": classification_metrics(labels, labels, CLASS_NAMES),
               **changes}
    path = runs / f"fold{fold}" / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary))
    return path


def _summary_text(text: str) -> Callable[[Path, Path], str]:
    def build(runs: Path, out: Path) -> str:
        path = _summary(runs)
        path.write_text(text)
        return str(path)
    return build


def _same_fold_twice(runs: Path, out: Path) -> str:
    _summary(runs / "a")
    _summary(runs / "b")
    return "appear more than once"


def _other_class_names(runs: Path, out: Path) -> str:
    _summary(runs)
    return str(_summary(runs, fold=1, class_names=["a", "b", "c"]))


def _out_is_a_file(runs: Path, out: Path) -> str:
    _summary(runs)
    out.write_text("not a folder")
    return str(out)


REPORT_DEFECTS: dict[str, Callable[[Path, Path], str]] = {
    "runs path missing": lambda runs, out: str(runs),
    "no summary.json": lambda runs, out: (runs.mkdir(), str(runs))[1],
    "summary not JSON": _summary_text("{"),
    "summary is a list": _summary_text("[]"),
    "summary lacks test": _summary_text(json.dumps({"model": "capsnet", "fold": 0})),
    "test accuracy is text": lambda runs, out: str(_summary(runs, test={"accuracy": "high", "macro_f1": 1})),
    "same fold twice": _same_fold_twice,
    "class names differ": _other_class_names,
    "--out is a file": _out_is_a_file,
}
"""Defect -> builder(runs folder, --out) returning what the one line must name."""


def replay_case(defect: str) -> Case:
    def build(tmp: Path, setup: Path) -> Probe:
        run = tmp / "run"
        extra, name = REPLAY_DEFECTS[defect](run, tmp / "outside")
        return Probe(["-m", "experiment.replay", str(run), *extra], (name,))
    return Case(f"experiment.replay | {defect}", build)


def _metrics(run: Path, *records: object) -> str:
    """Write ``run/metrics.jsonl`` (a str record is written as it is); return ``<path>:1``."""
    run.mkdir(parents=True, exist_ok=True)
    path = run / "metrics.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return f"{path}:1"


def _png(path: Path, width: int, height: int, note: str = "") -> Path:
    """A tiny grey PNG with a text ``note`` whose header declares ``width`` x ``height``."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x80"))
                     + chunk(b"tEXt", b"note\x00" + note.encode()) + chunk(b"IEND", b""))
    return path


def _image_record(run: Path, path: str) -> str:
    return _metrics(run, {"kind": "image", "phase": "train", "epoch": 1, "step": 1, "name": "grid", "path": path})


def _image_outside(run: Path, outside: Path) -> tuple[list[str], str]:
    _png(outside / "x.png", 1, 1, MARKER)
    return [], _image_record(run, "../outside/x.png")


def _bomb_png(run: Path, outside: Path) -> tuple[list[str], str]:
    _png(run / "images" / "bomb.png", 30000, 30000)
    return [], _image_record(run, "images/bomb.png")


def _server_down(run: Path, outside: Path) -> tuple[list[str], str]:
    _metrics(run, {"kind": "scalars", "phase": "train", "step": 1, "values": {"loss": 1.0}})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return ["--port", str(port)], "unreachable"


REPLAY_DEFECTS: dict[str, Callable[[Path, Path], tuple[list[str], str]]] = {
    "run dir missing": lambda run, outside: ([], str(run)),
    "metrics line not JSON": lambda run, outside: ([], _metrics(run, "{oops", {"kind": "other"})),
    "scalars without values": lambda run, outside: ([], _metrics(run, {"kind": "scalars", "phase": "t", "step": 1})),
    "image outside the run": _image_outside,
    "image path /etc/passwd": lambda run, outside: ([], _image_record(run, "/etc/passwd")),
    "decompression-bomb PNG": _bomb_png,
    "visdom server down": _server_down,
}
"""Defect -> builder(run dir, outside folder) returning (extra arguments, what the one line must name)."""


def consistency_case(defect: str) -> Case:
    def build(tmp: Path, setup: Path) -> Probe:
        folder = shard_set(tmp / "shards")
        model = tmp / "model.onnx"
        CLASSIFIER_DEFECTS[defect](model, tmp / "outside")
        return Probe(["-m", "generative_model.consistency", str(folder), str(model)], (str(model),))
    return Case(f"generative_model.consistency | classifier: {defect}", build)


def _onnx(path: Path, side: int, external: str | None = None) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((1, 3), np.float32), "w")
    if external is not None:
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", external), ("offset", "0"), ("length", "12")):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 1, side, side])
    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])
    nodes = [helper.make_node("ReduceMean", ["image"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("Add", ["m", "w"], ["probabilities"])]
    graph = helper.make_graph(nodes, "g", [image], [out], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def _outside_weights(path: Path, outside: Path) -> None:
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "w.bin").write_bytes(np.zeros(3, np.float32).tobytes())
    _onnx(path, 32, external="../outside/w.bin")


CLASSIFIER_DEFECTS: dict[str, Callable[[Path, Path], object]] = {
    "missing": lambda p, o: None,
    "not ONNX": lambda p, o: p.write_bytes(b"garbage"),
    "64 px input for 32 px shards": lambda p, o: _onnx(p, 64),
    "weights in a file outside its folder": _outside_weights,
}


def script_case(script: str, *args: str, names: tuple[str, ...]) -> Case:
    def build(tmp: Path, setup: Path) -> Probe:
        more = [f"out={tmp / 'out'}"] if script == "cross_validate.sh" else [f"out={tmp / 'out'}",
                                                                             f"run_dir={tmp / 'run'}"]
        return Probe(["bash", f"scripts/{script}", *args, *more], names, bash=True)
    return Case(f"scripts/{script} | {' '.join(args)}", build)


def cases() -> list[Case]:
    """The corpus: the issue's kinds times the commands that read them, plus misuse of every command."""
    corpus = [shard_case(command, defect) for command in ("generative_model.consistency", TRAIN)
              for defect in (*SHARD_DEFECTS, *EXTRA_SHARD_DEFECTS)]
    corpus += [mat_case(command, defect) for command in (INSPECT, TRAIN, GAN, SYNTH) for defect in MAT_DEFECTS]
    corpus += [mat_case(INSPECT, defect) for defect in EXTRA_MAT_DEFECTS]
    corpus += [mat_case(INSPECT, defect, strict=False) for defect in MAT_DEFECTS]
    corpus += [volume_case(defect) for defect in (*VOLUME_DEFECTS, *EXTRA_VOLUME_DEFECTS)]
    corpus += [volume_case(defect, strict=False) for defect in VOLUME_DEFECTS]
    settings = {
        TRAIN: ["train.epochs=0", "train.epochs=-1", "train.batch_size=0", "train.lr=-1", "train.lr=0",
                "eval_batch_size=0", "data.k=1", "data.k=11", "data.image_size=100", "fold=99", "fold=-1",
                "data.split=foo", "data.val_fraction=0.7", "train.schedule=linear", "pretrain.epochs=0",
                "train.patience=-1", "data.root=/nonexistent", "pretrain.shards=/nonexistent"],
        GAN: ["train.epochs=0", "train.batch_size=0", "train.lr=-1", "train.log_every=0", "train.preview_count=0",
              "net.norm=foo", "loss.gan_mode=foo", "data.image_size=100", "fold=99", "net.ngf=0", "train.beta1=1.5"],
        SYNTH: ["count=0", "shard_size=0", "batch_size=0", "proportions=foo", "data.image_size=100",
                "augment.flip_prob=2", "fold=1"],
        VOLUMES: ["train.epochs=0", "train.batch_size=0", "train.lr=-1", "data.shape=[0,64,64]", "data.shape=[64,64]",
                  "data.spacing=[0,3,3]", "data.time_axis=w", "data.layout=foo", "data.modality=foo",
                  "data.val_fraction=0.9", "data.shape=[100000,64,64]", "train.num_workers=-1",
                  "data.hook=nosuch.module:fn", "data.root=/nonexistent"],
        INSPECT: ["data.image_size=100", "data.k=1", "data.root=/nonexistent", "data.split=foo",
                  "data.val_fraction=0", f"data.root={ROOT / 'README.md'}"],
    }
    corpus += [hydra(command, override) for command, overrides in settings.items() for override in overrides]
    corpus += [hydra(command, "nosuch=1") for command in (TRAIN, GAN, VOLUMES, SYNTH, INSPECT)]
    corpus += [hydra(command, override) for command in (TRAIN, GAN, VOLUMES)
               for override in ("train.epochs=abc", "train.epochs=[", "device=cuda:7")]
    corpus += [Case(f"capsule_classifier.layout | {override}", _layout(override)) for override in
               ("data.k=1", "nosuch=1", "data.image_size=abc", "model=foo", "train.epochs=0")]
    corpus += [report_case(defect) for defect in REPORT_DEFECTS]
    corpus += [replay_case(defect) for defect in REPLAY_DEFECTS]
    corpus += [consistency_case(defect) for defect in CLASSIFIER_DEFECTS]
    corpus += [script_case("cross_validate.sh", "fold", names=("fold",)),
               script_case("cross_validate.sh", "synthetic=maybe", names=("synthetic",)),
               script_case("cross_validate.sh", "data.k=1", names=("data.k",)),
               script_case("cross_validate.sh", "train.epochs=0", names=("train.epochs",)),
               script_case("synthesize.sh", "nosuch=1", names=("nosuch",)),
               script_case("synthesize.sh", "train.epochs=0", "data.image_size=32", names=("train.epochs",))]
    return corpus


def _named(override: str) -> str:
    key, _, value = override.partition("=")
    return value if key in ("data.root", "pretrain.shards") else key


def _layout(override: str) -> Callable[[Path, Path], Probe]:
    return lambda tmp, setup: Probe(["-m", "capsule_classifier.layout", override], (_named(override).split("=")[0],))


# ----------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    parser.add_argument("--only", default="", help="run only cases whose name contains this text")
    parser.add_argument("--verbose", action="store_true", help="print every case, not only the unclear ones")
    args = parser.parse_args(argv)
    corpus = [case for case in cases() if args.only in case.name]
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="corpus-setup-") as name:
        setup = Path(name)
        if any(SYNTH in case.name or "synthesize" in case.name for case in corpus):
            prepare(setup)
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            results = list(pool.map(lambda case: run_case(case, setup), corpus))
    counts = Counter(result.outcome for result in results)
    for result in results:
        if args.verbose or result.outcome != "clear":
            print(f"{result.outcome:<15} {result.seconds:6.1f}s  {result.case}\n{'':23}{result.detail}")
    print(f"\n{len(results)} bad inputs in {time.monotonic() - start:.0f} s")
    for outcome in OUTCOMES:
        print(f"  {outcome:<15} {counts[outcome]:4d}  ({100 * counts[outcome] / max(len(results), 1):.1f}%)")


if __name__ == "__main__":
    main()
