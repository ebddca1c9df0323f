"""Where in depth a toy LVLM grounds its answer: the per-layer attention profile of the answer row.

For each language-model layer, the head-averaged attention row of the position that
predicts the answer (``p = last prompt position``), restricted to the visual tokens and
renormalised (``a``, one weight per grid cell), is compared with the cells of the object the
answer is about (``m``: cells the object covers by at least ``MIN_COVER``):

* ``nss`` -- the mean z-score of ``a`` on ``m`` (``(a - mean a) / std a``; 0 = no better than
  a uniform row);
* ``share`` -- the share of ``a`` on ``m`` (the object covers about 5% of the cells);
* ``share_other`` -- the same share on each *other* object, averaged: a row that looks at
  every object alike has ``share == share_other``, one that found the asked object has
  ``share >> share_other``.

In layer 0 the answer row cannot yet depend on the question (its query is its own token's
embedding), so any object preference there is generic salience; ``share - share_other``
is what the question selected. This is the fast batched path of training (no processor,
no adapter); ``docs/toy_diagnostics.py`` measures the same profile through the ``raw_attention``
method on the default run's samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from xattr.toy.model import ToyLVLM
from xattr.toy.task import Batch, TaskMix, batch_for

MIN_COVER = 0.3  # a cell belongs to an object when the object covers this fraction of it


def object_cells(cover: Tensor, min_cover: float = MIN_COVER) -> Tensor:
    """[B, K, G] bool: the cells each object covers by at least ``min_cover`` (its best cell at least)."""
    best = cover == cover.amax(-1, keepdim=True)
    return (cover >= min_cover) | (best & (cover > 0))


def row_profile(rows: Tensor, batch: Batch) -> dict[str, Tensor]:
    """Per-layer NSS and shares of visual attention rows ``rows`` [L, B, G] (rows sum to 1).

    Returns ``nss``, ``share``, ``share_other`` as [L, B] (NaN where a row has no other object).
    """
    cells = object_cells(batch.cover).float()  # [B, K, G]
    target = batch.target.clamp(min=0)
    on = cells[torch.arange(len(target)), target]  # [B, G]
    z = (rows - rows.mean(-1, keepdim=True)) / rows.std(-1, keepdim=True).clamp_min(1e-12)
    nss = (z * on).sum(-1) / on.sum(-1)  # [L, B]
    share = (rows * on).sum(-1)
    per_obj = torch.einsum("lbg,bkg->lbk", rows, cells)  # [L, B, K]
    present = cells.any(-1)  # [B, K]
    others = present.clone()
    others[torch.arange(len(target)), target] = False
    n_other = others.sum(-1)  # [B]
    share_other = (per_obj * others).sum(-1) / n_other.clamp(min=1)
    share_other = torch.where(n_other > 0, share_other, torch.nan)
    return {"nss": nss, "share": share, "share_other": share_other}


@torch.no_grad()
def layer_profile(
    toy: ToyLVLM, mix: TaskMix, seed: int, n: int, kind: str | None = None, use_oracle: bool = False
) -> dict[str, Any]:
    """The answer row's per-layer grounding profile on ``n`` held-out questions of ``mix``.

    Returns ``{"nss": [L], "share": [L], "share_other": [L], "acc": float, "n": int}``
    (means over the answerable questions; ``kind`` fixes the question kind).
    """
    was = toy.model.training
    toy.model.eval()
    parts: dict[str, list[Tensor]] = {"nss": [], "share": [], "share_other": []}
    correct = total = 0
    for start in range(0, n, 64):
        batch = batch_for(mix, seed, start, min(64, n - start), toy.grid, kind=kind)
        keep = batch.target >= 0
        if not keep.any():
            continue
        vis = toy.batch_visual(batch, use_oracle)
        answer_ids = toy.answer_ids(batch.kind)[batch.answer.clamp(min=0)]
        logits, attn = toy.forward_answer(
            vis, toy.sequence_ids(batch.kind, batch.word, answer_ids), attentions=True
        )
        p = toy.n_prompt(batch.kind) - 1
        rows = torch.stack([a[:, :, p, toy.image_pos].mean(1) for a in attn]).float()  # [L, B, G]
        rows = rows / rows.sum(-1, keepdim=True)
        prof = row_profile(rows, batch)
        for k in parts:
            parts[k].append(prof[k][:, keep])
        correct += int((logits[:, 0].argmax(-1) == answer_ids)[keep].sum())
        total += int(keep.sum())
    toy.model.train(was)
    out: dict[str, Any] = {
        k: np.nanmean(torch.cat(v, 1).numpy(), axis=1).round(4).tolist() for k, v in parts.items()
    }
    out["acc"] = correct / max(total, 1)
    out["n"] = total
    return out
