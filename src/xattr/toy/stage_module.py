"""Lightning pieces of toy training: one stage as a LightningModule, and a progress printer.

``ToyStageModule`` computes a stage's loss (question answering on oracle or real visual
tokens, alignment of the vision tower, auxiliary linear probes) and its optimizer and
schedule; ``Progress`` prints running means of the logged terms.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xattr.data.synthetic import SHAPES
from xattr.toy.model import ToyLVLM
from xattr.toy.recipe import (
    Stage,
    align_loss,
    answer_tokens,
    cell_shape_labels,
    qa_loss,
    stage_parameters,
)
from xattr.toy.task import VOCABULARIES, Batch


class ToyStageModule(L.LightningModule):
    """The LightningModule of one stage: its loss per batch, its optimizer and schedule.

    ``probes`` holds the auxiliary linear probes (never saved) shared across stages; a stage
    that weighs a probe takes it from there or adds it. ``history`` keeps every step's terms.
    """

    def __init__(
        self, toy: ToyLVLM, stage: Stage, seed: int, probes: dict[str, nn.Module] | None = None
    ) -> None:
        super().__init__()
        probes = {} if probes is None else probes
        self.toy = toy
        self.stage = stage
        self.gen = torch.Generator().manual_seed(seed)
        self.history: list[dict[str, float]] = []
        hidden = toy.model.config.text_config.hidden_size

        def get(name: str, n_out: int, weight: float) -> nn.Module | None:
            if not weight:
                return None
            if name not in probes:
                probes[name] = nn.Linear(hidden, n_out)
            return probes[name]

        self.probe = get("word", max(map(len, VOCABULARIES.values())), stage.shape_probe)
        self.cellprobe = get("cell", len(SHAPES) + 1, stage.cell_probe)

    def _qa(self, vis: Tensor, batch: Batch) -> tuple[Tensor, Tensor, dict[str, float]]:
        toy, st = self.toy, self.stage
        ids = toy.sequence_ids(batch.kind, batch.word, answer_tokens(toy, batch, self.gen))
        if self.probe is None:
            loss, correct = qa_loss(toy, toy.forward_answer(vis, ids), batch)
            return loss, correct, {}
        logits, h = toy.forward_answer(vis, ids, probe_layer=st.probe_layer)
        loss, correct = qa_loss(toy, logits, batch)
        probe = F.cross_entropy(self.probe(h), batch.word)
        return loss + st.shape_probe * probe, correct, {"sprobe": float(probe.detach())}

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """The stage's loss on one batch; its terms are appended to ``history``."""
        toy, st = self.toy, self.stage
        stats: dict[str, float] = {}
        with torch.no_grad():
            oracle = toy.oracle_tokens(batch)  # targets only: never differentiated
        if st.name == "lm" and st.source == "vision":
            with torch.no_grad():
                vis = toy.batch_visual(batch)
            loss, correct, extra = self._qa(vis, batch)
            stats.update(extra)
        elif st.name == "lm":
            loss, correct, extra = self._qa(oracle, batch)
            stats.update(extra)
        else:
            vis = toy.batch_visual(batch)
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

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over the stage's parameter groups (and its probes), stepped by Stage.lr_factor."""
        groups = stage_parameters(self.toy, st := self.stage)
        for probe in (self.probe, self.cellprobe):
            if probe is not None:
                groups.append({"params": list(probe.parameters()), "lr": st.lr})
        opt = torch.optim.AdamW(groups, weight_decay=0.01, betas=(0.9, 0.98))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, st.lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Progress(L.Callback):
    """Lightning callback printing running means every ``every`` steps (and appending them to ``lines``).

    (Not ``log``: Lightning sets ``callback.log`` to the module's ``log`` method.)
    """

    def __init__(self, every: int, name: str, lines: list[str] | None = None) -> None:
        self.every, self.name, self.lines = every, name, lines
        self.t0 = time.time()

    def on_train_batch_end(
        self, trainer: L.Trainer, module: ToyStageModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Print the means of the last ``every`` steps' terms, the learning rate and the time."""
        step, every = batch_idx + 1, self.every
        if step % every and step != module.stage.steps:
            return
        recent = module.history[-every:]
        keys = sorted({k for h in recent for k in h})
        means = {k: np.nanmean([h.get(k, np.nan) for h in recent]) for k in keys}
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        msg = (
            f"[{self.name}] step {step}/{module.stage.steps} "
            + " ".join(f"{k}={v:.4f}" for k, v in means.items())
            + f" lr={lr:.2e} {time.time() - self.t0:.0f}s"
        )
        print(msg, flush=True)
        if self.lines is not None:
            self.lines.append(msg)
