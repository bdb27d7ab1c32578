"""experiment.progress: a redrawing bar in a terminal, sparse plain lines in a log."""
from __future__ import annotations

import io

import pytest
import tqdm.std

from experiment.progress import INTERVAL_ENV, PlainProgress, progress, progress_interval


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeClock:
    """Stands in for tqdm's clock; every read advances time by ``step`` seconds."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(step=1.0)
    monkeypatch.setattr(tqdm.std, "time", fake)
    return fake


def test_terminal_redraws_in_place() -> None:
    stream = FakeTerminal()
    bar = progress(range(20), desc="train 1/2", file=stream, mininterval=0)
    assert not isinstance(bar, PlainProgress)
    assert list(bar) == list(range(20))
    text = stream.getvalue()
    assert text.count("\r") > 10  # redrawn at every step
    assert "train 1/2" in text


def test_log_gets_sparse_whole_lines(clock: FakeClock) -> None:
    stream = io.StringIO()
    assert list(progress(range(300), desc="epoch 3/9", file=stream, interval=30)) == list(range(300))
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    # ~300 clock reads of one second each -> about one line per 30 s, the last one at 300/300
    assert 5 <= len(lines) <= 12
    assert all(line.startswith("epoch 3/9:") for line in lines)
    assert lines[-1].count("300/300") == 1
    assert len(set(lines)) == len(lines)


def test_short_loop_is_silent_unless_left(clock: FakeClock) -> None:
    stream = io.StringIO()
    list(progress(range(5), desc="val", file=stream, interval=30))
    assert stream.getvalue() == ""
    list(progress(range(5), desc="epoch 1/2", file=stream, interval=30, leave=True))
    assert stream.getvalue().splitlines() == [stream.getvalue().strip()]
    assert "5/5" in stream.getvalue()


def test_postfix_and_manual_updates(clock: FakeClock) -> None:
    stream = io.StringIO()
    bar = progress(total=4, desc="read", file=stream, interval=2)
    for _ in range(4):
        bar.update()
        bar.set_postfix(loss="0.5")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines and lines[-1].startswith("read: 100%") and "loss=0.5" in lines[-1]


def test_disabled_prints_nothing() -> None:
    stream = io.StringIO()
    assert list(progress(range(3), desc="x", file=stream, disable=True, leave=True)) == [0, 1, 2]
    assert stream.getvalue() == ""


def test_interval_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert progress_interval() == 30.0
    monkeypatch.setenv(INTERVAL_ENV, "5")
    assert progress_interval() == 5.0
    assert progress(range(1), file=io.StringIO()).interval == 5.0
