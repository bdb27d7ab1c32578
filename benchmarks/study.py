"""Study v2 (issue 17): every row, protocol, image size, seed and fold of the 2D protocol as its own resumable job,
``jobs`` of them side by side, then one cross-validation report over the whole study.

    ./scripts/study.sh [--plan] [rows=NAME,...] [protocols=cvind,grouped] [seeds=0,1,2] [sizes=128,256]
        [folds=0,1,...] [jobs=2] [threads=1] [out=runs/study-v2/DATA] [external=runs/external/glioma]
        [data.root=PATH] [data.KEY=VALUE ...] [gan.KEY=VALUE ... (to scripts/synthesize.sh)]
        [KEY=VALUE ... (to capsule_classifier/train.py, every row)] [--debug]

Rows (:data:`ROWS`), with their default grid; ``protocols=``, ``sizes=`` and ``seeds=`` replace the grid of every
selected row, ``folds=`` keeps only those folds:

Every capsnet row has the tumour attention gate (:data:`GATE`).

* ``capsnet-real``: capsnet on real slices only (cvind and grouped, 128 and 256 px, seeds 0 1 2);
* ``capsnet-synthetic``: capsnet pretrained on the fold's synthetic shards, then fine-tuned (cvind and grouped,
  128 px, seeds 0 1 2);
* ``capsnet-control``: capsnet on real slices only, with the pretraining's optimisation steps spent as extra real
  epochs (:data:`CONTROL_RULE`), under tag ``control`` so the report keeps it apart (grid as capsnet-synthetic);
* ``resnet50-real`` and ``resnet50-synthetic``: ResNet50 with ``cpu_bf16=true`` (cvind, 128 px, seed 0).

Protocols: ``cvind`` (the authors' 5 patient-wise folds, the primary one) and ``grouped`` (7 folds grouped by
``subject``, validation carved by subject too).

Jobs, each one process with ``OMP_NUM_THREADS=threads`` and its output in ``<out>/logs/<job>.log``; a job is done
when its output exists, so re-running the same command after a crash, SIGKILL or reboot skips what finished and
resumes the rest from its checkpoints (a failed job is reported, and the jobs that need it are skipped):

* ``prepare``: the out-of-scope set (``out_of_scope=``) and the external glioma check (``external=``), when missing;
* ``generator``: ``scripts/synthesize.sh`` for one protocol, size, seed and fold, shared by the synthetic rows;
* ``train``: ``capsule_classifier/train.py`` for one row and fold (trust step included), then ``study.json`` beside
  its summary (the row, the command, the control's epochs and rule, the generator's wall time);
* ``external``: ``capsule_classifier/evaluate.py`` of the fold's model on the external glioma check, moved into
  ``<run>/external_glioma/`` once complete;
* ``report``: ``capsule_classifier/report.py`` over every finished run of the study into ``<out>/report/`` (again
  whenever a run is newer than it, and also when some jobs failed), with the study table and the paired tests over
  folds x seeds.

Layout (``out=`` defaults to ``runs/study-v2/<data>``, ``<data>`` being ``sample`` for the embedded sample or the
name of ``data.root``'s folder): ``<out>/<split>-k<k>/<size>px/seed<seed>/`` is a ``scripts/cross_validate.sh``
``out=`` folder (``generator/``, ``shards/``, ``classifier/<model>/<split>-k<k>/<tag>/fold<f>/``), so
``cross_validate.sh`` and ``scripts/publish_results.sh`` work on it. Use a fresh ``out=`` for a new study: a finished
run is never retrained. A lock on ``<out>/.lock``, held by the driver and inherited by every job it starts, refuses
a second driver on the same study while any of them still runs; SIGTERM, SIGINT or SIGHUP to the driver stops its
jobs. ``--plan`` prints every job, done or to run, with its estimated time on one CPU thread and the totals, and
runs nothing (it reads the data to count each fold's training slices).
"""
from __future__ import annotations

