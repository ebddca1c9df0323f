"""SmolVLM's own rules: Idefics3's layout through SmolVLM's classes, frames with an unseen
strip (SmolVLM2's 384 / 14), the real SmolVLM2 tiling, the image-only processor."""

from __future__ import annotations

import json

import pytest

import xattr
from support.families import QUESTION
from test_family_idefics3 import check_packing, check_real_geometry, real_geometry
from test_family_llava_next import ramp_image
from xattr.toy.build import build_tiny_model

# (W, H) on the tests' model (long side -> 108 px, 36 px frames of 3 x 3 tokens)
SIZES = [(108, 108), (108, 36), (300, 200), (200, 300), (40, 30), (500, 20), (97, 61), (17, 9)]


@pytest.fixture(scope="module")
def seams_adapter(tmp_path_factory):
    """38 px frames of 4 px patches: 9 x 9 patches, the last 2 px of every frame unseen (like
    SmolVLM2-2.2B's 6 px of 384), so the stitched grid has gaps at the tile seams."""
    out = build_tiny_model(
        "smolvlm", tmp_path_factory.mktemp("smol38"), image_size=38, longest_edge_tiles=3
    )
    return xattr.models.load(out)


@pytest.mark.parametrize("size", SIZES)
def test_layout_matches_the_model_packing(tiny_adapter, size):
    """A cell off by one is 1/9 of the ramp or more here; LANCZOS errs below 0.01."""
    check_packing(tiny_adapter("smolvlm"), *size, atol=0.02, median=0.01)


@pytest.mark.parametrize("size", SIZES)
def test_layout_with_unseen_frame_strips_matches_the_model_packing(seams_adapter, size):
    """Boxes end at the last seen pixel; uniform stitched cells drift by at most half a seam."""
    layout = seams_adapter.prepare(ramp_image(*size), QUESTION).layout
    assert layout.grids[-1].box == (0.0, 0.0, 36 / 38, 36 / 38)
    check_packing(seams_adapter, *size, atol=0.03, median=0.015)


def _smolvlm_processor(ip_kwargs, tok, image_seq_len):
    from transformers import SmolVLMImageProcessorPil

    from xattr.models.smolvlm import SmolVLMImageOnlyProcessor

    ip = SmolVLMImageProcessorPil(**ip_kwargs)
    return SmolVLMImageOnlyProcessor(image_processor=ip, tokenizer=tok, image_seq_len=image_seq_len)


def test_real_geometry_tiles_and_tags_match_the_processor():
    """SmolVLM2-2.2B: 384 px frames, 14 px patches (27, 6 px unseen), shuffle 3, long side 1536."""
    adapter = real_geometry(_smolvlm_processor, 384, 14, 3, 1536)
    sizes = [(300, 200), (200, 300), (640, 480), (1536, 384)]
    expected = [[(27, 36), (9, 9)], [(36, 27), (9, 9)], [(27, 36), (9, 9)], [(9, 36), (9, 9)]]
    check_real_geometry(adapter, sizes, expected)
    layout = adapter.image_layout((300, 200))
    assert layout.tiles_box == (0.0, 0.0, (2 + 378 / 384) / 3, (3 + 378 / 384) / 4)


def test_the_saved_processor_is_an_ordinary_smolvlm_folder(tiny_model_dir):
    """Saved under the real class name; loaded back without torchvision or num2words."""
    folder = tiny_model_dir("smolvlm")
    saved = json.loads((folder / "processor_config.json").read_text())
    assert saved["processor_class"] == "SmolVLMProcessor"
    assert json.loads((folder / "tokenizer_config.json").read_text())["processor_class"] == (
        "SmolVLMProcessor"
    )
    adapter = xattr.models.load(folder)
    text = adapter.prompt_text(QUESTION)
    assert text == f"<|im_start|>User:<image>{QUESTION}<end_of_utterance>\nAssistant:"


def test_the_stand_in_loads_where_the_real_class_lacks_a_package(tiny_model_dir, monkeypatch):
    """With torchvision but without num2words the real processor raises ImportError."""
    from transformers import AutoProcessor

    from xattr.models import processors
    from xattr.models.smolvlm import SmolVLMImageOnlyProcessor

    def missing(*_args, **_kwargs):
        raise ImportError("Package `num2words` is required to run SmolVLM processor.")

    monkeypatch.setattr(processors, "is_torchvision_available", lambda: True)
    monkeypatch.setattr(AutoProcessor, "from_pretrained", missing)
    loaded = processors.load_processor(tiny_model_dir("smolvlm"))
    assert type(loaded) is SmolVLMImageOnlyProcessor
