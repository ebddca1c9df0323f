"""The training recipe of the toy LVLMs: stages, their losses, parameters and schedules.

A from-scratch LVLM learns which colours are present long before it learns which object is
asked about. Two things make it slow: the vision tower must put each object's *shape* into
the visual tokens of its cells (colour is local and easy; shape is not), and the language
model must learn to match the asked shape word against those tokens. The recipe follows the
stages of real LVLMs, with the language model's (frozen) word embeddings ``E`` as the shared
vocabulary of the hand-off: each 16 px grid cell's *oracle* token is
``sum_o cover_o (E[shape_o] + E[colour_o]) + (1 - sum_o cover_o) E[background]``.

1. ``lm(oracle)`` -- the language model learns the binding from oracle visual tokens
   (answerable questions only), with an auxiliary linear probe asking for the question's
   word at the last prompt position after layer 1 (it routes the question into the answer
   position; the probe is thrown away).
2. ``align`` -- the vision tower and its merger/projector regress onto the oracle tokens
   (object cells weighted up) plus a linear probe classifying each cell's shape.
3. ``lm(vision)`` -- the language model continues on the real visual tokens (tower frozen).
4. ``grow`` -- the trained core (`FAMILY_SIZES` text_layers) becomes the middle of a ``TEXT_LAYERS``-layer
   language model (block expansion, `xattr.toy.model.grow_toy`: new layers start as the
   identity of the residual stream and train from here on), then ``lm(vision)`` again.
5. ``joint`` -- everything at a low learning rate, the alignment loss kept as an auxiliary.

Every stage draws "What color is the circle?", the two relational questions and counting
(`TASK_MIX`, one kind per batch). Why grow: a 12-layer model trained from scratch on this task grounds
in its first layers (docs/toy.md measures it); real LVLMs graft vision onto a language model
whose early layers are already busy, and ground in their middle layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from xattr.data.synthetic import SHAPES
from xattr.toy.model import ToyLVLM
from xattr.toy.task import CLEAN_3, Batch, TaskMix

# Architecture per family (kwargs of xattr.toy.build.build_tiny_model). Both families see a
# 112 px image as a 7 x 7 grid of 16 px visual tokens. text_layers is the trained core; the
# shipped language models are grown from it to TEXT_LAYERS (default_recipe).
FAMILY_SIZES: dict[str, dict[str, Any]] = {
    "qwen2_5_vl": dict(
        image_size=112, patch_size=16, merge_size=1,
        text_layers=4, text_hidden=128, text_heads=8, text_kv_heads=2,
        vision_layers=3, vision_hidden=128, vision_heads=4,
    ),
    "llava": dict(
        image_size=112, patch_size=16,
        text_layers=4, text_hidden=128, text_heads=8, text_kv_heads=2,
        vision_layers=3, vision_hidden=128, vision_heads=4, vision_feature_layer=-1,
    ),
}  # fmt: skip
TEXT_LAYERS = 12  # the shipped language models' depth, grown from FAMILY_SIZES' text_layers
# The questions: today's "What color is the circle?", the two relations and counting (one
# batch, one kind).
TASK_MIX = TaskMix(
    kinds=("color", "left_color", "next_shape", "count"), kind_weights=(0.6, 0.1, 0.1, 0.2)
)
EVAL_MIX = replace(CLEAN_3, kinds=TASK_MIX.kinds, kind_weights=TASK_MIX.kind_weights)


def qa_loss(toy: ToyLVLM, logits: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
    """Cross-entropy of the answer (uniform over the answer words when unanswerable) and end-of-turn.

    Returns (loss, answer-correct bool [B] for answerable rows, -1 otherwise as long).
    """
    logp = F.log_softmax(logits.float(), dim=-1)  # [B, 2, V]
    answerable = batch.answer >= 0
    vocab = toy.answer_ids(batch.kind)
    target = torch.where(answerable, batch.answer, 0)
    ce_known = -logp[:, 0].gather(1, vocab[target][:, None]).squeeze(1)
    ce_absent = -logp[:, 0, vocab].mean(1)  # uniform target over the answer words
    ce = torch.where(answerable, ce_known, ce_absent)
    eos = -logp[:, 1, toy.eos_id]
    loss = ce.mean() + 0.5 * eos.mean()
    pred = logits[:, 0].argmax(-1)
    correct = torch.where(answerable, (pred == vocab[target]).long(), torch.full_like(target, -1))
    return loss, correct


def answer_tokens(toy: ToyLVLM, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
    """The teacher-forced answer token per row (a random answer word for unanswerable rows)."""
    vocab = toy.answer_ids(batch.kind)
    rand = torch.randint(len(vocab), batch.answer.shape, generator=generator)
    return vocab[torch.where(batch.answer >= 0, batch.answer, rand)]


def align_loss(
    visual: Tensor, oracle: Tensor, cover: Tensor | None = None, cell_weight: float = 0.0
) -> Tensor:
    """Relative squared error of the visual tokens against the oracle cell embeddings.

    Cells are weighted ``1 + cell_weight * covered fraction`` so that the few object cells,
    whose shape is the hard part, are not drowned by the many background cells.
    """
    w = (
        torch.ones(oracle.shape[:2])
        if cover is None
        else 1 + cell_weight * cover.sum(1).clamp(0, 1)
    )
    return (((visual - oracle) ** 2).sum(-1) * w).mean() / ((oracle**2).sum(-1) * w).mean()


def cell_shape_labels(batch: Batch, min_cover: float = 0.15) -> Tensor:
    """Per grid cell: the shape index of the object covering most of it, or len(SHAPES) for none."""
    best = batch.cover.max(1)
    labels = torch.gather(batch.obj_shape, 1, best.indices)
    return torch.where(best.values > min_cover, labels, len(SHAPES))


@dataclass
class Stage:
    """One training stage."""

    name: str  # "lm" | "align" | "joint" | "grow"
    steps: int = 0
    lr: float = 0.0
    batch_size: int = 64
    warmup: int = 50
    hold: float = 0.0  # fraction of the steps at the full learning rate before the cosine decay
    vision_lr_scale: float = 1.0  # joint: learning rate of the vision tower relative to lr
    align_weight: float = 0.5  # joint: weight of the auxiliary alignment loss
    cell_weight: float = 10.0  # align/joint: extra weight of object cells in the alignment loss
    cell_probe: float = (
        0.0  # align/joint: weight of a linear probe: each cell's shape from its token
    )
    source: str = "vision"  # lm: visual tokens from the (frozen) vision tower, or "oracle"
    shape_probe: float = (
        0.0  # weight of an auxiliary linear probe: asked shape at the last prompt position
    )
    probe_layer: int = 1  # probes read after this language-model layer (probes are not saved)
    mix: TaskMix | None = None  # this stage's data (default: the recipe's)
    grow_to: int = 0  # grow: the language model's new depth (xattr.toy.model.grow_toy)
    grow_bottom: int = 0  # grow: new layers placed below the trained ones

    def lr_factor(self, step: int) -> float:
        """The learning-rate multiplier at ``step``: linear warm-up, hold, cosine decay to 0.05."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        start = max(self.warmup, int(self.hold * self.steps))
        if step < start:
            return 1.0
        frac = (step - start) / max(1, self.steps - start)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


