"""benchmarks/study.py (scripts/study.sh): the plan of the whole study and of selections, the compute-matched
control's budget, the lock, and a tiny real run of two rows on the embedded sample that a re-run leaves alone."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image
from tiny_models import small_out_of_scope_set

from datasets.core import EMBEDDED_SAMPLE
from experiment.errors import ConfigError, UserError

ROOT = Path(__file__).resolve().parents[1]
CI_LIMIT_S = 150
TINY = ["protocols=cvind", "sizes=32", "seeds=0", "folds=0", "train.epochs=1", "train.batch_size=16",
        "pretrain.epochs=1", "gan.count=30", "jobs=2", "threads=1"]


def _load_study() -> ModuleType:
    """Import ``benchmarks/study.py`` (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("study", ROOT / "benchmarks" / "study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["study"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


study = _load_study()


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A study folder, split manifests, a small out-of-scope set and a four-slice external glioma check."""
    root = tmp_path_factory.mktemp("study")
    external = root / "external"
    (external / "glioma").mkdir(parents=True)
    with np.load(EMBEDDED_SAMPLE) as sample:
        for index in np.flatnonzero(sample["label"] == 2)[:4]:
            Image.fromarray(sample["image"][index]).save(external / "glioma" / f"g{index}.png")
    (external / "README.json").write_text("{}")
    return {"out": root / "out", "splits": root / "splits", "oos": small_out_of_scope_set(root / "oos"),
            "external": external}


def _where(places: dict[str, Path]) -> list[str]:
    return [f"out={places['out']}", f"data.splits_dir={places['splits']}", f"out_of_scope={places['oos']}",
            f"external={places['external']}"]


def _kinds(plan: object) -> Counter:
    return Counter(name.split()[0] if name != "report" else name for name in plan.jobs)


def test_plan_of_the_whole_study(places: dict[str, Path]) -> None:
    plan = study.StudyPlan(study.parse_args(_where(places)))
    # capsnet rows: 3 seeds x (5 cvind + 7 grouped) folds, capsnet-real at two sizes; resnet50 rows: 5 cvind folds.
    assert _kinds(plan) == {"prepare": 2, "generator": 36, "train": 4 * 36 + 2 * 5, "external": 4 * 36 + 2 * 5,
                            "report": 1}
    rows = Counter(job.group for job in plan.jobs.values() if job.name.startswith("train"))
    assert rows == {"capsnet-real": 72, "capsnet-synthetic": 36, "capsnet-control": 36, "resnet50-real": 5,
                    "resnet50-synthetic": 5}
    # One generator per protocol, seed and fold, shared by both synthetic rows.
    shared = "generator cvind-k5 128px seed0 fold3"
    assert [name for name, job in plan.jobs.items() if shared in job.deps] == [
        "train capsnet-synthetic cvind-k5 128px seed0 fold3", "train resnet50-synthetic cvind-k5 128px seed0 fold3"]
    resnet = plan.jobs["train resnet50-real cvind-k5 128px seed0 fold0"].command()
    assert "cpu_bf16=true" in resnet and "data.split=cvind" in resnet and "pretrain.shards=null" in resnet
    assert set(plan.jobs["report"].deps) == {name for name in plan.jobs if name.split()[0] in ("train", "external")}

    listing = io.StringIO()
    study.print_plan(plan, listing)
    text = listing.getvalue()
    assert f"total: {len(plan.jobs)} jobs, {len(plan.jobs) - 2} to run, 2 done;" in text  # both sets are prepared
    assert sum(line.startswith("todo ") for line in text.splitlines()) == len(plan.jobs) - 2


def test_selectors_replace_the_grid_and_the_control_matches_the_pretraining(
        places: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    args = [*_where(places), "rows=capsnet-control,resnet50-synthetic", "seeds=1", "folds=0,2", "protocols=cvind"]
    plan = study.StudyPlan(study.parse_args(args))
    assert _kinds(plan) == {"prepare": 2, "generator": 2, "train": 4, "external": 4, "report": 1}
    assert "train resnet50-synthetic cvind-k5 128px seed1 fold2" in plan.jobs  # seeds= replaced seed 0
    for fold in (0, 2):
        job = plan.jobs[f"train capsnet-control cvind-k5 128px seed1 fold{fold}"]
        command = job.command()
        real = plan.train_slices["cvind-k5"][fold]
        assert command[-1] == f"train.epochs={study.control_epochs(60, 10, 7000, real, 32)}"
        assert "tag=control" in command and "pretrain.shards=null" in command
        assert job.deps == ["prepare out-of-scope set"]
        assert str(job.run_dir).endswith(f"cvind-k5/128px/seed1/classifier/capsnet/cvind-k5/control/fold{fold}")
    # 10 pretraining epochs of floor(7000 / 32) = 218 steps over floor(2137 / 32) = 66 steps per real epoch.
    assert study.control_epochs(60, 10, 7000, 2137, 32) == 60 + 34
    study.main(["--plan", *args])
    assert "total: 13 jobs, 11 to run, 2 done;" in capsys.readouterr().out
    assert not places["out"].exists()  # the plan runs nothing


@pytest.mark.parametrize("argv, message", [
    (["data.split=grouped"], "data.split= is set per job"), (["rows=capsnet"], "rows= takes names"),
    (["seeds=one"], "seeds= takes int"), (["--fast"], "expected key=value"), (["jobs=0"], "must be positive")])
def test_bad_selections_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        study.parse_args(argv)


def test_each_data_set_gets_its_own_study_folder() -> None:
    assert study.parse_args([]).out == Path("runs/study-v2/sample")  # a run on the sample never mixes with real data
    assert study.parse_args(["data.root=../shared/data/"]).out == Path("runs/study-v2/data")
    assert study.parse_args(["data.root=x", "out=elsewhere"]).out == Path("elsewhere")


def test_folds_outside_the_protocol_are_refused(places: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r"folds=\[5\] outside the 5 folds of cvind-k5"):
        study.StudyPlan(study.parse_args([*_where(places), "rows=capsnet-real", "protocols=cvind", "folds=5"]))


def test_a_second_driver_on_the_same_study_is_refused(tmp_path: Path) -> None:
    held = study.hold_lock(tmp_path)
    try:
        with pytest.raises(UserError, match="still runs on"):
            study.hold_lock(tmp_path)
    finally:
        os.close(held)
    os.close(study.hold_lock(tmp_path))


def test_jobs_wait_for_their_dependencies_and_a_failure_skips_only_what_needs_it(tmp_path: Path) -> None:
    order = tmp_path / "order"

    def job(name: str, status: int, deps: tuple[str, ...] = (), needs_success: bool = True) -> object:
        done = tmp_path / f"{name}.done"
        script = f"sleep 0.3; echo {name} >> {order}; [ {status} = 0 ] && touch {done}; exit {status}"
        return study.Job(name, "test", study._fixed(["bash", "-c", script]), done.is_file, 1.0, deps=list(deps),
                         needs_success=needs_success)

    jobs = [job("a", 0), job("b", 3), job("c", 0, ("a",)), job("d", 0, ("b",)), job("e", 0, ("c", "d"), False)]
    plan = SimpleNamespace(settings=study.parse_args([f"out={tmp_path}", "jobs=2"]), jobs={j.name: j for j in jobs})
    lock = study.hold_lock(tmp_path)
    try:
        assert study.Runner(plan, lock).run() == ["b", "d"]  # d needs b; e (like the report) runs all the same
        ran = order.read_text().split()
        assert sorted(ran[:2]) == ["a", "b"] and ran[2:] == ["c", "e"]
        assert "exit 3" in (tmp_path / "logs" / "b.log").read_text()
        assert study.Runner(plan, lock).run() == ["b", "d"] and order.read_text().split()[4:] == ["b"]  # only b again
    finally:
        os.close(lock)


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_two_rows_run_end_to_end_and_a_rerun_does_nothing(places: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = ["bash", str(ROOT / "scripts" / "study.sh"), *_where({**places, "out": out}),
               "rows=capsnet-real,capsnet-control", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CI_LIMIT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "7 jobs, 5 to run" in result.stderr  # both prepared sets are there
    runs = out / "cvind-k5" / "32px" / "seed0" / "classifier" / "capsnet" / "cvind-k5"
    for tag in ("scratch", "control"):
        for name in ("summary.json", "study.json", "external_glioma/report.json", "external_glioma/report.md"):
            assert (runs / tag / "fold0" / name).is_file(), (tag, name)
        assert not (runs / tag / "fold0" / "external_glioma.partial").exists()
    record = json.loads((runs / "control" / "fold0" / "study.json").read_text())
    control = record["control"]
    assert record["row"] == "capsnet-control" and control["synthetic_slices"] == 30 and control["batch_size"] == 16
    assert control["train_epochs"] == study.control_epochs(1, 1, 30, control["real_train_slices"], 16)
    assert yaml.safe_load((runs / "control" / "fold0" / "config.yaml").read_text())["train"]["epochs"] == \
        control["train_epochs"]
    report = json.loads((out / "report" / "report.json").read_text())
    assert set(report["groups"]) == {"capsnet/scratch/cvind-k5/32px", "capsnet/control/cvind-k5/32px"}
    [pair] = report["paired_control_scratch"]
    assert pair["folds"] == [0] and pair["seeds"] == [0]
    control_group = report["groups"]["capsnet/control/cvind-k5/32px"]
    assert control_group["per_fold"][0]["control_epochs"] == control["train_epochs"]
    assert control_group["study"]["external_glioma_recall"]["n"] == 1
    assert "## Study table" in (out / "report" / "report.md").read_text()

    before = _files(out)
    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CI_LIMIT_S)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "7 jobs, 0 to run" in rerun.stderr
    assert _files(out) == before
