"""Answer-token selection policies: which answer tokens count in a sequence-level map."""

from __future__ import annotations

import unicodedata
import warnings

import torch
from torch import Tensor

from ..trace import Trace

# Markers tokenizers put in front of words (GPT-2 byte-level, SentencePiece).
_WORD_MARKERS = "Ġ▁Ċ"


class TokenSelectionWarning(UserWarning):
    """A selection policy kept no token and fell back to all tokens."""


def clean_token(token: str) -> str:
    """A token's visible text: word markers and surrounding white space removed."""
    return token.strip(_WORD_MARKERS).strip()


def is_punctuation(token: str) -> bool:
    """True for tokens that are only punctuation, symbols or white space."""
    text = clean_token(token)
    return all(unicodedata.category(ch)[0] in "PSZ" for ch in text)


def select_tokens(trace: Trace, policy: str = "non_punctuation") -> Tensor:
    """Boolean mask [T] of the answer tokens a method aggregates.

    ``all``: every token. ``non_punctuation``: drop tokens that are only punctuation (the
    paper's practice note). If the policy keeps nothing (an answer that is all
    punctuation), every token is kept and a `TokenSelectionWarning` says so.
    """
    n = trace.num_answer_tokens
    if policy == "all":
        return torch.ones(n, dtype=torch.bool)
    if policy == "non_punctuation":
        if trace.tokens is None:
            return torch.ones(n, dtype=torch.bool)
        keep = torch.tensor(
            [not is_punctuation(tok) for tok in trace.answer_tokens], dtype=torch.bool
        )
    else:  # visual (likelihood ratio), dexar (delta_t), or an unknown name (raises)
        from .selection import select_answer_tokens

        return select_answer_tokens(trace, policy)
    if not bool(keep.any()):
        warnings.warn(
            f"token policy {policy!r} kept none of the answer tokens {trace.answer_tokens}; "
            "using all of them",
            TokenSelectionWarning,
            stacklevel=2,
        )
        keep = torch.ones(n, dtype=torch.bool)
    return keep
