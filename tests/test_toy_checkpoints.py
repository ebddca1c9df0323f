"""The shipped toy LVLMs ground their answers in the queried object (xattr.toy.checkpoint)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import xattr.toy
from xattr.toy.evaluate import HELDOUT_SEED, answer_batch, grounding_report

FAMILIES = xattr.toy.SHIPPED  # the families with a trained toy checkpoint
N_HELDOUT = 200


def test_checkpoint_helper_errors():
    with pytest.raises(ValueError, match="no shipped toy checkpoint"):
        xattr.toy.checkpoint("gpt2")


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_files_are_small_and_complete(family):
    path = xattr.toy.checkpoint(family)
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
    ):
        assert (path / name).is_file(), name
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert total < 10 * 2**20, f"{family} checkpoint is {total / 2**20:.1f} MB"
    assert json.loads((path / "config.json").read_text())["model_type"] == family


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_training_record(family):
    """The shipped weights come from the documented command: seed 0, well within 30 minutes,
    grown to the recipe's depth (at least 12 language layers)."""
    from xattr.toy.recipe import TEXT_LAYERS

    path = xattr.toy.checkpoint(family)
    record = json.loads((path / "training_report.json").read_text())
    assert record["recipe"]["family"] == family and record["recipe"]["seed"] == 0
    assert record["seconds"] < 30 * 60
    assert record["stages"][-1]["heldout"]["acc_color"] >= 0.95
    grown = [s for s in record["stages"] if s["stage"] == "grow"]
    assert [s["text_layers"] for s in grown] == [TEXT_LAYERS] and TEXT_LAYERS >= 12
    text = json.loads((path / "config.json").read_text())["text_config"]
    assert text["num_hidden_layers"] == TEXT_LAYERS


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_loads_through_from_pretrained(family):
    """Plain transformers loading (eager attention) gives the real class; greedy answers stop."""
    from transformers import LlavaForConditionalGeneration, Qwen2_5_VLForConditionalGeneration

    cls = {"qwen2_5_vl": Qwen2_5_VLForConditionalGeneration, "llava": LlavaForConditionalGeneration}
    model = cls[family].from_pretrained(xattr.toy.checkpoint(family), attn_implementation="eager")
    assert type(model) is cls[family]
    assert model.generation_config.eos_token_id is not None


@pytest.fixture(scope="module", params=FAMILIES)
def report(request):
    import xattr.models as models

    adapter = models.load(request.param, xattr.toy.checkpoint(request.param))
    return (
        request.param,
        adapter,
        grounding_report(adapter, n=N_HELDOUT, seed=HELDOUT_SEED, modes=("fill", "blur")),
    )


def test_heldout_accuracy(report):
    family, _, rep = report
    assert rep["accuracy"] >= 0.95, (family, rep)


@pytest.mark.parametrize("mode", ["fill", "blur"])
def test_queried_object_blurred_out_falls_to_chance(report, mode):
    """Filled with background or Gaussian-blurred, the asked object is gone: about 1/4 correct."""
    family, _, rep = report
    assert abs(rep[mode]["queried_blurred"] - rep["chance"]) <= 0.12, (family, mode, rep)


def test_relational_questions_beat_chance(report):
    """Relational questions (docs/toy.md: 39-51%, short of the 90% aimed at): at least 10
    points above chance (a quarter for "left of", a third for "next to")."""
    family, _, rep = report
    for kind in ("left_color", "next_shape"):
        assert rep["relational"][kind] >= rep["relational"]["chance"][kind] + 0.10, (family, rep)


def test_counting_questions_are_answered(report):
    """ "How many circles are there?" (docs/toy.md: 94-96% on 500): at least 90%, chance a third."""
    family, _, rep = report
    assert rep["relational"]["count"] >= 0.90, (family, rep)
    assert rep["relational"]["chance"]["count"] == pytest.approx(1 / 3)


def test_other_object_blurred_out_keeps_accuracy(report):
    family, _, rep = report
    for mode in ("fill", "blur"):
        assert rep[mode]["other_blurred"] >= 0.90, (family, mode, rep)


def test_greedy_generate_answers_one_word_then_stops(report):
    """Unbatched adapter generation matches the batched answers and stops after the colour."""
    from xattr.data.synthetic import PALETTE, generate_synthetic

    family, adapter, _ = report
    samples = generate_synthetic(4, HELDOUT_SEED)
    batched = answer_batch(adapter, [s.image for s in samples], [s.question for s in samples])
    for s, b in zip(samples, batched):
        prepared = adapter.prepare(s.image, s.question)
        with torch.no_grad():
            out = adapter.model.generate(**prepared.inputs, max_new_tokens=4, do_sample=False)
        new = out[0, prepared.prompt_ids.numel() :].tolist()
        assert len(new) == 2 and new[1] in adapter.stop_ids(), (family, new)
        word = adapter.tokenizer.decode(new[:1]).strip()
        assert word in PALETTE and word == b


@pytest.mark.parametrize("family", FAMILIES)
def test_grounding_lies_in_the_middle_layers(family):
    """The answer row's per-layer profile (xattr.toy.layer_profile, 96 held-out questions):
    its NSS peak, and the layer where it looks at the asked object more than at the others,
    both lie in the middle half of the layers (not the first or last quarter)."""
    from xattr.toy.layer_profile import layer_profile
    from xattr.toy.model import load_toy
    from xattr.toy.task import CLEAN_3

    toy = load_toy(xattr.toy.checkpoint(family), family)
    prof = layer_profile(toy, CLEAN_3, HELDOUT_SEED, 96, kind="color")
    n = len(prof["nss"])
    middle = range(n // 4, n - n // 4)
    selectivity = [a - b for a, b in zip(prof["share"], prof["share_other"])]
    assert int(np.argmax(prof["nss"])) in middle, prof
    assert int(np.argmax(selectivity)) in middle, prof
    assert max(selectivity) > 0.05 and prof["acc"] >= 0.95, prof


def test_checkpoint_helper_missing_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(xattr.toy, "CHECKPOINT_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m xattr.toy.train --family llava"):
        xattr.toy.checkpoint("llava")


def test_plain_import_exposes_the_checkpoint_helper():
    """`import xattr` alone is enough for the README's `xattr.toy.checkpoint(...)` line."""
    code = "import xattr; print(xattr.toy.checkpoint('qwen2_5_vl'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(xattr.toy.checkpoint("qwen2_5_vl"))
