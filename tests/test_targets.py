"""Targets: which answer tokens an explanation covers (`xattr.targets`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xattr
from support.families import QUESTION, SPECS
from xattr.explanation import Explanation
from xattr.targets import TargetError, resolve

# display texts as a byte-level tokenizer gives them: 红 split over two tokens ("" then "红")
CJK = ["这是", "", "红", "色", "。", "圆", "很", "大", "！"]
ENGLISH = ["It", "'s", " a", " red", " umbrella", ".", " The", " sky", " is", " blue", "."]


def _ranges(spans):
    return [(s.start, s.end, s.text) for s in spans]


def test_a_phrase_is_the_tokens_that_span_it():
    assert _ranges(resolve(ENGLISH, "red umbrella")) == [(3, 5, " red umbrella")]
    assert _ranges(resolve(ENGLISH, "Red Umbrella")) == [(3, 5, " red umbrella")]  # any case
    assert _ranges(resolve(ENGLISH, "umbr")) == [(4, 5, " umbrella")]  # a token partly inside
    assert _ranges(resolve(CJK, "红色")) == [(1, 4, "红色")]  # with the piece before 红
    with pytest.raises(TargetError, match="'green' is not in the answer \"It's a red umbrella"):
        resolve(ENGLISH, "green")


def test_a_token_range_and_the_whole_answer():
    assert _ranges(resolve(ENGLISH, (3, 5))) == [(3, 5, " red umbrella")]
    assert _ranges(resolve(ENGLISH, None)) == [(0, 11, "It's a red umbrella. The sky is blue.")]
    for bad in [(5, 3), (0, 12), (-1, 2)]:
        with pytest.raises(TargetError, match="not inside the answer's 11 tokens"):
            resolve(ENGLISH, bad)


def test_sentences_in_english_and_chinese():
    assert _ranges(resolve(ENGLISH, "sentences")) == [
        (0, 6, "It's a red umbrella."),
        (6, 11, " The sky is blue."),
    ]
    assert _ranges(resolve(CJK, "sentences")) == [(0, 5, "这是红色。"), (5, 9, "圆很大！")]


def test_the_final_answer_and_the_reasoning_of_a_thinking_model():
    texts = ["<think>", "\n", "It", " is", " red", ".", "\n", "</think>", "\n\n", "Red", "."]
    assert _ranges(resolve(texts, "reasoning")) == [(1, 7, "\nIt is red.\n")]
    assert _ranges(resolve(texts, "final")) == [(9, 11, "Red.")]
    assert _ranges(resolve(ENGLISH, "final")) == _ranges(resolve(ENGLISH, None))
    with pytest.raises(TargetError, match="no thinking section"):
        resolve(ENGLISH, "reasoning")


def test_glm_thinking_answers_final_part_is_inside_its_answer_tags():
    """GLM-4.1V-Thinking writes <think>…</think><answer>…</answer>: the tags are markup, the
    final part is the text inside; an unclosed <answer> (a cut answer) runs to the end."""
    texts = ["<think>", "It", " is", " red", ".", "</think>", "<answer>", "Red", ".", "</answer>"]
    assert _ranges(resolve(texts, "final")) == [(7, 9, "Red.")]
    assert _ranges(resolve(texts, "reasoning")) == [(1, 5, "It is red.")]
    cut = ["<think>", "red", "</think>", "\n", "<answer>", " Red", " circle"]
    assert _ranges(resolve(cut, "final")) == [(5, 7, " Red circle")]
    with pytest.raises(TargetError, match="nothing final"):
        resolve(["<think>", "red", "</think>", "<answer>", "</answer>"], "final")
    spaced = ["<think>", " red", " </think>", " <answer>", " red", " </answer>"]  # word-level
    assert _ranges(resolve(spaced, "reasoning")) == [(1, 2, " red")]
    assert _ranges(resolve(spaced, "final")) == [(4, 5, " red")]
    with pytest.raises(TargetError, match="thinking section is empty"):
        resolve(["<think>", "</think>", "Red"], "reasoning")


ANSWER = "red circle left of the blue square. the star is green."


@pytest.mark.parametrize("method", ["raw_attention", "rollout", "tmme"])
def test_a_targets_map_is_the_mean_of_its_tokens_maps(tiny_adapter, method):
    """For methods whose map is the mean of per-token maps over the kept tokens, the target's
    map is that mean over the target's kept tokens, by hand from the whole answer's maps."""
    adapter = tiny_adapter("qwen2_5_vl")
    image = SPECS["qwen2_5_vl"].image()
    whole = xattr.explain(adapter, image, QUESTION, method=method, answer=ANSWER,
                          return_token_maps=True)  # fmt: skip
    part = xattr.explain(
        adapter, image, QUESTION, method=method, answer=ANSWER, target="blue square"
    )
    (span,) = part.spans
    assert span.text.strip() == "blue square" and part.meta["target"] == "blue square"
    kept = [t for t in range(span.start, span.end) if bool(whole.token_mask[t])]
    torch.testing.assert_close(part.visual, whole.token_maps[kept].mean(0), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(span.visual_maps[0], part.visual)
    assert part.token_mask.tolist() == [span.start <= t < span.end and bool(whole.token_mask[t])
                                        for t in range(len(whole.answer_tokens))]  # fmt: skip


def test_sentences_give_one_map_each_and_the_whole_answers_map(tiny_adapter, tmp_path):
    adapter = tiny_adapter("qwen2_5_vl")
    image = SPECS["qwen2_5_vl"].image()
    methods = ["glimpse", "raw_attention"]
    by_sentence = xattr.explain(adapter, image, QUESTION, method=methods, answer=ANSWER,
                                target="sentences")  # fmt: skip
    whole = xattr.explain(adapter, image, QUESTION, method=methods, answer=ANSWER)
    for name in methods:
        expl = by_sentence[name]
        torch.testing.assert_close(expl.visual, whole[name].visual)  # the holistic map
        assert [s.text.strip() for s in expl.spans] == [
            "red circle left of the blue square .",
            "the star is green .",
        ]  # the word-level tokenizer's text: a space before each mark
        for span in expl.spans:  # each sentence's map is that sentence explained as a target
            alone = xattr.explain(adapter, image, QUESTION, method=name, answer=ANSWER,
                                  target=(span.start, span.end))  # fmt: skip
            torch.testing.assert_close(span.visual_maps[0], alone.visual)
            assert span.relevance == pytest.approx(
                float(whole[name].token_relevance[span.start : span.end].sum()), rel=1e-5
            )
    expl = by_sentence["glimpse"]
    expl.save(tmp_path / "g")
    back = Explanation.load(tmp_path / "g")
    assert [s.to_dict() for s in back.spans] == [s.to_dict() for s in expl.spans]
    torch.testing.assert_close(back.span_pixels(1, (8, 8)), expl.span_pixels(1, (8, 8)))


def test_a_target_not_in_the_answer_is_named(tiny_adapter):
    adapter = tiny_adapter("qwen2_5_vl")
    with pytest.raises(TargetError, match="'purple' is not in the answer 'red circle'"):
        xattr.explain(adapter, SPECS["qwen2_5_vl"].image(), QUESTION, answer="red circle",
                      target="purple")  # fmt: skip


def test_a_contrast_is_the_difference_of_two_logits_and_of_their_gradients(tiny_adapter):
    """Why "red" and not "blue": z = logit(red) − logit(blue) at the same position, so its
    gradient is the difference of the two answers' gradients there (computed apart, by hand)."""
    from xattr import targets

    adapter = tiny_adapter("qwen2_5_vl")
    image = SPECS["qwen2_5_vl"].image()
    contrasted = adapter.trace(image, QUESTION, answer="red circle")
    span = targets.contrast(contrasted, adapter, "blue", target="red")
    assert (span.start, span.end) == (0, 1)
    assert contrasted.meta["contrast"]["alternative"] == "blue circle"
    red = adapter.trace(image, QUESTION, answer="red circle")
    blue = adapter.trace(image, QUESTION, answer="blue circle")
    difference = float(red.meta["logits"][0] - blue.meta["logits"][0])
    assert contrasted.meta["contrast"]["logit_difference"] == pytest.approx(difference, rel=1e-5)
    got = contrasted.gradients_for([0])[0]  # [L, H, N, N]
    expected = red.gradients_for([0])[0] - blue.gradients_for([0])[0]
    # on the support (j <= i): above it, autograd's dz/dA[i, j] = (dz/do_i) v_j reads the
    # value of the answer token itself, "red" in one sequence and "blue" in the other
    scale = float(expected.abs().max())  # float32: errors of ~1e-7 on values up to ~0.3
    torch.testing.assert_close(got.tril(), expected.tril(), rtol=1e-5, atol=1e-5 * scale)
    assert contrasted.gradients_for([1]).abs().sum() > 0  # the other tokens keep their own z


