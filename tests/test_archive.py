"""Saved sample explanations: a compressed .npz that round-trips and loads without pickle."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from xattr import Explanation
from xattr.archive import load_sample, sample_path, save_sample, saved_samples
from xattr.layout import Grid


def _expl(method: str = "glimpse", scale: float = 1.0) -> Explanation:
    g = torch.Generator().manual_seed(0)
    return Explanation(
        method=method,
        visual=torch.rand(2, 3, generator=g) * scale,
        answer_tokens=["红", "。"],
        answer_pieces=["çº¢", "ãĢĤ"],
        token_relevance=torch.tensor([0.7, 0.1]),
        prompt_tokens=["what", " color"],
        prompt_pieces=["what", "Ġcolor"],
        prompt_relevance=torch.tensor([0.2, 0.8]),
        token_maps=torch.rand(2, 2, 3, generator=g),
        token_mask=torch.tensor([True, False]),
        layer_maps=torch.rand(4, 2, 3, generator=g).to(torch.bfloat16),
        meta={"answer": "red.", "layers": [0, 1, 2, 3], "head_weights": [[[0.5, 0.5]] * 4] * 2},
        grids=[Grid(2, 3, box=(0.0, 0.0, 0.5, 1.0)), Grid(1, 2, box=(0.5, 0.0, 1.0, 1.0))],
        more_maps=[torch.tensor([[1.0, 2.0]])],
        more_token_maps=[torch.rand(2, 1, 2, generator=g)],
        more_layer_maps=[torch.rand(4, 1, 2, generator=g)],
    )


def test_round_trip_keeps_every_tensor_grid_and_the_image(tmp_path):
    expl = _expl()
    image = Image.new("RGB", (900, 600), (200, 30, 30))
    path = save_sample(tmp_path / "s.npz", {"glimpse": expl}, image, {"question": "q?", "id": 3})
    back = load_sample(path)
    got = back.explanations["glimpse"]
    for key, tensor in expl.tensors().items():
        torch.testing.assert_close(
            got.tensors()[key], tensor.float() if key == "layer_maps" else tensor
        )
    assert got.grids == expl.grids and got.answer_tokens == expl.answer_tokens == ["红", "。"]
    assert (got.answer_pieces, got.prompt_tokens, got.prompt_pieces) == (
        expl.answer_pieces,
        expl.prompt_tokens,
        expl.prompt_pieces,
    )
    assert got.meta["head_weights"] == expl.meta["head_weights"]
    assert got.token_mask.dtype == torch.bool
    torch.testing.assert_close(got.token_pixels(1, (8, 8)), expl.token_pixels(1, (8, 8)))
    assert back.info == {"question": "q?", "id": 3}
    assert max(back.image.size) == 448 and back.image.size[0] > back.image.size[1]
    assert np.abs(np.asarray(back.image).astype(int) - (200, 30, 30)).max() < 8


def test_the_file_is_compressed_numpy_data_without_objects(tmp_path):
    path = save_sample(tmp_path / "s.npz", {"glimpse": _expl()}, Image.new("RGB", (8, 8)))
    with zipfile.ZipFile(path) as zf:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zf.infolist())
    with np.load(path, allow_pickle=False) as data:  # raises on any object array
        kinds = {data[k].dtype.kind for k in data.files}
    assert kinds <= {"f", "b", "u", "U"}, kinds


def test_an_object_array_is_refused_not_unpickled(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, sample=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_sample(bad)


def test_saving_again_adds_methods_and_replaces_rewritten_ones(tmp_path):
    path = tmp_path / "s.npz"
    save_sample(path, {"glimpse": _expl()}, Image.new("RGB", (8, 8)), {"question": "q"})
    save_sample(path, {"tmme": _expl("tmme")})
    save_sample(path, {"glimpse": _expl(scale=10.0)})
    back = load_sample(path)
    assert set(back.explanations) == {"glimpse", "tmme"}
    assert float(back.explanations["glimpse"].visual.max()) > 1.0  # the rewritten one
    assert back.info == {"question": "q"} and back.image is not None
    assert not list(tmp_path.glob("*.tmp"))


def test_sample_paths_are_safe_file_names(tmp_path):
    path = sample_path(tmp_path, "../a b/c")
    assert path.parent == tmp_path and path.name == ".._a_b_c.npz"
    save_sample(path, {"glimpse": _expl()})
    assert saved_samples(tmp_path) == [path]


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        load_sample(tmp_path / "nothing.npz")


def test_the_reference_maps_travel_with_the_sample_and_survive_a_merge(tmp_path):
    """A method named like the reference key cannot clash with it; a later save without
    references keeps them."""
    human = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    mask = np.zeros((6, 8), dtype=bool)
    mask[1:3, 2:5] = True
    path = save_sample(tmp_path / "s.npz", {"reference": _expl()}, None, {"id": 1},
                       references={"human_map": human, "mask": mask, "none": None})  # fmt: skip
    back = load_sample(path)
    assert set(back.explanations) == {"reference"} and set(back.references) == {"human_map", "mask"}
    np.testing.assert_array_equal(back.references["human_map"], human)
    assert back.references["mask"].dtype == bool
    np.testing.assert_array_equal(back.references["mask"], mask)
    save_sample(path, {"glimpse": _expl()})
    assert set(load_sample(path).references) == {"human_map", "mask"}


def test_two_images_their_per_image_references_and_shares_round_trip(tmp_path):
    """A prompt of two images keeps both (pixel-equal up to JPEG), per-image references
    (None where an image has none) and the maps' image shares; the first stays ``.image``."""
    expl = _expl()
    two = Explanation(
        method="glimpse",
        visual=torch.tensor([[1.0, 0.0], [0.0, 1.0]]),  # image 0: positive mass 2
        answer_tokens=["a"],
        token_relevance=torch.tensor([1.0]),
        grids=[Grid(2, 2, image=0), Grid(1, 3, image=1)],
        more_maps=[torch.tensor([[3.0, -1.0, 3.0]])],  # image 1: positive mass 6
    )
    red = Image.new("RGB", (60, 40), (220, 20, 20))
    blue = Image.new("RGB", (30, 50), (20, 20, 220))
    mask = np.zeros((5, 3), dtype=bool)
    mask[1:3, 1] = True
    human = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    path = save_sample(tmp_path / "two.npz", {"glimpse": two, "other": expl}, [red, blue],
                       {"id": 2}, references={"mask": [None, mask], "human_map": [human, None]})  # fmt: skip
    back = load_sample(path)
    assert back.num_images == 2 and back.image is back.images[0]
    for got, want in zip(back.images, (red, blue)):
        assert got.size == want.size
        diff = np.abs(np.asarray(got).astype(int) - np.asarray(want).astype(int)).max()
        assert diff < 8
    assert isinstance(back.prompt_images(), list)
    torch.testing.assert_close(
        back.explanations["glimpse"].image_shares, torch.tensor([0.25, 0.75])
    )
    assert back.references["mask"][0] is None and back.references["human_map"][1] is None
    np.testing.assert_array_equal(back.references["mask"][1], mask)
    np.testing.assert_array_equal(back.references["human_map"][0], human)
    # a later save without images keeps both; an old one-image file has images == [image]
    save_sample(path, {"rollout": _expl("rollout")})
    again = load_sample(path)
    assert again.num_images == 2 and set(again.explanations) == {"glimpse", "other", "rollout"}
    assert again.references["mask"][0] is None
    one = load_sample(save_sample(tmp_path / "one.npz", {"g": expl}, red))
    assert one.images == [one.image] and one.prompt_images() is one.image


