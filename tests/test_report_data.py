"""Report pages: the data they carry (maps, tokens, words, weights) and self-contained HTML."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from xattr import Explanation
from xattr.layout import Grid
from xattr.report import report_html
from xattr.report.data import (
    COMPOSED_SIDE,
    levels,
    map_data,
    method_view,
    page_data,
    prompt_words,
)
from xattr.report.html import render_index, script_json


def _decode(m: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(m["data"]), dtype=np.uint8).reshape(m["h"], m["w"])


def _expl(**kw) -> Explanation:
    g = torch.Generator().manual_seed(1)
    args = dict(
        method="glimpse",
        visual=torch.rand(3, 4, generator=g),
        answer_tokens=[" a", " red", " ball", "."],
        answer_pieces=["Ġa", "Ġred", "Ġball", "."],
        token_relevance=torch.tensor([0.1, 0.8, 0.4, -0.2]),
        prompt_tokens=["What", " col", "our", " is", " it", "?"],
        prompt_relevance=torch.tensor([0.1, 0.2, 0.3, 0.0, 0.5, 0.1]),
        token_maps=torch.rand(4, 3, 4, generator=g),
        token_mask=torch.tensor([True, True, True, False]),
        layer_maps=torch.rand(2, 3, 4, generator=g),
        meta={
            "layers": [5, 9],
            "layer_weights": torch.rand(4, 2, generator=g),
            "head_weights": torch.rand(4, 2, 3, generator=g),
            "depth_prior": torch.tensor([0.3, 0.7]),
            "warnings": ["something odd"],
        },
    )
    args.update(kw)
    return Explanation(**args)


def test_a_map_travels_as_its_min_max_scaled_bytes():
    values = torch.tensor([[0.0, 1.0], [3.0, 4.0]])
    m = map_data(values)
    assert (m["w"], m["h"], m["lo"], m["hi"]) == (2, 2, 0.0, 4.0)
    assert _decode(m).tolist() == [[0, 64], [191, 255]]
    assert _decode(map_data(torch.full((2, 3), 7.0))).max() == 0  # constant: no false peak


def test_one_full_grid_is_sent_at_its_own_size_and_several_are_composed():
    expl = _expl()
    view = method_view("glimpse", expl, (200, 100))
    assert (view["map"]["h"], view["map"]["w"]) == (3, 4)
    assert np.array_equal(_decode(view["map"]), _decode(map_data(expl.visual)))
    tiles = _expl(
        grids=[Grid(3, 4, box=(0.0, 0.0, 1.0, 0.5)), Grid(1, 2, box=(0.0, 0.5, 1.0, 1.0))],
        more_maps=[torch.tensor([[9.0, 0.0]])],
        more_token_maps=[torch.rand(4, 1, 2)],
        more_layer_maps=[torch.rand(2, 1, 2)],
    )
    view = method_view("glimpse", tiles, (200, 100))  # width 200, height 100
    assert (view["map"]["w"], view["map"]["h"]) == (COMPOSED_SIDE, COMPOSED_SIDE // 2)
    composed = tiles.visual_pixels((COMPOSED_SIDE // 2, COMPOSED_SIDE))
    assert np.array_equal(_decode(view["map"]), _decode(map_data(composed)))
    # the right tile's 9 (scaled by its cell area, 1/6) is the peak, left of its first centre
    assert _decode(view["map"])[:, COMPOSED_SIDE * 9 // 16].min() == 255


def test_tokens_carry_relevance_their_own_map_and_whether_they_counted():
    view = method_view("glimpse", _expl(), (40, 30))
    tokens = view["tokens"]
    assert [t["text"] for t in tokens] == [" a", " red", " ball", "."]
    assert [t["raw"] for t in tokens] == ["Ġa", "Ġred", "Ġball", "."]
    assert [t["level"] for t in tokens] == pytest.approx([0.125, 1.0, 0.5, 0.0])
    assert [t["kept"] for t in tokens] == [True, True, True, False]
    assert tokens[1]["map"] != tokens[2]["map"] and tokens[1]["map"]["w"] == 4
    assert method_view("x", _expl(token_maps=None), (4, 3))["tokens"][0]["map"] is None


def test_question_tokens_become_words_with_summed_saliency():
    words = prompt_words(  # display texts of byte-level pieces What Ġcol our Ġis ?
        ["What", " col", "our", " is", "?"], torch.tensor([0.1, 0.2, 0.3, 0.0, 0.4])
    )
    assert [w["text"] for w in words] == ["What", "colour", "is?"]
    assert [w["saliency"] for w in words] == pytest.approx([0.1, 0.5, 0.4])
    assert [w["level"] for w in words] == pytest.approx([0.2, 1.0, 0.8])
    plain = prompt_words(["what", " color", " ?"], None)  # a word-level tokenizer, no saliency
    assert [w["text"] for w in plain] == ["what", "color", "?"]
    assert [w["level"] for w in plain] == [0.0, 0.0, 0.0]
    # no spaces (Chinese): each token a word; the byte pieces of 红 (no text of their own)
    # join the token that completes the character
    cjk = prompt_words(["这是", "什么", "", "", "红", "？"], torch.tensor([1.0, 2, 0.5, 0.5, 1, 0]))
    assert [w["text"] for w in cjk] == ["这是", "什么", "红", "？"]
    assert [w["saliency"] for w in cjk] == pytest.approx([1.0, 2.0, 2.0, 0.0])


def test_levels():
    assert levels([2.0, -1.0, float("nan"), 4.0]) == [0.5, 0.0, 0.0, 1.0]
    assert levels([0.0, 0.0]) == [0.0, 0.0]


def test_layer_views_and_glimpse_weights():
    expl = _expl()
    view = method_view("glimpse", expl, (40, 30))
    shares = [float(m.sum()) for m in expl.layer_maps]
    assert [v["layer"] for v in view["layers"]] == [5, 9]
    assert [v["share"] for v in view["layers"]] == pytest.approx([s / sum(shares) for s in shares])
    w = view["weights"]
    assert w["layers"] == [5, 9] and np.shape(w["head_weights"]) == (4, 2, 3)
    assert np.shape(w["layer_weights"]) == (4, 2) and w["depth_prior"] == pytest.approx([0.3, 0.7])
    bare = method_view("rollout", _expl(layer_maps=None, meta={}), (40, 30))
    assert bare["layers"] == [] and bare["weights"] is None


def test_page_json_is_safe_inside_a_script_element():
    text = script_json({"a": "</script><script>alert(1)</script>", "b": float("nan"), "c": [1.5]})
    assert "</" not in text
    assert json.loads(text) == {"a": "</script><script>alert(1)</script>", "b": None, "c": [1.5]}


def test_the_page_is_one_file_that_needs_no_network():
    image = Image.new("RGB", (900, 300), (10, 200, 30))
    html = report_html({"glimpse": _expl(), "tmme": _expl(method="tmme")}, image, "What is it?")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert html.count('src="data:image/jpeg;base64,') == 1
    data = json.loads(re.search(r'id="xattr-data">(.*?)</script>', html, re.S).group(1))
    assert [m["name"] for m in data["methods"]] == ["glimpse", "tmme"]
    assert (data["image"]["width"], data["image"]["height"]) == (512, 171)
    assert "src" not in data["image"]  # the image is in the page once, in its <img>
    assert data["question"] == "What is it?" and "something odd" in html


def test_page_data_needs_an_explanation():
    with pytest.raises(ValueError, match="at least one"):
        page_data({}, Image.new("RGB", (4, 4)), "q")


def test_index_links_and_escapes():
    html = render_index(
        "run <x>", (["method", "nss"], [["glimpse", 0.5]]),
        (["sample", "question"], [[("s1", "samples/s1.html"), "<b>why</b>"], ["s2", "q"]]),
        notes=["2 samples skipped"],
    )  # fmt: skip
    assert '<a href="samples/s1.html">s1</a>' in html and "&lt;b&gt;why&lt;/b&gt;" in html
    assert "run &lt;x&gt;" in html and '<td class="num">0.5</td>' in html
    assert "2 samples skipped" in html and "Samples (2)" in html


def _two_images() -> Explanation:
    """Image 0: one 2x2 grid (positive mass 2); image 1: one 1x3 grid (positive mass 6)."""
    return _expl(
        visual=torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        token_maps=torch.tensor([[[1.0, 0.0], [0.0, 0.0]]] * 4),
        layer_maps=None,
        grids=[Grid(2, 2, image=0), Grid(1, 3, image=1)],
        more_maps=[torch.tensor([[3.0, -1.0, 3.0]])],
        more_token_maps=[torch.tensor([[[0.0, 2.0, 0.0]]] * 4)],
    )


def test_two_images_each_with_its_maps_on_one_scale_and_its_share():
    expl = _two_images()
    red, blue = Image.new("RGB", (40, 40), (200, 0, 0)), Image.new("RGB", (90, 30), (0, 0, 200))
    page = page_data({"glimpse": expl}, [red, blue], "Which one is red?")
    assert [(im["width"], im["height"]) for im in page["images"]] == [(40, 40), (90, 30)]
    assert page["image"] == page["images"][0]
    view = page["methods"][0]
    shares = [im["share"] for im in view["images"]]
    assert shares == pytest.approx([0.25, 0.75]) and shares == expl.image_shares.tolist()
    # one range over both images (-1 ... 3): image 0's 1 is (1 + 1) / 4 of the scale
    assert (
        (view["map"]["lo"], view["map"]["hi"])
        == (-1.0, 3.0)
        == (
            view["images"][1]["map"]["lo"],
            view["images"][1]["map"]["hi"],
        )
    )
    assert _decode(view["map"]).tolist() == [[128, 64], [64, 128]]
    assert _decode(view["images"][1]["map"]).tolist() == [[255, 0, 255]]
    # a token's own map on each image, on the two maps' common range 0 ... 2
    token = view["tokens"][1]["map"]
    assert _decode(token).tolist() == [[128, 0], [0, 0]]
    assert _decode(view["images"][1]["tokens"][1]).tolist() == [[0, 255, 0]]
    # both images are in the page once each, with a caption of its own
    html = report_html({"glimpse": expl}, [red, blue], "Which one is red?")
    assert html.count('src="data:image/jpeg;base64,') == 2
    assert 'id="share-0"' in html and 'id="share-1"' in html and 'id="heat"' not in html


def test_one_image_pages_carry_no_per_image_fields():
    page = page_data({"glimpse": _expl()}, Image.new("RGB", (4, 3)), "q")
    assert "images" not in page and "images" not in page["methods"][0]


def test_per_image_references_and_a_wrong_number_of_images():
    expl = _two_images()
    images = [Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8))]
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2] = True
    page = page_data({"glimpse": expl}, images, "q", references={"mask": [None, mask]})
    ref = page["references"][0]
    assert ref["name"] == "object mask" and ref["images"][0] is None
    assert _decode(ref["images"][1]).tolist() == [[255] * 4] * 2 + [[0] * 4] * 2
    with pytest.raises(ValueError, match="covers 2 image.* given 1"):
        page_data({"glimpse": expl}, images[0], "q")
