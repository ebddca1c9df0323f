"""Several images in one prompt: where each image's tokens are, what each method and the
explanation say of each image, and the families that take one image only."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from PIL import Image

import xattr
from support.families import FAMILIES, QUESTION, SPECS, visual_input_embeddings
from xattr.explanation import Explanation
from xattr.layout import Grid
from xattr.methods import AttributionWarning
from xattr.methods.tokens import TokenSelectionWarning
from xattr.models.prompting import CaptureError

ONE_IMAGE = {"paligemma", "mllama"}  # one `<image>` prefix; a cross-attention prefix
SEVERAL = [f for f in FAMILIES if f not in ONE_IMAGE]
TRACE_METHODS = ["glimpse", "tmme", "rollout", "raw_attention", "gradcam", "dexar"]


def two_images(family: str):
    """Two images of different shapes (so their token counts may differ), both noisy."""
    spec = SPECS[family]
    return spec.image(spec.geometry_size, seed=1), spec.image(seed=2)


@pytest.mark.parametrize("family", SEVERAL)
def test_each_image_tokens_carry_that_image_features(family, tiny_adapter):
    """The language model's input at image k's visual positions of the joint prompt is image
    k's own visual input when it is shown alone: the layout puts every image where its
    features are, and its grids are the ones it has alone (LLaVA-OneVision: the base view of
    the image padded to a square, what the model reads when a prompt shows several), tagged
    with its index."""
    adapter = tiny_adapter(family)
    a, b = two_images(family)
    joint = adapter.prepare([a, b], QUESTION)
    alone = [adapter.prepare(a, QUESTION), adapter.prepare(b, QUESTION)]
    expected = []
    for k, (image, part) in enumerate(zip((a, b), alone, strict=True)):
        mine = [g for g in joint.layout.grids if g.image == k]
        if family == "llava_onevision":  # one view: the image padded to a square, centred
            side = max(image.size)
            square = Image.new("RGB", (side, side), (127, 127, 127))  # SigLIP's 0.5 mean
            square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
            assert [g.shape for g in mine] == [part.layout.grids[0].shape]
            expected.append(visual_input_embeddings(adapter, square)[: mine[0].cells])
            continue
        kept = part.layout.grids
        assert [(g.shape, g.box, g.name) for g in mine] == [(g.shape, g.box, g.name) for g in kept]
        expected.append(visual_input_embeddings(adapter, image))
    assert [g.image for g in joint.layout.grids] == sorted(g.image for g in joint.layout.grids)
    embeds = visual_input_embeddings(adapter, [a, b])  # [|V_a| + |V_b|, D]
    expected = torch.cat(expected)
    assert embeds.shape == expected.shape
    scale = float(expected.abs().max())
    torch.testing.assert_close(embeds / scale, expected / scale, rtol=0, atol=1e-4)
    # the question is found once, after both images
    assert int(joint.prompt_index.min()) > int(joint.layout.positions.max()) or family in {"llama4"}


@pytest.mark.parametrize("family", sorted(ONE_IMAGE & set(FAMILIES)))
def test_one_image_families_refuse_two(family, tiny_adapter):
    adapter = tiny_adapter(family)
    image = SPECS[family].image()
    with pytest.raises(CaptureError, match=f"2 images in one prompt, but {family} takes at most 1"):
        adapter.prepare([image, image], QUESTION)


def test_empty_image_list_is_refused(tiny_adapter):
    with pytest.raises(ValueError, match="empty list of images"):
        tiny_adapter("qwen2_5_vl").prepare([], QUESTION)


def test_every_trace_method_explains_two_images(tiny_adapter):
    """One capture, every trace method: a map per grid of both images, composed per image."""
    adapter = tiny_adapter("llava_next")  # tiles and a base view per image
    a, b = two_images("llava_next")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AttributionWarning)
        warnings.simplefilter("ignore", TokenSelectionWarning)
        out = xattr.explain(adapter, [a, b], QUESTION, method=TRACE_METHODS, answer="red")
    for name, expl in out.items():
        assert expl.num_images == 2, name
        assert sum(torch.isfinite(m).all() for m in expl.visual_maps) == len(expl.grids), name
        shares = expl.image_shares
        assert shares.shape == (2,), name
        if any(float(m.max()) > 0 for m in expl.visual_maps):
            assert math.isclose(float(shares.sum()), 1.0, abs_tol=1e-6), name
        else:  # a random tiny model's Grad-CAM can be all zeros after its ReLU
            assert torch.isnan(shares).all(), name
        assert expl.visual_pixels((12, 16), image=1).shape == (12, 16)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_next", "internvl", "gemma3"])
def test_scoring_batches_prompts_of_several_images(family, tiny_adapter):
    """answer_logprobs on a batch of two-image prompts: each row is the prompt's own (a batch
    of one), and swapping the images changes it (the images are not merged away)."""
    adapter = tiny_adapter(family)
    a, b = two_images(family)
    ids = adapter.encode_answer("red circle")
    alone = adapter.answer_logprobs([[a, b]], QUESTION, ids)
    batch = adapter.answer_logprobs([[a, b], [a, b]], QUESTION, ids)
    torch.testing.assert_close(batch, alone.expand(2, -1), atol=1e-4, rtol=0)
    visual = adapter.answer_logprobs([[a, b], xattr.images.blur_images([a, b])], QUESTION, ids)
    assert not torch.allclose(visual[0], visual[1])


def test_image_shares_by_hand():
    """Image 0: a tile (sum 3) and a thumbnail (sum 1, negatives ignored); image 1: sum 4."""
    grids = [
        Grid(1, 2, image=0, box=(0.0, 0.0, 1.0, 0.5), name="tile"),
        Grid(1, 1, image=0, name="thumbnail"),
        Grid(2, 2, image=1),
    ]
    maps = [
        torch.tensor([[1.0, 2.0]]),
        torch.tensor([[1.0]]),
        torch.tensor([[1.0, 1.0], [3.0, -1.0]]),
    ]
    expl = Explanation("m", maps[0], [], torch.zeros(0), grids=grids, more_maps=maps[1:])
    assert expl.num_images == 2
    torch.testing.assert_close(expl.image_shares, torch.tensor([4 / 9, 5 / 9]))
    zero = Explanation("m", torch.zeros(1, 2), [], torch.zeros(0), grids=grids,
                       more_maps=[torch.zeros(1, 1), -torch.ones(2, 2)])  # fmt: skip
    assert torch.isnan(zero.image_shares).all()


def _grey(size: tuple[int, int]) -> Image.Image:
    """A constant image: its blur is itself, so perturbing it changes nothing."""
    return Image.new("RGB", size, (90, 90, 90))


@pytest.mark.parametrize("space", ["processed", "image"])
def test_faithfulness_ranks_the_cells_of_both_images(space, tiny_adapter):
    """Image 1 is constant (its baseline is itself). A map ranking image 1's cells first
    leaves the answer's score at s_orig until image 0's cells go; ranking image 0's first
    reaches s_base once all of image 0 is gone (half the cells: both images hold as many)."""
    from xattr.metrics.faithfulness import DeletionInsertion

    adapter = tiny_adapter("qwen2_5_vl")
    size = SPECS["qwen2_5_vl"].native_size
    images = [SPECS["qwen2_5_vl"].image(seed=3), _grey((size, size))]
    answer = adapter.encode_answer("red circle")
    grid = adapter.prepare(images[0], QUESTION).layout.grids[0].shape
    low, high = torch.rand(grid, generator=torch.Generator().manual_seed(0)), torch.full(grid, 9.0)
    metric = DeletionInsertion(
        fractions=[0, 0.25, 0.5, 0.75, 1.0], curves=["deletion"], space=space
    )
    boxes = [(0.0, 0.0, 1.0, 1.0)] * 2
    grey_first = metric.curves_for(adapter, images, QUESTION, answer, [low, high], region=boxes)
    deletion = grey_first.scores["deletion"]
    assert deletion[1] == pytest.approx(grey_first.s_orig, abs=1e-5)
    assert deletion[2] == pytest.approx(grey_first.s_orig, abs=1e-5)
    assert grey_first.s_orig != pytest.approx(grey_first.s_base, abs=1e-3)
    noisy_first = metric.curves_for(adapter, images, QUESTION, answer, [high, low], region=boxes)
    assert noisy_first.scores["deletion"][2] == pytest.approx(noisy_first.s_base, abs=1e-5)
    with pytest.raises(ValueError, match="2 image"):
        metric.curves_for(adapter, images, QUESTION, answer, low)


def test_igos_optimises_one_mask_over_both_images(tiny_adapter):
    """iGOS on two images: a map per grid of each; image 1 is constant (its blur is itself),
    so no blend of it changes the answer and its importance stays below image 0's peak."""
    adapter = tiny_adapter("qwen2_5_vl")
    size = SPECS["qwen2_5_vl"].native_size
    images = [SPECS["qwen2_5_vl"].image(seed=3, block=(4, 4, 20, 20)), _grey((size * 2, size))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AttributionWarning)
        warnings.simplefilter("ignore", TokenSelectionWarning)
        expl = xattr.explain(adapter, images, QUESTION, "igos", answer="red circle",
                             iterations=3, token_policy="all")  # fmt: skip
    assert [g.image for g in expl.grids] == [0, 1]
    a, b = expl.visual_maps
    assert float(a.max()) > 0, "the noisy image's blends change the answer"
    assert float(b.max()) < float(a.max())
    columns = expl.meta["image_columns"]
    assert len(columns) == 3 and columns[-1] == expl.meta["processed_size"][1]
    assert columns[2] - columns[1] > 1.5 * (columns[1] - columns[0])  # image 1 is twice as wide


