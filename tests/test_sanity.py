"""Model-parameter randomisation on a tiny real model: maps change, the model is left as found."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import xattr
from xattr.explanation import Explanation
from xattr.methods import Attributor
from xattr.metrics import MetricUndefinedWarning, parameter_randomisation
from xattr.metrics.sanity import _reinitialise, decoder_layers

pytestmark = pytest.mark.filterwarnings("error::xattr.metrics.MetricUndefinedWarning")

FAMILY = "qwen2_5_vl"
QUESTION = "what color is the circle?"


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on 2 shared cores, 2 spinning threads slow tiny forwards 40x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8))


class LastLayerAttention(Attributor):
    """Test method: head-mean last-layer attention from the last p_t to the visual tokens.

    Records, per call, the teacher-forced answer ids and which decoder layers of ``model``
    still hold their original weights.
    """

    name = "last_layer_attention"

    def __init__(self, model: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.original = (
            None
            if model is None
            else [[p.detach().clone() for p in layer.parameters()] for layer in _layers(model)]
        )
        self.calls: list[dict] = []

    def attribute(self, trace):
        p = int(trace.predicting_positions[-1])
        row = trace.attentions[-1][:, p, trace.visual_index].mean(0)
        call = {"answer": trace.input_ids[trace.answer_positions].tolist()}
        if self.model is not None:
            call["intact"] = [
                all(torch.equal(a, b) for a, b in zip(layer.parameters(), saved))
                for layer, saved in zip(_layers(self.model), self.original)
            ]
        self.calls.append(call)
        return Explanation(
            self.name, row.reshape(trace.grid), trace.answer_tokens, torch.ones(len(row))
        )


class ConstantMap(Attributor):
    """Test method that ignores the model: a constant map."""

    name = "constant_map"

    def attribute(self, trace):
        return Explanation(self.name, torch.ones(trace.grid), trace.answer_tokens, torch.ones(1))


def _layers(model: nn.Module):
    return model.model.language_model.layers


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    assert not changed, f"parameters changed: {changed[:5]}"


def test_cascade_changes_the_map_and_leaves_the_model_as_found(tiny_adapter):
    adapter = tiny_adapter(FAMILY)
    before = _state(adapter.model)
    method = LastLayerAttention(adapter.model)
    n_layers = len(decoder_layers(adapter))
    assert n_layers == 2
    rows = parameter_randomisation(adapter, _image(), QUESTION, method, return_maps=True)
    _assert_same_state(adapter.model, before)
    assert [r["k"] for r in rows] == [1, 2]
    assert [r["layers"] for r in rows] == [[1], [0, 1]]  # top first, then one more
    assert [r["fraction_randomised"] for r in rows] == [0.5, 1.0]
    assert all(r["cascade"] for r in rows)
    # The original, then the cascade as seen from inside the method.
    assert [c["intact"] for c in method.calls] == [[True, True], [True, False], [False, False]]
    # The same (greedy) answer is teacher-forced in every step.
    assert len({tuple(c["answer"]) for c in method.calls}) == 1
    full = rows[-1]
    assert math.isfinite(full["spearman"]) and full["spearman"] < 1.0
    assert not np.allclose(full["map"], full["original"])
    assert full["answer_logprob"] != pytest.approx(full["original_answer_logprob"])
    # The reported correlation is Spearman's rho of the two token-grid maps.
    from scipy import stats

    rho = stats.spearmanr(full["map"].ravel(), full["original"].ravel()).statistic
    assert full["spearman"] == pytest.approx(rho)


def test_independent_randomisation_restores_each_layer_before_the_next(tiny_adapter):
    adapter = tiny_adapter(FAMILY)
    before = _state(adapter.model)
    method = LastLayerAttention(adapter.model)
    rows = parameter_randomisation(
        adapter, _image(1), QUESTION, method, cascade=False, answer="red circle"
    )
    _assert_same_state(adapter.model, before)
    assert [r["layers"] for r in rows] == [[1], [0]]
    assert [r["fraction_randomised"] for r in rows] == [0.5, 0.5]
    assert [c["intact"] for c in method.calls] == [[True, True], [True, False], [False, True]]
    expected = adapter.encode_answer("red circle").tolist()
    assert all(c["answer"] == expected for c in method.calls)


def test_randomisation_is_seeded(tiny_adapter):
    adapter = tiny_adapter(FAMILY)
    run = lambda seed: [  # noqa: E731
        r["spearman"]
        for r in parameter_randomisation(
            adapter, _image(2), QUESTION, LastLayerAttention(), seed=seed, layers=[2]
        )
    ]
    assert run(0) == run(0)
    assert run(0) != run(1)


def test_a_method_that_ignores_the_model_gives_nan_with_a_warning(tiny_adapter):
    adapter = tiny_adapter(FAMILY)
    before = _state(adapter.model)
    with pytest.warns(MetricUndefinedWarning, match="constant"):
        rows = parameter_randomisation(adapter, _image(), QUESTION, ConstantMap(), layers=2)
    assert len(rows) == 2 and all(math.isnan(r["spearman"]) for r in rows)
    _assert_same_state(adapter.model, before)


def test_the_model_is_restored_when_the_method_fails(tiny_adapter):
    adapter = tiny_adapter(FAMILY)
    before = _state(adapter.model)

    class FailsWhenRandomised(LastLayerAttention):
        def attribute(self, trace):
            if self.calls:
                raise RuntimeError("boom")
            return super().attribute(trace)

    with pytest.raises(RuntimeError, match="boom"):
        parameter_randomisation(adapter, _image(), QUESTION, FailsWhenRandomised())
    _assert_same_state(adapter.model, before)


@pytest.mark.parametrize("layers", [0, 3, [0], [1, 5], []])
def test_steps_outside_the_model_are_rejected(tiny_adapter, layers):
    adapter = tiny_adapter(FAMILY)
    with pytest.raises(ValueError):
        parameter_randomisation(adapter, _image(), QUESTION, ConstantMap(), layers=layers)


def test_a_registered_method_changes_under_the_full_cascade(tiny_adapter):
    name = "raw_attention"
    if name not in xattr.methods.available():
        pytest.skip(f"{name} is not registered")
    adapter = tiny_adapter(FAMILY)
    before = _state(adapter.model)
    rows = parameter_randomisation(adapter, _image(3), QUESTION, name)
    _assert_same_state(adapter.model, before)
    assert rows[-1]["fraction_randomised"] == 1.0
    assert rows[-1]["spearman"] < 1.0


def test_reinitialisation_follows_the_usual_scheme():
    """Linear weights ~ N(0, std), biases 0, norm weights 1; the same seed gives the same draw."""
    torch.manual_seed(123)
    block = nn.Sequential(nn.Linear(64, 256), nn.LayerNorm(256), nn.Linear(256, 64, bias=False))
    with torch.no_grad():
        block[1].weight.fill_(3.0)
        block[1].bias.fill_(2.0)
    state = torch.random.get_rng_state()
    _reinitialise(block, std=0.02, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    weights = torch.cat([block[0].weight.flatten(), block[2].weight.flatten()]).detach()
    assert abs(float(weights.mean())) < 1e-3
    assert float(weights.std()) == pytest.approx(0.02, rel=0.02)
    assert not block[0].bias.any()
    assert torch.equal(block[1].weight, torch.ones(256)) and not block[1].bias.any()
    first = block[0].weight.clone()
    _reinitialise(block, std=0.02, seed=7)
    assert torch.equal(block[0].weight, first)
