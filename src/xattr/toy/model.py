"""The toy LVLM on the training path: a transformers LVLM plus the task's fixed prompt layout.

``ToyLVLM`` builds every batch by hand (pixel values, prompt ids, positions) and runs the
vision tower and the language model directly, so a step needs no processor call. The answer
word and the end-of-turn token follow the exact prompt the model adapters build
(``processor.apply_chat_template`` with one user turn ``[image, question]`` and
``add_generation_prompt=True``), so greedy ``generate`` answers and then stops.
``fast_vision`` swaps in the same maths of the Qwen2.5-VL vision tower, faster on the CPU.
"""

from __future__ import annotations

import math
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from transformers import AutoConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

from xattr.data.synthetic import SHAPES
from xattr.toy.build import build_tiny_model, load_tiny_model
from xattr.toy.task import (
    BACKGROUND_WORD,
    COLORS,
    QUESTION,
    Batch,
    TaskMix,
    chat_messages,
    draw_samples,
    make_batch,
)


class ToyLVLM(nn.Module):
    """A transformers LVLM plus the fixed prompt layout of the task, with a fast batched path.

    Every prompt has the same length (one image, one question of fixed wording), so a batch is
    a plain stack: ``[prompt(shape), answer, end-of-turn]``. ``forward_answer`` gives the
    logits predicting the answer and the end-of-turn token.
    """

    def __init__(self, model: nn.Module, processor: Any, family: str) -> None:
        super().__init__()
        self.model = model
        self.processor = processor
        self.family = family
        self.qwen = family.startswith("qwen")
        tok = processor.tokenizer
        self.color_ids = torch.tensor([tok.convert_tokens_to_ids(c) for c in COLORS])
        self.shape_ids = torch.tensor([tok.convert_tokens_to_ids(s) for s in SHAPES])
        self.background_id = tok.convert_tokens_to_ids(BACKGROUND_WORD)
        self.eos_id = int(model.generation_config.eos_token_id)
        cfg = model.config
        self.image_token_id = int(getattr(cfg, "image_token_id", None) or cfg.image_token_index)
        # One processor call per asked shape gives the exact prompt ids.
        size = self.image_size
        blank = Image.new("RGB", (size, size), (128, 128, 128))
        prompts, extra = [], {}
        for shape in SHAPES:
            text = processor.apply_chat_template(
                chat_messages(QUESTION.format(shape=shape)),
                tokenize=False,
                add_generation_prompt=True,
            )
            inputs = processor(images=[blank], text=[text], return_tensors="pt")
            prompts.append(inputs["input_ids"][0])
            extra = inputs
        prompt_ids = torch.stack(prompts)  # [3, L]
        self.register_buffer("prompt_ids", prompt_ids, persistent=False)
        self.n_prompt = prompt_ids.shape[1]
        image_pos = torch.nonzero(prompt_ids[0] == self.image_token_id).flatten()
        self.register_buffer("image_pos", image_pos, persistent=False)
        self.grid = round(math.sqrt(image_pos.numel()))
        if self.qwen:
            full = torch.cat([prompt_ids[:1], torch.zeros(1, 2, dtype=torch.long)], 1)
            mm = (full == self.image_token_id).long()
            pos, _ = model.model.get_rope_index(
                full, mm_token_type_ids=mm, image_grid_thw=extra["image_grid_thw"]
            )
            self.register_buffer("position_ids", pos, persistent=False)  # [3, 1, L + 2]
            self.register_buffer("grid_thw", extra["image_grid_thw"], persistent=False)
        mean = torch.tensor(processor.image_processor.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(processor.image_processor.image_std).view(1, 3, 1, 1)
        self.register_buffer("pix_mean", mean, persistent=False)
        self.register_buffer("pix_std", std, persistent=False)

    @property
    def image_size(self) -> int:
        vc = self.model.config.vision_config
        if self.qwen:
            ip = self.processor.image_processor
            return round(math.sqrt(ip.size["shortest_edge"]))
        return int(vc.image_size)

    # ------------------------------------------------------------------ inputs
    def pixel_values(self, images: np.ndarray) -> Tensor:
        """The processor's ``pixel_values`` for [B, H, W, 3] uint8 images already at model size."""
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        x = (x - self.pix_mean) / self.pix_std  # [B, C, H, W]
        if not self.qwen:
            return x
        vc = self.model.config.vision_config
        p, m, t = vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size
        b, c, h, w = x.shape
        gh, gw = h // p, w // p
        x = x[:, None].expand(b, t, c, h, w)  # a still image repeats over the temporal patch
        x = x.reshape(b, t, c, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (b, h/m, w/m, m, m, c, t, p, p)
        return x.reshape(b * gh * gw, c * t * p * p)

    def visual_tokens(self, pixel_values: Tensor, batch: int) -> Tensor:
        """Vision tower + merger/projector: [B, G, D] visual token embeddings, grid raster order."""
        if self.qwen:
            out = self.model.model.visual(pixel_values, grid_thw=self.grid_thw.expand(batch, 3))
            return out.pooler_output.view(batch, -1, out.pooler_output.shape[-1])
        cfg = self.model.config
        out = self.model.model.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
            return_dict=True,
        )
        return torch.stack(list(out.pooler_output))

    def oracle_tokens(self, batch: Batch) -> Tensor:
        """The target cell embeddings: cover-weighted E[shape] + E[colour], E[background] elsewhere."""
        emb = self.model.get_input_embeddings().weight
        obj = (
            emb[self.shape_ids[batch.obj_shape]] + emb[self.color_ids[batch.obj_color]]
        )  # [B, K, D]
        cover = batch.cover.clamp(0, 1)  # [B, K, G]
        empty = (1 - cover.sum(1)).clamp(min=0)  # [B, G]
        return torch.einsum("bkg,bkd->bgd", cover, obj) + empty[..., None] * emb[self.background_id]

    def sequence_ids(self, shape_q: Tensor, answer_tok: Tensor) -> Tensor:
        """[B, L + 2]: prompt, answer token, end-of-turn token."""
        b = shape_q.shape[0]
        eos = torch.full((b, 1), self.eos_id, dtype=torch.long)
        return torch.cat([self.prompt_ids[shape_q], answer_tok[:, None], eos], dim=1)

    def forward_answer(
        self, visual: Tensor, ids: Tensor, probe_layer: int | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Logits at the last prompt position and the answer position: [B, 2, V].

        With ``probe_layer`` also the hidden state after that layer at the last prompt position.
        """
        b, n = ids.shape
        embeds = self.model.get_input_embeddings()(ids)
        embeds = embeds.index_copy(1, self.image_pos, visual.to(embeds.dtype))
        kwargs: dict[str, Any] = {}
        if self.qwen:
            kwargs["position_ids"] = self.position_ids[..., :n].expand(-1, b, -1)
        out = self.model.model.language_model(
            inputs_embeds=embeds,
            use_cache=False,
            output_hidden_states=probe_layer is not None,
            **kwargs,
        )
        hidden = out.last_hidden_state[:, self.n_prompt - 1 : self.n_prompt + 1]
        logits = self.model.lm_head(hidden)
        if probe_layer is None:
            return logits
        return logits, out.hidden_states[probe_layer][:, self.n_prompt - 1]


def _batched_vision_attention(self, hidden_states: Tensor, cu_seqlens: Tensor, position_embeddings=None, max_seqlen=None, **kwargs) -> Tensor:  # fmt: skip
    """Qwen2.5-VL vision attention for equal-length chunks (one per image) in one batched call.

    The transformers eager path loops over the chunks in Python; here every image has the
    same number of patches, so the chunks stack into a batch. Same maths (softmax(q k^T s) v,
    no dropout); used only while training (see `fast_vision`).
    """
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    if len(set(lengths)) != 1:
        return self._xattr_original_forward(
            hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs
        )
    n, chunk = hidden_states.shape[0], lengths[0]
    q, k, v = (
        self.qkv(hidden_states).reshape(n, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    )
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    q, k, v = (t.reshape(n // chunk, chunk, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=self.scaling)
    return self.proj(out.transpose(1, 2).reshape(n, -1))


def _linear_patch_embed(self, hidden_states: Tensor) -> Tensor:
    """Qwen2.5-VL patch embedding as the matrix product it is (kernel = stride = patch): fast on CPU."""
    weight = self.proj.weight
    return F.linear(hidden_states.to(weight.dtype), weight.reshape(weight.shape[0], -1))


class fast_vision:
    """Context manager: the same maths as the Qwen2.5-VL vision tower, faster on CPU, while training.

    Batched attention over equal-length images and the patch embedding as a matrix product;
    the original methods come back on exit. No-op for other families.
    """

    def __init__(self, toy: ToyLVLM) -> None:
        self.patches: list[tuple[nn.Module, Any]] = []
        if toy.family == "qwen2_5_vl":
            visual = toy.model.model.visual
            self.patches = [(blk.attn, _batched_vision_attention) for blk in visual.blocks]
            self.patches.append((visual.patch_embed, _linear_patch_embed))

    def __enter__(self) -> fast_vision:
        for module, fn in self.patches:
            module._xattr_original_forward = module.forward
            module.forward = types.MethodType(fn, module)
        return self

    def __exit__(self, *exc: Any) -> None:
        for module, _ in self.patches:
            del module.forward  # back to the class's method
            del module._xattr_original_forward


def build_toy(family: str, seed: int, sizes: dict[str, Any], workdir: Path) -> ToyLVLM:
    """A fresh random tiny model of the real class (xattr.toy.build), wrapped for training."""
    path = build_tiny_model(family, workdir, seed=seed, **sizes)
    return load_toy(path, family)


def load_toy(path: str | Path, family: str | None = None) -> ToyLVLM:
    """Load a saved model directory (eager attention) and wrap it."""
    family = family or AutoConfig.from_pretrained(path).model_type
    model, processor = load_tiny_model(path)
    return ToyLVLM(model, processor, family)


@torch.no_grad()
def quick_eval(
    toy: ToyLVLM, held: TaskMix, seed: int, n: int, use_oracle: bool = False
) -> dict[str, float]:
    """Answer accuracy on ``n`` held-out questions of ``held`` (fast batched path, no processor)."""
    was = toy.model.training
    toy.model.eval()
    correct, total = 0, 0
    for start in range(0, n, 64):
        batch = make_batch(draw_samples(held, seed, start, min(64, n - start)), toy.grid)
        b = batch.answer.shape[0]
        vis = (
            toy.oracle_tokens(batch)
            if use_oracle
            else toy.visual_tokens(toy.pixel_values(batch.images), b)
        )
        logits = toy.forward_answer(
            vis, toy.sequence_ids(batch.shape_q, toy.color_ids[batch.answer])
        )
        correct += int((logits[:, 0].argmax(-1) == toy.color_ids[batch.answer]).sum())
        total += b
    toy.model.train(was)
    return {"acc": correct / total}
