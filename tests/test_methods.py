"""Every registered method: registry, configs, shared traces, bad inputs, persistence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import xattr
from reference_methods import (
    random_trace,
    single_thread,  # noqa: F401 (pytest fixture, used through pytestmark)
)
from xattr import methods
from xattr.explanation import Explanation
from xattr.methods import common
from xattr.trace import TraceError

pytestmark = pytest.mark.usefixtures("single_thread")  # fixture from reference_methods

BUILTIN = ("glimpse", "tmme", "rollout", "raw_attention", "gradcam")
CONF = Path(__file__).resolve().parents[1] / "conf" / "method"


def test_builtin_methods_are_registered_with_needs():
    assert set(BUILTIN) <= set(methods.available())
    for name in BUILTIN:
        needs = methods.get(name).needs
        assert needs.gradients == (name in ("glimpse", "tmme", "gradcam")), name


@pytest.mark.parametrize("config", [f"{name}.yaml" for name in BUILTIN] + ["tmme_last12.yaml"])
def test_method_configs_instantiate_with_hydra(config):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF / config)
    attributor = instantiate(cfg)
    expected = {
        k: v for k, v in OmegaConf.to_container(cfg).items() if k not in ("_target_", "name")
    }
    assert attributor.name == cfg.name
    assert attributor.hparams == expected  # every hparam is in the config, with its default
    trace, *_ = random_trace(16, 2, 2, 2, (2, 3))
    assert attributor.explain(trace).visual.shape == (2, 3)


def test_config_defaults_are_the_code_defaults():
    from omegaconf import OmegaConf

    for name in BUILTIN:
        cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
        assert methods.get(name).hparams == {
            k: v for k, v in cfg.items() if k not in ("_target_", "name")
        }


def test_hydra_overrides_reach_the_method():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(
        OmegaConf.load(CONF / "glimpse.yaml"), {"layers": [0, 1], "depth_prior": False}
    )
    attributor = instantiate(cfg)
    assert attributor.hparams["layers"] == [0, 1] and type(attributor.hparams["layers"]) is list
    assert OmegaConf.load(CONF / "tmme_last12.yaml").last_k == 12


@pytest.mark.parametrize("name", BUILTIN)
def test_non_finite_attention_raises_naming_the_layer(name):
    _trace, attn, grads, lay, conf = random_trace(16, 2, 2, 2, (2, 3))
    attn = attn.clone()
    attn[1, 0, 9, 3] = float("inf")
    bad = xattr.Trace.from_tensors(list(attn), grads, confidences=conf, **lay)
    with pytest.raises(ValueError, match="non-finite values in attentions of layer 1"):
        methods.get(name).explain(bad)


@pytest.mark.parametrize("name", ["glimpse", "tmme", "gradcam"])
def test_gradient_methods_name_themselves_when_gradients_are_missing(name):
    trace, *_ = random_trace(16, 2, 2, 1, (2, 3))
    bare = xattr.Trace.from_tensors(
        trace.attentions,
        visual_index=trace.visual_index,
        prompt_index=trace.prompt_index,
        answer_positions=trace.answer_positions,
        grid=trace.grid,
    )
    with pytest.raises(TraceError, match=name):
        methods.get(name).explain(bare)


def test_methods_sharing_a_trace_give_the_same_results_in_any_order():
    def run_all(order, share=True):
        trace, *_ = random_trace(24, 3, 3, 3, (2, 3), seed=21)
        common.SHARE_ACROSS_METHODS = share
        try:
            return {(name, str(kw)): methods.get(name, **kw).explain(trace) for name, kw in order}
        finally:
            common.SHARE_ACROSS_METHODS = True

    order = [
        ("glimpse", {}),
        ("tmme", {}),
        ("glimpse", {"head_fusion": "mean"}),
        ("gradcam", {}),
        ("rollout", {}),
        ("raw_attention", {}),
    ]
    a = run_all(order)
    b = run_all(order[::-1])
    c = run_all(order, share=False)
    for key in a:
        torch.testing.assert_close(a[key].visual, b[key].visual, rtol=1e-12, atol=0)
        torch.testing.assert_close(a[key].visual, c[key].visual, rtol=1e-12, atol=0)
        torch.testing.assert_close(
            a[key].token_relevance, c[key].token_relevance, rtol=1e-12, atol=0
        )


def test_shared_pass_is_computed_once_per_token_and_layer(monkeypatch):
    trace, *_ = random_trace(16, 3, 2, 2, (2, 3), seed=22)
    calls = []
    original = common.GradientAttention._compute

    def counting(self, t, layer, head_weights):
        calls.append((t, layer))
        return original(self, t, layer, head_weights)

    monkeypatch.setattr(common.GradientAttention, "_compute", counting)
    methods.get("glimpse").explain(trace)
    methods.get("tmme").explain(trace)  # reuses GLIMPSE's head means
    methods.get("glimpse", tau_depth=1.0, layers=0.5).explain(trace)  # reuses the head mix
    assert sorted(calls) == [(t, layer) for t in range(2) for layer in range(3)]
    methods.get("glimpse", tau_head=2.0).explain(trace)  # a new head mix: one more pass each
    assert len(calls) == 12


def test_traces_that_do_not_cache_gradients_are_not_memoised():
    trace, *_ = random_trace(16, 2, 2, 1, (2, 3))
    trace.cache_gradients = False
    assert common.trace_memo(trace) is None
    methods.get("tmme").explain(trace)


@pytest.mark.parametrize("name", BUILTIN)
def test_explanations_save_and_load(name, tmp_path):
    tokens = [f"w{i}" for i in range(14)] + ["Ġred", "."]
    trace, *_ = random_trace(16, 2, 2, 2, (2, 3), tokens=tokens)
    expl = methods.get(name, **({"layers": [0, 1]} if name in ("glimpse", "raw_attention") else {}))
    expl = expl.explain(trace)
    assert expl.method == name and expl.answer_tokens == ["Ġred", "."]
    assert expl.token_mask.tolist() == [True, False]
    assert expl.token_relevance.shape == (2,) and expl.prompt_relevance.shape == (
        len(trace.prompt_index),
    )
    back = Explanation.load(expl.save(tmp_path / name))
    torch.testing.assert_close(back.visual, expl.visual)
    assert back.hparams == expl.hparams


@pytest.mark.parametrize("name", BUILTIN)
def test_token_maps_on_request(name):
    trace, *_ = random_trace(16, 2, 2, 3, (2, 3))
    assert methods.get(name).explain(trace).token_maps is None
    maps = methods.get(name, return_token_maps=True).explain(trace).token_maps
    assert maps.shape == (3, 2, 3)


def test_a_trace_that_recomputes_gradients_is_asked_once_per_token_per_method():
    trace, attn, grads, lay, conf = random_trace(16, 3, 2, 3, (2, 3), seed=23)
    expected = methods.get("glimpse").explain(trace)
    calls = []

    def recompute(tokens):
        calls.append(list(tokens))
        return grads[list(tokens)].clone()

    lazy = xattr.Trace.from_tensors(list(attn), None, confidences=conf, **lay)
    lazy.gradient_fn, lazy.cache_gradients = recompute, False
    for name in ("glimpse", "tmme", "gradcam"):
        calls.clear()
        methods.get(name).explain(lazy)
        assert calls == [[0], [1], [2]], name
    torch.testing.assert_close(methods.get("glimpse").explain(lazy).visual, expected.visual)