def test_a_reference_list_with_no_map_at_all_is_left_out(tmp_path):
    path = save_sample(tmp_path / "s.npz", {"g": _expl()}, None, references={"mask": [None, None]})
    assert load_sample(path).references == {}


def test_a_run_keeps_a_two_image_sample_and_its_page_shows_both(tmp_path):
    """`keep_explanations` (what a run with save_explanations=true calls) saves both images of
    a sample and its per-image masks; the run report's page of it shows both images."""
    from xattr.data.sample import Sample
    from xattr.pipeline.evaluator import SampleResult
    from xattr.pipeline.module import keep_explanations
    from xattr.report.run import sample_page

    two = Explanation(
        method="glimpse",
        visual=torch.tensor([[1.0, 3.0]]),
        answer_tokens=["b"],
        token_relevance=torch.tensor([1.0]),
        grids=[Grid(1, 2, image=0), Grid(2, 1, image=1)],
        more_maps=[torch.tensor([[4.0], [0.0]])],
    )
    images = [Image.new("RGB", (20, 10), (250, 0, 0)), Image.new("RGB", (10, 20), (0, 250, 0))]
    mask = np.ones((20, 10), dtype=bool)
    sample = Sample("s/1", images, "Which is green?", answer="b", mask=[None, mask])
    path = keep_explanations(tmp_path, sample, SampleResult([], {"glimpse": two}, "b"), "given")
    back = load_sample(path)
    assert [im.size for im in back.images] == [(20, 10), (10, 20)]
    assert np.asarray(back.images[1])[..., 1].min() > 240  # the green one second
    assert back.references["mask"][0] is None and back.references["mask"][1].all()
    html = sample_page(back, source=path)
    assert html.count('src="data:image/jpeg;base64,') == 2 and 'id="share-1"' in html
