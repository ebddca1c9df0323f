"""What every family's video prompt shares: the chat's one video placeholder expanded into the
family's frame tokens, tokenised as its processor would, and one token grid per frame group.

A family's own video processor needs torchvision; xattr builds the same inputs from the
family's *image* processor and its tokenizer (each family's module says how, and its tests
check the result against what the image path gives for the same pixels).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..layout import Grid, VisualLayout
from .prompting import CaptureError, PreparedInputs, locate_question


def video_text(adapter: Any, question: str, placeholder: str, expansion: str) -> str:
    """The chat for one video and the question, its one ``placeholder`` replaced by ``expansion``."""
    text = adapter.prompt_text(question, images=0, videos=1)
    if text.count(placeholder) != 1:
        raise CaptureError(
            f"the chat template put {text.count(placeholder)} {placeholder} in the prompt of one "
            "video; this checkpoint's template has no video entry"
        )
    return text.replace(placeholder, expansion)


def tokenized(adapter: Any, text: str) -> dict[str, Tensor]:
    """The processor's text side: input ids and attention mask of ``text`` (and each token's
    modality, where the processor marks them)."""
    tokens = adapter.tokenizer([text], return_tensors="pt")
    inputs = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
    if getattr(type(adapter.processor), "return_mm_token_type_ids", False):
        kinds = adapter.processor.create_mm_token_type_ids(tokens["input_ids"])
        inputs["mm_token_type_ids"] = torch.tensor(kinds, dtype=torch.long)
    return inputs


def frame_groups(rows: int, cols: int, groups: int, per_group: int, frames: int) -> list[Grid]:
    """``groups`` grids of ``rows x cols``, group ``g`` showing frames ``[g*per_group, ...)``."""
    out = []
    for g in range(groups):
        first, end = per_group * g, min(frames, per_group * g + per_group)
        name = f"frames {first + 1}-{end}" if end - first > 1 else f"frame {first + 1}"
        out.append(Grid(rows, cols, image=g, name=name, frames=(first, end)))
    return out


def video_prepared(
    adapter: Any, inputs: dict[str, Tensor], token_id: int, grids: list[Grid], question: str,
    text: str, video: Any, skip_last: int = 0,
) -> PreparedInputs:  # fmt: skip
    """The prepared video prompt: its ``token_id`` positions are the grids' tokens, in order
    (but the last ``skip_last``, separators such as a closing newline feature)."""
    prompt_ids = inputs["input_ids"][0]
    positions = torch.nonzero(prompt_ids == token_id).flatten()
    positions = positions[: positions.numel() - skip_last]
    layout = VisualLayout(positions, tuple(grids))
    prompt_index = locate_question(adapter.tokenizer, prompt_ids, question)
    size = video.frames()[0].size
    return PreparedInputs(inputs, prompt_ids, layout, prompt_index, text, size, video=video)
