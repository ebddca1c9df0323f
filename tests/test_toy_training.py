"""The toy-LVLM training recipe: exact inputs, and a small retrain that learns (xattr.toy.train)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xattr.data.synthetic import SHAPES
from xattr.toy import SHIPPED
from xattr.toy.layer_profile import row_profile
from xattr.toy.model import build_toy, fast_vision, grow_toy
from xattr.toy.recipe import FAMILY_SIZES, Recipe, Stage, answer_tokens
from xattr.toy.task import (
    COLORS,
    KINDS,
    VOCABULARIES,
    TaskMix,
    chat_messages,
    draw_samples,
    make_batch,
)
from xattr.toy.train import train

FAMILIES = SHIPPED  # the families with a trained toy checkpoint
SMALL = dict(
    text_layers=2, text_hidden=64, text_heads=4, text_kv_heads=2, vision_layers=1, vision_hidden=32
)


@pytest.fixture(scope="module", params=FAMILIES)
def toy(request, tmp_path_factory):
    sizes = {**FAMILY_SIZES[request.param], **SMALL}
    return build_toy(request.param, 0, sizes, tmp_path_factory.mktemp(request.param))


def _processor_inputs(toy, items):
    proc = toy.processor
    texts = [
        proc.apply_chat_template(
            chat_messages(it.sample.question),
            tokenize=False,
            add_generation_prompt=True,
        )
        for it in items
    ]
    return proc(images=[it.image for it in items], text=texts, return_tensors="pt")


@pytest.mark.parametrize("kind", list(KINDS))
def test_fast_path_matches_processor_and_model(toy, kind):
    """Hand-built pixel_values, prompt ids and the batched forward equal the ordinary path."""
    items = draw_samples(TaskMix(), seed=3, start=0, n=5, kind=kind)
    if kind == "color":  # the absent-shape items ask about a shape not in the sample's question
        items = [it for it in items if it.asked in it.sample.question]
    batch = make_batch(items, toy.grid)
    inputs = _processor_inputs(toy, items)
    pixel_values = toy.pixel_values(batch.images)
    assert torch.allclose(pixel_values, inputs["pixel_values"], atol=1e-6)

    ids = toy.sequence_ids(kind, batch.word, answer_tokens(toy, batch))
    assert torch.equal(ids[:, :-2], inputs["input_ids"])
    full = dict(inputs)
    full["input_ids"] = ids
    full["attention_mask"] = torch.ones_like(ids)
    if "mm_token_type_ids" in full:
        pad = torch.zeros(ids.shape[0], 2, dtype=full["mm_token_type_ids"].dtype)
        full["mm_token_type_ids"] = torch.cat([full["mm_token_type_ids"], pad], 1)
    toy.model.eval()
    with torch.no_grad():
        n = toy.n_prompt(kind)
        ref = toy.model(**full).logits[:, n - 1 : n + 1]
        mine = toy.forward_answer(toy.visual_tokens(pixel_values, ids.shape[0]), ids)
        with fast_vision(toy):  # the training-time vision path: same maths
            fast = toy.forward_answer(toy.visual_tokens(pixel_values, ids.shape[0]), ids)
    assert torch.allclose(ref, mine, atol=1e-5)
    assert torch.allclose(ref, fast, atol=1e-4)
    # fast_vision restores the original methods
    assert all("forward" not in vars(m) for m in toy.model.modules())


def test_task_batches_are_seeded_and_grounded():
    """Same seed, same batch; every answerable question's answer is the asked shape's colour."""
    items = draw_samples(TaskMix(), 5, 0, 64)
    a = make_batch(items, grid=7)
    b = make_batch(draw_samples(TaskMix(), 5, 0, 64), grid=7)
    assert np.array_equal(a.images, b.images) and torch.equal(a.answer, b.answer)
    assert (a.answer == -1).any() and (a.answer >= 0).any()  # both kinds occur
    assert any(it.blurred for it in items)
    for it in items:
        if it.blurred:  # the blurred object is gone from the targets; the image changed there
            assert it.image is not it.sample.image
            assert np.asarray(it.image).tolist() != np.asarray(it.sample.image).tolist()
    for j in range(64):
        present = a.cover[j].sum(-1) > 0
        shapes = a.obj_shape[j][present].tolist()
        if a.answer[j] >= 0:
            k = shapes.index(int(a.word[j]))
            assert int(a.obj_color[j][present][k]) == int(a.answer[j])
            assert int(a.obj_shape[j][a.target[j]]) == int(a.word[j])
        else:
            assert int(a.word[j]) not in shapes and a.target[j] == -1
    assert set(a.word.tolist()) <= set(range(len(SHAPES)))
    # A cell's cover never exceeds 1 and objects' covers sum to their area / cell area.
    assert float(a.cover.sum(1).max()) <= 1.0 + 1e-6


@pytest.mark.parametrize("family", ["qwen2_5_vl"])
def test_small_retrain_learns(family, tmp_path):
    """A much smaller model, all three stages for a few dozen steps: losses drop, answers beat chance."""
    sizes = {**FAMILY_SIZES[family], **SMALL}
    easy = TaskMix(
        n_objects=(1,), weights=(1.0,), p_absent=0.0, p_blur_queried=0.0, p_blur_other=0.0
    )
    recipe = Recipe(
        family=family,
        seed=0,
        sizes=sizes,
        mix=easy,
        eval_mix=easy,
        eval_n=64,
        workers=0,
        stages=[
            Stage(
                "lm", steps=60, lr=3e-3, batch_size=16, warmup=10, shape_probe=1.0, source="oracle"
            ),
            Stage("align", steps=60, lr=3e-3, batch_size=16, warmup=5, cell_probe=1.0),
            Stage("joint", steps=30, lr=1e-3, batch_size=16, warmup=5),
        ],
    )
    out = tmp_path / "ckpt"
    toy, report = train(recipe, out, verbose=False)
    stages = {s["stage"]: s for s in report["stages"]}
    # The language model learns to read the colour off the (oracle) visual tokens.
    assert stages["lm(oracle)"]["final"]["loss"] < 0.5 * stages["lm(oracle)"]["first"]["loss"]
    # The vision tower learns to produce the cell embeddings (relative error of the regression).
    assert stages["align"]["final"]["align"] < 0.5 * stages["align"]["first"]["align"]
    # End to end from pixels, one object: well above chance (1/4).
    assert stages["joint"]["heldout"]["acc"] >= 0.6

    # The saved directory loads through the ordinary path and answers the same way.
    import xattr.models as models
    from xattr.toy.evaluate import answer_batch

    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        assert (out / name).is_file()
    adapter = models.load(family, out)
    items = draw_samples(easy, 999, 0, 16)
    batch = make_batch(items, toy.grid)
    answers = answer_batch(
        adapter, [it.image for it in items], [it.sample.question for it in items]
    )
    with torch.no_grad():
        vis = toy.visual_tokens(toy.pixel_values(batch.images), 16)
        logits = toy.forward_answer(
            vis, toy.sequence_ids("color", batch.word, toy.color_ids[batch.answer])
        )
    vocab = toy.processor.tokenizer.convert_ids_to_tokens(logits[:, 0].argmax(-1).tolist())
    assert answers == vocab  # the fast path and greedy generation through the adapter agree


def test_training_is_reproducible_from_the_seed(tmp_path):
    """Two runs of the same recipe and seed (data worker process included) give identical weights."""
    sizes = {**FAMILY_SIZES["llava"], **SMALL}
    stages = [
        Stage("lm", steps=4, lr=1e-3, batch_size=8, warmup=2, shape_probe=1.0, source="oracle"),
        Stage("align", steps=4, lr=1e-3, batch_size=8, warmup=2, cell_probe=1.0),
        Stage("lm", steps=3, lr=1e-3, batch_size=8, warmup=1, shape_probe=1.0),
        Stage("grow", grow_to=3, grow_bottom=1),  # the new layers' random parts are seeded too
        Stage("joint", steps=3, lr=1e-3, batch_size=8, warmup=1),
    ]
    states = []
    for run in range(2):
        recipe = Recipe(family="llava", seed=3, sizes=sizes, stages=stages, eval_n=8, workers=1)
        toy, _ = train(recipe, None, verbose=False, workdir=tmp_path / str(run))
        states.append({k: v.clone() for k, v in toy.model.state_dict().items()})
    assert states[0].keys() == states[1].keys()
    assert any(".layers.2." in k for k in states[0])  # grown from 2 to 3 layers
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("kind", ["left_color", "next_shape"])
def test_relational_batches_name_the_anchor_and_answer_the_target(kind):
    """A relational batch: the word names the anchor, the answer is the target's attribute."""
    mix = TaskMix(kinds=("color", kind), kind_weights=(1.0, 1.0))
    items = draw_samples(mix, 5, 0, 16, kind=kind)
    batch = make_batch(items, grid=7)
    assert batch.kind == kind
    spec = KINDS[kind]
    for j, it in enumerate(items):
        meta = it.sample.meta
        anchor, target = meta["objects"][meta["anchor"]], meta["objects"][meta["queried"]]
        assert it.sample.question == spec.question(anchor[spec.word])
        assert int(batch.target[j]) == meta["queried"] != meta["anchor"]
        answers = SHAPES if spec.answer == "shape" else COLORS
        assert answers[int(batch.answer[j])] == target[spec.answer] == it.sample.answer
    # Kinds per batch follow the mix's weights, seeded: both occur over a stream.
    drawn = {mix.batch_kind(5, start) for start in range(0, 64 * 40, 64)}
    assert drawn == {"color", kind}
    with pytest.raises(ValueError, match="one question kind"):
        make_batch(items[:2] + draw_samples(mix, 5, 0, 2, kind="color"), grid=7)


