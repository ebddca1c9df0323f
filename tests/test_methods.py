"""Every registered method: registry, configs, shared traces, bad inputs, persistence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import xattr
from support.reference import (
    random_trace,
    single_thread,  # noqa: F401 (pytest fixture, used through pytestmark)
)
from xattr import methods
from xattr.explanation import Explanation
from xattr.trace import TraceError

pytestmark = pytest.mark.usefixtures("single_thread")  # fixture from support.reference

BUILTIN = ("glimpse", "tmme", "rollout", "raw_attention", "gradcam")
CONF = Path(__file__).resolve().parents[1] / "conf" / "method"


def test_builtin_methods_are_registered_with_needs():
    assert set(BUILTIN) <= set(methods.available())
    for name in BUILTIN:
        needs = methods.get(name).needs
        assert needs.gradients == (name in ("glimpse", "tmme", "gradcam")), name


def _compose_method(*overrides: str):
    """The ``method`` node of the real config, composed as train_free_eval.py does."""
    from hydra import compose, initialize_config_dir

    from xattr.pipeline import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF.parent), version_base="1.3"):
        return compose(config_name="train_free_eval", overrides=list(overrides)).method


@pytest.mark.parametrize("config", sorted(p.stem for p in CONF.glob("*.yaml")))
def test_method_configs_instantiate_with_hydra(config):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = _compose_method(f"method=[{config}]")[config]
    attributor = instantiate(cfg)
    expected = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "_target_"}
    assert attributor.hparams == expected  # every hparam is in the config
    if not (attributor.needs.hidden_states or attributor.needs.model):  # a tensor trace will do
        trace, *_ = random_trace(16, 2, 2, 2, (2, 3))
        assert attributor.explain(trace).visual.shape == (2, 3)


@pytest.mark.parametrize("name", sorted(methods.builtin()))
def test_config_defaults_are_the_code_defaults(name):
    """A method's yaml restates no default: composing it gives exactly the class's defaults."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(_compose_method(f"method=[{name}]")[name])
    cls = methods.METHODS.get_class(name)
    assert cfg.pop("_target_") == f"{cls.__module__}.{cls.__qualname__}"
    assert cfg == cls.defaults() == methods.get(name).hparams
    assert "_target_" not in (CONF / f"{name}.yaml").read_text().split("defaults:")[0]


def test_hydra_overrides_reach_the_method():
    from hydra.utils import instantiate

    cfg = _compose_method("method=[glimpse,tmme_last12]", "method.glimpse.layers=[0,1]",
                          "method.glimpse.depth_prior=false")  # fmt: skip
    attributor = instantiate(cfg.glimpse)
    assert attributor.hparams["layers"] == [0, 1] and type(attributor.hparams["layers"]) is list
    assert attributor.depth_prior is False
    assert instantiate(cfg.tmme_last12).last_k == 12


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


SHARED = [
    ("glimpse", {}),
    ("tmme", {}),
    ("glimpse_mean", {"head_fusion": "mean"}),
    ("glimpse_top", {"layers": 0.5, "tau_depth": 1.0}),
    ("gradcam", {}),
    ("rollout", {}),
    ("raw_attention", {}),
]


def _method(label: str, hparams: dict):
    return methods.get(label.split("_")[0] if label.startswith("glimpse") else label, **hparams)


@pytest.mark.parametrize("order", [1, -1])
def test_methods_sharing_one_sweep_equal_separate_calls(order):
    trace, *_ = random_trace(24, 3, 3, 3, (2, 3), seed=21)
    alone = {label: _method(label, kw).explain(trace) for label, kw in SHARED}
    together = methods.explain_all(
        trace, {label: _method(label, kw) for label, kw in SHARED[::order]}
    )
    assert list(together) == [label for label, _ in SHARED[::order]]
    for label, expl in alone.items():
        torch.testing.assert_close(together[label].visual, expl.visual, rtol=1e-12, atol=0)
        torch.testing.assert_close(
            together[label].token_relevance, expl.token_relevance, rtol=1e-12, atol=0
        )
        assert together[label].hparams == expl.hparams and together[label].method == expl.method