def test_contrast_through_explain_and_methods_that_cannot(tiny_adapter):
    adapter = tiny_adapter("qwen2_5_vl")
    image = SPECS["qwen2_5_vl"].image()
    out = xattr.explain(adapter, image, QUESTION, method=["glimpse", "tmme", "gradcam"],
                        answer="red circle", target="red", contrast="blue")  # fmt: skip
    for expl in out.values():
        assert expl.meta["contrast"]["token"] == 0 and expl.meta["target"] == [0, 1]
        assert expl.token_mask.tolist() == [True, False] and torch.isfinite(expl.visual).all()
    whole = xattr.explain(adapter, image, QUESTION, method="tmme", answer="red circle",
                          target="red")  # fmt: skip
    assert not torch.allclose(out["tmme"].visual, whole.visual)  # a different quantity
    with pytest.raises(ValueError, match="raw_attention, rollout cannot explain a contrast"):
        xattr.explain(adapter, image, QUESTION, method=["rollout", "raw_attention", "tmme"],
                      answer="red circle", contrast="blue circle")  # fmt: skip
    with pytest.raises(TargetError, match="does not differ from the answer"):
        xattr.explain(adapter, image, QUESTION, method="tmme", answer="red circle",
                      contrast="red circle")  # fmt: skip


def test_the_pipeline_takes_a_target_and_a_contrast_per_sample_or_per_run(tiny_adapter):
    from xattr.data.sample import Sample
    from xattr.methods import instantiate
    from xattr.pipeline.evaluator import SampleEvaluator

    adapter = tiny_adapter("qwen2_5_vl")
    methods = {m: instantiate(m) for m in ("glimpse", "rollout")}
    image = SPECS["qwen2_5_vl"].image()
    run_wide = SampleEvaluator(adapter, methods, {}, answer="given", target="blue square")
    own = Sample("a", image, QUESTION, answer="red circle and blue square", target="red circle")
    result = run_wide.evaluate(own)  # the sample's own target wins
    assert {r["method"] for r in result.rows} == {"glimpse", "rollout"}
    assert result.explanations["glimpse"].spans[0].text.strip() == "red circle"
    plain = Sample("b", image, QUESTION, answer="red circle and blue square")
    assert run_wide.evaluate(plain).explanations["rollout"].spans[0].text.strip() == "blue square"
    versus = Sample("c", image, QUESTION, answer="red circle", target="red", contrast="green")
    result = run_wide.evaluate(versus)
    assert [r["method"] for r in result.rows] == ["glimpse"]
    assert result.failures["rollout"] == "ValueError: rollout cannot explain a contrast"
    assert result.explanations["glimpse"].meta["contrast"]["alternative"] == "green circle"


