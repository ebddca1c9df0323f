"""Train the embedded toy LVLMs on synthetic grounding ("What color is the circle?") with Lightning.

The shipped checkpoints under ``xattr/toy/checkpoints/<family>`` were produced by::

    python -m xattr.toy.train --family qwen2_5_vl --seed 0 --out src/xattr/toy/checkpoints/qwen2_5_vl
    python -m xattr.toy.train --family llava --seed 0 --out src/xattr/toy/checkpoints/llava

(CPU, one torch thread by default -- results are bit-reproducible for a fixed thread count.)

The recipe (four stages, from oracle visual tokens to joint training) is
:mod:`xattr.toy.recipe`; the training data (mixed object counts, absent and blurred-out objects) is
:mod:`xattr.toy.task`.

The answer word and the end-of-turn token are supervised after the exact prompt the model
adapters build (:mod:`xattr.toy.model`), so greedy ``generate`` answers and then stops.
Everything (initialisation, data, order) follows from ``--seed``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xattr.data.synthetic import SHAPES
from xattr.toy.model import ToyLVLM, build_toy, fast_vision, quick_eval
from xattr.toy.recipe import (
    FAMILY_SIZES,
    Recipe,
    Stage,
    align_loss,
    answer_tokens,
    cell_shape_labels,
    default_recipe,
    qa_loss,
    stage_parameters,
)
from xattr.toy.task import (
    Batch,
    BatchStream,
)


def _collate(b: Batch) -> Batch:
    return b


def _lightning():
    import lightning as L

    return L


def make_module(toy: ToyLVLM, stage: Stage, seed: int, probes: dict[str, nn.Module] | None = None):
    """The LightningModule of one stage."""
    probes = {} if probes is None else probes
    L = _lightning()

    class ToyStageModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.toy = toy
            self.stage = stage
            self.gen = torch.Generator().manual_seed(seed)
            self.history: list[dict[str, float]] = []
            hidden = toy.model.config.text_config.hidden_size

            # Auxiliary linear probes (never saved), shared across stages through `probes`.
            def get(name: str, n_out: int, weight: float) -> nn.Module | None:
                if not weight:
                    return None
                if name not in probes:
                    probes[name] = nn.Linear(hidden, n_out)
                return probes[name]

            self.probe = get("shape", len(SHAPES), stage.shape_probe)
            self.cellprobe = get("cell", len(SHAPES) + 1, stage.cell_probe)

        def _qa(self, vis: Tensor, batch: Batch) -> tuple[Tensor, Tensor, dict[str, float]]:
            toy, st = self.toy, self.stage
            ids = toy.sequence_ids(batch.shape_q, answer_tokens(toy, batch, self.gen))
            if self.probe is None:
                loss, correct = qa_loss(toy, toy.forward_answer(vis, ids), batch)
                return loss, correct, {}
            logits, h = toy.forward_answer(vis, ids, probe_layer=st.probe_layer)
            loss, correct = qa_loss(toy, logits, batch)
            probe = F.cross_entropy(self.probe(h), batch.shape_q)
            return loss + st.shape_probe * probe, correct, {"sprobe": float(probe.detach())}

        def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
            toy, st = self.toy, self.stage
            b = batch.answer.shape[0]
            stats: dict[str, float] = {}
            with torch.no_grad():
                oracle = toy.oracle_tokens(batch)  # targets only: never differentiated
            if st.name == "lm" and st.source == "vision":
                with torch.no_grad():
                    vis = toy.visual_tokens(toy.pixel_values(batch.images), b)
                loss, correct, extra = self._qa(vis, batch)
                stats.update(extra)
            elif st.name == "lm":
                loss, correct, extra = self._qa(oracle, batch)
                stats.update(extra)
            else:
                vis = toy.visual_tokens(toy.pixel_values(batch.images), b)
                al = align_loss(vis, oracle, batch.cover, st.cell_weight)
                stats["align"] = float(al.detach())
                if self.cellprobe is not None:
                    labels = cell_shape_labels(batch)
                    ce = F.cross_entropy(self.cellprobe(vis).flatten(0, 1), labels.flatten())
                    stats["cellprobe"] = float(ce.detach())
                    al = al + st.cell_probe * ce
                if st.name == "align":
                    loss, correct = al, None
                else:
                    qa, correct, extra = self._qa(vis, batch)
                    stats.update(extra)
                    loss = qa + st.align_weight * al
            stats["loss"] = float(loss.detach())
            if correct is not None:
                ok = correct[correct >= 0]
                stats["acc"] = float(ok.float().mean()) if ok.numel() else float("nan")
            self.history.append(stats)
            return loss

        def configure_optimizers(self):
            groups = stage_parameters(self.toy, st := self.stage)
            for probe in (self.probe, self.cellprobe):
                if probe is not None:
                    groups.append({"params": list(probe.parameters()), "lr": st.lr})
            opt = torch.optim.AdamW(groups, weight_decay=0.01, betas=(0.9, 0.98))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, st.lr_factor)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return ToyStageModule()


class _Progress:
    """Lightning callback printing running means every ``every`` steps."""

    def __new__(cls, every: int, name: str, log: list[str] | None = None):
        L = _lightning()

        class Progress(L.Callback):
            def __init__(self) -> None:
                self.t0 = time.time()

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
                step = batch_idx + 1
                if step % every and step != module.stage.steps:
                    return
                recent = module.history[-every:]
                keys = sorted({k for h in recent for k in h})
                means = {k: np.nanmean([h.get(k, np.nan) for h in recent]) for k in keys}
                lr = trainer.optimizers[0].param_groups[0]["lr"]
                msg = (
                    f"[{name}] step {step}/{module.stage.steps} "
                    + " ".join(f"{k}={v:.4f}" for k, v in means.items())
                    + f" lr={lr:.2e} {time.time() - self.t0:.0f}s"
                )
                print(msg, flush=True)
                if log is not None:
                    log.append(msg)

        return Progress()


def train(recipe: Recipe, out: str | Path | None, *, workdir: str | Path | None = None, verbose: bool = True,
          every: int = 50, eval_seed: int = 999, toy: ToyLVLM | None = None) -> tuple[ToyLVLM, dict[str, Any]]:  # fmt: skip
    """Run the recipe; save the trained model to ``out`` (if given). Returns (model, report).

    ``toy`` continues training a given model instead of building a fresh one.
    """
    import tempfile

    L = _lightning()
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
        module = make_module(toy, stage, recipe.seed + offset, probes)
        loader = torch.utils.data.DataLoader(
            BatchStream(stage.mix or recipe.mix, recipe.seed, offset, stage.batch_size, toy.grid, stage.steps),
            batch_size=None, collate_fn=_collate, num_workers=recipe.workers,
            persistent_workers=False,
        )  # fmt: skip
        trainer = L.Trainer(
            accelerator="cpu", devices=1, max_steps=stage.steps, max_epochs=1, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            gradient_clip_val=1.0, num_sanity_val_steps=0,
            callbacks=[_Progress(every, stage.name, log)] if verbose else [],
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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="qwen2_5_vl", choices=sorted(FAMILY_SIZES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output directory (save_pretrained)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every stage's step count")
    ap.add_argument(
        "--steps",
        default=None,
        help="comma-separated steps of the stages lm(oracle),align,lm(vision),joint",
    )
    ap.add_argument("--lrs", default=None, help="comma-separated learning rates of the stages")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--text-layers", type=int, default=None)
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
    recipe = default_recipe(args.family, args.seed, args.scale)
    for flag, key in [("text_layers", "text_layers"), ("text_hidden", "text_hidden"), ("text_heads", "text_heads"),
                      ("vision_layers", "vision_layers"), ("vision_hidden", "vision_hidden")]:  # fmt: skip
        if getattr(args, flag) is not None:
            recipe.sizes[key] = getattr(args, flag)
    if args.steps:
        for st, n in zip(recipe.stages, args.steps.split(",")):
            st.steps = int(n)
    if args.lrs:
        for st, lr in zip(recipe.stages, args.lrs.split(",")):
            st.lr = float(lr)
    if args.batch_size:
        for st in recipe.stages:
            st.batch_size = args.batch_size
    _, report = train(recipe, args.out, every=args.every)
    print(json.dumps({k: v for k, v in report.items() if k not in ("log", "recipe")}, indent=1))


if __name__ == "__main__":
    main()
