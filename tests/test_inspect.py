"""The foundation step of the demo: data, folds and a shard round trip through the Hydra entry point."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import SHARED_DATA, require_shared

ROOT = Path(__file__).resolve().parents[1]


def _inspect(tmp_path: Path, *overrides: str) -> str:
    result = subprocess.run([sys.executable, "-m", "datasets.inspect", f"out={tmp_path}",
                             f"data.splits_dir={tmp_path}/folds", *overrides],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_embedded_sample_summary(tmp_path: Path) -> None:
    out = _inspect(tmp_path)
    assert "total            344        45" in out and "identical=True" in out
    assert sum(line.split()[1] == "test" for line in out.splitlines() if line[:1].isdigit()) == 7


def test_cvind_protocol_summary(tmp_path: Path) -> None:
    out = _inspect(tmp_path, "data.split=cvind")
    assert "folds: cvind k=5" in out


def test_full_bundle_summary(tmp_path: Path) -> None:
    require_shared(SHARED_DATA / "figshare_cheng_128.npz")
    out = _inspect(tmp_path, f"data.root={SHARED_DATA}")
    assert "total           3064       233" in out and "identical=True" in out