def test_a_run_with_explain_target_records_it_in_its_fingerprints(tmp_path, tiny_model_dir):
    from support.compose import compose_run
    from xattr.pipeline import run
    from xattr.pipeline.fingerprint import read_fingerprints

    cfg = compose_run(tmp_path, tiny_model_dir("qwen2_5_vl"), "method=[raw_attention]",
                      "metrics=agreement", "explain.target=final", samples=2)  # fmt: skip
    run(cfg)
    recorded = read_fingerprints(tmp_path / "run")
    config = recorded["raw_attention"]["config"]["explain"]
    assert config == {"target": "final", "contrast": None, "visual_dependence": False}


def test_visual_dependence_is_the_log_likelihood_ratio_and_a_column(tiny_adapter):
    """log p(y_t | image) − log p(y_t | blurred), by hand from two teacher-forced passes."""
    from xattr.data.sample import Sample
    from xattr.images import blur_image
    from xattr.methods import instantiate
    from xattr.pipeline.evaluator import SampleEvaluator

    adapter = tiny_adapter("qwen2_5_vl")
    image = SPECS["qwen2_5_vl"].image()
    expl = xattr.explain(adapter, image, QUESTION, method="tmme", answer="red circle",
                         visual_dependence=True)  # fmt: skip
    ids = adapter.encode_answer("red circle")
    with_image, blurred = adapter.answer_logprobs([image, blur_image(image, None)], QUESTION, ids)
    torch.testing.assert_close(expl.visual_dependence, (with_image - blurred).float())
    evaluator = SampleEvaluator(adapter, {"tmme": instantiate("tmme")}, {}, answer="given",
                                visual_dependence=True)  # fmt: skip
    (row,) = evaluator.evaluate(Sample("a", image, QUESTION, answer="red circle")).rows
    assert row["visual_dependence"] == pytest.approx(float(expl.visual_dependence.mean()), rel=1e-5)


def test_a_run_scores_each_sentence_against_the_human_map():
    """target=sentences: the row scores the whole answer's map, and <metric>_per_sentence is
    the mean of each sentence's map's score, by hand."""
    from xattr.data.synthetic import generate_synthetic
    from xattr.methods import instantiate
    from xattr.metrics import METRICS
    from xattr.pipeline.evaluator import SampleEvaluator

    adapter = xattr.models.load(xattr.toy.checkpoint("qwen2_5_vl"))
    sample = generate_synthetic(1, seed=3)[0]
    sample.answer = "the circle is red. the square is blue."
    nss = METRICS.get_class("nss")()
    evaluator = SampleEvaluator(adapter, {"rollout": instantiate("rollout")}, {"nss": nss},
                                answer="given", target="sentences")  # fmt: skip
    result = evaluator.evaluate(sample)
    (row,) = result.rows
    expl = result.explanations["rollout"]
    by_hand = [nss(s.visual_maps[0].numpy(), sample.human_map) for s in expl.spans]
    assert row["nss_per_sentence"] == pytest.approx(float(np.mean(by_hand)), rel=1e-6)
    assert row["nss"] == pytest.approx(nss(expl.visual.numpy(), sample.human_map), rel=1e-6)
    from xattr.metrics.stats import column_header

    assert column_header("nss_per_sentence") == "nss_per_sentence ↑"  # the metric's direction
