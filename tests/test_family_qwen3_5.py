"""Qwen3.5's own rules: linear (Gated DeltaNet) and softmax layers in one trace, each with its
own head count; the implicit attention reproduces each linear layer's output; every method
runs on both kinds and says what it does there; the MoE variant goes through the same adapter."""

from __future__ import annotations

import pytest
import torch

import xattr
from support.families import QUESTION, SPECS, assert_same_maps, explain_quietly
from xattr.toy.build import build_tiny_model

SPEC = SPECS["qwen3_5"]
METHODS = ["glimpse", "tmme", "rollout", "raw_attention", "gradcam", "dexar"]


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    return build_tiny_model(
        "qwen3_5", tmp_path_factory.mktemp("tiny_qwen3_5_moe"), moe=True, text_layers=4
    )


def test_layers_have_their_kind_and_their_own_head_count(tiny_adapter):
    adapter = tiny_adapter("qwen3_5")
    trace = adapter.trace(SPEC.image(), QUESTION, answer="red circle")
    config = adapter.model.config.get_text_config()
    assert trace.layer_kinds == ["linear", "linear", "linear", "softmax"]
    linear_heads, softmax_heads = config.linear_num_value_heads, config.num_attention_heads
    assert linear_heads != softmax_heads  # the builder keeps them apart, as the real models
    assert [trace.layer_heads(layer) for layer in range(4)] == [linear_heads] * 3 + [softmax_heads]
    n = trace.seq_len
    for layer in range(4):
        attention = trace.attentions[layer]
        assert attention.shape == (trace.layer_heads(layer), n, n)
        assert torch.count_nonzero(attention.triu(1)) == 0  # causal on both kinds


def test_the_implicit_attention_reproduces_each_linear_layers_output(tiny_adapter):
    """o = A v: the recorded kernel output (the model's own chunked computation) from A."""
    adapter = tiny_adapter("qwen3_5")
    trace = adapter.trace(SPEC.image(), QUESTION, answer="red circle")
    graph = trace.graph
    for layer, kind in enumerate(trace.layer_kinds):
        if kind != "linear":
            continue
        a = trace.attentions[layer].double()  # [H, N, N]
        v = graph["values"][layer][0].double()  # [H, N, d]
        out = graph["outputs"][layer][0].detach().double().transpose(0, 1)  # [H, N, d]
        got = torch.matmul(a, v)
        scale = out.abs().max()
        assert (got - out).abs().max() <= 1e-5 * scale


def test_linear_layer_gradients_are_do_times_v(tiny_adapter):
    """G = dz/dA = (dz/do) v^T on a linear layer, checked against autograd on the output."""
    adapter = tiny_adapter("qwen3_5")
    trace = adapter.trace(SPEC.image(), QUESTION, answer="red circle")
    graph = trace.graph
    layer = 0  # a linear layer
    got = trace.gradients_for([1])[0, layer]  # [H, N, N]
    (d_out,) = torch.autograd.grad(graph["logits"][1], graph["outputs"][layer], retain_graph=True)
    d_out = d_out[0].transpose(0, 1)  # [H, N, d]
    v = graph["values"][layer][0]  # [H, N, d]
    torch.testing.assert_close(got, d_out @ v.transpose(-1, -2), rtol=1e-5, atol=1e-8)


def test_every_method_runs_with_its_rule_on_each_kind(tiny_adapter):
    adapter = tiny_adapter("qwen3_5")
    image = SPEC.image()
    expls = explain_quietly(adapter, image, METHODS, "red circle")
    for name, expl in expls.items():
        assert torch.isfinite(expl.visual).all(), name
        assert expl.visual.min() >= 0, name
    heads = expls["glimpse"].meta["head_weights"]  # [T, 4, H]: NaN past a layer's own heads
    config = adapter.model.config.get_text_config()
    assert torch.isnan(torch.as_tensor(heads)[:, 3, config.num_attention_heads :]).all()
    # layer_kinds restricts a method: the softmax layer alone is raw attention at layer 3
    only = xattr.explain(adapter, image, QUESTION, method="raw_attention", answer="red circle",
                         layer_kinds="softmax")  # fmt: skip
    layer3 = xattr.explain(adapter, image, QUESTION, method="raw_attention", answer="red circle",
                           layers=[3])  # fmt: skip
    torch.testing.assert_close(only.visual, layer3.visual)
    assert only.meta["layers"] == [3]
    for method in ("glimpse", "tmme"):  # within the method's own subset, the same restriction
        by_kind = xattr.explain(adapter, image, QUESTION, method=method, answer="red circle",
                                layer_kinds=["softmax"])  # fmt: skip
        by_index = xattr.explain(adapter, image, QUESTION, method=method, answer="red circle",
                                 **({"layers": [3]} if method == "glimpse" else {"last_k": 1}))  # fmt: skip
        torch.testing.assert_close(by_kind.visual, by_index.visual)
    with pytest.raises(ValueError, match="layer_kinds='cross' keeps none of the layers"):
        xattr.explain(adapter, image, QUESTION, method="rollout", answer="red circle",
                      layer_kinds="cross")  # fmt: skip


