"""Shared test fixtures: an isolated preprocessing cache, paths to the real shared data, and no skips in CI
(``CI=true``, or ``CI_REQUIRE_SHARED_DATA`` set: a skipped test is reported as failed)."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test's preprocessing cache out of the user's home."""
    monkeypatch.setenv("BRAIN_TUMOUR_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _restored_logging() -> Iterator[None]:
    """Undo logging set-up done inside a test (an in-process Hydra app or ``logging.basicConfig`` binds handlers
    to that test's captured stderr, which is closed once it ends)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in set(root.handlers) - set(handlers):
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test on one thread: tiny models run faster that way, above all on a shared, loaded CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def skips_forbidden() -> str:
    """The setting that forbids skipping (``CI=true`` as CI services set it, or ``CI_REQUIRE_SHARED_DATA``), or ""."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        return "CI=true"
    return "CI_REQUIRE_SHARED_DATA" if os.environ.get("CI_REQUIRE_SHARED_DATA") else ""


def require_shared(path: Path) -> Path:
    """Return ``path`` under ../shared/data; skip loudly when absent, fail instead where skips are forbidden."""
    if not path.exists():
        if setting := skips_forbidden():
            pytest.fail(f"shared data missing: {path} ({setting}: tests that need ../shared/data must run)")
        pytest.skip(f"shared data not present: {path}")
    return path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """Where skips are forbidden, report a skipped test (not an expected failure) as failed."""
    report = yield
    _fail_if_skipped(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[pytest.CollectReport]:
    """The same for a module skipped while collecting (``pytest.importorskip``, ``allow_module_level``)."""
    report = yield
    _fail_if_skipped(report)
    return report


def _fail_if_skipped(report: pytest.TestReport | pytest.CollectReport) -> None:
    setting = skips_forbidden()
    if report.skipped and setting and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but {setting} forbids skipping: {reason}"
