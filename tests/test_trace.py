"""Trace construction, validation and lazy gradient bookkeeping."""

from __future__ import annotations

import pytest
import torch

import xattr
from xattr.trace import TraceError


def _causal(L: int, H: int, N: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(L, H, N, N, generator=g)
    mask = torch.ones(N, N).tril().bool()
    return list(torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1))


def _trace(**overrides):
    kwargs = dict(
        attentions=_causal(2, 2, 8),
        gradients=torch.randn(2, 2, 2, 8, 8),
        visual_index=[1, 2, 3, 4],
        prompt_index=[5],
        answer_positions=[6, 7],
        grid=(2, 2),
        confidences=[0.9, 0.5],
    )
    kwargs.update(overrides)
    return xattr.Trace.from_tensors(**kwargs)


def test_from_tensors_exposes_positions_and_shapes():
    trace = _trace()
    assert (trace.num_layers, trace.num_heads, trace.seq_len, trace.num_answer_tokens) == (
        2,
        2,
        8,
        2,
    )
    assert trace.predicting_positions.tolist() == [5, 6]
    assert trace.grid == (2, 2)
    assert trace.gradients().shape == (2, 2, 2, 8, 8)
    assert trace.answer_tokens == ["<6>", "<7>"]


def test_gradients_come_from_the_source_on_request_and_are_not_kept():
    calls = []
    base = torch.randn(3, 2, 2, 8, 8)

    def fn(tokens):
        calls.append(list(tokens))
        return base[list(tokens)]

    trace = _trace(gradients=None, answer_positions=[5, 6, 7], confidences=[1.0, 1.0, 1.0])
    trace.gradient_source = xattr.trace.FunctionGradients(fn)
    torch.testing.assert_close(trace.token_gradients(1), base[1])
    torch.testing.assert_close(trace.gradients(), base)
    assert calls == [[1], [0, 1, 2]]
    assert not trace.memo  # nothing derived is kept


def test_a_layout_names_each_grids_image_and_box():
    from xattr.layout import Grid

    grids = [
        Grid(1, 2, image=0, box=(0, 0, 1, 0.5), name="tile 1"),
        Grid(1, 2, image=0, box=(0, 0.5, 1, 1)),
    ]
    trace = _trace(grid=grids)
    assert trace.grid == (1, 2) and [g.name for g in trace.layout.grids] == ["tile 1", "image"]
    assert [m.shape for m in trace.layout.split(torch.arange(4.0))] == [(1, 2), (1, 2)]
    assert _trace(grid=[(1, 2), (2, 1)]).layout.grids[1].image == 1  # plain pairs: one image each


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"grid": (3, 3)}, "hold 9 cells"),
        ({"answer_positions": [], "confidences": [], "gradients": None}, "zero tokens"),
        ({"visual_index": [], "grid": (0, 0)}, "no visual tokens"),
        ({"gradients": torch.randn(2, 2, 2, 8, 7)}, r"expected \[T, L, H, N, N\]"),
        ({"answer_positions": [6, 9]}, "outside the sequence"),
        ({"answer_positions": [0, 7]}, "no predicting position"),
    ],
)
def test_bad_traces_are_rejected_with_a_reason(overrides, message):
    with pytest.raises(TraceError, match=message):
        _trace(**overrides)


def test_gradient_method_on_trace_without_gradients_names_the_method():
    trace = _trace(gradients=None)
    with pytest.raises(TraceError, match="'glimpse' needs per-token gradients"):
        trace.require_gradients("glimpse")
