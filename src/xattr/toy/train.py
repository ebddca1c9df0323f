"""Train the embedded toy LVLMs on synthetic grounding ("What color is the circle?") with Lightning.

The shipped checkpoints under ``xattr/toy/checkpoints/<family>`` were produced by::

    python -m xattr.toy.train --family qwen2_5_vl --seed 0 --out src/xattr/toy/checkpoints/qwen2_5_vl
    python -m xattr.toy.train --family llava --seed 0 --out src/xattr/toy/checkpoints/llava

(CPU, one torch thread by default -- results are bit-reproducible for a fixed thread count.)

This module is the entry point (``train``, ``save``, ``main``); the pieces live in modules
named for what they hold: :mod:`xattr.toy.task` (the data: mixed object counts, absent and
blurred-out objects), :mod:`xattr.toy.model` (the model on the training path, after the
exact prompt the model adapters build), :mod:`xattr.toy.recipe` (the four stages, from
oracle visual tokens to joint training, and their losses) and :mod:`xattr.toy.stage_module`
(one stage as a LightningModule). Everything (initialisation, data, order) follows from
``--seed``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from xattr.toy.model import ToyLVLM, build_toy, fast_vision, grow_toy, quick_eval
from xattr.toy.recipe import FAMILY_SIZES, TEXT_LAYERS, Recipe, default_recipe
from xattr.toy.stage_module import Progress, ToyStageModule
from xattr.toy.task import Batch, BatchStream


def _collate(b: Batch) -> Batch:
    """The DataLoader's per-item step: a BatchStream item is a whole batch already."""
    return b


def train(recipe: Recipe, out: str | Path | None, *, workdir: str | Path | None = None, verbose: bool = True,
          every: int = 50, eval_seed: int = 999, toy: ToyLVLM | None = None) -> tuple[ToyLVLM, dict[str, Any]]:  # fmt: skip
    """Run the recipe; save the trained model to ``out`` (if given). Returns (model, report).

    ``toy`` continues training a given model instead of building a fresh one.
    """
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    t_start = time.time()
    if toy is None:
        with tempfile.TemporaryDirectory() as tmp:
            toy = build_toy(recipe.family, recipe.seed, recipe.sizes, Path(workdir or tmp) / "init")
    toy.model.train()
    log: list[str] = []
    probes: dict[str, nn.Module] = {}
    report: dict[str, Any] = {"recipe": _jsonable(recipe), "stages": []}
    offset = 0
    for stage in recipe.stages:
        t0 = time.time()
        if stage.name == "grow":
            with tempfile.TemporaryDirectory() as tmp:
                toy = grow_toy(toy, recipe.sizes, stage.grow_to, stage.grow_bottom, recipe.seed + 1,
                               Path(tmp))  # fmt: skip
            toy.model.train()
            report["stages"].append({"stage": "grow", "text_layers": stage.grow_to,
                                     "bottom": stage.grow_bottom})  # fmt: skip
            continue
        module = ToyStageModule(toy, stage, recipe.seed + offset, probes)
        loader = torch.utils.data.DataLoader(
            BatchStream(stage.mix or recipe.mix, recipe.seed, offset, stage.batch_size, toy.grid, stage.steps),
            batch_size=None, collate_fn=_collate, num_workers=recipe.workers,
            persistent_workers=False,
        )  # fmt: skip
        trainer = L.Trainer(
            accelerator="cpu", devices=1, max_steps=stage.steps, max_epochs=1, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            gradient_clip_val=1.0, num_sanity_val_steps=0,
            callbacks=[Progress(every, stage.name, log)] if verbose else [],
        )  # fmt: skip
        with fast_vision(toy):
            trainer.fit(module, train_dataloaders=loader)
        offset += stage.steps * stage.batch_size
        oracle = stage.name == "lm" and stage.source == "oracle"
        ev = quick_eval(toy, recipe.eval_mix, eval_seed, recipe.eval_n, use_oracle=oracle)
        tail = module.history[-min(50, len(module.history)) :]
        entry = {
            "stage": stage.name if stage.name != "lm" else f"lm({stage.source})",
            "seconds": round(time.time() - t0, 1),
            "final_loss": float(np.mean([h["loss"] for h in tail])),
            "first_loss": float(np.mean([h["loss"] for h in module.history[:10]])),
            "first": _means(module.history[:10]),  # every logged term, first 10 steps
            "final": _means(tail),  # ... and last 50 steps
            "heldout": ev,
        }
        report["stages"].append(entry)
        if verbose:
            print(f"[{stage.name}] done in {entry['seconds']}s; held-out {ev}", flush=True)
    toy.model.eval()
    report["seconds"] = round(time.time() - t_start, 1)
    report["log"] = log
    if out is not None:
        save(toy, out, report)
    return toy, report


def _means(history: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for h in history for k in h})
    return {k: float(np.nanmean([h.get(k, np.nan) for h in history])) for k in keys}


def save(toy: ToyLVLM, out: str | Path, report: dict[str, Any]) -> Path:
    """save_pretrained the model (safetensors, config, generation config) and the processor."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    toy.model.save_pretrained(out)
    toy.processor.save_pretrained(out)
    (out / "training_report.json").write_text(json.dumps(report, indent=1))
    return out


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _jsonable(v) for k, v in asdict(obj).items()}
    return obj


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: train one family's recipe (optionally resized or shortened) and save it."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="qwen2_5_vl", choices=sorted(FAMILY_SIZES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output directory (save_pretrained)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every stage's step count")
    ap.add_argument(
        "--steps",
        default=None,
        help="comma-separated steps of the stages with steps, in order (grow has none)",
    )
    ap.add_argument("--lrs", default=None, help="comma-separated learning rates of the stages")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument(
        "--text-layers",
        type=int,
        default=TEXT_LAYERS,
        help="the language model's final depth (grown from the recipe's core)",
    )
    ap.add_argument("--text-hidden", type=int, default=None)
    ap.add_argument("--text-heads", type=int, default=None)
    ap.add_argument("--vision-layers", type=int, default=None)
    ap.add_argument("--vision-hidden", type=int, default=None)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (results are reproducible for a fixed count)",
    )
    ap.add_argument("--every", type=int, default=50, help="print progress every N steps")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = default_recipe(args.family, args.seed, args.scale, args.text_layers)
    for flag, key in [("text_hidden", "text_hidden"), ("text_heads", "text_heads"),
                      ("vision_layers", "vision_layers"), ("vision_hidden", "vision_hidden")]:  # fmt: skip
        if getattr(args, flag) is not None:
            recipe.sizes[key] = getattr(args, flag)
    trained = [st for st in recipe.stages if st.name != "grow"]
    if args.steps:
        for st, n in zip(trained, args.steps.split(",")):
            st.steps = int(n)
    if args.lrs:
        for st, lr in zip(trained, args.lrs.split(",")):
            st.lr = float(lr)
    if args.batch_size:
        for st in recipe.stages:
            st.batch_size = args.batch_size
    _, report = train(recipe, args.out, every=args.every)
    print(json.dumps({k: v for k, v in report.items() if k not in ("log", "recipe")}, indent=1))


if __name__ == "__main__":
    main()
