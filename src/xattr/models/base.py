"""The model-adapter interface and the family-independent trace capture (SPEC §1, §6).

A family adapter answers only: how to load the model, how to build the prompt, where
the visual tokens are and what grid they form, and which modules are the language
model's attention layers. Everything else (teacher forcing, capture, gradients, state
restoration) lives here once.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..images import ImageLike, load_image
from ..registry import Registry
from ..trace import Trace
from .geometry import FULL_IMAGE, Region

ADAPTERS: Registry[type[ModelAdapter]] = Registry("model", "xattr.models")

# Per-token tensors a processor may return beside input_ids, and the value an appended
# (answer) token takes in each.
_PER_TOKEN_FILL = {"attention_mask": 1, "mm_token_type_ids": 0, "token_type_ids": 0}


class CaptureError(ValueError):
    """Inputs or a model configuration the capture cannot explain (named in the message)."""


@dataclass
class PreparedInputs:
    """A prompt run through the processor, with where its parts are."""

    inputs: dict[str, Tensor]  # processor output for the prompt (batch of 1)
    prompt_ids: Tensor  # [n_prompt]
    visual_index: Tensor  # [|V|] positions in grid raster order
    grids: list[tuple[int, int]]
    prompt_index: Tensor  # [|P|] the question's own tokens
    text: str  # the rendered prompt
    image_size: tuple[int, int] | None = None  # (W, H) of the original image


class ModelAdapter(ABC):
    """One LVLM family's quirks behind a common `trace` / `generate` / `answer_logprobs` API."""

    family: ClassVar[str] = ""
    default_max_new_tokens: ClassVar[int] = 32

    def __init__(
        self, model: nn.Module, processor: Any, *, max_new_tokens: int | None = None
    ) -> None:
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens or self.default_max_new_tokens
        impl = getattr(model.config, "_attn_implementation", None)
        if impl not in (None, "eager"):
            raise CaptureError(
                f"model uses attention implementation {impl!r}, which cannot return attention "
                "weights; load it with attn_implementation='eager' (xattr.models.load does)"
            )

    # ------------------------------------------------------------ family hooks
    @classmethod
    @abstractmethod
    def model_class(cls) -> type[nn.Module]:
        """The transformers class this family loads."""

    @abstractmethod
    def visual_layout(self, inputs: dict[str, Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Positions of visual tokens in grid raster order, and each image's (h, w) grid."""

    @abstractmethod
    def attention_modules(self) -> list[nn.Module]:
        """The language model's self-attention modules, input to output."""

    def chat_messages(self, question: str) -> list[dict[str, Any]]:
        """The chat for one image and one question (override for families that differ)."""
        return [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        ]

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device = "cpu",
        max_new_tokens: int | None = None,
        **model_kwargs: Any,
    ) -> ModelAdapter:
        """Load model and processor from a hub id or local directory, with eager attention.

        ``device="auto"`` shards a large model over the visible GPUs (``device_map="auto"``).
        """
        from .processors import load_processor

        looks_local = isinstance(path, Path) or str(path).startswith((".", "/", "~"))
        if looks_local and not Path(path).expanduser().exists():
            raise FileNotFoundError(f"model directory not found: {path}")
        torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        model_kwargs.setdefault("attn_implementation", "eager")
        if str(device) == "auto":
            model_kwargs.setdefault("device_map", "auto")
        model = cls.model_class().from_pretrained(str(path), dtype=torch_dtype, **model_kwargs)
        if str(device) != "auto":
            model.to(device)
        model.eval()
        return cls(model, load_processor(str(path)), max_new_tokens=max_new_tokens)

    # ----------------------------------------------------------------- prompting
    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int | None:
        cfg = getattr(self.model.config, "text_config", self.model.config)
        return getattr(cfg, "max_position_embeddings", None)

    def prompt_text(self, question: str) -> str:
        """The chat-templated prompt, ending where the assistant's answer starts."""
        return self.processor.apply_chat_template(
            self.chat_messages(question), tokenize=False, add_generation_prompt=True
        )

    def prepare(self, image: ImageLike, question: str) -> PreparedInputs:
        """Run the processor on one image and question and locate V and P."""
        if not isinstance(question, str) or not question.strip():
            raise CaptureError("the question is empty: there is nothing to answer")
        image = load_image(image)
        text = self.prompt_text(question)
        inputs = dict(self.processor(images=[image], text=[text], return_tensors="pt"))
        prompt_ids = inputs["input_ids"][0]
        visual_index, grids = self.visual_layout(inputs)
        if visual_index.numel() == 0:
            raise CaptureError(
                f"the processor produced no visual tokens for this image ({image.width}x{image.height}); "
                "check the image size against the processor's minimum"
            )
        prompt_index = self._question_positions(text, prompt_ids, question)
        return PreparedInputs(
            inputs, prompt_ids, visual_index, grids, prompt_index, text, image_size=image.size
        )

    def _question_positions(self, text: str, prompt_ids: Tensor, question: str) -> Tensor:
        """Positions of the question's own tokens, found through tokenizer offsets."""
        image_token = self.image_token
        n_image = int((prompt_ids == self.image_token_id).sum())
        expanded = text.replace(image_token, image_token * n_image) if n_image else text
        start = expanded.rfind(question.strip())
        if start < 0:
            raise CaptureError(f"the question {question!r} does not appear in the rendered prompt")
        end = start + len(question.strip())
        ids = prompt_ids.tolist()
        for add_special in (False, True):
            enc = self.tokenizer(
                expanded, return_offsets_mapping=True, add_special_tokens=add_special
            )
            if enc["input_ids"] == ids:
                spans = enc["offset_mapping"]
                inside = [i for i, (a, b) in enumerate(spans) if b > a and a < end and b > start]
                return torch.tensor(inside, dtype=torch.long)
        raise CaptureError(
            "could not align the tokenizer with the processor's input ids to locate the question"
        )

    @property
    def image_token(self) -> str:
        return self.processor.image_token

    @property
    def image_token_id(self) -> int:
        cfg = self.model.config
        token_id = getattr(cfg, "image_token_id", None)
        return int(token_id if token_id is not None else cfg.image_token_index)

    def encode_answer(self, answer: str) -> Tensor:
        """Token ids of a given answer, as they would follow the assistant prefix: [T]."""
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not ids:
            raise CaptureError(f"the answer {answer!r} encodes to zero tokens")
        return torch.tensor(ids, dtype=torch.long)

    def _stop_ids(self) -> set[int]:
        ids = set()
        for source in (self.model.generation_config, self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            ids.update([eos] if isinstance(eos, int) else list(eos or []))
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is not None:
            ids.add(pad)
        return ids

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, prepared: PreparedInputs, max_new_tokens: int | None = None) -> Tensor:
        """Greedy answer ids (end-of-turn and padding stripped): [T]."""
        inputs = {k: v.to(self.device) for k, v in prepared.inputs.items()}
        with _eval_mode(self.model):
            out = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens or self.max_new_tokens,
                do_sample=False,
                num_beams=1,
            )
        new = out[0, prepared.prompt_ids.numel() :].cpu()
        stops = self._stop_ids()
        keep = []
        for tok in new.tolist():
            if tok in stops:
                break
            keep.append(tok)
        return torch.tensor(keep, dtype=torch.long)

    def full_inputs(self, prepared: PreparedInputs, answer_ids: Tensor) -> dict[str, Tensor]:
        """Prompt inputs with the answer appended for teacher forcing."""
        inputs = dict(prepared.inputs)
        inputs["input_ids"] = torch.cat([prepared.prompt_ids, answer_ids])[None]
        for key, fill in _PER_TOKEN_FILL.items():
            if key in inputs:
                tail = torch.full((1, answer_ids.numel()), fill, dtype=inputs[key].dtype)
                inputs[key] = torch.cat([inputs[key], tail], dim=1)
        n = inputs["input_ids"].shape[1]
        if self.context_length is not None and n > self.context_length:
            raise CaptureError(
                f"sequence of {n} tokens is longer than the model's context of {self.context_length}"
            )
        return {k: v.to(self.device) for k, v in inputs.items()}

    # ------------------------------------------------------------------- capture
    def trace(
        self,
        image: ImageLike,
        question: str,
        answer: str | Sequence[int] | Tensor | None = None,
        *,
        gradients: bool = True,
        hidden_states: bool = False,
        batch_vjp: int = 8,
    ) -> Trace:
        """One teacher-forced pass over prompt + answer with attentions kept in the graph.

        ``answer=None`` generates it greedily; a string is tokenised and teacher-forced; a
        sequence of ids is used as is. Per-token gradients are computed lazily by the
        returned trace (one vector-Jacobian product per answer token, in chunks of
        ``batch_vjp``; 1 means a plain loop).
        """
        prepared = self.prepare(image, question)
        if answer is None:
            answer_ids = self.generate(prepared)
            source = "generated"
            if answer_ids.numel() == 0:
                raise CaptureError("the model generated an empty answer; nothing to explain")
        else:
            source = "given"
            answer_ids = (
                self.encode_answer(answer)
                if isinstance(answer, str)
                else torch.as_tensor(answer, dtype=torch.long)
            )
            if answer_ids.numel() == 0:
                raise CaptureError("the given answer has zero tokens")
        inputs = self.full_inputs(prepared, answer_ids)
        n_prompt = prepared.prompt_ids.numel()
        captured = self._forward(inputs, gradients=gradients, hidden_states=hidden_states)
        attentions, logits = captured["attentions"], captured["logits"]
        positions = torch.arange(n_prompt, n_prompt + answer_ids.numel())  # s_t
        predicting = positions - 1  # p_t
        answer_dev = answer_ids.to(logits.device)
        with torch.set_grad_enabled(
            gradients
        ):  # callers (a Lightning test loop) may run in no_grad
            z = logits[predicting, answer_dev]  # [T] logits of the produced tokens
        with torch.no_grad():
            conf = torch.softmax(logits[predicting].float(), dim=-1)[
                torch.arange(answer_ids.numel()), answer_dev
            ]
        gradient_fn = _vjp_gradient_fn(z, attentions, batch_vjp) if gradients else None
        ids = inputs["input_ids"][0].cpu()
        return Trace(
            attentions=[a.detach()[0] for a in attentions],  # the graph stays in gradient_fn
            visual_index=prepared.visual_index,
            prompt_index=prepared.prompt_index,
            answer_positions=positions,
            grids=prepared.grids,
            confidences=conf.detach().cpu(),
            input_ids=ids,
            tokens=self.tokenizer.convert_ids_to_tokens(ids.tolist()),
            answer_source=source,
            hidden_states=[h.detach()[0] for h in captured["hidden_states"]]
            if hidden_states
            else None,
            readout=self.readout if hidden_states else None,
            gradient_fn=gradient_fn,
            graph=(
                {
                    "attentions": attentions,
                    "hidden_states": captured.get("hidden_states") or [],
                    "logits": z,  # [T] z_t, the produced tokens' logits, in the graph
                }
                if gradients
                else None
            ),
            meta={
                "family": self.family,
                "prompt_text": prepared.text,
                "answer_text": self.tokenizer.decode(answer_ids.tolist()),
                "logits": z.detach().cpu(),
                # the box of the original image the token grid covers (fractions)
                "image_region": (
                    self.image_region(prepared.image_size) if prepared.image_size else FULL_IMAGE
                ),
            },
        )

    def readout(self, hidden: Tensor) -> Tensor:
        """Logit lens: the final norm and LM head applied to hidden states [.., D] -> [.., V]."""
        return self.model.lm_head(self.final_norm()(hidden))

    def final_norm(self) -> nn.Module:
        """The language model's final normalisation layer."""
        return self.model.model.language_model.norm

    def unembed(self, hidden: Tensor) -> Tensor:
        """The LM head alone, for hidden states already through the final norm: [.., D] -> [.., V].

        In transformers 5.x the last element of ``output_hidden_states`` is the final norm's
        output (`readout` would apply the norm twice there).
        """
        return self.model.lm_head(hidden)

    def _forward(
        self, inputs: dict[str, Tensor], *, gradients: bool, hidden_states: bool
    ) -> dict[str, Any]:
        """Forward with attention hooks; the model, its flags and its hooks are restored after."""
        store: list[Tensor | None] = []

        def keep_weights(_module: nn.Module, _args: Any, output: Any) -> None:
            store.append(output[1] if isinstance(output, tuple) and len(output) > 1 else None)

        def embeddings_require_grad(_module: nn.Module, _args: Any, output: Tensor) -> Tensor:
            return output.detach().requires_grad_(True)

        modules = self.attention_modules()
        with contextlib.ExitStack() as stack:
            stack.enter_context(_eval_mode(self.model))
            stack.enter_context(_frozen_parameters(self.model))
            stack.enter_context(torch.enable_grad() if gradients else torch.no_grad())
            handles = [m.register_forward_hook(keep_weights) for m in modules]
            if gradients:
                emb = self.model.get_input_embeddings()
                handles.append(emb.register_forward_hook(embeddings_require_grad))
            stack.callback(lambda: [h.remove() for h in handles])
            out = self.model(
                **inputs, use_cache=False, output_hidden_states=hidden_states, return_dict=True
            )
            # index inside the grad-enabled block: a view made under an outer no_grad (a
            # Lightning test loop) would silently cut the graph
            logits = out.logits[0]  # [N, V]
        if len(store) != len(modules) or any(a is None for a in store):
            raise CaptureError(
                "the attention layers returned no weights; the model must run eager attention "
                f"(config says {getattr(self.model.config, '_attn_implementation', None)!r})"
            )
        # Gradients must be taken w.r.t. the tensors the forward used ([1, H, N, N]), not
        # w.r.t. views made afterwards; callers drop the batch axis from the results.
        result: dict[str, Any] = {
            "attentions": store,  # L x [1, H, N, N]
            "logits": logits,
        }
        if hidden_states:
            result["hidden_states"] = list(out.hidden_states)  # L+1 x [1, N, D]
        return result

    # ----------------------------------------------------- scoring (faithfulness)
    @torch.no_grad()
    def answer_logprobs(
        self, images: Sequence[ImageLike], question: str, answer_ids: Tensor, batch_size: int = 8
    ) -> Tensor:
        """Teacher-forced log p(y_t | image, question, y_<t) for each image: [B, T] (float32, CPU).

        Images are run through the model in batches of ``batch_size`` (one forward pass per
        batch); all must give the same number of visual tokens (true for perturbations of
        one image). Only the T predicting rows are projected onto the vocabulary
        (``logits_to_keep``), so a batch never holds [b, N, vocab] logits.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        answer_ids = torch.as_tensor(answer_ids, dtype=torch.long).reshape(-1).cpu()
        if answer_ids.numel() == 0:
            raise CaptureError("the answer has zero tokens: there is nothing to score")
        images = list(images)
        n_answer = answer_ids.numel()
        if not images:
            return torch.empty(0, n_answer)
        keep_rows = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        rows = []
        for start in range(0, len(images), batch_size):
            chunk = [self.prepare(img, question) for img in images[start : start + batch_size]]
            n_prompt = chunk[0].prompt_ids.numel()
            if any(p.prompt_ids.numel() != n_prompt for p in chunk):
                raise CaptureError(
                    "images in one answer_logprobs call give prompts of different lengths "
                    f"({sorted({p.prompt_ids.numel() for p in chunk})} tokens); they must share "
                    "one size so the batch needs no padding"
                )
            batch = [self.full_inputs(p, answer_ids) for p in chunk]
            # Sequence tensors stack on the batch axis; Qwen's pixel_values (patches) and
            # image_grid_thw (one row per image) concatenate on axis 0 just the same.
            merged = {k: torch.cat([b[k] for b in batch]) for k in batch[0]}
            pred = torch.arange(n_prompt - 1, n_prompt - 1 + n_answer)  # p_t
            kwargs: dict[str, Any] = {"use_cache": False, "return_dict": True}
            if keep_rows:
                kwargs["logits_to_keep"] = pred  # CPU index: valid for any device map
            with _eval_mode(self.model):
                logits = self.model(**merged, **kwargs).logits
            if logits.shape[1] != n_answer:  # every position came back (N > T always)
                logits = logits[:, pred.to(logits.device)]
            logp = torch.log_softmax(logits.float(), dim=-1)  # [b, T, V]
            index = answer_ids.to(logp.device)[None, :, None].expand(len(chunk), -1, 1)
            rows.append(logp.gather(-1, index)[..., 0].cpu())
        return torch.cat(rows)

    # ------------------------------------- differentiable pixel-mask path (perturbation)
    # The processors' resize, rescale and normalise are affine in each pixel value, so
    # blending two *processed* images with a mask at the processed resolution equals
    # processing the blended image, up to resampling (the mask is applied after the resize
    # instead of before), uint8 rounding and clipping. Perturbation methods (iGOS) blend
    # here, in `pixel_values` space, and differentiate through the whole model.
    def image_region(self, image_size: tuple[int, int]) -> Region:
        """``(top, left, bottom, right)``: the box of a (W, H) image the token grid covers.

        The whole image unless the processor crops or pads (see `xattr.models.geometry`).
        """
        return FULL_IMAGE

    def processed_size(self, inputs: dict[str, Tensor]) -> tuple[int, int]:
        """(H, W) of the first image as the vision tower sees it, after the processor's resize."""
        raise NotImplementedError(f"{type(self).__name__} has no differentiable pixel-mask path")

    def images_to_pixel_values(self, images: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """Processed images [B, C, H, W] -> B copies of one image's ``pixel_values`` layout [B, *pv]."""
        raise NotImplementedError(f"{type(self).__name__} has no differentiable pixel-mask path")

    def pixel_values_to_image(self, pixel_values: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """One image's ``pixel_values`` -> the processed (normalised) image [C, H, W]."""
        raise NotImplementedError(f"{type(self).__name__} has no differentiable pixel-mask path")

    def mask_to_pixel_values(self, mask: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """Masks [B, H, W] at the processed resolution -> the ``pixel_values`` layout [B, *pv]."""
        channels = int(self.pixel_values_to_image(inputs["pixel_values"], inputs).shape[0])
        return self.images_to_pixel_values(mask[:, None].expand(-1, channels, -1, -1), inputs)

    def masked_answer_logprobs(
        self,
        prepared: PreparedInputs,
        baseline: PreparedInputs,
        keep: Tensor,
        answer_ids: Tensor,
        *,
        noise: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Teacher-forced log p(y_t | blend_b) for B blends, differentiable in ``keep``: [B, T].

        ``keep`` [B, H, W] in [0, 1] at the processed resolution (`processed_size`) weighs
        the image against ``baseline`` (the same prompt on a perturbed image, e.g. blurred):
        ``pv = keep * pv_image + (1 - keep) * pv_baseline`` in `pixel_values` space, plus
        Gaussian noise of std ``noise`` there (iGOS's integrated-gradient noise). Parameters
        stay frozen; the graph runs from ``keep`` through the vision tower and the LM. One
        call is one forward pass over B images; the caller chunks and runs the backward.
        """
        if prepared.prompt_ids.numel() != baseline.prompt_ids.numel():
            raise CaptureError(
                "image and baseline prompts differ in length; resize the baseline alike"
            )
        answer_ids = torch.as_tensor(answer_ids, dtype=torch.long).reshape(-1).cpu()
        n_blend, n_answer = int(keep.shape[0]), answer_ids.numel()
        n_prompt = prepared.prompt_ids.numel()
        full = self.full_inputs(prepared, answer_ids)
        batch = {
            k: v.repeat(n_blend, *[1] * (v.dim() - 1))
            for k, v in full.items()
            if k != "pixel_values"
        }
        pred = torch.arange(n_prompt - 1, n_prompt - 1 + n_answer)  # p_t
        kwargs: dict[str, Any] = {"use_cache": False, "return_dict": True}
        if "logits_to_keep" in inspect.signature(self.model.forward).parameters:
            kwargs["logits_to_keep"] = pred  # only the T predicting rows reach the vocabulary
        with contextlib.ExitStack() as stack:
            stack.enter_context(_eval_mode(self.model))
            stack.enter_context(_frozen_parameters(self.model))
            # a graph only when the mask asks for one (iGOS); callers may run in no_grad
            stack.enter_context(torch.set_grad_enabled(keep.requires_grad))
            pv = prepared.inputs["pixel_values"].to(self.device)
            pv_base = baseline.inputs["pixel_values"].to(self.device)
            weight = self.mask_to_pixel_values(keep.to(self.device, pv.dtype), prepared.inputs)
            blended = weight * pv + (1 - weight) * pv_base  # [B, *pv]
            if noise > 0:
                eps = torch.randn(blended.shape, generator=generator, dtype=blended.dtype)
                blended = blended + noise * eps.to(blended.device)
            batch["pixel_values"] = blended.flatten(0, 1)  # Qwen [B*n, D]; LLaVA [B, 3, S, S]
            logits = self.model(**batch, **kwargs).logits
            if logits.shape[1] != n_answer:
                logits = logits[:, pred.to(logits.device)]
            logp = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V]
            index = answer_ids.to(logp.device)[None, :, None].expand(n_blend, -1, 1)
            return logp.gather(-1, index)[..., 0]  # [B, T]


def _vjp_gradient_fn(z: Tensor, attentions: list[Tensor], chunk: int):
    """Per-token gradients d z_t / d A for listed tokens: [k, L, H, N, N].

    ``attentions`` are the tensors the forward used, L x [1, H, N, N]. Tokens are done in
    chunks of ``chunk`` one-hot cotangents through one batched VJP; ``chunk=1`` (or an op
    without a batching rule) is a plain loop of ``torch.autograd.grad``.
    """

    def one(t: int) -> Tensor:
        grads = torch.autograd.grad(z[t], attentions, retain_graph=True, allow_unused=True)
        return torch.stack([_or_zeros(g, a)[0] for g, a in zip(grads, attentions)])  # [L, H, N, N]

    def batched(part: list[int]) -> Tensor:
        cotangent = torch.zeros(len(part), z.numel(), dtype=z.dtype, device=z.device)
        cotangent[torch.arange(len(part)), torch.tensor(part)] = 1.0
        grads = torch.autograd.grad(
            z,
            attentions,
            grad_outputs=cotangent,
            retain_graph=True,
            is_grads_batched=True,
            allow_unused=True,
        )  # L x [k, 1, H, N, N]
        return torch.stack(
            [_or_zeros(g, a, len(part))[:, 0] for g, a in zip(grads, attentions)], dim=1
        )

    @torch.enable_grad()  # methods may run inside no_grad (a Lightning test loop)
    def grads_for(tokens: Sequence[int]) -> Tensor:
        tokens = list(tokens)
        out = []
        for start in range(0, len(tokens), max(1, chunk)):
            part = tokens[start : start + max(1, chunk)]
            if len(part) == 1:
                out.append(one(part[0])[None])
                continue
            try:
                out.append(batched(part))
            except RuntimeError as err:  # an op without a batching rule: plain loop
                warnings.warn(f"batched VJP failed ({err}); falling back to a loop", stacklevel=2)
                out.extend(one(t)[None] for t in part)
        return torch.cat(out).detach()

    return grads_for


def _or_zeros(g: Tensor | None, a: Tensor, batch: int | None = None) -> Tensor:
    """The gradient, or zeros shaped like ``a`` (with a leading batch axis if given) when unused."""
    if g is not None:
        return g
    return torch.zeros(
        a.shape if batch is None else (batch, *a.shape), dtype=a.dtype, device=a.device
    )


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the duration, then the caller's mode back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _frozen_parameters(model: nn.Module) -> Iterator[None]:
    """No parameter requires grad during capture, so nothing accumulates in ``.grad``."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
