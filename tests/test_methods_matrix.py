"""Every method x every token policy x every value of every choice it declares (variants,
head fusion, token weighting, ...), each on a trace captured with exactly the needs that
configuration declares: a configuration whose needs miss what it uses fails here."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

import xattr
from support.families import QUESTION, SPECS
from xattr import methods
from xattr.methods.tokens import POLICIES

# Cheap settings for methods whose defaults cost hundreds of passes (not choices: kept fixed).
CHEAP = {"igos": {"iterations": 1, "ig_steps": 1, "mask_size": 4}}


def configurations() -> list[tuple[str, dict]]:
    """(method, hparams) for the product of every choice field of every built-in method."""
    out = []
    for name in methods.builtin():
        cls = methods.METHODS.get_class(name)
        fields = [f for f in cls.hparam_fields() if f.metadata.get("choices") is not None]
        values = []
        for f in fields:
            choices = f.metadata["choices"]
            values.append(POLICIES.available() if choices is POLICIES else list(choices))
        for combo in itertools.product(*values):
            out.append(
                (name, {**CHEAP.get(name, {}), **dict(zip([f.name for f in fields], combo))})
            )
    return out


CONFIGS = configurations()


def test_the_matrix_covers_every_policy_and_variant():
    seen = {(name, hp.get("token_policy"), hp.get("variant")) for name, hp in CONFIGS}
    assert ("gradcam", "visual", "hidden") in seen  # the combination whose needs once went wrong
    assert {p for _, p, _ in seen} == set(POLICIES.available())
    assert {n for n, _, _ in seen} == set(methods.builtin())


@pytest.mark.parametrize(
    ("name", "hparams"), CONFIGS, ids=[f"{n}-{'-'.join(map(str, h.values()))}" for n, h in CONFIGS]
)
def test_every_configuration_runs_on_a_trace_captured_with_its_needs(tiny_adapter, name, hparams):
    adapter = tiny_adapter("qwen2_5_vl")
    method = methods.get(name, **hparams)
    needs = method.needs
    image = SPECS["qwen2_5_vl"].image()
    trace = adapter.trace(
        image, QUESTION, "red circle", gradients=needs.gradients, hidden_states=needs.hidden_states
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate maps of a random model are expected
        expl = method.explain(trace)
    assert expl.visual.shape == trace.grid and torch.isfinite(expl.visual).all()
    assert expl.token_mask is not None and expl.token_mask.shape == (2,)
    assert expl.hparams == method.hparams


def test_needs_follow_the_configuration():
    assert methods.get(
        "gradcam", variant="hidden", token_policy="visual"
    ).needs == xattr.methods.Needs(attentions=True, gradients=True, hidden_states=True, model=True)
    assert not methods.get("rollout").needs.gradients
    assert methods.get("rollout", token_policy="dexar").needs.hidden_states
    assert methods.get("igos").needs.model and not methods.get("igos").needs.gradients
