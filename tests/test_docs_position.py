"""docs/toy_position.py: the position words added to the oracle tokens, and a short run of it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from xattr.toy.model import ToyLVLM, load_toy

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "toy_position.py"
spec = importlib.util.spec_from_file_location("toy_position", SCRIPT)
toy_position = importlib.util.module_from_spec(spec)
spec.loader.exec_module(toy_position)


def test_position_tokens_are_row_plus_column_word_embeddings():
    import xattr.toy

    toy = load_toy(xattr.toy.checkpoint("llava"), "llava")
    pos = toy_position.position_tokens(toy)  # [G, D]
    tok, emb = toy.processor.tokenizer, toy.model.get_input_embeddings().weight
    word = lambda w: emb[tok.convert_tokens_to_ids(w)]  # noqa: E731
    assert pos.shape == (toy.grid**2, emb.shape[1])
    for r, c in [(0, 0), (0, 6), (6, 0), (3, 5)]:  # raster order: cell r * grid + c
        assert torch.equal(pos[r * toy.grid + c], word(toy_position.ROW_WORDS[r]) + word(str(c)))
    assert not torch.equal(pos[1], pos[toy.grid])  # (0, 1) and (1, 0) differ


def test_a_short_run_reports_every_stage_and_restores_the_oracle():
    plain = ToyLVLM.oracle_tokens
    out = toy_position.run("qwen2_5_vl", weight=0.25, scale=0.004, eval_n=16)
    assert ToyLVLM.oracle_tokens is plain
    assert list(out) == ["lm(oracle)", "align", "lm(vision)", "seconds"]
    for stage in ("lm(oracle)", "align", "lm(vision)"):
        assert set(out[stage]) == {"acc", "acc_color", "acc_left_color", "acc_next_shape"}
