"""`xattr.models.load` as users call it: a local checkpoint folder by keyword, positionally,
with a matching or a mismatching family, and through a model config with ``family: null``."""

from __future__ import annotations

import warnings

import pytest
from hydra import compose, initialize_config_dir

import xattr
from support.compose import CONF
from xattr.models import CaptureError
from xattr.pipeline import register_resolvers
from xattr.pipeline.run import instantiate


@pytest.mark.parametrize("call", ["positional", "keyword"])
def test_a_checkpoint_folder_loads_with_the_family_read_from_it(tiny_model_dir, call):
    folder = tiny_model_dir("llava")
    adapter = xattr.models.load(folder) if call == "positional" else xattr.models.load(path=folder)
    assert adapter.family == "llava"


def test_a_named_family_that_matches_loads(tiny_model_dir):
    assert xattr.models.load("llava", tiny_model_dir("llava")).family == "llava"
    assert xattr.models.load(family="llava", path=tiny_model_dir("llava")).family == "llava"


def test_a_family_that_another_adapter_owns_is_refused_by_name(tiny_model_dir):
    """A Qwen2.5-VL config pointed at a LLaVA folder: refused before the weights load."""
    folder = tiny_model_dir("llava")
    with pytest.raises(CaptureError) as caught:
        xattr.models.load(family="qwen2_5_vl", path=folder)
    message = str(caught.value)
    assert f"{folder} is a 'llava' checkpoint" in message
    assert "the 'llava' family loads, not 'qwen2_5_vl'" in message


def test_a_model_config_with_a_null_family_reads_it_from_the_folder(tiny_model_dir):
    register_resolvers()
    folder = tiny_model_dir("llava")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train_free_eval",
            overrides=[
                "model=llava_1_5_7b",
                "model.family=null",
                f"model.path={folder}",
                "model.dtype=float32",
                "model.device=cpu",
            ],
        )
    assert instantiate(cfg.model).family == "llava"


def test_a_generated_answer_cut_by_max_new_tokens_says_so(tiny_model_dir):
    from PIL import Image

    from xattr.models import AnswerCutWarning

    image = Image.new("RGB", (64, 64), "gray")
    short = xattr.models.load(tiny_model_dir("llava"), max_new_tokens=1)
    with pytest.warns(
        AnswerCutWarning, match="reached max_new_tokens=1 without an end-of-turn"
    ) as caught:
        expl = xattr.explain(short, image, "What color is the circle?", method="rollout")
    assert expl.meta["answer_cut"] and len(expl.answer_tokens) == 1
    assert caught[0].filename == __file__  # the warning names the user's line, not xattr's
    prepared = short.prepare(image, "What color is the circle?")
    with pytest.warns(AnswerCutWarning) as caught:
        short.generate(prepared)  # through torch.no_grad()'s wrapper: still the user's line
    assert caught[0].filename == __file__


def test_max_new_tokens_is_a_model_config_key():
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train_free_eval", overrides=["model.max_new_tokens=5"])
    assert instantiate(cfg.model).max_new_tokens == 5


def test_loading_prints_no_weight_loading_bar(tiny_model_dir, capfd):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # a fresh Python session's default
    xattr.models.load(tiny_model_dir("llava"))
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err + captured.out
    assert hf_logging.is_progress_bar_enabled()  # the user's setting is left as it was


def test_a_huge_image_gets_a_word_about_its_cost(tiny_model_dir):
    from PIL import Image

    from xattr.models.prompting import LARGE_IMAGE_PIXELS, LargeImageWarning

    adapter = xattr.models.load(tiny_model_dir("llava"))
    with pytest.warns(LargeImageWarning, match=r"a 5000x4000 image \(20 MP\): the processor"):
        adapter.prepare(Image.new("RGB", (5000, 4000), "gray"), "What color is it?")
    assert 5000 * 4000 > LARGE_IMAGE_PIXELS > 640 * 480
    with warnings.catch_warnings():
        warnings.simplefilter("error", LargeImageWarning)
        adapter.prepare(Image.new("RGB", (640, 480), "gray"), "What color is it?")


def test_an_unknown_family_names_the_nearest(tiny_model_dir):
    with pytest.raises(KeyError, match=r"unknown model family 'lava' \(did you mean 'llava'\?\)"):
        xattr.models.load("lava", tiny_model_dir("llava"))


def test_every_shipped_model_config_names_a_registered_family_and_a_path():
    import yaml

    for path in sorted((CONF / "model").glob("*.yaml")):
        conf = yaml.safe_load(path.read_text())
        assert conf["_target_"] == "xattr.models.load", path.name
        assert conf["family"] in xattr.models.available(), path.name
        assert conf["path"], path.name