import fcntl
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from capsule_classifier.layout import CONFIG_DIR, fold_run_dirs
from capsule_classifier.report import EXTERNAL_CHECK, STUDY_FILE, read_json_object
from datasets.config import split_tag
from datasets.external_glioma import DEFAULT_OUT as DEFAULT_EXTERNAL
from datasets.out_of_scope_set import VERSION as OUT_OF_SCOPE_VERSION
from datasets.splits import fold_indices, load_data, load_or_make_folds
from experiment.atomic import atomic_write_json
from experiment.cli import reports_user_errors, strip_debug_flag
from experiment.config import rename_legacy_overrides
from experiment.errors import ConfigError, UserError
from generative_model.config import GeneratorTrainConfig

ROOT = Path(__file__).resolve().parents[1]
SYNTHESIZE_CONFIG = ROOT / "generative_model" / "configs" / "synthesize.yaml"


@dataclass(frozen=True)
class Row:
    """One row of the study table: a model, its run-directory tag, how it trains, and its default grid."""

    model: str
    tag: str
    pretrain: bool = False
    control: bool = False
    protocols: tuple[str, ...] = ("cvind", "grouped")
    sizes: tuple[int, ...] = (128,)
    seeds: tuple[int, ...] = (0, 1, 2)
    overrides: tuple[str, ...] = ()


GATE = ("+model.kwargs.attention=true", "+model.kwargs.attention_stride=4", "+model.kwargs.attention_dilations=[2,4,8]")
"""capsnet's tumour attention gate at stride 4 with its context convolutions, on in every capsnet row (chosen on the
cvind folds of ``benchmarks/bench_generalisation.py``: ``after_attention_context`` against ``after_attention_s4``,
``after_attention`` and ``after_long``)."""
ROWS = {"capsnet-real": Row("capsnet", "scratch", sizes=(128, 256), overrides=GATE),
        "capsnet-synthetic": Row("capsnet", "synthetic", pretrain=True, overrides=GATE),
        "capsnet-control": Row("capsnet", "control", control=True, overrides=GATE),
        "resnet50-real": Row("resnet50", "scratch", protocols=("cvind",), seeds=(0,), overrides=("cpu_bf16=true",)),
        "resnet50-synthetic": Row("resnet50", "synthetic", pretrain=True, protocols=("cvind",), seeds=(0,),
                                  overrides=("cpu_bf16=true",))}
PROTOCOLS = {"cvind": ("data.split=cvind", "data.group_by=subject"),
             "grouped": ("data.split=grouped", "data.k=7", "data.group_by=subject")}
"""Protocol name -> its ``data.*`` settings (the order of this dict is the order the study runs them in)."""
CONTROL_RULE = ("train.epochs + ceil(pretrain.epochs x floor(S / B) / floor(R / B)) epochs on real slices, where S is "
                "the synthetic slices of the fold's shards (the generator's count), R the fold's real training slices "
                "and B train.batch_size (an epoch is floor(n / B) steps): the synthetic row's pretraining steps spent "
                "as extra real epochs, under the same early stopping and a cosine schedule over all of them")
"""The compute-matched control's training budget (:func:`control_epochs`), written into each control run's
``study.json``."""