def test_one_sweep_asks_for_each_tokens_gradients_once_whatever_the_methods(monkeypatch):
    trace, attn, grads, lay, conf = random_trace(16, 3, 2, 3, (2, 3), seed=22)
    requests = []

    def recompute(tokens):
        requests.append(list(tokens))
        return grads[list(tokens)].clone()

    lazy = xattr.Trace.from_tensors(list(attn), None, confidences=conf, **lay)
    lazy.gradient_source = xattr.trace.FunctionGradients(recompute)
    chosen = {label: _method(label, kw) for label, kw in SHARED}
    together = methods.explain_all(lazy, chosen)
    assert requests == [[0, 1, 2]]  # one chunk holds every token here
    requests.clear()
    monkeypatch.setenv("XATTR_GRADIENT_MEMORY", "1")  # a budget too small for two tokens
    small = methods.explain_all(lazy, chosen)
    assert requests == [[0], [1], [2]]  # chunks of one token, each asked for once
    for label in chosen:
        torch.testing.assert_close(small[label].visual, together[label].visual, rtol=1e-12, atol=0)
    expected = methods.get("glimpse").explain(trace)
    torch.testing.assert_close(together["glimpse"].visual, expected.visual, rtol=1e-12, atol=0)


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


def test_a_sweep_that_fails_fails_every_streaming_method_and_spares_the_others():
    _, attn, grads, lay, conf = random_trace(16, 2, 2, 2, (2, 3), seed=5)
    bad = grads.clone()
    bad[1, 0, 0, 3, 2] = float("nan")
    broken = xattr.Trace.from_tensors(list(attn), bad, confidences=conf, **lay)
    errors = {}
    chosen = {label: _method(label, kw) for label, kw in SHARED}
    out = methods.explain_all(broken, chosen, on_error=lambda name, err: errors.update({name: err}))
    streaming = {"glimpse", "tmme", "glimpse_mean", "glimpse_top", "gradcam"}
    assert set(errors) == streaming and set(out) == {"rollout", "raw_attention"}
    assert all("answer token 1, layer 0" in str(e) for e in errors.values())
    with pytest.raises(ValueError, match="answer token 1, layer 0"):
        methods.explain_all(broken, chosen)


def test_xattr_list_prints_a_methods_declared_hyperparameters(capsys):
    from xattr.cli import main

    assert main(["list", "--method", "glimpse"]) == 0
    out = capsys.readouterr().out
    for f in methods.METHODS.get_class("glimpse").hparam_fields():
        assert f"  {f.name} = " in out
    assert "tau_head = 0.5  (must be > 0" in out and "adaptive | mean" in out
    assert main(["list", "--method", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_the_shipped_method_variants_answer_everywhere_a_method_does(capsys):
    """igos_fast and tmme_last12 are rows of the default table: list, get and explain's
    method specs know them, with the variant's defaults."""
    from xattr.api import build_methods
    from xattr.cli import main

    assert {n: (v.base, v.overrides) for n, v in methods.variants().items()} == {
        "igos_fast": ("igos", {"iterations": 5, "ig_steps": 3, "mask_size": 8}),
        "tmme_last12": ("tmme", {"last_k": 12}),
    }
    assert main(["list", "--method", "igos_fast"]) == 0
    out = capsys.readouterr().out
    assert "  a variant of igos (igos_fast.yaml): iterations=5, ig_steps=3, mask_size=8" in out
    assert "  mask_size = 8  (" in out and "  iterations = 5  (" in out
    assert methods.get("tmme_last12").last_k == 12
    assert methods.get("tmme_last12", last_k=3).last_k == 3
    built = build_methods(["tmme_last12", "tmme"])
    assert (built["tmme_last12"].last_k, built["tmme"].last_k) == (12, None)


def test_xattr_list_names_models_methods_variants_and_metrics(capsys):
    from xattr.cli import main

    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "method variants: igos_fast (igos), tmme_last12 (tmme)"
    assert "qwen2_5_vl_7b" in lines[2] and "toy_llava" in lines[2]  # conf names
    assert "faithfulness" in lines[4]
    assert lines[5] == (
        "  faithfulness writes the columns: deletion_auc, insertion_auc, deletion_ppl, "
        "faithfulness_passes"
    )


def test_a_list_whose_methods_share_a_name_is_refused_not_collapsed():
    from xattr.api import build_methods

    twins = [methods.get("tmme"), methods.get("tmme_last12")]  # both are named "tmme"
    with pytest.raises(ValueError, match="two methods would be named alike"):
        build_methods(twins)
    with pytest.raises(ValueError, match="two methods would be named alike"):
        methods.explain_all(None, twins)  # refused before the trace is read
    assert set(build_methods({"tmme": twins[0], "tmme_last12": twins[1]})) == {
        "tmme",
        "tmme_last12",
    }
