"""The capture: generate (or take) an answer, teacher-force it in one recorded pass, and
package the result as a `Trace` whose gradients are streamed (docs/math.md, "Capture")."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import transformers
from torch import Tensor, nn

from ..images import PromptImages, load_images, prompt_images
from ..trace import (
    OUT_OF_MEMORY,
    SOFTMAX,
    ModelContext,
    OutOfMemory,
    Trace,
    free_accelerator_memory,
)
from ..video import Video
from ..warn import warn
from .cross import PrefixedAttentions, PrefixedGradients, PrefixedSupports
from .prompting import CaptureError, PreparedInputs
from .recording import (
    CapturedGradients,
    RecomputedAttentions,
    language_config,
    language_implementation,
    recording,
)
from .token_text import sequence_texts


class AnswerCutWarning(UserWarning):
    """A generated answer stopped by ``max_new_tokens``, not by the model."""


class CaptureMixin:
    """``generate`` and ``trace`` for any family (the adapter supplies layout and modules)."""

    model: Any
    family: str

    @property
    def device(self) -> torch.device:
        """Where the inputs go: the device of the input embeddings (first shard under device="auto")."""
        return self.model.get_input_embeddings().weight.device

    # ---------------------------------------------------------------- generation
    def generate(self, prepared: PreparedInputs, max_new_tokens: int | None = None) -> Tensor:
        """Greedy answer ids, cut at the first end-of-turn or padding id: [T].

        An answer that reaches ``max_new_tokens`` without an end-of-turn is cut there, and
        an `AnswerCutWarning` says so."""
        return self._generate(prepared, max_new_tokens)[0]

    def _generate(
        self, prepared: PreparedInputs, max_new_tokens: int | None
    ) -> tuple[Tensor, bool]:
        """`generate`'s answer, and whether ``max_new_tokens`` cut it (warned)."""
        limit = max_new_tokens or self.max_new_tokens  # type: ignore[attr-defined]
        inputs = {k: v.to(self.device) for k, v in prepared.inputs.items()}
        with torch.no_grad(), eval_mode(self.model):
            out = self.model.generate(**inputs, max_new_tokens=limit, do_sample=False, num_beams=1)
        new = out[0, prepared.prompt_ids.numel() :].tolist()
        cut = len(new) >= limit and not set(new) & self.stop_ids()  # type: ignore[attr-defined]
        if cut:
            warn(
                f"the generated answer reached max_new_tokens={limit} without an end-of-turn "
                "token and is cut there; raise it with load(..., max_new_tokens=N), "
                "model.max_new_tokens=N or --max-new-tokens N",
                AnswerCutWarning,
            )
        return self.clean_generated(new), cut  # type: ignore[attr-defined]

    def answer_ids(
        self, prepared: PreparedInputs, answer: str | Sequence[int] | Tensor | None
    ) -> tuple[Tensor, str, bool]:
        """The answer to explain, where it came from ("generated" or "given"), and whether
        generation cut it at ``max_new_tokens``."""
        if answer is None:
            ids, cut = self._generate(prepared, None)
            if ids.numel() == 0:
                raise CaptureError("the model generated an empty answer; nothing to explain")
            return ids, "generated", cut
        if isinstance(answer, str):
            return self.encode_answer(answer), "given", False  # type: ignore[attr-defined]
        ids = torch.as_tensor(answer, dtype=torch.long).reshape(-1)
        if ids.numel() == 0:
            raise CaptureError("the given answer has zero tokens")
        self.check_answer_ids(ids)  # type: ignore[attr-defined]
        return ids, "given", False

    # ------------------------------------------------------------------- capture
    def trace(
        self,
        image: PromptImages,
        question: str,
        answer: str | Sequence[int] | Tensor | None = None,
        *,
        gradients: bool = True,
        hidden_states: bool = False,
    ) -> Trace:
        """One teacher-forced pass over prompt + answer, every attention layer recorded.

        ``answer=None`` generates it greedily; a string is tokenised and teacher-forced; a
        sequence of ids is used as is. With ``gradients`` the returned trace streams
        ``d z_t / d A`` (one batched backward per chunk of answer tokens, see `methods.sweep`).
        """
        if not isinstance(image, Video):  # decoded once; several stay a list
            image = prompt_images(load_images(image))
        prepared = self.prepare(image, question)  # type: ignore[attr-defined]
        n_prompt = prepared.prompt_ids.numel()
        try:
            answer_ids, source, cut = self.answer_ids(prepared, answer)
        except OUT_OF_MEMORY as err:  # while generating: the answer length is not known yet
            free_accelerator_memory()
            raise OutOfMemory(n_prompt, f"up to {self.max_new_tokens}") from err  # type: ignore[attr-defined]
        try:
            trace = self._record(
                image, question, prepared, answer_ids, source, gradients, hidden_states
            )
        except OUT_OF_MEMORY as err:
            free_accelerator_memory()
            raise OutOfMemory(n_prompt + answer_ids.numel(), answer_ids.numel()) from err
        trace.meta["answer_cut"] = cut
        return trace

    def _record(
        self,
        image: Any,
        question: str,
        prepared: PreparedInputs,
        answer_ids: Tensor,
        source: str,
        gradients: bool,
        hidden_states: bool,
    ) -> Trace:
        """The recorded teacher-forced pass and the trace built from it (see `trace`)."""
        inputs = self.full_inputs(prepared, answer_ids)  # type: ignore[attr-defined]
        n_prompt = prepared.prompt_ids.numel()
        positions = torch.arange(n_prompt, n_prompt + answer_ids.numel())  # s_t
        predicting = positions - 1  # p_t
        modules = self.attention_modules()  # type: ignore[attr-defined]
        implementation = language_implementation(language_config(modules))
        eager = implementation == "eager"
        with contextlib.ExitStack() as stack:
            stack.enter_context(eval_mode(self.model))
            stack.enter_context(frozen_parameters(self.model))
            stack.enter_context(torch.enable_grad() if gradients else torch.no_grad())
            if gradients:  # the graph starts at the input embeddings (parameters are frozen)
                emb = self.model.get_input_embeddings()
                handle = emb.register_forward_hook(
                    lambda _m, _a, out: out.detach().requires_grad_(True)
                )
                stack.callback(handle.remove)
            recorder = stack.enter_context(recording(modules, keep_weights=eager))
            out = self.model(
                **inputs, use_cache=False, output_hidden_states=hidden_states, return_dict=True
            )
            # index inside the grad-enabled block: a view made under an outer no_grad (a
            # Lightning test loop) would silently cut the graph
            logits = out.logits[0]  # [N, V]
            z = logits[predicting.to(logits.device), answer_ids.to(logits.device)]  # [T] z_t
        records = recorder.records
        missing = [i for i, r in enumerate(records) if r is None]
        if missing:
            raise CaptureError(
                f"attention layers {missing} of the language model were not recorded: their "
                "modules do not dispatch through the AttentionInterface of transformers "
                f"{transformers.__version__} (the capture sets config._attn_implementation)"
            )
        with torch.no_grad():
            conf = torch.softmax(logits[predicting.to(logits.device)].float(), dim=-1)
            conf = conf[torch.arange(answer_ids.numel()), answer_ids.to(conf.device)]
        work = torch.float64 if logits.dtype == torch.float64 else torch.float32
        kinds = [r.kind for r in records]  # type: ignore[union-attr]
        attentions = (
            [r.weights for r in records]  # type: ignore[union-attr]
            if eager and set(kinds) == {SOFTMAX}
            else RecomputedAttentions(records, work)  # type: ignore[arg-type]
        )
        ids = inputs["input_ids"][0].cpu()
        texts = sequence_texts(self.tokenizer, ids.tolist(), int(positions[0]))  # type: ignore[attr-defined]
        tokens = self.tokenizer.convert_ids_to_tokens(ids.tolist())  # type: ignore[attr-defined]
        hidden = list(out.hidden_states) if hidden_states else []
        source_of_gradients = CapturedGradients(z, records) if gradients else None
        supports = [getattr(r, "mask", None) for r in records]  # linear layers: causal
        prefix = self.visual_prefix(prepared)
        if prefix:  # cross-attention models: the image tokens as a prefix (`models.cross`)
            n_text = ids.numel()
            attentions = PrefixedAttentions(attentions, kinds, prefix, n_text)  # type: ignore[arg-type]
            supports = PrefixedSupports(records, prefix, n_text)  # type: ignore[assignment,arg-type]
            if source_of_gradients is not None:
                source_of_gradients = PrefixedGradients(source_of_gradients, records, prefix)  # type: ignore[assignment,arg-type]
            image_token = self.tokenizer.convert_ids_to_tokens(self.image_token_id)  # type: ignore[attr-defined]
            ids = torch.cat([torch.full((prefix,), self.image_token_id), ids])  # type: ignore[attr-defined]
            tokens, texts = [image_token] * prefix + tokens, [""] * prefix + texts
            positions = positions + prefix
        return Trace(
            attentions=attentions,  # type: ignore[arg-type]
            layout=prepared.layout,
            prompt_index=prepared.prompt_index,
            answer_positions=positions,
            confidences=conf.detach().cpu(),
            input_ids=ids,
            tokens=tokens,
            texts=texts,
            answer_source=source,
            hidden_states=[h.detach()[0] for h in hidden] if hidden_states else None,
            readout=self.readout if hidden_states else None,
            gradient_source=source_of_gradients,
            graph=(
                {
                    "outputs": [r.output for r in records],  # L x [1, N, H, d] in the graph
                    "values": [r.value.detach() for r in records],  # L x [1, Hkv, N, d]
                    "hidden_states": hidden,  # L+1 x [1, N, D] (when captured)
                    "logits": z,  # [T] z_t, the produced tokens' logits, in the graph
                    "logit_rows": logits[predicting.to(logits.device)],  # [T, V] at each p_t
                }
                if gradients
                else None
            ),
            supports=supports,  # type: ignore[arg-type]
            layer_kinds=kinds,
            context=ModelContext(self, image, question),
            meta={
                "family": self.family,
                "prompt_text": prepared.text,
                "answer_text": "".join(texts[int(positions[0]) :]),
                "visual_prefix": prefix,  # image tokens placed before the text (cross models)
                "logits": z.detach().float().cpu(),
                "attn_implementation": "eager" if eager else implementation,
            },
        )

    def visual_prefix(self, prepared: PreparedInputs) -> int:
        """Image tokens the trace places before the text: 0 where they are in the sequence,
        their count for cross-attention models (`models.cross`)."""
        return 0

    def readout(self, hidden: Tensor) -> Tensor:
        """Logit lens: the final norm and LM head applied to hidden states [.., D] -> [.., V]."""
        norm = self.final_norm()  # type: ignore[attr-defined]
        return self.unembed(norm(hidden.to(norm.weight.device)))

    def unembed(self, hidden: Tensor) -> Tensor:
        """The LM head alone, for hidden states already through the final norm: [.., D] -> [.., V].

        In transformers 5.x the last element of ``output_hidden_states`` is the final norm's
        output (`readout` would apply the norm twice there).
        """
        head = self.model.lm_head
        logits = head(hidden.to(head.weight.device))
        cap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)
        return logits if cap is None else torch.tanh(logits / cap) * cap  # Gemma 2 caps logits


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the duration, then the caller's mode back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """No parameter requires grad during capture, so nothing accumulates in ``.grad``."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
