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

from xattr.toy.build import build_tiny_model, load_tiny_model
from xattr.toy.task import (
    BACKGROUND_WORD,
    KINDS,
    VOCABULARIES,
    Batch,
    TaskMix,
    batch_for,
    chat_messages,
)


class ToyLVLM(nn.Module):
    """A transformers LVLM plus the fixed prompt layout of the task, with a fast batched path.

    The prompts of one question kind share one length (one image, one question of fixed
    wording and one word), so a batch of one kind is a plain stack: ``[prompt(kind, word),
    answer, end-of-turn]``. ``forward_answer`` gives the logits predicting the answer and the
    end-of-turn token.
    """

    def __init__(self, model: nn.Module, processor: Any, family: str) -> None:
        super().__init__()
        self.model = model
        self.processor = processor
        self.family = family
        self.qwen = family.startswith("qwen")
        tok = processor.tokenizer
        self.background_id = tok.convert_tokens_to_ids(BACKGROUND_WORD)
        self.eos_id = int(model.generation_config.eos_token_id)
        cfg = model.config
        self.image_token_id = int(getattr(cfg, "image_token_id", None) or cfg.image_token_index)
        self.vocab_ids = {
            name: torch.tensor([tok.convert_tokens_to_ids(w) for w in words])
            for name, words in VOCABULARIES.items()
        }
        # One processor call per (kind, word) gives the exact prompt ids.
        size = self.image_size
        blank = Image.new("RGB", (size, size), (128, 128, 128))
        self.prompts: dict[str, Tensor] = {}  # kind -> [len(vocabulary of its word), L_kind]
        extra: Any = {}
        for name, kind in KINDS.items():
            rows = []
            for word in VOCABULARIES[kind.word]:
                text = processor.apply_chat_template(
                    chat_messages(kind.question(word)), tokenize=False, add_generation_prompt=True
                )
                extra = processor(images=[blank], text=[text], return_tensors="pt")
                rows.append(extra["input_ids"][0])
            self.prompts[name] = torch.stack(rows)
        first = self.prompts["color"][0]
        image_pos = torch.nonzero(first == self.image_token_id).flatten()
        self.register_buffer("image_pos", image_pos, persistent=False)
        self.grid = round(math.sqrt(image_pos.numel()))
        if self.qwen:
            # Every prompt shares the text before and the image: positions of the longest
            # prompt (+ answer, end-of-turn) sliced to a shorter one are that one's own.
            longest = max(self.prompts.values(), key=lambda p: p.shape[1])[:1]
            full = torch.cat([longest, torch.zeros(1, 2, dtype=torch.long)], 1)
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

    @property
    def color_ids(self) -> Tensor:
        """Token ids of the colour words, in COLORS order."""
        return self.vocab_ids["color"]

    @property
    def shape_ids(self) -> Tensor:
        """Token ids of the shape words, in SHAPES order."""
        return self.vocab_ids["shape"]

    def answer_ids(self, kind: str) -> Tensor:
        """Token ids of the answer vocabulary of question kind ``kind``."""
        return self.vocab_ids[KINDS[kind].answer]

    def n_prompt(self, kind: str = "color") -> int:
        """Prompt length (tokens) of question kind ``kind``."""
        return self.prompts[kind].shape[1]

    def batch_visual(self, batch: Batch, oracle: bool = False) -> Tensor:
        """[B, G, D] visual tokens of a batch: its oracle cell embeddings, or the vision tower's."""
        if oracle:
            return self.oracle_tokens(batch)
        return self.visual_tokens(self.pixel_values(batch.images), batch.answer.shape[0])

    def sequence_ids(self, kind: str, word: Tensor, answer_tok: Tensor) -> Tensor:
        """[B, L_kind + 2]: prompt (question kind, word index per row), answer token, end-of-turn."""
        b = word.shape[0]
        eos = torch.full((b, 1), self.eos_id, dtype=torch.long)
        return torch.cat([self.prompts[kind][word], answer_tok[:, None], eos], dim=1)

    def forward_answer(
        self,
        visual: Tensor,
        ids: Tensor,
        probe_layer: int | None = None,
        attentions: bool = False,
    ) -> Any:
        """Logits at the last prompt position and the answer position: [B, 2, V].

        With ``probe_layer`` also the hidden state after that layer at the last prompt
        position; with ``attentions`` also every layer's attention probabilities
        ([B, H, N, N] each, eager attention).
        """
        b, n = ids.shape
        n_prompt = n - 2
        embeds = self.model.get_input_embeddings()(ids)
        embeds = embeds.index_copy(1, self.image_pos, visual.to(embeds.dtype))
        kwargs: dict[str, Any] = {}
        if self.qwen:
            kwargs["position_ids"] = self.position_ids[..., :n].expand(-1, b, -1)
        out = self.model.model.language_model(
            inputs_embeds=embeds,
            use_cache=False,
            output_hidden_states=probe_layer is not None,
            output_attentions=attentions,
            **kwargs,
        )
        hidden = out.last_hidden_state[:, n_prompt - 1 : n_prompt + 1]
        logits = self.model.lm_head(hidden)
        if attentions:
            return logits, out.attentions
        if probe_layer is None:
            return logits
        return logits, out.hidden_states[probe_layer][:, n_prompt - 1]


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
    correct: dict[str, int] = {}
    total: dict[str, int] = {}
    for kind in held.kinds:
        for start in range(0, n, 64):
            batch = batch_for(held, seed, start, min(64, n - start), toy.grid, kind=kind)
            keep = batch.answer >= 0
            vis = toy.batch_visual(batch, use_oracle)
            expected = toy.answer_ids(kind)[batch.answer.clamp(min=0)]
            logits = toy.forward_answer(vis, toy.sequence_ids(kind, batch.word, expected))
            hit = (logits[:, 0].argmax(-1) == expected)[keep]
            correct[kind] = correct.get(kind, 0) + int(hit.sum())
            total[kind] = total.get(kind, 0) + int(keep.sum())
    toy.model.train(was)
    out = {"acc": sum(correct.values()) / max(1, sum(total.values()))}
    if len(held.kinds) > 1:
        out.update({f"acc_{k}": correct[k] / max(1, total[k]) for k in held.kinds})
    return out