@pytest.mark.parametrize("family", SEVERAL)
def test_each_image_mask_reaches_its_own_pixel_values(family, tiny_adapter):
    """Blending [a, b] with its blurred copy under a mask of ones on a and zeros on b gives
    the pixel_values the processor makes of [a, blurred b]: each image's mask reaches that
    image's pixels, wherever the processor put them (or the family refuses by name)."""
    adapter = tiny_adapter(family)
    a, b = two_images(family)
    joint = adapter.prepare([a, b], QUESTION)
    blurred = adapter.prepare(xattr.images.blur_images([a, b]), QUESTION)
    sizes = [adapter.processed_size(part) for part in joint.parts]
    masks = [torch.ones(1, *sizes[0]), torch.zeros(1, *sizes[1])]
    try:
        weight = adapter.mask_to_pixel_values(masks, joint)[0]
    except NotImplementedError as err:
        assert family in str(err) and "one image per prompt" in str(err)
        pytest.skip(f"{family} packs several images' pixel_values otherwise")
    pv, pv_blur = joint.inputs["pixel_values"], blurred.inputs["pixel_values"]
    expected = adapter.prepare([a, xattr.images.blur_image(b)], QUESTION).inputs["pixel_values"]
    torch.testing.assert_close(weight * pv + (1 - weight) * pv_blur, expected, rtol=0, atol=1e-6)
