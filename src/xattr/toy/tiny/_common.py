"""Pieces every tiny-model builder shares: sizes, word-level tokenizers, saving.

Each family's builder (a module of this package named after the family) builds a real
processor in code with a small word-level tokenizer (built with `tokenizers`: the words of
the synthetic shapes task, the family's special tokens and chat template) and a random
model of the real class from a tiny config, then saves both with ``save_pretrained``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    GenerationConfig,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

UNK = "<unk>"

# Words of a synthetic-shapes VQA task plus the role names the chat templates render.
_WORD_LINES = (
    "user assistant system you are helpful",
    "what which where who how many much is are was does do did can there any the a an this that",
    "these those it its of in on at to and or not no yes true false with without by for from into",
    "image picture photo scene shown see visible located position place object objects thing",
    "things color colour colors shape shapes size kind type answer question word single",
    "one two three four five six seven eight nine ten zero none number count total only more",
    "most fewer less least than same different other another both all each every either neither",
    "as be has have contain contains left right top bottom above below upper lower middle center",
    "centre corner corners side sides next near far between beside behind front back inside",
    "outside over under up down closest nearest farthest furthest first second third last half",
    "quadrant row column diagonal horizontal vertical big large small tiny bigger larger smaller",
    "biggest largest smallest tall short wide narrow",
    "red green blue yellow orange purple pink black white gray grey brown cyan magenta",
    "circle circles square squares triangle triangles rectangle rectangles star stars ellipse",
    "oval diamond hexagon pentagon cross dot dots background foreground filled outline empty",
)
WORDS = tuple(word for line in _WORD_LINES for word in line.split())
PUNCTUATION = list(".,?!:;'\"-()")
DIGITS = list("0123456789")


@dataclass(frozen=True)
class TinySizes:
    """Layer counts and widths of a tiny model."""

    text_layers: int = 2
    text_hidden: int = 64
    text_heads: int = 4
    text_kv_heads: int = 2
    vision_layers: int = 2
    vision_hidden: int = 32
    vision_heads: int = 4

    @property
    def head_dim(self) -> int:
        return self.text_hidden // self.text_heads

    def text_kwargs(self, vocab_size: int) -> dict[str, int]:
        """The config entries every tiny language model shares: vocabulary, width, depth, heads."""
        return {
            "vocab_size": vocab_size,
            "hidden_size": self.text_hidden,
            "intermediate_size": 2 * self.text_hidden,
            "num_hidden_layers": self.text_layers,
            "num_attention_heads": self.text_heads,
            "num_key_value_heads": self.text_kv_heads,
        }


def vocab(
    specials: Iterable[str], extra_words: Iterable[str] = (), tail: Iterable[str] = ()
) -> dict[str, int]:
    """Token -> id: specials (``<unk>`` first), then words, punctuation and single digits,
    then the ``tail`` tokens (the last ids: an extra vocabulary the LM head does not cover)."""
    tokens = [UNK, *specials, *WORDS, *(w.lower() for w in extra_words), *PUNCTUATION, *DIGITS]
    tokens += list(tail)
    return {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}


def word_level(table: dict[str, int]) -> Tokenizer:
    """Lower-casing word-level tokenizer: words, single punctuation marks and single digits."""
    tok = Tokenizer(models.WordLevel(table, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()  # offsets still index the original text
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    return tok


def byte_level_bpe(specials: Iterable[str], extra_words: Iterable[str] = ()) -> Tokenizer:
    """A small byte-level BPE (GPT-2 / Qwen style: ``Ġ`` marks a leading space, any text
    encodes) trained on the task's words, as written, capitalised and after a space; the
    specials come first. Deterministic: the same words give the same merges."""
    words = [*WORDS, *extra_words]
    corpus = [" ".join(words), " ".join(w.capitalize() for w in words)]
    corpus += [form for w in words for form in (w, " " + w, w.capitalize(), " " + w.capitalize())]
    corpus += [" ".join(PUNCTUATION), " ".join(DIGITS)]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(dict.fromkeys(specials)),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    return backend


def tokenizer(
    specials: Iterable[str],
    *,
    chat_template: str,
    bpe: bool = False,
    extra_words: Iterable[str] = (),
    bos: str | None = None,
    prepend_bos: bool = False,
    eos: str,
    pad: str,
    extra_special: Iterable[str] = (),
    named: Mapping[str, str] | None = None,
    tail: Iterable[str] = (),
) -> PreTrainedTokenizerFast:
    """A small fast word-level tokenizer with a family's special tokens and chat template.

    ``named`` gives tokens the processor looks up by attribute (``{"image_token": "<image>"}``);
    ``prepend_bos`` adds ``bos`` in front when ``add_special_tokens`` (Llama style); ``bpe``
    makes it a byte-level BPE (`byte_level_bpe`) for families whose tokenizer class rebuilds
    a BPE from the saved vocabulary and merges (Qwen3.5); ``tail`` special tokens take the
    last ids (Molmo2's extra vocabulary beyond the LM head).
    """
    specials, extra_special, tail = tuple(specials), tuple(extra_special), tuple(tail)
    if tail and bpe:
        raise ValueError("tail tokens are for word-level tokenizers")
    table = vocab(specials, extra_words, tail)
    backend = byte_level_bpe(specials, extra_words) if bpe else word_level(table)
    if prepend_bos and bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, table[bos])]
        )
    kwargs: dict[str, Any] = dict(named or {})
    if bos is not None:
        kwargs["bos_token"] = bos
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        eos_token=eos,
        pad_token=pad,
        extra_special_tokens=[*extra_special, *(t for t in tail if t not in extra_special)],
        padding_side="left",
        **kwargs,
    )
    tok.chat_template = chat_template
    return tok


def qwen_chat_tokenizer(
    specials: tuple[str, ...],
    *,
    chat_template: str,
    extra_words: Iterable[str] = (),
    named: Mapping[str, str] | None = None,
    bpe: bool = False,
) -> PreTrainedTokenizerFast:
    """Qwen's chat conventions (Qwen2-VL, LLaVA-OneVision, InternVL): no BOS, ``<|im_end|>``
    ends a turn, ``<|endoftext|>`` (the first of ``specials``) pads, the others are special."""
    return tokenizer(
        specials,
        chat_template=chat_template,
        extra_words=extra_words,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        extra_special=specials[1:],
        named=named,
        bpe=bpe,
    )


def llama_tokenizer(
    specials: Iterable[str],
    *,
    chat_template: str,
    extra_special: Iterable[str],
    extra_words: Iterable[str] = (),
) -> PreTrainedTokenizerFast:
    """Llama's conventions (LLaVA-1.5, LLaVA-NeXT, Mistral 3): ``<s>`` prepended with special
    tokens, ``</s>`` ends the answer, ``<pad>`` pads."""
    return tokenizer(
        specials,
        chat_template=chat_template,
        extra_words=extra_words,
        bos="<s>",
        prepend_bos=True,
        eos="</s>",
        pad="<pad>",
        extra_special=extra_special,
    )


def generation_config(config: PreTrainedConfig) -> GenerationConfig:
    """Greedy generation that stops at the text model's eos token(s) (ids a text config
    does not declare, GLM-V's bos, are None)."""
    text = config.get_text_config()
    return GenerationConfig(
        bos_token_id=getattr(text, "bos_token_id", None),
        eos_token_id=getattr(text, "eos_token_id", None),
        pad_token_id=getattr(text, "pad_token_id", None),
        do_sample=False,
    )


def save(
    model_class: type[PreTrainedModel],
    config: PreTrainedConfig,
    processor: Any,
    out_dir: Path,
    seed: int,
    adjust: Callable[[PreTrainedModel], None] | None = None,
) -> Path:
    """Build the model from ``config`` with ``seed`` (then ``adjust`` it, under no_grad, where
    a random initialisation would be degenerate), then save model and processor."""
    torch.manual_seed(seed)
    model = model_class(config).eval()
    if adjust is not None:
        with torch.no_grad():
            adjust(model)
    model.generation_config = generation_config(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
