"""Tiny real-class VLMs: build, save, load back, process an image, attend and generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tokenizers
import torch

import xattr
from support.families import FAMILIES, SPECS
from xattr.toy.build import build_tiny_model, build_tokenizer, load_tiny_model

QUESTION = "What color is the circle?"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """One saved tiny model folder per family."""
    root = tmp_path_factory.mktemp("toy")
    return {f: build_tiny_model(f, root / f, **SPECS[f].build_options) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_is_word_level_over_the_task_words(family: str) -> None:
    """Word-level over the task's words; a byte-level BPE of them where the family's tokenizer
    class rebuilds a BPE from the saved files (Qwen3.5): one piece per word, any text encodes."""
    tok = build_tokenizer(family)
    ids = tok(QUESTION, add_special_tokens=False).input_ids
    if isinstance(tok.backend_tokenizer.model, tokenizers.models.BPE):
        assert tok.convert_ids_to_tokens(ids) == ["What", "Ġcolor", "Ġis", "Ġthe", "Ġcircle", "?"]
        assert tok.decode(tok("zebra", add_special_tokens=False).input_ids) == "zebra"
    else:
        assert tok.convert_ids_to_tokens(ids) == ["what", "color", "is", "the", "circle", "?"]
        assert tok("zebra", add_special_tokens=False).input_ids == [tok.unk_token_id]
    assert tok.chat_template  # the family's own chat format


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_under_the_real_classes_and_loaded_back(built: dict[str, Path], family: str) -> None:
    """The folder is an ordinary checkpoint: real model and processor class names, eager."""
    model, processor = load_tiny_model(built[family])
    assert model.config._attn_implementation == "eager"
    config = json.loads((built[family] / "config.json").read_text())
    assert config["architectures"] == [type(model).__name__]
    saved = json.loads((built[family] / "processor_config.json").read_text())
    assert (
        saved["processor_class"] == getattr(processor, "real_name", "") or type(processor).__name__
    )
    adapter = xattr.models.load(built[family])  # the family comes from the model_type
    assert adapter.family == family


@pytest.mark.parametrize("family", FAMILIES)
def test_process_attend_and_generate(tiny_adapter, family: str) -> None:
    """The prompt holds the question once; attentions [H, N, N] take gradients; generate runs."""
    adapter = tiny_adapter(family)
    prepared = adapter.prepare(SPECS[family].image(), QUESTION)
    assert prepared.text.count(QUESTION) == 1
    in_text = prepared.prompt_index - adapter.visual_prefix(prepared)  # mllama: image prefix
    question = adapter.tokenizer.decode(prepared.prompt_ids[in_text].tolist())
    assert question.replace(" ", "").lower() == QUESTION.replace(" ", "").lower()
    trace = adapter.trace(SPECS[family].image(), QUESTION, "red circle")
    n = trace.seq_len
    assert all(a.shape == (trace.layer_heads(k), n, n) for k, a in enumerate(trace.attentions))
    grads = trace.gradients()  # [T, L, H, N, N]
    assert torch.isfinite(grads).all() and grads.abs().sum() > 0
    with torch.no_grad():
        generated = adapter.generate(prepared, max_new_tokens=5)
    assert generated.numel() <= 5
