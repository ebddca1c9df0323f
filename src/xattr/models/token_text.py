"""Each token's display text: what it adds to the decoded text, so a person reads words.

Tokenizers store pieces, not text: byte-level BPE writes a leading space as ``Ġ`` and a
newline as ``Ċ``, and splits one UTF-8 character (a CJK character, an emoji) over several
byte tokens; SentencePiece writes ``▁`` for a space and falls back to ``<0xE7>`` byte
pieces. `display_texts` decodes a token sequence incrementally: token ``i``'s text is what
decoding ``ids[..i]`` adds to decoding ``ids[..i-1]``. A character split over several
tokens is shown once, on the token that completes it (the tokens before it show ``""``).
So ``"".join(display_texts(tok, ids)) == tok.decode(ids)`` whenever the sequence ends on a
whole character, and no text holds a piece mark or U+FFFD.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

INCOMPLETE = "\ufffd"  # what a decoder writes for the bytes of an unfinished character


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(
        list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
    )


def display_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The text each token of ``ids`` adds when ``ids`` is decoded from its start.

    Decoding runs over a short window (the previous token and any unfinished character's
    tokens), so the cost is linear in ``len(ids)``: a SentencePiece decoder, which drops the
    space of a window's first piece, still sees each token after its neighbour.
    """
    ids = [int(i) for i in ids]
    texts: list[str] = []
    start = done = 0  # ids[start:done] decode to whole characters, already handed out
    for end in range(1, len(ids) + 1):
        known = _decode(tokenizer, ids[start:done])
        grown = _decode(tokenizer, ids[start:end])
        if grown.endswith(INCOMPLETE) and end < len(ids):
            texts.append("")  # part of a character that a later token completes
            continue
        texts.append(
            grown[len(known) :] if grown.startswith(known) else grown[_common(known, grown) :]
        )
        start, done = done, end
    return texts


def _common(a: str, b: str) -> int:
    """Length of the longest common prefix of ``a`` and ``b``."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def sequence_texts(tokenizer: Any, ids: Sequence[int], answer_start: int) -> list[str]:
    """Display texts of a prompt followed by an answer: the answer is decoded on its own
    (its first token as ``tokenizer.decode(answer_ids)`` writes it), so that
    ``"".join(texts[answer_start:])`` is exactly the decoded answer."""
    return display_texts(tokenizer, ids[:answer_start]) + display_texts(
        tokenizer, ids[answer_start:]
    )
