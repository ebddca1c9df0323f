"""From an image and a question to the model's inputs: chat prompt, V, P, answers to teacher-force.

The question's own tokens (P) are found as a token subsequence of the processed prompt, so
they are found whatever the family wraps around them (chat markup, image blocks, tile tags).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import transformers
from torch import Tensor

from ..images import PromptImages, load_images
from ..layout import LayoutError, VisualLayout
from ..video import Video
from ..warn import warn

# Per-token tensors a processor may return beside input_ids, and the value an appended
# (answer) token takes in each (text tokens: no image type, attended).
PER_TOKEN_FILL = {"attention_mask": 1, "mm_token_type_ids": 0, "token_type_ids": 0}


class CaptureError(ValueError):
    """Inputs or a model configuration the capture cannot explain (named in the message)."""


class LargeImageWarning(UserWarning):
    """An image far larger than any model input: the processor resizes it, at a cost."""


LARGE_IMAGE_PIXELS = 16_000_000  # above this an image is worth a word (4900 x 3265 and up)


@dataclass
class PreparedInputs:
    """A prompt run through the processor, with where its parts are."""

    inputs: dict[str, Tensor]  # processor output for the prompt (batch of 1)
    prompt_ids: Tensor  # [n_prompt]
    layout: VisualLayout  # the visual tokens and the grids they form
    prompt_index: Tensor  # [|P|] the question's own tokens
    text: str  # the rendered prompt
    image_size: tuple[int, int] | None = None  # (W, H) of the original image (one image)
    # several images: each image prepared alone (its own layout, views and sizes), in order
    parts: tuple[PreparedInputs, ...] = ()
    video: Any = None  # the `xattr.Video` of a video prompt (grids: frame groups)

    @property
    def num_images(self) -> int:
        return max(1, len(self.parts))

    @property
    def visual_index(self) -> Tensor:
        return self.layout.positions

    @property
    def grids(self) -> list[tuple[int, int]]:
        """(rows, cols) of every token grid."""
        return [g.shape for g in self.layout.grids]


class PromptingMixin:
    """Chat prompts, processor calls and answer encoding (the adapter's text side)."""

    processor: Any
    model: Any
    # the value an appended (answer) token takes in each per-token input (PaliGemma: 1 in
    # token_type_ids, so the answer is part of the suffix)
    per_token_fill: ClassVar[dict[str, int]] = PER_TOKEN_FILL
    # the most images one prompt may show (None: any number; PaliGemma and mllama: one)
    max_images: ClassVar[int | None] = None

    def chat_messages(
        self, question: str, images: int = 1, videos: int = 0
    ) -> list[dict[str, Any]]:
        """The chat for ``images`` images (or ``videos`` videos), then one question (override
        for families that differ)."""
        content = [{"type": "image"} for _ in range(images)]
        content += [{"type": "video"} for _ in range(videos)]
        return [{"role": "user", "content": [*content, {"type": "text", "text": question}]}]

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def context_length(self) -> int | None:
        cfg = self.model.config.get_text_config()
        return getattr(cfg, "max_position_embeddings", None)

    def prompt_text(self, question: str, images: int = 1, videos: int = 0) -> str:
        """The chat-templated prompt, ending where the assistant's answer starts."""
        return self.processor.apply_chat_template(
            self.chat_messages(question, images, videos),
            tokenize=False,
            add_generation_prompt=True,
        )

    def block_in_several(
        self, part: PreparedInputs, visual_ids: Tensor
    ) -> tuple[Tensor, Tensor, tuple[Any, ...]]:
        """Image ``part``'s block in a prompt of several images: the offsets of its placeholder
        tokens from the first, the indices of its visual tokens among them, and its grids.
        Default: the block it has alone (families that show several images otherwise, such
        as LLaVA-OneVision's base view alone, override this)."""
        alone = torch.nonzero(torch.isin(part.prompt_ids, visual_ids)).flatten()
        visual = torch.searchsorted(alone, part.layout.positions)
        return alone - alone[0], visual, part.layout.grids

    def prepare_video(self, video: Any, question: str) -> PreparedInputs:
        """The prompt of one video and a question (families that read video override this)."""
        able = sorted(
            {
                c.family
                for c in _subclasses(PromptingMixin)
                if getattr(c, "family", "") and reads_video(c)
            }
        )
        raise CaptureError(
            f"video input is not supported for {getattr(self, 'family', type(self).__name__)}; "
            f"families that take a Video: {', '.join(able)}"
        )

    def process(self, image: Any, text: str) -> dict[str, Tensor]:
        """The processor's tensors for one prompt and its image (or list of images, in order);
        override to pass options."""
        return dict(self.processor(images=image_list(image), text=[text], return_tensors="pt"))

    def prepare(self, image: PromptImages, question: str) -> PreparedInputs:
        """Run the processor on the image (or images, in order) and question and locate V and P."""
        if not isinstance(question, str) or not question.strip():
            raise CaptureError("the question is empty: there is nothing to answer")
        if isinstance(image, Video):
            self.refuse_placeholders(question)
            return self.prepare_video(image, question)
        images = load_images(image)
        if self.max_images is not None and len(images) > self.max_images:
            raise CaptureError(
                f"{len(images)} images in one prompt, but "
                f"{getattr(self, 'family', 'this family')} takes at most {self.max_images}"
            )
        if len(images) > 1:
            return prepare_several(self, images, question)
        image = images[0]
        self.refuse_placeholders(question)
        if image.width * image.height > LARGE_IMAGE_PIXELS:
            warn(
                f"a {image.width}x{image.height} image "
                f"({image.width * image.height / 1e6:.0f} MP): the processor shrinks it to the "
                "model's input size, but reading and resizing it at full size costs time and "
                "memory (measured: 6000x4500 took 3x the time and 8x the memory of 320x240); "
                "downscale such images beforehand if that matters",
                LargeImageWarning,
            )
        text = self.prompt_text(question)
        try:
            inputs = self.process(image, text)
        except (ValueError, RuntimeError, IndexError, TypeError) as err:
            raise CaptureError(
                f"the {getattr(self, 'family', '')} processor cannot take this "
                f"{image.width}x{image.height} image: {err}"
            ) from err
        prompt_ids = inputs["input_ids"][0]
        try:
            layout = self.visual_layout(inputs, image.size)  # type: ignore[attr-defined]
        except LayoutError as err:
            raise LayoutError(
                f"the {getattr(self, 'family', '')} adapter's layout disagrees with what the "
                f"processor of transformers {transformers.__version__} emitted for a "
                f"{image.width}x{image.height} image: {err}. No map is made from a misplaced "
                "layout; run the tested versions (make setup installs the lock) or report it"
            ) from err
        if layout.positions.numel() == 0:
            raise CaptureError(
                f"the processor produced no visual tokens for this image ({image.width}x{image.height}); "
                "check the image size against the processor's minimum"
            )
        prompt_index = locate_question(self.tokenizer, prompt_ids, question)
        return PreparedInputs(inputs, prompt_ids, layout, prompt_index, text, image.size)

    def refuse_placeholders(self, question: str) -> None:
        """A question may not hold the tokens that stand for an image or a video."""
        placeholders = [
            t
            for t in self.tokenizer.convert_ids_to_tokens(sorted(self.placeholder_ids()))
            if t in question
        ]
        if placeholders:
            raise CaptureError(
                f"the question contains {placeholders}, the token(s) that stand for an image; "
                "give the images apart (a list of images, or a Video), the template places them"
            )

    # ----------------------------------------------------------------- special tokens
    @property
    def image_token_id(self) -> int:
        cfg = self.model.config
        token_id = getattr(cfg, "image_token_id", None)
        return int(token_id if token_id is not None else cfg.image_token_index)

    def placeholder_ids(self) -> set[int]:
        """Ids the processor expands into visual features (image, video, ...): never text."""
        cfg = self.model.config
        ids = set()
        for key in dir(cfg):
            if key.endswith(("image_token_id", "image_token_index", "video_token_id")):
                value = getattr(cfg, key, None)
                if isinstance(value, int):
                    ids.add(value)
        return ids

    def stop_ids(self) -> set[int]:
        """End-of-turn, end-of-sequence and padding ids: where a generated answer ends."""
        ids = set()
        for source in (self.model.generation_config, self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            ids.update([eos] if isinstance(eos, int) else list(eos or []))
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is not None:
            ids.add(pad)
        return ids

    def encode_answer(self, answer: str) -> Tensor:
        """Token ids of a given answer, as they would follow the assistant prefix: [T]."""
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not ids:
            raise CaptureError(f"the answer {answer!r} encodes to zero tokens")
        self.check_answer_ids(torch.tensor(ids))
        return torch.tensor(ids, dtype=torch.long)

    def check_answer_ids(self, ids: Tensor) -> None:
        """An answer to teacher-force may not hold placeholder tokens (they would need an image)."""
        bad = sorted(set(ids.tolist()) & self.placeholder_ids())
        if bad:
            names = self.tokenizer.convert_ids_to_tokens(bad)
            raise CaptureError(
                f"the answer contains the special token(s) {names}, which the processor expands "
                "into image features; remove them from the answer"
            )

    def clean_generated(self, new: Sequence[int]) -> Tensor:
        """A generated continuation cut at the first stop id, placeholder tokens removed."""
        stops, placeholders = self.stop_ids(), self.placeholder_ids()
        keep, dropped = [], []
        for tok in new:
            if tok in stops:
                break
            (dropped if tok in placeholders else keep).append(tok)
        if dropped:
            warnings.warn(
                f"the generated answer contained {self.tokenizer.convert_ids_to_tokens(dropped)} "
                "(image placeholders); they are removed from the answer that is explained",
                UserWarning,
                stacklevel=3,
            )
        return torch.tensor(keep, dtype=torch.long)

    def full_inputs(self, prepared: PreparedInputs, answer_ids: Tensor) -> dict[str, Tensor]:
        """Prompt inputs with the answer appended for teacher forcing (on the model's device)."""
        inputs = dict(prepared.inputs)
        inputs["input_ids"] = torch.cat([prepared.prompt_ids, answer_ids])[None]
        for key, fill in self.per_token_fill.items():
            if key in inputs:
                tail = torch.full((1, answer_ids.numel()), fill, dtype=inputs[key].dtype)
                inputs[key] = torch.cat([inputs[key], tail], dim=1)
        n = inputs["input_ids"].shape[1]
        if self.context_length is not None and n > self.context_length:
            raise CaptureError(
                f"sequence of {n} tokens is longer than the model's context of {self.context_length}"
            )
        return {k: v.to(self.device) for k, v in inputs.items()}  # type: ignore[attr-defined]


def reads_video(cls: type) -> bool:
    """Whether an adapter class builds video prompts (overrides `prepare_video`)."""
    return cls.prepare_video is not PromptingMixin.prepare_video  # type: ignore[attr-defined]


def _subclasses(cls: type) -> list[type]:
    """Every subclass of ``cls``, however deep (the registered adapters among them)."""
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def image_list(image: Any) -> list[Any]:
    """A processor's ``images`` argument for one prompt: ``[image]``, or ``[[a, b, ...]]`` for
    several (nested: one sample with several images; a flat list reads as one image per
    sample to processors that count images per sample, e.g. LLaVA-OneVision's)."""
    return [list(image)] if isinstance(image, (list, tuple)) else [image]


def prepare_several(adapter: Any, images: list[Any], question: str) -> PreparedInputs:
    """One prompt showing several images in order: each image prepared alone (its family's own
    layout and checks), then the joint prompt, whose visual tokens are image 1's, image 2's, ...

    A processor expands each image's placeholder on its own, so image ``k``'s block of
    placeholder tokens in the joint prompt is the block it has alone, and its visual tokens sit
    at the same indices of that block (separators such as LLaVA-NeXT's newline features
    included in the block, kept out of V); a family that shows several images otherwise says
    how (`block_in_several`). Both counts are checked against the joint prompt.
    """
    family = getattr(adapter, "family", type(adapter).__name__)
    parts = tuple(adapter.prepare(image, question) for image in images)
    if any(adapter.visual_prefix(part) for part in parts):
        raise CaptureError(
            f"{family} reads the image through cross-attention, not as tokens of the prompt: "
            "one image per prompt"
        )
    visual_ids = sorted(
        {int(i) for part in parts for i in part.prompt_ids[part.layout.positions].tolist()}
    )
    text = adapter.prompt_text(question, len(images))
    try:
        inputs = adapter.process(images, text)
    except (ValueError, RuntimeError, IndexError, TypeError) as err:
        raise CaptureError(
            f"the {family} processor cannot take these {len(images)} images: {err}"
        ) from err
    prompt_ids = inputs["input_ids"][0]
    joint = torch.nonzero(torch.isin(prompt_ids, torch.tensor(visual_ids))).flatten()
    positions, grids, start = [], [], 0
    for k, part in enumerate(parts):
        offsets, visual, own = adapter.block_in_several(part, torch.tensor(visual_ids))
        block = joint[start : start + offsets.numel()]
        if block.numel() < offsets.numel() or not torch.equal(block - block[0], offsets):
            raise LayoutError(
                f"the {family} processor gave the {len(images)}-image prompt {joint.numel()} "
                f"placeholder tokens; image {k + 1} should hold {offsets.numel()} in one block, "
                "which the joint prompt does not hold in that shape"
            )
        positions.append(block[visual])
        grids += [replace(g, image=k) for g in own]
        start += offsets.numel()
    if start != joint.numel():
        raise LayoutError(
            f"the {family} processor gave the {len(images)}-image prompt {joint.numel()} "
            f"placeholder tokens, but the images alone hold {start}"
        )
    layout = VisualLayout(torch.cat(positions), tuple(grids))
    prompt_index = locate_question(adapter.tokenizer, prompt_ids, question)
    return PreparedInputs(inputs, prompt_ids, layout, prompt_index, text, None, parts)


def locate_question(tokenizer: Any, prompt_ids: Tensor, question: str) -> Tensor:
    """Positions of the question's own tokens in ``prompt_ids``: [|P|].

    The question is encoded alone (as is, and after a space, the two ways a tokenizer may
    see it mid-prompt) and its last occurrence is searched in the prompt. If the tokens at
    its edges merged with their neighbours, the inner tokens are searched and the match is
    widened by the neighbours whose text still lies within the question.
    """
    ids = prompt_ids.tolist()
    text = question.strip()
    variants = []
    for candidate in (text, " " + text):
        enc = tokenizer(candidate, add_special_tokens=False)["input_ids"]
        if enc and enc not in variants:
            variants.append(enc)
    for enc in variants:
        start = _last_occurrence(ids, enc)
        if start is not None:
            return torch.arange(start, start + len(enc))
    for enc in variants:  # edges merged with the template: search the inner tokens
        inner = enc[1:-1]
        start = _last_occurrence(ids, inner) if len(inner) >= 1 else None
        if start is None:
            continue
        first, last = start, start + len(inner) - 1
        squashed = "".join(text.split())
        if (
            first > 0
            and _piece(tokenizer, ids[first - 1])
            and _piece(tokenizer, ids[first - 1]) in squashed
        ):
            first -= 1
        if (
            last + 1 < len(ids)
            and _piece(tokenizer, ids[last + 1])
            and _piece(tokenizer, ids[last + 1]) in squashed
        ):
            last += 1
        return torch.arange(first, last + 1)
    raise CaptureError(f"the question {question!r} was not found in the processed prompt's tokens")


def _last_occurrence(haystack: list[int], needle: list[int]) -> int | None:
    n = len(needle)
    for start in range(len(haystack) - n, -1, -1):
        if haystack[start : start + n] == needle:
            return start
    return None


def _piece(tokenizer: Any, token_id: int) -> str:
    """A token's visible text without white space."""
    return "".join(tokenizer.decode([token_id]).split())