SECONDS_PER_SLICE_EPOCH = {"capsnet": 0.0117, "resnet50": 0.085}
"""Classifier wall time per training slice per epoch at 128 px on one thread (validation and the trust step
included), measured on the 2-core development CPU with two jobs side by side: capsnet over the 5 cvind folds of
``benchmarks/bench_generalisation.py`` ``after_long`` (robust augmentation, float32; SD 0.0015), ResNet50 over the
7 grouped-k7 folds in ``docs/results`` (``cpu_bf16=true``; SD 0.0045). Other sizes: times (size / 128) **
:data:`SIZE_EXPONENT`."""
SIZE_EXPONENT = 2.25
"""Cost against image side: a capsnet training step (batch 32, one thread, no augmentation) took 4.75x as long at
256 px as at 128 px (0.87 against 0.183 s); 2 ** 2.25 = 4.76. Assumed for ResNet50 and the generator."""
MEASURED_BF16 = {"capsnet": False, "resnet50": True}
BF16_SPEEDUP = 2.0
"""``cpu_bf16=true`` is ~2x faster for ResNet50 on AMX CPUs (``configs/model/resnet50.yaml``); assumed for capsnet."""
GENERATOR_SECONDS_PER_SLICE_EPOCH = 0.107
"""pix2pix training per real training slice per epoch at 128 px (12 generator folds in ``docs/results``, SD 0.006)."""
SYNTHESIS_SECONDS_PER_SLICE = 0.03
"""Synthesis per synthetic slice at 128 px (34 slices/s, ``generative_model/configs/train.yaml``)."""
FIXED_SECONDS = {"out-of-scope set": 120.0, "external check set": 60.0, "external": 20.0, "report": 30.0}
"""Rough wall times of the small jobs (imports included)."""
DEFAULT_OUT = Path("runs/study-v2")
"""The studies' folder: ``out=`` defaults to ``<DEFAULT_OUT>/<data tag>`` (``sample`` or the ``data.root`` name)."""
POLL_S = 0.5
STOP_GRACE_S = 30.0
OUT_MARK = "@out@"
"""Stands for the classifier's ``out=`` while asking :func:`capsule_classifier.layout.fold_run_dirs` for run dirs."""


@dataclass
class Settings:
    """The command line: which part of the study, how to run it, and the overrides for each step."""

    rows: tuple[str, ...] = tuple(ROWS)
    protocols: tuple[str, ...] | None = None
    sizes: tuple[int, ...] | None = None
    seeds: tuple[int, ...] | None = None
    folds: tuple[int, ...] | None = None
    jobs: int = 2
    threads: int = 1
    out: Path | None = None
    external: Path = DEFAULT_EXTERNAL
    plan: bool = False
    data: list[str] = field(default_factory=list)
    gan: list[str] = field(default_factory=list)
    train: list[str] = field(default_factory=list)


@dataclass
class Job:
    """One process with a done test; ``before`` and ``after`` run in the driver, ``after`` only on success."""

    name: str
    group: str
    command: Callable[[], list[str]]
    done: Callable[[], bool]
    cost_s: float
    note: str = ""
    deps: list[str] = field(default_factory=list)
    order: tuple[int, ...] = ()
    run_dir: Path | None = None
    small: bool = False
    needs_success: bool = True
    before: Callable[[], None] | None = None
    after: Callable[[], None] | None = None


def parse_args(argv: Sequence[str]) -> Settings:
    """The study's :class:`Settings` from ``key=value`` words and ``--plan``.

    Raises:
        ConfigError: an unknown row or protocol, a number that is not one, a key the study sets itself, a bare word.
    """
    settings = Settings()
    lists = {"rows": str, "protocols": str, "sizes": int, "seeds": int, "folds": int}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if arg == "--plan":
            settings.plan = True
        elif not sep:
            raise ConfigError(f"study: expected key=value, --plan or --debug, got {arg!r}")
        elif key in lists:
            setattr(settings, key, tuple(_number(key, item, lists[key]) for item in value.split(",") if item))
        elif key in ("jobs", "threads"):
            setattr(settings, key, _number(key, value, int))
        elif key in ("out", "external"):
            setattr(settings, key, Path(value))
        elif key in ("data.split", "data.k", "data.image_size", "model", "fold", "seed", "tag", "pretrain.shards"):
            raise ConfigError(f"study: {key}= is set per job; choose with rows=, protocols=, sizes=, seeds=, folds=")
        elif key.startswith("data."):
            settings.data.append(arg)
        elif key.startswith("gan."):
            settings.gan.append(arg[len("gan."):])
        else:
            settings.train.append(arg)
    for key, known in (("rows", ROWS), ("protocols", PROTOCOLS)):
        unknown = [name for name in getattr(settings, key) or () if name not in known]
        if unknown or getattr(settings, key) == ():
            raise ConfigError(f"study: {key}= takes names of {list(known)}, got {unknown or 'none'}")
    if settings.out is None:
        settings.out = DEFAULT_OUT / _data_tag(settings.data)
    if settings.jobs < 1 or settings.threads < 1:
        raise ConfigError(f"study: jobs and threads must be positive, got jobs={settings.jobs} "
                          f"threads={settings.threads}")
    return settings


