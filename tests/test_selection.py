"""Answer-token selection policies: delegation, the visual likelihood-ratio rule, DEX-AR's filter."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import xattr
from xattr.methods.dexar import dexar_stats
from xattr.methods.tokens import POLICIES, TokenSelectionWarning, policy_needs, select_tokens
from xattr.trace import ModelContext, Trace, TraceError

SPECIAL = 99


class ScoringStub:
    """An adapter whose ``answer_logprobs`` returns fixed (image, blurred) log-probabilities."""

    def __init__(self, logp_image: list[float], logp_blurred: list[float]) -> None:
        self.rows = torch.tensor([logp_image, logp_blurred])
        self.tokenizer = SimpleNamespace(all_special_ids=[SPECIAL])
        self.calls = 0

    def answer_logprobs(self, images, question, answer_ids):
        self.calls += 1
        assert len(images) == 2 and len(answer_ids) == self.rows.shape[1]
        return self.rows


def _trace(answer_ids: list[int], tokens: list[str] | None = None, adapter=None) -> Trace:
    n_prompt, n_ans = 6, len(answer_ids)
    n = n_prompt + n_ans
    trace = Trace.from_tensors(
        [torch.full((1, n, n), 1 / n)],
        visual_index=[1, 2, 3, 4],
        prompt_index=[5],
        answer_positions=range(n_prompt, n),
        grid=(2, 2),
        tokens=[f"w{i}" for i in range(n_prompt)] + (tokens or [f"a{i}" for i in range(n_ans)]),
    )
    trace.input_ids = torch.tensor([1] * n_prompt + answer_ids)
    if adapter is not None:
        image = Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8))
        trace.context = ModelContext(adapter, image, "q?")
    return trace


def test_all_and_non_punctuation():
    trace = _trace([7, 8, 9], tokens=["red", ",", "blue"])
    assert select_tokens(trace, "all").tolist() == [True, True, True]
    assert select_tokens(trace, "non_punctuation").tolist() == [True, False, True]


def test_visual_keeps_tokens_whose_likelihood_drops_on_the_blurred_image():
    """log p - log p_blur > threshold; special tokens never count; memoised on the trace."""
    stub = ScoringStub([-0.1, -0.2, -0.3, -0.1], [-3.0, -0.5, -2.0, -9.0])
    trace = _trace([7, 8, 9, SPECIAL], adapter=stub)
    assert select_tokens(trace, "visual").tolist() == [True, False, True, False]
    assert select_tokens(trace, "visual", threshold=2.0).tolist() == [
        True,
        False,
        False,
        False,
    ]
    assert stub.calls == 1  # the two forward passes are done once per trace


@pytest.mark.parametrize(("p_blur", "kept"), [(0.3, True), (0.5, False)])
def test_visual_one_token_answer_uses_the_probability_ratio(p_blur, kept):
    """One (non-special) token: kept iff p_blur <= 0.5 p, although log p - log p_blur < 1."""
    stub = ScoringStub([math.log(0.8), -5.0], [math.log(p_blur), -5.0])
    trace = _trace([7, SPECIAL], adapter=stub)
    if kept:
        assert select_tokens(trace, "visual").tolist() == [True, False]
    else:
        with pytest.warns(TokenSelectionWarning, match="visual"):
            select_tokens(trace, "visual")


def test_visual_without_the_model_is_a_clear_error():
    with pytest.raises(TraceError, match="the 'visual' token policy needs the model"):
        select_tokens(_trace([7, 8]), "visual")


def test_visual_falls_back_to_the_non_special_tokens_with_a_warning():
    stub = ScoringStub([-0.1, -0.1, -0.1], [-0.2, -0.2, -9.0])
    trace = _trace([7, 8, SPECIAL], adapter=stub)
    with pytest.warns(TokenSelectionWarning, match="but the special ones") as caught:
        keep = select_tokens(trace, "visual")
    assert keep.tolist() == [True, True, False]
    assert caught[0].filename == __file__  # printed with this line, not xattr's warn call


def test_dexar_policy_is_delta_positive(tiny_adapter):
    adapter = tiny_adapter("qwen2_5_vl")
    image = Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    )
    trace = adapter.trace(
        image, "what color is the circle?", "red circle", gradients=True, hidden_states=True
    )
    with torch.no_grad():  # as in the evaluation's test loop
        delta = dexar_stats(trace, last_k=10).delta
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TokenSelectionWarning)
        keep = select_tokens(trace, "dexar")
    expected = (delta > 0) if bool((delta > 0).any()) else torch.ones_like(delta, dtype=torch.bool)
    assert keep.tolist() == expected.tolist()


def test_unknown_policy_lists_the_known_ones():
    with pytest.raises(ValueError, match="visual"):
        select_tokens(_trace([7]), "nope")
    assert set(POLICIES.available()) == {"all", "non_punctuation", "visual", "dexar"}


def test_policy_needs_widen_a_methods_needs():
    assert policy_needs("all") is None
    assert policy_needs("visual").model
    widened = policy_needs("dexar")
    assert widened.gradients and widened.hidden_states and not widened.model
    rollout = xattr.methods.get("rollout", token_policy="dexar").needs
    assert rollout.gradients and rollout.hidden_states and rollout.attentions
    assert not xattr.methods.get("rollout").needs.gradients
