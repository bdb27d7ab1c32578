"""Shared test fixtures: an isolated preprocessing cache and paths to the real shared data."""
from __future__ import annotations

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


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test on one thread: tiny models run faster that way, above all on a shared, loaded CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def require_shared(path: Path) -> Path:
    """Return ``path`` under ../shared/data; skip loudly when absent, fail when CI requires it."""
    if not path.exists():
        if os.environ.get("CI_REQUIRE_SHARED_DATA"):
            pytest.fail(f"CI_REQUIRE_SHARED_DATA is set but {path} is missing")
        pytest.skip(f"shared data not present: {path}")
    return path