@dataclass
class Recipe:
    """The whole training run."""

    family: str = "qwen2_5_vl"
    seed: int = 0
    sizes: dict[str, Any] = field(default_factory=dict)
    mix: TaskMix = field(default_factory=TaskMix)
    stages: list[Stage] = field(default_factory=list)
    eval_n: int = 256
    eval_mix: TaskMix = field(default_factory=lambda: CLEAN_3)
    workers: int = 1  # data-generation processes (0: in the training process)


def default_recipe(
    family: str, seed: int = 0, scale: float = 1.0, text_layers: int = TEXT_LAYERS
) -> Recipe:
    """The recipe of the shipped checkpoints; ``scale`` shrinks the step counts (tests).

    The language model is trained with `FAMILY_SIZES`' text_layers, then grown to ``text_layers``
    (the trained layers in the middle, `grow_toy`) and trained on.
    """
    s = lambda n: max(1, round(n * scale))  # noqa: E731
    sizes = dict(FAMILY_SIZES[family])
    core = min(sizes["text_layers"], text_layers)
    sizes["text_layers"] = core
    stages = [
        Stage("lm", steps=s(1000), lr=1e-3, warmup=s(50), hold=0.6, shape_probe=1.0,
              source="oracle", mix=TASK_MIX.answerable()),
        Stage("align", steps=s(700), lr=2e-3, warmup=s(30), hold=0.5, cell_probe=1.0),
        Stage("lm", steps=s(400), lr=1e-3, warmup=s(30), hold=0.3, shape_probe=1.0),
    ]  # fmt: skip
    if text_layers > core:
        # A fresh optimizer at the core's learning rate undoes the grown model (held-out
        # accuracy fell from 0.7 to 0.2 at 1e-3, measured); at 2e-4 it keeps what it knew.
        stages += [
            Stage("grow", grow_to=text_layers, grow_bottom=(text_layers - core) // 2),
            Stage("lm", steps=s(150), lr=2e-4, warmup=s(30), hold=0.3),
        ]
    stages.append(Stage("joint", steps=s(200), lr=2e-4, warmup=s(20), hold=0.5, cell_probe=1.0))
    return Recipe(family=family, seed=seed, sizes=sizes, mix=TASK_MIX, eval_mix=EVAL_MIX,
                  stages=stages)  # fmt: skip


def stage_parameters(toy: ToyLVLM, stage: Stage) -> list[dict[str, Any]]:
    """Parameter groups a stage trains (the word-embedding table stays frozen before 'joint')."""
    model = toy.model
    emb = model.get_input_embeddings().weight
    if toy.qwen:
        vision = list(model.model.visual.parameters())
    else:
        vision = list(model.model.vision_tower.parameters()) + list(
            model.model.multi_modal_projector.parameters()
        )
    vision_ids = {id(p) for p in vision}
    language = [p for p in model.parameters() if id(p) not in vision_ids and p is not emb]
    if stage.name == "lm":
        return [{"params": language, "lr": stage.lr}]
    if stage.name == "align":
        return [{"params": vision, "lr": stage.lr}]
    return [
        {"params": language, "lr": stage.lr},
        {"params": [emb], "lr": stage.lr},
        {"params": vision, "lr": stage.lr * stage.vision_lr_scale},
    ]