def test_counting_batches_answer_the_number_of_objects_of_the_asked_shape():
    """A counting batch: the word is the asked shape, the answer its count's word, no single target."""
    items = draw_samples(TaskMix(kinds=("count",)), 5, 0, 24, kind="count")
    batch = make_batch(items, grid=7)
    assert batch.kind == "count" and (batch.target == -1).all()
    for j, it in enumerate(items):
        shapes = [o["shape"] for o in it.sample.meta["objects"]]
        asked = SHAPES[int(batch.word[j])]
        assert it.sample.question == f"How many {asked}s are there?"
        assert VOCABULARIES["count"][int(batch.answer[j])] == it.sample.answer
        assert int(batch.answer[j]) + 1 == shapes.count(asked)
    assert set(batch.answer.tolist()) == {0, 1, 2}


def test_row_profile_against_hand_computed_values():
    """NSS and shares of a row: hand-computed on a 4-cell grid with two objects."""
    items = draw_samples(TaskMix(), 5, 0, 1, kind="left_color")
    batch = make_batch(items, grid=7)
    cover = torch.zeros(1, 3, 4)
    cover[0, 0, 0] = 1.0  # object 0 covers cell 0
    cover[0, 1, 3] = 0.5  # object 1 covers half of cell 3
    batch.cover, batch.target = cover, torch.tensor([0])
    row = torch.tensor([[[0.4, 0.2, 0.2, 0.2]]])  # [L=1, B=1, G=4]
    prof = row_profile(row, batch)
    z = (row - row.mean()) / row.std()
    assert torch.allclose(prof["nss"], z[..., 0])
    assert float(prof["share"]) == pytest.approx(0.4)
    assert float(prof["share_other"]) == pytest.approx(0.2)  # object 1 only (object 2 absent)