def grow_toy(
    toy: ToyLVLM, sizes: dict[str, Any], text_layers: int, bottom: int, seed: int, workdir: Path
) -> ToyLVLM:
    """A deeper copy of ``toy``: its language-model layers moved up by ``bottom``, new layers around.

    The new model is a fresh one of ``toy``'s ``sizes`` (`build_toy`'s) but ``text_layers``
    layers (seed ``seed``); every trained weight is copied over, the trained
    decoder layer ``i`` becoming layer ``bottom + i``. The new layers (``bottom`` below, the
    rest above) start as the identity of the residual stream: their output projections
    (``o_proj``, ``down_proj``) are zero, the rest of them random, and all of them train
    from the next stage on. Block expansion of this kind is how depth is added to a trained
    language model without losing what it computes.
    """
    old = toy.model.config.text_config.num_hidden_layers
    if not 0 <= bottom <= text_layers - old:
        raise ValueError(f"cannot place {old} layers at {bottom} in {text_layers}")
    grown = build_toy(toy.family, seed, {**sizes, "text_layers": text_layers}, workdir)
    prefix = "model.language_model.layers."
    state = grown.model.state_dict()
    for key, value in toy.model.state_dict().items():
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            key = f"{prefix}{int(index) + bottom}.{rest}"
        state[key] = value.clone()
    moved = range(bottom, bottom + old)
    for layer in (i for i in range(text_layers) if i not in moved):
        for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            state[f"{prefix}{layer}.{name}"].zero_()
    grown.model.load_state_dict(state)
    return grown
