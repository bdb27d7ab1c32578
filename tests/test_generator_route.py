"""``python -m generative_model.route``: each override goes to the step(s) whose config defines its key."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from generative_model import route

ROOT = Path(__file__).resolve().parents[1]


def test_keys_go_to_the_config_that_defines_them() -> None:
    routed = dict(route.route(["batch_size=8", "train.batch_size=8", "data.root=x", "fold=null", "count=5",
                               "checkpoint=g.pt", "loss.gan_mode=lsgan", "hydra/job_logging=disabled"]))
    assert routed == {"batch_size=8": ("synthesize",), "train.batch_size=8": ("train",),
                      "data.root=x": ("train", "synthesize"), "fold=null": ("train", "synthesize"),
                      "count=5": ("synthesize",), "checkpoint=g.pt": ("synthesize",),
                      "loss.gan_mode=lsgan": ("train",), "hydra/job_logging=disabled": ("train", "synthesize")}


def test_old_names_warn_and_are_routed_under_their_new_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.warns(FutureWarning, match="'optim.lr' is now 'train.lr'"):
        assert route.main(["optim.lr=1e-3", "seed=3"]) == 0
    assert capsys.readouterr().out.splitlines() == ["train\ttrain.lr=1e-3", "train\tseed=3", "synthesize\tseed=3"]


@pytest.mark.parametrize(("argument", "message"), [
    ("nosuch=1", "no step defines 'nosuch'"),
    ("fold", "expected key=value overrides, got 'fold'"),
])
def test_unknown_keys_and_bare_words_are_refused(argument: str, message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "generative_model.route", "count=3", argument], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"synthesize.sh: {message}")