def test_grown_model_computes_what_the_small_one_did(tmp_path):
    """Block expansion: new layers start as the identity, so the grown model's logits are unchanged."""
    sizes = {**FAMILY_SIZES["qwen2_5_vl"], **SMALL}
    toy = build_toy("qwen2_5_vl", 0, sizes, tmp_path / "small")
    grown = grow_toy(toy, sizes, 5, bottom=2, seed=1, workdir=tmp_path / "grown")
    assert grown.model.config.text_config.num_hidden_layers == 5
    batch = make_batch(draw_samples(TaskMix(), 5, 0, 4, kind="next_shape"), toy.grid)
    ids = toy.sequence_ids("next_shape", batch.word, answer_tokens(toy, batch))
    with torch.no_grad():
        vis = toy.visual_tokens(toy.pixel_values(batch.images), 4)
        before = toy.forward_answer(vis, ids)
        after = grown.forward_answer(grown.visual_tokens(grown.pixel_values(batch.images), 4), ids)
    assert torch.allclose(before, after, atol=1e-5)
    old = toy.model.model.language_model.layers[1].self_attn.q_proj.weight
    assert torch.equal(grown.model.model.language_model.layers[3].self_attn.q_proj.weight, old)
    new = grown.model.model.language_model.layers[0]
    assert not new.self_attn.o_proj.weight.any() and new.self_attn.q_proj.weight.any()
