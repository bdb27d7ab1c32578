"""Check that every file in a run tree is complete and parseable (used by the fault-tolerance test)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from datasets.shards import MANIFEST, read_shards


def unreadable_files(root: Path) -> list[str]:
    """Paths under ``root`` that are truncated or unparseable, with the reason; empty when all is well."""
    problems = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            _check(path)
        except Exception as error:  # any failure to parse is a finding
            problems.append(f"{path.relative_to(root)}: {type(error).__name__}: {error}")
    return problems


def _check(path: Path) -> None:
    if path.name.endswith(".tmp"):
        raise ValueError("left-over temporary file")
    suffix = path.suffix
    if suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))
        if path.name == MANIFEST:
            read_shards(path.parent)
    elif suffix == ".jsonl":
        text = path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            raise ValueError("last line is cut short")
        for line in text.splitlines():
            json.loads(line)
    elif suffix == ".pt":
        torch.load(path, map_location="cpu", weights_only=True)
    elif suffix == ".png":
        with Image.open(path) as image:
            image.load()
    elif suffix in (".yaml", ".md"):
        path.read_text(encoding="utf-8")
