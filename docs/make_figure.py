"""Compose the README figure from a finished run: image, queried-object mask, method overlays.

python docs/make_figure.py RUN_DIR docs/default_run.png --samples 4 --methods glimpse tmme rollout
(default methods: DEFAULT_METHODS, the five of the shipped figure)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image, ImageDraw
from toy_diagnostics import group_of  # docs/toy_diagnostics.py, next to this script

from xattr.data.cached import synthetic_dataset

CELL = 112
# the methods of the shipped docs/default_run.png, left to right after image and mask
DEFAULT_METHODS = ("glimpse", "tmme", "rollout", "raw_attention", "dexar")


def _tile(img: Image.Image, label: str) -> Image.Image:
    tile = Image.new("RGB", (CELL, CELL + 14), "white")
    tile.paste(img.convert("RGB").resize((CELL, CELL)), (0, 14))
    ImageDraw.Draw(tile).text((2, 1), label, fill="black")
    return tile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    args = ap.parse_args()
    cfg = OmegaConf.load(args.run_dir / "config.yaml")
    data = OmegaConf.to_container(cfg.data.dataset, resolve=True)
    data.pop("_target_", None)
    dataset = synthetic_dataset(**data)
    # Among the samples with every overlay saved: the first of today's questions, then the
    # first relational and the first counting one as the last rows (when the set has any).
    saved = [
        i for i in range(len(dataset))
        if all((args.run_dir / "overlays" / f"{dataset[i].sample_id}_{m}.png").exists()
               for m in args.methods)
    ]  # fmt: skip
    groups: dict[str, list[int]] = {}  # question group (`toy_diagnostics.group_of`) -> indices
    for i in saved:
        groups.setdefault(group_of(dataset[i].meta.get("question_kind", "color")), []).append(i)
    composite = [groups[g][0] for g in ("relational", "count") if g in groups][: args.samples]
    rows_of = groups.get("color", [])[: args.samples - len(composite)] + composite
    rows = []
    for i in rows_of:
        sample = dataset[i]
        mask = Image.fromarray((np.asarray(sample.mask) * 255).astype(np.uint8))
        tiles = [
            _tile(sample.load_image(), "..." + sample.question[-17:]),
            _tile(mask, "answer's object(s)"),
        ]
        for m in args.methods:
            path = args.run_dir / "overlays" / f"{sample.sample_id}_{m}.png"
            tiles.append(_tile(Image.open(path), m))
        rows.append(tiles)
    sheet = Image.new("RGB", (len(rows[0]) * (CELL + 4), len(rows) * (CELL + 18)), "white")
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (c * (CELL + 4), r * (CELL + 18)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
