"""Video input: `xattr.Video` (frames, files via PyAV, sampling) and the Qwen2-VL / Qwen2.5-VL
video prompt (frame pairs, one token grid each), per-frame maps and shares."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import xattr
from support.families import SPECS, visual_input_embeddings
from support.video import write_mp4
from xattr.explanation import Explanation
from xattr.images import ImageError
from xattr.methods import AttributionWarning
from xattr.methods.tokens import TokenSelectionWarning
from xattr.models.prompting import CaptureError

QUESTION = "what colour is the thing that moves?"
QWEN = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]  # two frames a token grid
VIDEO_FAMILIES = [*QWEN, "internvl", "llava_onevision"]  # the others: one frame a grid
PER_GRID = {"internvl": 1, "llava_onevision": 1}  # Qwen: 2


def frames(
    n: int, size: int = 112, block: dict[int, tuple[int, int]] | None = None, px: int = 28
) -> np.ndarray:
    """``n`` dark noisy frames [n, size, size, 3]; ``block`` {frame: (top, left)} paints a
    white ``px`` square there."""
    rng = np.random.default_rng(0)
    out = rng.integers(0, 40, size=(n, size, size, 3), dtype=np.uint8)
    for k, (top, left) in (block or {}).items():
        out[k, top : top + px, left : left + px] = 255
    return out


def test_video_samples_files_and_frames(tmp_path: Path):
    moving = np.zeros((16, 48, 64, 3), np.uint8)
    for i in range(16):
        moving[i, :, i * 4 : i * 4 + 8] = 255  # a bar moving right, 4 px a frame
    path = write_mp4(tmp_path / "bar.mp4", moving, rate=8)
    every = xattr.Video(path)
    assert len(every.frames()) == 16 and every.frames()[0].size == (64, 48)
    assert every.timestamps()[:3] == pytest.approx([0.0, 0.125, 0.25])
    at_2 = xattr.Video(path, fps=2)  # every 4th frame
    assert at_2.timestamps() == pytest.approx([0.0, 0.5, 1.0, 1.5])
    bar = [int(np.asarray(f)[24].argmax(axis=0)[0]) for f in at_2.frames()]  # the bar's left edge
    assert [abs(b - 16 * k) <= 1 for k, b in enumerate(bar)] == [True] * 4
    four = xattr.Video(path, num_frames=4)  # first and last kept, spread evenly
    assert four.timestamps() == pytest.approx([0.0, 0.625, 1.25, 1.875])
    listed = xattr.Video(list(moving[:3]), fps=4)
    assert listed.timestamps() == pytest.approx([0.0, 0.25, 0.5])
    assert xattr.Video(moving[:3]).timestamps() == pytest.approx([0.0, 0.5, 1.0])  # 2 fps default
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        xattr.Video(tmp_path / "nope.mp4").frames()
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(ImageError, match="bad.mp4"):
        xattr.Video(tmp_path / "bad.mp4").frames()
    with pytest.raises(ImageError, match="differ in size"):
        xattr.Video([moving[0], moving[0, :20]]).frames()
    with pytest.raises(ValueError, match="fps must be positive"):
        xattr.Video(path, fps=0)


@pytest.mark.parametrize("family", [*QWEN, "qwen3_5"])
def test_two_equal_frames_are_the_image(family, tiny_adapter):
    """A video of one frame shown twice is one frame pair whose patches are the image's (the
    image processor repeats an image over the temporal axis), one grid of the image's shape,
    and as many video tokens as the image has image tokens."""
    adapter = tiny_adapter(family)
    still = frames(1)
    video = adapter.prepare(xattr.Video(np.concatenate([still, still])), QUESTION)
    image = adapter.prepare(still[0], QUESTION)
    torch.testing.assert_close(video.inputs["pixel_values_videos"], image.inputs["pixel_values"])
    assert video.inputs["video_grid_thw"].tolist() == image.inputs["image_grid_thw"].tolist()
    assert [g.shape for g in video.layout.grids] == [g.shape for g in image.layout.grids]
    assert video.layout.positions.numel() == image.layout.positions.numel()
    ids = video.prompt_ids[video.layout.positions]
    assert set(ids.tolist()) == {adapter.model.config.video_token_id}
    kinds = video.inputs["mm_token_type_ids"][0]
    assert (
        set(kinds[video.layout.positions].tolist()) == {2}
        and int((kinds == 2).sum()) == ids.numel()
    )


@pytest.mark.parametrize("family", QWEN)
def test_frame_pairs_and_their_time(family, tiny_adapter):
    """Five frames: pairs (1, 2), (3, 4) and (5) padded with itself; Qwen2.5-VL spaces pairs
    by the seconds two frames span (4 fps: 0.5 s), Qwen2-VL by their index."""
    adapter = tiny_adapter(family)
    prepared = adapter.prepare(xattr.Video(frames(5), fps=4), QUESTION)
    grids = prepared.layout.grids
    assert [(g.image, g.frames, g.name) for g in grids] == [
        (0, (0, 2), "frames 1-2"), (1, (2, 4), "frames 3-4"), (2, (4, 5), "frame 5")
    ]  # fmt: skip
    assert prepared.inputs["video_grid_thw"][0, 0] == 3
    if family == "qwen2_5_vl":
        assert prepared.inputs["second_per_grid_ts"].tolist() == [0.5]
    else:
        assert "second_per_grid_ts" not in prepared.inputs


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_a_moving_block_moves_the_tokens_of_its_frames(family, tiny_adapter):
    """A white block in frame 3 only, on one token cell (second row, last column) of the
    grids: the visual input that changes most is that token of the grid showing frame 3
    (Qwen: pair 2; InternVL, LLaVA-OneVision after its 2 x 2 pooling: frame 3's own); the
    block in frame 1 on the last row, first column moves the change there in the first grid."""
    adapter = tiny_adapter(family)
    size = SPECS[family].native_size
    base = visual_input_embeddings(adapter, xattr.Video(frames(4, size)))
    rows, cols = adapter.prepare(xattr.Video(frames(4, size)), QUESTION).layout.grids[0].shape
    side = size // rows  # one token's pixels
    for frame, row, col in ((2, 1, cols - 1), (0, rows - 1, 0)):
        block = {frame: (row * side, col * side)}
        moved = visual_input_embeddings(adapter, xattr.Video(frames(4, size, block, side)))
        change = (moved - base).norm(dim=-1)  # [|V|]: rows x cols tokens per grid, in order
        top2 = change.topk(2).values
        expected = frame // PER_GRID.get(family, 2) * rows * cols + row * cols + col
        assert int(change.argmax()) == expected
        # by a clear margin (the towers' attention spreads a change to neighbours: SigLIP's
        # reaches 1.96x on OneVision's tiny tower)
        assert float(top2[0]) > 1.5 * float(top2[1])


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_every_trace_method_explains_a_video(family, tiny_adapter):
    adapter = tiny_adapter(family)
    video = xattr.Video(frames(5, SPECS[family].native_size))
    per = PER_GRID.get(family, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AttributionWarning)
        warnings.simplefilter("ignore", TokenSelectionWarning)
        out = xattr.explain(adapter, video, QUESTION, answer="red",
                            method=["glimpse", "tmme", "rollout", "raw_attention", "gradcam", "dexar"])  # fmt: skip
    for name, expl in out.items():
        assert expl.num_frames == 5 and expl.num_images == math.ceil(5 / per), name
        shares = expl.frame_shares
        if not torch.isnan(shares).any():
            assert math.isclose(float(shares.sum()), 1.0, abs_tol=1e-6), name
            assert float(shares[0]) == pytest.approx(float(expl.image_shares[0]) / per)
            assert float(shares[4]) == pytest.approx(float(expl.image_shares[4 // per]))
        torch.testing.assert_close(
            expl.frame_pixels((8, 8), frame=3), expl.visual_pixels((8, 8), image=3 // per)
        )
    if family not in QWEN:  # the pixel-mask path of video: Qwen's only, so far
        with pytest.raises(NotImplementedError, match=f"video is not built yet \\({family}"):
            xattr.explain(adapter, video, QUESTION, "igos", answer="red")


def test_frames_survive_save_and_load(tmp_path, tiny_adapter):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AttributionWarning)
        expl = xattr.explain(tiny_adapter("qwen2_5_vl"), xattr.Video(frames(3)), QUESTION,
                             "raw_attention", answer="red")  # fmt: skip
    back = Explanation.load(expl.save(tmp_path / "e"))
    assert [g.frames for g in back.grids] == [(0, 2), (2, 3)] and back.num_frames == 3


@pytest.mark.parametrize("family", ["llava", "idefics3", "glm4v"])
def test_families_without_video_refuse_it_by_name(family, tiny_adapter):
    with pytest.raises(CaptureError, match=f"not supported for {family}.*qwen2_5_vl"):
        tiny_adapter(family).prepare(xattr.Video(frames(2)), QUESTION)


def test_report_page_shows_every_frame_with_its_share(tiny_adapter):
    """A video's report page: one picture per frame, frame k drawn with its pair's map and
    labelled with its share (`frame_shares`)."""
    from xattr.report.data import page_data

    video = xattr.Video(frames(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AttributionWarning)
        expl = xattr.explain(
            tiny_adapter("qwen2_5_vl"), video, QUESTION, "raw_attention", answer="red"
        )
    page = page_data({"raw_attention": expl}, video.frames(), QUESTION)
    (method,) = page["methods"]
    assert len(method["images"]) == 3
    shares = [method["images"][k]["share"] for k in range(3)]
    assert shares == pytest.approx(expl.frame_shares.tolist())
    assert method["images"][1]["map"] == method["map"]  # frames 1 and 2: one pair, one map
    assert method["images"][2]["map"] != method["map"]


def test_internvl_frames_are_untiled_views_tagged_by_number(tiny_adapter):
    """InternVL: each frame is the one view a native-size image gets (its pixel_values and
    token count), tagged "Frame{i}: <img>...</img>" one line per frame, one grid per frame."""
    adapter = tiny_adapter("internvl")
    clip = frames(3, SPECS["internvl"].native_size)
    video = adapter.prepare(xattr.Video(clip), QUESTION)
    alone = [adapter.prepare(f, QUESTION) for f in clip]
    torch.testing.assert_close(
        video.inputs["pixel_values"], torch.cat([a.inputs["pixel_values"] for a in alone])
    )
    assert video.layout.positions.numel() == sum(a.layout.positions.numel() for a in alone)
    assert [(g.frames, g.name) for g in video.layout.grids] == [
        ((0, 1), "frame 1"), ((1, 2), "frame 2"), ((2, 3), "frame 3")
    ]  # fmt: skip
    assert all(f"Frame{i}: <img>" in video.text for i in (1, 2, 3))


def test_llava_onevision_frames_are_base_views_pooled_and_closed_by_a_newline(tiny_adapter):
    """LLaVA-OneVision: each frame is the base view a native-size image gets, its tokens
    pooled 2 x 2, and the video's block ends with one newline feature that is no visual token."""
    adapter = tiny_adapter("llava_onevision")
    clip = frames(3, SPECS["llava_onevision"].native_size)
    video = adapter.prepare(xattr.Video(clip), QUESTION)
    for k, frame in enumerate(clip):
        torch.testing.assert_close(
            video.inputs["pixel_values_videos"][0, k],
            adapter.prepare(frame, QUESTION).inputs["pixel_values"][0, 0],
        )
    image_side = adapter.prepare(clip[0], QUESTION).layout.grids[0].rows
    pooled = math.ceil(image_side / 2)
    assert [g.shape for g in video.layout.grids] == [(pooled, pooled)] * 3
    video_id = adapter.model.config.video_token_index
    blocks = int((video.prompt_ids == video_id).sum())
    assert blocks == 3 * pooled * pooled + 1 == video.layout.positions.numel() + 1
    last = int(torch.nonzero(video.prompt_ids == video_id).max())
    assert last not in video.layout.positions.tolist()  # the newline closes the video


def test_qwen3_vl_writes_each_pair_time_before_it(tiny_adapter):
    """Qwen3-VL: each frame pair's tokens follow ``<t seconds>``, t the mean time of the
    pair's frames (5 frames at 4 fps: 0.125, 0.625 and 1.0 for the last frame paired with
    itself, one decimal), then its own vision markers, as the processor writes them."""
    adapter = tiny_adapter("qwen3_vl")
    prepared = adapter.prepare(xattr.Video(frames(5), fps=4), QUESTION)
    pad, start = adapter.processor.video_token, adapter.processor.vision_start_token
    n = prepared.layout.grids[0].cells
    for t in ("0.1", "0.6", "1.0"):
        assert f"<{t} seconds>{start}{pad * n}{adapter.processor.vision_end_token}" in prepared.text
    assert prepared.text.count(" seconds>") == 3 and "second_per_grid_ts" not in prepared.inputs


def _grey_frames(n: int, size: int) -> np.ndarray:
    """Constant frames: blurring them changes nothing."""
    return np.full((n, size, size, 3), 90, np.uint8)


@pytest.mark.parametrize("space", ["processed", "image"])
def test_deletion_ranks_every_frame_cells(space, tiny_adapter):
    """Four frames, the last two constant (their blur is themselves): a map ranking pair 2
    (frames 3-4) first leaves the score at s_orig until frames 1-2 go; ranking pair 1 first
    reaches s_base once frames 1-2 are gone (half the cells)."""
    from xattr.metrics.faithfulness import DeletionInsertion

    adapter = tiny_adapter("qwen2_5_vl")
    size = SPECS["qwen2_5_vl"].native_size
    clip = np.concatenate([frames(2, size), _grey_frames(2, size)])
    video = xattr.Video(clip)
    answer = adapter.encode_answer("red circle")
    rows, cols = adapter.prepare(video, QUESTION).layout.grids[0].shape
    low, high = (
        torch.rand(rows, cols, generator=torch.Generator().manual_seed(0)),
        torch.full((rows, cols), 9.0),
    )
    metric = DeletionInsertion(
        fractions=[0, 0.25, 0.5, 0.75, 1.0], curves=["deletion"], space=space
    )
    boxes = [(0.0, 0.0, 1.0, 1.0)] * 4
    grey_first = metric.curves_for(
        adapter, video, QUESTION, answer, [low, low, high, high], region=boxes
    )
    assert grey_first.scores["deletion"][1:3] == pytest.approx([grey_first.s_orig] * 2, abs=1e-5)
    assert grey_first.s_orig != pytest.approx(grey_first.s_base, abs=1e-3)
    noisy_first = metric.curves_for(
        adapter, video, QUESTION, answer, [high, high, low, low], region=boxes
    )
    assert noisy_first.scores["deletion"][2] == pytest.approx(noisy_first.s_base, abs=1e-5)


def test_igos_optimises_one_mask_over_the_frames(tiny_adapter):
    """iGOS on four frames, the last two constant: one mask spans the frames side by side;
    the constant pair's blends change nothing, so its importance stays below pair 1's peak."""
    adapter = tiny_adapter("qwen2_5_vl")
    size = SPECS["qwen2_5_vl"].native_size
    clip = np.concatenate([frames(2, size, {0: (4, 4), 1: (4, 4)}, 20), _grey_frames(2, size)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AttributionWarning)
        warnings.simplefilter("ignore", TokenSelectionWarning)
        expl = xattr.explain(adapter, xattr.Video(clip), QUESTION, "igos", answer="red circle",
                             iterations=3, token_policy="all")  # fmt: skip
    assert [g.frames for g in expl.grids] == [(0, 2), (2, 4)]
    first, second = expl.visual_maps
    assert float(first.max()) > 0 and float(second.max()) < float(first.max())
    assert len(expl.meta["image_columns"]) == 5  # one strip column span per frame


@pytest.mark.parametrize("family", QWEN)
def test_each_frame_mask_reaches_its_own_frame(family, tiny_adapter):
    """Blending a video with its blurred copy under masks of ones on frames 1-2 and zeros on
    frames 3-5 gives the pixel_values_videos of the video whose last three frames are blurred."""
    from xattr.images import blur_image

    adapter = tiny_adapter(family)
    video = xattr.Video(frames(5, SPECS[family].native_size, {0: (0, 0), 3: (20, 20)}))
    prepared = adapter.prepare(video, QUESTION)
    blurred = adapter.prepare(video.blurred(), QUESTION)
    sizes = [adapter.processed_size(part) for part in prepared.parts]
    masks = [torch.full((1, *hw), 1.0 if k < 2 else 0.0) for k, hw in enumerate(sizes)]
    weight = adapter.mask_to_pixel_values(masks, prepared)[0]
    key = "pixel_values_videos"
    mixed = weight * prepared.inputs[key] + (1 - weight) * blurred.inputs[key]
    shown = video.with_frames([f if k < 2 else blur_image(f) for k, f in enumerate(video.frames())])
    torch.testing.assert_close(
        mixed, adapter.prepare(shown, QUESTION).inputs[key], rtol=0, atol=1e-6
    )