def test_rollout_reads_a_linear_layer_as_its_absolute_row_shares(tiny_adapter):
    adapter = tiny_adapter("qwen3_5")
    trace = adapter.trace(SPEC.image(), QUESTION, answer="red", gradients=False)
    got = xattr.methods.get("rollout", layer_kinds="linear").attribute(trace)
    # by hand: layers 0..2, each rownorm(0.5 * mean_h rownorm(|A|) + 0.5 I); R = M2 M1 M0
    n = trace.seq_len
    r = torch.eye(n, dtype=torch.float64)
    for layer in (0, 1, 2):
        a = trace.attentions[layer].double().abs()
        a = a / a.sum(-1, keepdim=True)
        m = 0.5 * a.mean(0) + 0.5 * torch.eye(n, dtype=torch.float64)
        r = (m / m.sum(-1, keepdim=True)) @ r
    p = int(trace.predicting_positions[0])
    expected = r[p, trace.visual_index]
    torch.testing.assert_close(got.visual.flatten().double(), expected, rtol=1e-5, atol=1e-9)


def test_the_moe_variant_loads_through_the_same_adapter_and_runs_every_method(moe_dir):
    eager = xattr.models.load(moe_dir)
    sdpa = xattr.models.load(moe_dir, attn_implementation="sdpa")
    assert eager.family == "qwen3_5" and type(eager.model).__name__.startswith("Qwen3_5Moe")
    image = SPEC.image()
    a = explain_quietly(eager, image, METHODS, "red circle")
    assert all(torch.isfinite(x.visual).all() for x in a.values())
    assert_same_maps(explain_quietly(sdpa, image, METHODS, "red circle"), a)
    generated = eager.trace(image, QUESTION, answer=None, gradients=False)
    assert generated.answer_source == "generated"


def test_head_shape_options_set_head_dims_and_linear_heads_apart_from_the_width(tmp_path):
    """The builder's head options (benchmarks/bench_qwen35.py: the real shape at a narrow
    width) reach the config and the trace; each linear layer's A still gives its output."""
    out = build_tiny_model("qwen3_5", tmp_path, text_layers=4, text_heads=4, text_kv_heads=2,
                           head_dim=32, linear_key_heads=4, linear_value_heads=8,
                           linear_head_dim=24)  # fmt: skip
    adapter = xattr.models.load(out)
    config = adapter.model.config.get_text_config()
    assert config.head_dim == 32
    assert (config.linear_num_key_heads, config.linear_num_value_heads) == (4, 8)
    assert config.linear_key_head_dim == config.linear_value_head_dim == 24
    assert sum(config.rope_parameters["mrope_section"]) == 32 // 8  # a quarter of it rotates
    trace = adapter.trace(SPEC.image(), QUESTION, answer="red circle")
    assert [trace.layer_heads(layer) for layer in range(4)] == [8, 8, 8, 4]
    graph = trace.graph
    a = trace.attentions[0].double()  # [8, N, N]
    v = graph["values"][0][0].double()  # [8, N, 24]
    out0 = graph["outputs"][0][0].detach().double().transpose(0, 1)
    assert (torch.matmul(a, v) - out0).abs().max() <= 1e-5 * out0.abs().max()


def test_linear_layers_attention_is_kept_within_its_memory_budget(tiny_adapter, monkeypatch):
    """Kept A: computed once per layer while it fits in XATTR_IMPLICIT_MEMORY, else at each
    read; the maps are the same either way, and nothing past the budget is kept."""
    from xattr.models import recording

    adapter = tiny_adapter("qwen3_5")
    image = SPEC.image()
    computed = []
    plain = recording.LinearRecord.implicit_attention

    def counted(self, dtype):
        computed.append(1)
        return plain(self, dtype)

    monkeypatch.setattr(recording.LinearRecord, "implicit_attention", counted)
    monkeypatch.setenv("XATTR_GRADIENT_MEMORY", "1")  # one token per sweep chunk: 2 chunks
    methods = ["glimpse", "rollout", "raw_attention"]
    runs = {}
    for budget in ("0", "1e9"):
        monkeypatch.setenv("XATTR_IMPLICIT_MEMORY", budget)
        computed.clear()
        runs[budget] = (explain_quietly(adapter, image, methods, "red circle"), len(computed))
    # 3 linear layers: read by the check, rollout, raw attention and each of the 2 chunks
    assert runs["0"][1] == 3 * (3 + 2)
    assert runs["1e9"][1] == 3
    for name in methods:
        torch.testing.assert_close(runs["0"][0][name].visual, runs["1e9"][0][name].visual)

    trace = adapter.trace(image, QUESTION, answer="red circle")
    one = trace.attentions[0].numel() * 4  # one linear layer's [H, N, N] float32
    attentions = recording.RecomputedAttentions(trace.attentions.records, torch.float32, one)
    first = attentions[2]
    assert attentions[2] is first and list(attentions.kept) == [2]  # the first read fits
    assert attentions[0] is not attentions[0] and list(attentions.kept) == [2]  # no room left
