"""Does position in the oracle tokens make "left of" learnable? docs/toy.md's position table.

Each cell's oracle token gets ``weight * (E[row word] + E[column word])`` added (rows "zero"
… "six", columns "0" … "6": the frozen word embeddings, as for shape and colour), and the
4-layer core runs the shipped recipe's stages up to the growth -- LM on oracle tokens,
alignment, LM on the real visual tokens -- on today's questions and the two relations
(batches 50/25/25, no counting: its answers "one" … "three" are row words here). The
held-out accuracy per question kind is printed after each stage. Nothing here is shipped:
the shipped toys are trained without position (``weight`` 0).

    python docs/toy_position.py --weight 0.25 [--family qwen2_5_vl] [--scale 1.0]

One run of the full length takes about 12 minutes on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from xattr.toy import recipe as toy_recipe
from xattr.toy.model import ToyLVLM
from xattr.toy.task import Batch
from xattr.toy.train import train

ROW_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
COLUMN_WORDS = tuple(str(d) for d in range(7))
KINDS = ("color", "left_color", "next_shape")
WEIGHTS = (0.5, 0.25, 0.25)


def position_tokens(toy: ToyLVLM) -> Tensor:
    """[G, D] E[row word] + E[column word] per grid cell, raster order."""
    if toy.grid > len(ROW_WORDS):
        raise ValueError(f"{toy.grid} x {toy.grid} grid: only {len(ROW_WORDS)} row words")
    tok = toy.processor.tokenizer
    emb = toy.model.get_input_embeddings().weight
    ids = lambda words: torch.tensor([tok.convert_tokens_to_ids(w) for w in words[: toy.grid]])  # noqa: E731
    rows, cols = emb[ids(ROW_WORDS)], emb[ids(COLUMN_WORDS)]
    return (rows[:, None, :] + cols[None, :, :]).reshape(toy.grid**2, -1)


def run(
    family: str, weight: float, scale: float = 1.0, seed: int = 0, eval_n: int = 256
) -> dict[str, Any]:
    """Train the core with position-weighted oracle tokens; held-out accuracy per stage
    (``eval_n`` questions of each kind)."""
    plain = ToyLVLM.oracle_tokens

    def with_position(self: ToyLVLM, batch: Batch) -> Tensor:
        return plain(self, batch) + weight * position_tokens(self)[None]

    mix = replace(toy_recipe.TASK_MIX, kinds=KINDS, kind_weights=WEIGHTS)
    recipe = toy_recipe.default_recipe(family, seed=seed, scale=scale, text_layers=4)
    recipe.mix, recipe.eval_mix = mix, replace(recipe.eval_mix, kinds=KINDS, kind_weights=WEIGHTS)
    recipe.stages = [s for s in recipe.stages if s.name != "joint"]
    recipe.eval_n = eval_n
    recipe.stages[0].mix = mix.answerable()
    ToyLVLM.oracle_tokens = with_position  # type: ignore[method-assign]
    try:
        _, report = train(recipe, None, verbose=False)
    finally:
        ToyLVLM.oracle_tokens = plain  # type: ignore[method-assign]
    return {s["stage"]: s["heldout"] for s in report["stages"]} | {"seconds": report["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="qwen2_5_vl", choices=sorted(toy_recipe.FAMILY_SIZES))
    ap.add_argument("--weight", type=float, default=0.25, help="scale of the position words")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every stage's steps")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(run(args.family, args.weight, args.scale), indent=1))


if __name__ == "__main__":
    main()
