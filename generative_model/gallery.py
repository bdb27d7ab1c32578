"""A gallery of one fold: per class, real training slices next to synthetic ones from the same fold's shards.

    python -m generative_model.gallery RUN_DIR SHARDS [--out docs/img/generator_gallery.png] [--per-class 4]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from datasets.core import CLASS_NAMES
from datasets.shards import read_shards
from experiment.cli import reports_user_errors, strip_debug_flag
from experiment.seeding import derive_seed
from generative_model.folds import load_run_fold
from generative_model.quality import grey_rgb, join_tiles, save_png

log = logging.getLogger(__name__)

LABEL_WIDTH = 90
HEADER_HEIGHT = 16
SECTION_GAP = 12


def gallery(run_dir: Path, shards: Path, out: Path, *, per_class: int = 4, seed: int = 0) -> Path:
    """Write the PNG gallery of ``run_dir``'s fold (real training slices | synthetic slices of ``shards``)."""
    fold = load_run_fold(run_dir)
    images, labels, _ = read_shards(shards)
    rng = np.random.default_rng(derive_seed(seed, 19))
    rows = []
    for index in range(len(CLASS_NAMES)):
        real = fold.train[fold.data.labels[fold.train] == index]
        real = fold.data.images[np.sort(rng.choice(real, size=min(per_class, real.size), replace=False))]
        synthetic = images[np.flatnonzero(labels == index)[:per_class]]
        gap = np.zeros((real.shape[1], SECTION_GAP, 3), dtype=np.uint8)
        rows.append(np.concatenate([join_tiles([grey_rgb(x) for x in real], axis=1), gap,
                                    join_tiles([grey_rgb(x) for x in synthetic], axis=1)], axis=1))
    body = join_tiles(rows, axis=0)
    side = images.shape[-1]
    canvas = Image.new("RGB", (LABEL_WIDTH + body.shape[1], HEADER_HEIGHT + body.shape[0]))
    canvas.paste(Image.fromarray(body), (LABEL_WIDTH, HEADER_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    draw.text((LABEL_WIDTH, 2), f"real (fold {fold.fold} training)", fill=(255, 255, 255))
    synthetic_x = LABEL_WIDTH + per_class * (side + 2) - 2 + SECTION_GAP
    draw.text((synthetic_x, 2), "synthetic (same fold)", fill=(255, 255, 255))
    for index, name in enumerate(CLASS_NAMES):
        draw.text((4, HEADER_HEIGHT + index * (side + 2) + side // 2 - 6), name, fill=(255, 255, 255))
    save_png(out, np.asarray(canvas))
    log.info("gallery of fold %s written to %s", fold.fold, out)
    return out


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the fold's generator run directory")
    parser.add_argument("shards", type=Path, help="the fold's synthetic shard folder")
    parser.add_argument("--out", type=Path, default=Path("docs/img/generator_gallery.png"))
    parser.add_argument("--per-class", type=int, default=4)
    args = parser.parse_args(strip_debug_flag(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(gallery(args.run_dir, args.shards, args.out, per_class=args.per_class))


if __name__ == "__main__":
    main()
