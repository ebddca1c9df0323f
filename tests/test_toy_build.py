"""Tiny real-class VLMs: build, save, load back, process an image, attend and generate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xattr.toy.build import FAMILIES, build_tiny_model, build_tokenizer, load_tiny_model

QUESTION = "What color is the circle?"
IMAGE_SIZE = 112
PATCH = 14


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """One saved tiny model folder per family."""
    root = tmp_path_factory.mktemp("toy")
    return {fam: build_tiny_model(fam, root / fam, image_size=IMAGE_SIZE) for fam in FAMILIES}


def _prompt(processor) -> str:
    """The chat-rendered prompt for one image and QUESTION."""
    content = [{"type": "image"}, {"type": "text", "text": QUESTION}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _expected_image_tokens(family: str) -> int:
    """Visual tokens of a 112x112 image: merged 28-px cells (Qwen) or 14-px patches (LLaVA)."""
    cell = PATCH if family == "llava" else 2 * PATCH
    return (IMAGE_SIZE // cell) ** 2


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_offsets_locate_question(family: str) -> None:
    """Offsets on the rendered chat text pick out exactly the question's tokens."""
    tok = build_tokenizer(family)
    text = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    start = text.index(QUESTION)
    enc = tok(text, return_offsets_mapping=True)
    picked = [
        tid
        for tid, (a, b) in zip(enc.input_ids, enc.offset_mapping)
        if b > a and a >= start and b <= start + len(QUESTION)
    ]
    assert tok.convert_ids_to_tokens(picked) == ["what", "color", "is", "the", "circle", "?"]
    assert tok("zebra", add_special_tokens=False).input_ids == [tok.unk_token_id]


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_format(built: dict[str, Path], family: str) -> None:
    """Qwen and LLaVA-1.5 prompt formats, saved under the real processor class name."""
    _, processor = load_tiny_model(built[family])
    prompt = _prompt(processor)
    if family == "llava":
        assert prompt == f"USER: <image>\n{QUESTION} ASSISTANT:"
    else:
        assert prompt == (
            "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
            f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
        )
    saved = json.loads((built[family] / "processor_config.json").read_text())
    real = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}
    assert saved["processor_class"] == real.get(family, "LlavaProcessor")


@pytest.mark.parametrize("family", FAMILIES)
def test_load_process_attend_generate(built: dict[str, Path], family: str) -> None:
    """The image expands into grid-many tokens; attentions [B,H,N,N] take gradients; generate runs."""
    model, processor = load_tiny_model(built[family])
    assert model.config._attn_implementation == "eager"
    inputs = processor(
        images=[Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))],
        text=[_prompt(processor)],
        return_tensors="pt",
    )
    n_image = int((inputs.input_ids == model.config.image_token_id).sum())
    assert n_image == _expected_image_tokens(family)
    if family != "llava":
        grid = inputs.image_grid_thw[0].tolist()  # [t, h, w] in patches
        assert grid == [1, IMAGE_SIZE // PATCH, IMAGE_SIZE // PATCH]
        assert n_image == grid[0] * grid[1] * grid[2] // 4

    for p in model.parameters():
        p.requires_grad_(False)
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, o: o.requires_grad_())
    out = model(**inputs, output_attentions=True, use_cache=False)
    hook.remove()
    n = inputs.input_ids.shape[1]
    assert len(out.attentions) == model.config.text_config.num_hidden_layers
    assert all(
        a.shape == (1, model.config.text_config.num_attention_heads, n, n) for a in out.attentions
    )
    grads = torch.autograd.grad(out.logits[0, -1].max(), list(out.attentions))
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)

    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(generated[:, :n], inputs.input_ids)  # prompt + new ids
    assert n < generated.shape[1] <= n + 5


def _cell_image(row: int, col: int, cell: int) -> Image.Image:
    """A black image with one white cell x cell block at grid position (row, col)."""
    pixels = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    pixels[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = 255
    return Image.fromarray(pixels)


def _visual_embeds(model, inputs) -> torch.Tensor:
    """Language-model input embeddings at the image-token positions, [n_image, D]."""
    seen = {}

    def grab(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]

    hook = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        model(**inputs, use_cache=False)
    hook.remove()
    return seen["embeds"][inputs.input_ids == model.config.image_token_id]


def _cut_vision_mixing(model) -> None:
    """Zero the vision attention output projections so each visual token sees only its cell."""
    for name, module in model.named_modules():
        if name.endswith(("attn.proj", "self_attn.out_proj")) and "language_model" not in name:
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)


@pytest.mark.parametrize("family", FAMILIES)
def test_visual_token_order_is_row_major(built: dict[str, Path], family: str) -> None:
    """A white cell at (row, col) changes only visual token row * grid_w + col."""
    model, processor = load_tiny_model(built[family])
    _cut_vision_mixing(model)
    row, col = 1, 2
    cell = PATCH if family == "llava" else 2 * PATCH  # one patch / one merged 2x2 block
    prompt = [_prompt(processor)]
    lit = processor(images=[_cell_image(row, col, cell)], text=prompt, return_tensors="pt")
    dark = processor(images=[_cell_image(0, 0, 0)], text=prompt, return_tensors="pt")
    changed = (_visual_embeds(model, lit) - _visual_embeds(model, dark)).norm(dim=-1) > 1e-6
    token = row * (IMAGE_SIZE // cell) + col
    assert changed.nonzero().flatten().tolist() == [token]
    if family != "llava":
        # pixel_values [grid_h * grid_w, 3 * 2 * 14 * 14], rows ordered (h/m, w/m, m, m)
        bright = (lit.pixel_values.mean(1) > 0).nonzero().flatten().tolist()
        assert bright == list(range(4 * token, 4 * token + 4))