def _data_tag(data: Sequence[str]) -> str:
    """``sample`` for the embedded sample, else the name of ``data.root`` (as ``scripts/cross_validate.sh`` tags it)."""
    roots = [arg.partition("=")[2] for arg in data if arg.startswith("data.root=")]
    root = roots[-1] if roots else ""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", Path(root).name) if root not in ("", "null", "None") else "sample"


def _number(key: str, value: str, kind: type) -> Any:
    try:
        return kind(value)
    except ValueError as error:
        raise ConfigError(f"study: {key}= takes {kind.__name__} values, got {value!r}") from error


def control_epochs(epochs: int, pretrain_epochs: int, synthetic: int, real: int, batch: int) -> int:
    """The compute-matched control's training epochs (:data:`CONTROL_RULE`)."""
    return epochs + math.ceil(pretrain_epochs * (synthetic // batch) / max(real // batch, 1))


def _compose(overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose("train", overrides=list(overrides))


def _gan_setting(settings: Settings, key: str, default: int) -> int:
    """A generator setting from the ``gan.*`` overrides (the last one wins), else ``default``."""
    values = [arg.partition("=")[2] for arg in rename_legacy_overrides(settings.gan) if arg.partition("=")[0] == key]
    return _number(f"gan.{key}", values[-1], int) if values else default


class StudyPlan:
    """Every job of the selected part of the study: the shared preparations, per fold the generator and the rows'
    training (in protocol, seed, fold order), the external checks, and the report."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._generators: dict[str, Job] = {}
        self.train_slices: dict[str, list[int]] = {}
        """Real training slices of every fold, per protocol's split tag (counted while planning)."""
        self._layouts: dict[tuple[str, ...], tuple[list[str], DictConfig]] = {}
        self.out_of_scope = Path("runs/out_of_scope")
        defaults = GeneratorTrainConfig()
        self.gan_epochs = (_gan_setting(settings, "train.epochs", defaults.epochs)
                           + _gan_setting(settings, "train.epochs_decay", defaults.epochs_decay))
        self.synthetic = _gan_setting(settings, "count", int(OmegaConf.load(SYNTHESIZE_CONFIG).count))
        grid = [(name, protocol, size, seed) for name in settings.rows
                for protocol in settings.protocols or ROWS[name].protocols
                for size in settings.sizes or ROWS[name].sizes for seed in settings.seeds or ROWS[name].seeds]
        trains = [job for cell in grid for job in self._row_jobs(*cell)]
        if not trains:
            raise ConfigError("study: the selection holds no job")
        oos, external = self.out_of_scope, settings.external
        prepared = [Job("prepare out-of-scope set", "shared", _module("datasets.out_of_scope_set", oos),
                        lambda: _current_set(oos), FIXED_SECONDS["out-of-scope set"], str(oos), small=True),
                    Job("prepare external check set", "shared", _module("datasets.external_glioma", external),
                        (external / "README.json").is_file, FIXED_SECONDS["external check set"], str(external),
                        small=True)]
        for job in trains:
            job.deps.append(prepared[0].name)
        externals = [self._external_job(job, prepared[1].name) for job in trains]
        ordered = sorted([*self._generators.values(), *trains], key=lambda job: job.order)
        self.jobs = {job.name: job for job in [*prepared, *ordered, *externals]}
        self.jobs["report"] = self._report_job([job.name for job in [*trains, *externals]])

    def _row_jobs(self, name: str, protocol: str, size: int, seed: int) -> list[Job]:
        """The training job of every selected fold of one row, protocol, size and seed (and their generators)."""
        row, s = ROWS[name], self.settings
        overrides = [f"model={row.model}", f"seed={seed}", *PROTOCOLS[protocol], f"data.image_size={size}", *s.data,
                     f"tag={row.tag}", "monitor.visdom=false", *row.overrides, *s.train]
        placed, cfg = self._layout(tuple(arg for arg in overrides if arg != f"seed={seed}"))
        self.out_of_scope = Path(cfg.out_of_scope)
        k_tag = split_tag(cfg.data.split, cfg.data.k)
        combo = s.out / k_tag / f"{size}px" / f"seed{seed}"
        overrides.append(f"out={combo / 'classifier'}")
        run_dirs = [combo / "classifier" / Path(run_dir).relative_to(OUT_MARK) for run_dir in placed]
        outside = [fold for fold in s.folds or () if not 0 <= fold < len(run_dirs)]
        if outside:
            raise ConfigError(f"study: folds={outside} outside the {len(run_dirs)} folds of {k_tag}")
        real = self._fold_train_slices(cfg, k_tag)
        rate = SECONDS_PER_SLICE_EPOCH[row.model] * (size / 128) ** SIZE_EXPONENT
        rate *= BF16_SPEEDUP ** (int(MEASURED_BF16[row.model]) - int(bool(cfg.cpu_bf16)))
        epochs, pretrain, batch = int(cfg.train.epochs), int(cfg.pretrain.epochs), int(cfg.train.batch_size)
        jobs = []
        for fold in s.folds if s.folds is not None else range(len(run_dirs)):
            label, order = f"{k_tag} {size}px seed{seed} fold{fold}", (list(PROTOCOLS).index(protocol), seed, fold,
                                                                          size)
            shards, run_dir = combo / "shards" / f"fold{fold}", run_dirs[fold]
            command = [*overrides, f"fold={fold}", f"pretrain.shards={shards if row.pretrain else 'null'}"]
            budget, note, control, deps = epochs, f"{epochs} epochs x {real[fold]} slices", None, []
            if row.pretrain:
                deps.append(self._generator_job(label, order, combo, fold, overrides, real[fold], size))
                note = f"{pretrain} x {self.synthetic} synthetic + {note}"
            if row.control:
                budget = control_epochs(epochs, pretrain, self.synthetic, real[fold], batch)
                control = {"rule": CONTROL_RULE, "base_epochs": epochs, "pretrain_epochs": pretrain,
                           "synthetic_slices": self.synthetic, "real_train_slices": real[fold], "batch_size": batch,
                           "train_epochs": budget}
                command.append(f"train.epochs={budget}")
                note = f"{budget} epochs (control: {epochs} + {budget - epochs}) x {real[fold]} slices"
            record = {"row": name, "model": row.model, "tag": row.tag, "protocol": protocol, "split": k_tag,
                      "image_size": size, "seed": seed, "fold": fold, "control": control,
                      "command": ["python", "capsule_classifier/train.py", *command]}
            generator = combo / "generator" / f"fold{fold}" if row.pretrain else None
            cost = rate * (budget * real[fold] + (pretrain * self.synthetic if row.pretrain else 0))
            jobs.append(Job(f"train {name} {label}", name,
                            _fixed([sys.executable, str(ROOT / "capsule_classifier" / "train.py"), *command]),
                            (run_dir / STUDY_FILE).is_file, cost, note, deps, (*order, 1), run_dir,
                            after=_study_record(run_dir, record, generator)))
        return jobs

    def _layout(self, overrides: tuple[str, ...]) -> tuple[list[str], DictConfig]:
        """The fold run directories under :data:`OUT_MARK` and the composed config of ``overrides`` (the same for
        every seed, so asked once)."""
        if overrides not in self._layouts:
            placed = fold_run_dirs([*overrides, f"out={OUT_MARK}"])  # first: a bad setting ends here in one line
            self._layouts[overrides] = placed, _compose(overrides)
        return self._layouts[overrides]

    def _fold_train_slices(self, cfg: DictConfig, k_tag: str) -> list[int]:
        """Real training slices of every fold of the protocol (the split is the same at every image size)."""
        if k_tag not in self.train_slices:
            data = load_data(cfg.data)
            manifest, _ = load_or_make_folds(data, cfg.data.splits_dir, cfg.data.split, cfg.data.k,
                                             cfg.data.split_seed, cfg.data.val_fraction)
            self.train_slices[k_tag] = [len(fold_indices(manifest, data, fold)["train"])
                                         for fold in range(len(manifest["folds"]))]
        return self.train_slices[k_tag]

    def _generator_job(self, label: str, order: tuple[int, ...], combo: Path, fold: int, overrides: Sequence[str],
                       real: int, size: int) -> str:
        """The name of the fold's generator job (made once, shared by the synthetic rows)."""
        name = f"generator {label}"
        if name not in self._generators:
            shards = combo / "shards" / f"fold{fold}"
            data = [arg for arg in overrides if arg.startswith("data.")]
            command = ["bash", str(ROOT / "scripts" / "synthesize.sh"), *data, f"fold={fold}",
                       f"seed={combo.name.removeprefix('seed')}",
                       f"run_dir={combo / 'generator' / f'fold{fold}'}", f"out={shards}", "monitor.visdom=false",
                       *self.settings.gan]
            cost = (size / 128) ** SIZE_EXPONENT * (GENERATOR_SECONDS_PER_SLICE_EPOCH * self.gan_epochs * real
                                        + SYNTHESIS_SECONDS_PER_SLICE * self.synthetic)
            self._generators[name] = Job(name, "generator", _fixed(command), (shards / "manifest.json").is_file,
                                         cost, f"{self.gan_epochs} epochs x {real} slices + {self.synthetic} synthetic",
                                         order=(*order, 0))
        return name

    def _external_job(self, train: Job, prepared: str) -> Job:
        """The external glioma check of a training job's model, written into its run directory when complete."""
        assert train.run_dir is not None
        final, partial = train.run_dir / EXTERNAL_CHECK, train.run_dir / f"{EXTERNAL_CHECK}.partial"
        command = [sys.executable, str(ROOT / "capsule_classifier" / "evaluate.py"), str(train.run_dir / "model.pt"),
                   str(self.settings.external), "--out", str(partial)]
        return Job(f"external {train.name.removeprefix('train ')}", train.group, _fixed(command),
                   (final / "report.json").is_file, FIXED_SECONDS["external"], str(self.settings.external),
                   [train.name, prepared], small=True, before=lambda: shutil.rmtree(partial, ignore_errors=True),
                   after=lambda: os.replace(partial, final))

    def _report_job(self, deps: list[str]) -> Job:
        out = self.settings.out / "report"

        def command() -> list[str]:  # every run of the study, including those of other selections
            runs = [str(path) for path in sorted(self.settings.out.glob("*/*px/seed*/classifier")) if path.is_dir()]
            return [sys.executable, str(ROOT / "capsule_classifier" / "report.py"), *runs, "--out", str(out)]

        return Job("report", "shared", command, lambda: _report_current(self.settings.out, out / "report.json"),
                   FIXED_SECONDS["report"], str(out), deps, needs_success=False)


def _fixed(command: list[str]) -> Callable[[], list[str]]:
    return lambda: command


def _module(module: str, out: Path) -> Callable[[], list[str]]:
    """A data-set builder's command: ``python -m MODULE --out OUT``."""
    return _fixed([sys.executable, "-m", module, "--out", str(out)])


def _current_set(folder: Path) -> bool:
    """The out-of-scope set in ``folder`` is built, by this version of its builder."""
    return read_json_object(folder / "README.json").get("version") == OUT_OF_SCOPE_VERSION


def _report_current(study: Path, report: Path) -> bool:
    """The report exists and no run's summary, study record or external check is newer than it."""
    if not report.is_file():
        return False
    inputs = [*study.glob(f"*/*px/seed*/classifier/**/{STUDY_FILE}"),
              *study.glob(f"*/*px/seed*/classifier/**/{EXTERNAL_CHECK}/report.json")]
    return all(path.stat().st_mtime <= report.stat().st_mtime for path in inputs)


def _study_record(run_dir: Path, record: dict[str, Any], generator: Path | None) -> Callable[[], None]:
    """Write ``study.json`` beside a finished run's summary (with the generator's wall time, when it has one)."""
    def write() -> None:
        if not (run_dir / "summary.json").is_file():
            raise UserError(f"{run_dir} has no summary.json after training")
        wall = None if generator is None else read_json_object(generator / "summary.json").get("wall_time_s")
        atomic_write_json(run_dir / STUDY_FILE, {**record, "generator_wall_time_s": wall})
    return write


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:7.2f} h"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def print_plan(plan: StudyPlan, out: IO[str]) -> None:
    """Every job with its state and estimated time, per-group subtotals, the totals and the cost model."""
    settings, todo = plan.settings, [job for job in plan.jobs.values() if not job.done()]
    print(f"study plan: out={settings.out} jobs={settings.jobs} threads={settings.threads} "
          f"data={' '.join(settings.data) or '(embedded sample)'}", file=out)
    print(f"{'state':<5} {'estimate':>9}  job  (budget)", file=out)
    for job in plan.jobs.values():
        state = "todo" if job in todo else "done"
        estimate = _hours(job.cost_s) if state == "todo" else f"{'-':>9}"
        print(f"{state:<5} {estimate}  {job.name}  ({job.note})", file=out)
    print("\nper group (jobs to run / all, estimated time to run):", file=out)
    for group in dict.fromkeys(job.group for job in plan.jobs.values()):
        members = [job for job in plan.jobs.values() if job.group == group]
        waiting = [job for job in members if job in todo]
        print(f"  {group:<20} {len(waiting):>4} / {len(members):<4} {_hours(sum(j.cost_s for j in waiting))}", file=out)
    total = sum(job.cost_s for job in todo)
    print(f"\ntotal: {len(plan.jobs)} jobs, {len(todo)} to run, {len(plan.jobs) - len(todo)} done; "
          f"{total / 3600:.1f} CPU-hours on one thread each; about {total / 3600 / settings.jobs:.1f} h wall "
          f"with jobs={settings.jobs} if every slot stays busy.", file=out)
    print("Estimates are upper bounds (every epoch run, no early stopping) from measured rates at 128 px on one "
          "thread of the 2-core development CPU (benchmarks/study.py SECONDS_PER_SLICE_EPOCH); 256 px from a capsnet "
          "training step measured 4.75x as long as at 128 px.", file=out)
    print(f"Compute-matched control: {CONTROL_RULE}.", file=out)


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: Any) -> None:
    raise _Stopped(signum)


@dataclass
class _Running:
    job: Job
    process: subprocess.Popen
    log: IO[bytes]
    started: float


class Runner:
    """Runs the plan's jobs ``jobs`` at a time, each once its dependencies have finished and in its own session
    (so stopping the driver stops every process of every job), holding the study's lock."""

    def __init__(self, plan: StudyPlan, lock: int) -> None:
        self.plan, self.lock = plan, lock
        self.logs = plan.settings.out / "logs"
        threads = str(plan.settings.threads)
        self.env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        self.finished: set[str] = {name for name, job in plan.jobs.items() if job.done()}
        self.failed: set[str] = set()
        self.running: dict[str, _Running] = {}
        self.started = time.monotonic()
        self.ran_seconds = self.ran_estimate = 0.0

    def run(self) -> list[str]:
        """Run every job not yet done; return the names of those that failed or could not run."""
        pending = [name for name in self.plan.jobs if name not in self.finished]
        total = len(pending)
        self.logs.mkdir(parents=True, exist_ok=True)
        handlers = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            while pending or self.running:
                pending = self._start_ready(pending, total)
                if not self.running and pending:
                    raise RuntimeError(f"study: jobs wait on jobs outside the plan: {pending}")
                self._poll(total, len(pending))
                time.sleep(POLL_S if self.running else 0)
        except _Stopped as stop:
            self._stop_all()
            print(f"[study] stopped by {stop}; re-run the same command to continue", file=sys.stderr)
            raise SystemExit(128 + stop.signum) from None
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        return sorted(self.failed)

    def _start_ready(self, pending: list[str], total: int) -> list[str]:
        left = []
        for name in sorted(pending, key=lambda name: not self.plan.jobs[name].small):
            job = self.plan.jobs[name]
            settled = all(dep in self.finished or dep in self.failed for dep in job.deps)
            if job.needs_success and any(dep in self.failed for dep in job.deps):
                self.failed.add(name)
                self._say("skip", job, total, len(pending), f"needs {[d for d in job.deps if d in self.failed]}")
            elif settled and len(self.running) < self.plan.settings.jobs:
                self._start(job, total, len(pending))
            else:
                left.append(name)
        return [name for name in pending if name in left]

    def _start(self, job: Job, total: int, waiting: int) -> None:
        if job.before is not None:
            job.before()
        command = job.command()
        log = open(self.logs / f"{job.name.replace(' ', '_')}.log", "ab")  # noqa: SIM115 (closed in _poll)
        log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {job.name}\n$ {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=self.env, start_new_session=True, pass_fds=(self.lock,))
        self.running[job.name] = _Running(job, process, log, time.monotonic())
        self._say("start", job, total, waiting, f"estimate {_clock(job.cost_s)}")

    def _poll(self, total: int, waiting: int) -> None:
        for name, state in list(self.running.items()):
            code = state.process.poll()
            if code is None:
                continue
            error = f"exit status {code}" if code else None
            if error is None and state.job.after is not None:
                try:
                    state.job.after()
                except (OSError, UserError) as problem:
                    error = str(problem)
            state.log.close()
            del self.running[name]
            seconds = time.monotonic() - state.started
            if error is None:
                self.finished.add(name)
                self.ran_seconds += seconds
                self.ran_estimate += state.job.cost_s
                self._say("done", state.job, total, waiting, f"took {_clock(seconds)}")
            else:
                self.failed.add(name)
                self._say("FAIL", state.job, total, waiting, f"{error}; log {state.log.name}")

    def _say(self, event: str, job: Job, total: int, waiting: int, detail: str) -> None:
        left = sum(self.plan.jobs[name].cost_s for name in self.plan.jobs
                   if name not in self.finished and name not in self.failed)
        speed = self.ran_seconds / self.ran_estimate if self.ran_estimate else 1.0
        eta = _clock(left * speed / self.plan.settings.jobs)
        settled = len(self.finished) + len(self.failed) - (len(self.plan.jobs) - total)
        print(f"[study] {event:<5} {job.name} ({detail}) | {settled}/{total} settled, {len(self.running)} running, "
              f"{waiting} waiting | elapsed {_clock(time.monotonic() - self.started)} | ETA ~{eta}",
              file=sys.stderr, flush=True)

    def _stop_all(self) -> None:
        for state in self.running.values():
            if state.process.poll() is None:
                _signal_job(state.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for state in self.running.values():
            try:
                state.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                _signal_job(state.process, signal.SIGKILL)
            state.log.close()


def _signal_job(process: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to every process of a job (its session's process group), if any is left."""
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def hold_lock(out: Path) -> int:
    """An exclusive lock on ``<out>/.lock`` (its file descriptor, inherited by every job).

    Raises:
        UserError: another driver, or a job it started, still holds it.
    """
    out.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as error:
        os.close(descriptor)
        raise UserError(f"study: another study driver, or a job it started, still runs on {out} (lock {out}/.lock); "
                        "wait for it or stop it first") from error
    return descriptor


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    settings = parse_args(strip_debug_flag(sys.argv[1:] if argv is None else argv))
    lock = None if settings.plan else hold_lock(settings.out)
    plan = StudyPlan(settings)
    if lock is None:
        print_plan(plan, sys.stdout)
        return
    todo = [job for job in plan.jobs.values() if not job.done()]
    print(f"[study] {len(plan.jobs)} jobs, {len(todo)} to run (estimated {sum(j.cost_s for j in todo) / 3600:.1f} "
          f"CPU-hours), jobs={settings.jobs} threads={settings.threads} -> {settings.out}", file=sys.stderr)
    failed = Runner(plan, lock).run()
    if failed:
        print(f"[study] {len(failed)} job(s) failed or were skipped: {', '.join(failed)}; logs in "
              f"{settings.out / 'logs'}; re-run the same command after fixing the cause", file=sys.stderr)
        raise SystemExit(1)
    print(f"[study] finished; report: {settings.out / 'report' / 'report.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
