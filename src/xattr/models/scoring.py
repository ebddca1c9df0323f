"""Teacher-forced log-likelihoods of an answer under other images (faithfulness, iGOS, policies)."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..images import PromptImages, Region
from .capture import eval_mode, frozen_parameters
from .prompting import CaptureError, PreparedInputs


def answer_logprob_rows(
    model: Any, batch: dict[str, Tensor], n_prompt: int, answer_ids: Tensor
) -> Tensor:
    """log p(y_t | ...) of the T answer tokens for each sequence of ``batch``: [B, T].

    Only the T predicting rows are projected onto the vocabulary (``logits_to_keep``) when
    the model supports it, so a batch never holds [B, N, vocab] logits.
    """
    n_answer = answer_ids.numel()
    pred = torch.arange(n_prompt - 1, n_prompt - 1 + n_answer)  # p_t
    kwargs: dict[str, Any] = {"use_cache": False, "return_dict": True}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = pred  # CPU index: valid for any device map
    logits = model(**batch, **kwargs).logits
    if logits.shape[1] != n_answer:  # every position came back (N > T always)
        logits = logits[:, pred.to(logits.device)]
    logp = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V]
    index = answer_ids.to(logp.device)[None, :, None].expand(logp.shape[0], -1, 1)
    return logp.gather(-1, index)[..., 0]


class ScoringMixin:
    """Batched log-likelihoods of a fixed answer: per image, or per pixel-space blend."""

    model: Any

    @torch.no_grad()
    def answer_logprobs(
        self, images: Sequence[PromptImages], question: str, answer_ids: Tensor, batch_size: int = 8
    ) -> Tensor:
        """Teacher-forced log p(y_t | image, question, y_<t) for each image: [B, T] (float32, CPU).
        An item may be a list: the images of one prompt (`prepare`).

        Images are run through the model in batches of ``batch_size`` (one forward pass per
        batch); all must give the same number of visual tokens (true for perturbations of
        one image).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        answer_ids = torch.as_tensor(answer_ids, dtype=torch.long).reshape(-1).cpu()
        if answer_ids.numel() == 0:
            raise CaptureError("the answer has zero tokens: there is nothing to score")
        images = list(images)
        if not images:
            return torch.empty(0, answer_ids.numel())
        rows = []
        for start in range(0, len(images), batch_size):
            chunk = [self.prepare(img, question) for img in images[start : start + batch_size]]  # type: ignore[attr-defined]
            n_prompt = chunk[0].prompt_ids.numel()
            if any(p.prompt_ids.numel() != n_prompt for p in chunk):
                raise CaptureError(
                    "images in one answer_logprobs call give prompts of different lengths "
                    f"({sorted({p.prompt_ids.numel() for p in chunk})} tokens); they must share "
                    "one size so the batch needs no padding"
                )
            batch = [self.full_inputs(p, answer_ids) for p in chunk]  # type: ignore[attr-defined]
            merged = self.merge_inputs(batch)
            with eval_mode(self.model):
                rows.append(answer_logprob_rows(self.model, merged, n_prompt, answer_ids).cpu())
        return torch.cat(rows)

    def merge_inputs(self, batch: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """One batch from several prompts' inputs of equal length. Sequence tensors stack on
        the batch axis; per-image tensors (Qwen's patches and image_grid_thw, tiled
        pixel_values) concatenate on axis 0 just the same (override where a family packs
        its images otherwise)."""
        return {k: torch.cat([b[k] for b in batch]) for k in batch[0]}

    def masked_answer_logprobs(
        self,
        prepared: PreparedInputs,
        baseline: PreparedInputs,
        keep: Tensor | Sequence[Tensor],
        answer_ids: Tensor,
        *,
        box: Region | Sequence[Region] | None = None,
        mode: str = "bilinear",
        noise: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Teacher-forced log p(y_t | blend_b) for B blends, differentiable in ``keep``: [B, T].

        ``keep`` [B, h, w] in [0, 1] is a mask over ``box`` of the original image (default
        the mask box the views see, `PixelMaskMixin.mask_box`), at any resolution (a prompt of
        several images: a list of masks and of boxes, one per image); every view
        sees its crop of it (`views.sample_mask`, ``mode`` bilinear or nearest) and weighs
        the image against ``baseline`` (the same prompt on a perturbed image, e.g. blurred):
        ``pv = w * pv_image + (1 - w) * pv_baseline`` in `pixel_values` space, plus Gaussian
        noise of std ``noise`` there (iGOS's integrated-gradient noise). Parameters stay
        frozen; the graph runs from ``keep`` through the vision tower and the LM. One call is
        one forward pass over B images (all their views); the caller chunks and runs the
        backward.
        """
        if prepared.prompt_ids.numel() != baseline.prompt_ids.numel():
            raise CaptureError(
                "image and baseline prompts differ in length; resize the baseline alike"
            )
        answer_ids = torch.as_tensor(answer_ids, dtype=torch.long).reshape(-1).cpu()
        full = self.full_inputs(prepared, answer_ids)  # type: ignore[attr-defined]
        device = self.device  # type: ignore[attr-defined]
        with contextlib.ExitStack() as stack:
            stack.enter_context(eval_mode(self.model))
            stack.enter_context(frozen_parameters(self.model))
            # a graph only when the mask asks for one (iGOS); callers may run in no_grad
            several = isinstance(keep, (list, tuple))  # a prompt of several images
            keeps = list(keep) if several else [keep]
            stack.enter_context(torch.set_grad_enabled(any(k.requires_grad for k in keeps)))
            key = self.pixel_key(prepared)  # type: ignore[attr-defined]
            pv = prepared.inputs[key].to(device)
            pv_base = baseline.inputs[key].to(device)
            moved = [k.to(device, pv.dtype) for k in keeps]
            weight = self.mask_to_pixel_values(  # type: ignore[attr-defined]
                moved if several else moved[0], prepared, box=box, mode=mode
            )  # [B, *pv]
            blended = weight * pv + (1 - weight) * pv_base  # [B, *pv]
            if noise > 0:
                eps = torch.randn(blended.shape, generator=generator, dtype=blended.dtype)
                blended = blended + noise * eps.to(blended.device)
            # B copies of the prompt, each with its blend, packed as the family batches images
            batch = self.merge_inputs([{**full, key: b} for b in blended])
            return answer_logprob_rows(self.model, batch, prepared.prompt_ids.numel(), answer_ids)
