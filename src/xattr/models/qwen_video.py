"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL video: frames merged two by two in time, one token grid per pair.

The vision tower reads a video as patches of ``temporal_patch_size`` (2) consecutive frames:
a frame pair becomes one grid of ``(h / m) x (w / m)`` merged tokens (``m`` the spatial merge),
so a map belongs to the pair, not to either frame (an odd last frame is paired with itself,
as the processor pads it). The prompt holds ``<|vision_start|>``, then every pair's tokens
pair after pair, then ``<|vision_end|>``. Qwen2.5-VL places pair ``g`` at time position
``g * tokens_per_second * second_per_grid_ts`` with ``second_per_grid_ts`` the seconds one
pair spans (`Video.timestamps`); Qwen2-VL at ``g``. Qwen3-VL (and Qwen3.5) writes each pair's
time in the text instead, ``<t seconds>`` then the pair's own vision markers and tokens
(`video_expansion`; the installed processor's replacement of the template's video token).

The frames go through the family's *image* processor one by one (resize, rescale,
normalise, patchify, which for one image repeats it over the temporal axis), and a pair's
patches take its two frames' temporal slices: what the video processor computes, except
that the image processor's pixel budget and resampling apply to each frame (the video
processor, which needs torchvision, is not used).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ..video import Video
from .prompting import CaptureError, PreparedInputs
from .video_prompt import frame_groups, tokenized, video_prepared, video_text


class QwenVideoMixin:
    """`prepare_video` for Qwen2-VL-style patch processors; mix in before `ModelAdapter`."""

    timed_video: ClassVar[bool] = False  # Qwen2.5-VL: pairs placed in time (second_per_grid_ts)

    def video_expansion(self, token: str, per_group: int, times: list[float]) -> str:
        """What the video placeholder becomes: every group's ``per_group`` tokens in a row
        (Qwen2-VL, Qwen2.5-VL; ``times``: each group's mean frame time in seconds)."""
        return token * (per_group * len(times))

    def prepare_video(self, video: Video, question: str) -> PreparedInputs:
        """The prompt of one video and a question, with one grid per frame pair (module doc)."""
        frames = video.frames()
        tp = int(self.model.config.vision_config.temporal_patch_size)  # type: ignore[attr-defined]
        m = int(self.model.config.vision_config.spatial_merge_size)  # type: ignore[attr-defined]
        # each frame prepared as an image: its patches here, and the pixel-mask path's parts
        parts = tuple(self.prepare(f, question) for f in frames)  # type: ignore[attr-defined]
        grids = {tuple(p.inputs["image_grid_thw"][0].tolist()) for p in parts}
        if len(grids) != 1:
            raise CaptureError(f"the frames were resized to different grids {sorted(grids)}")
        _, gh, gw = next(iter(grids))
        pixel_values = self.pair_frames([p.inputs["pixel_values"] for p in parts])
        groups = -(-len(frames) // tp)  # ceil: the last frame pads an odd count
        token = self.processor.video_token  # type: ignore[attr-defined]
        times = video.timestamps()
        padded = times + [times[-1]] * (-len(times) % tp)
        group_times = [(padded[i] + padded[i + tp - 1]) / 2 for i in range(0, len(padded), tp)]
        expansion = self.video_expansion(token, gh * gw // (m * m), group_times)
        text = video_text(self, question, token, expansion)
        inputs = tokenized(self, text)
        inputs["pixel_values_videos"] = pixel_values
        inputs["video_grid_thw"] = torch.tensor([[groups, gh, gw]])
        if self.timed_video:
            step = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 1.0
            inputs["second_per_grid_ts"] = torch.tensor([tp * step])
        grids = frame_groups(gh // m, gw // m, groups, tp, len(frames))
        video_id = int(self.model.config.video_token_id)  # type: ignore[attr-defined]
        prepared = video_prepared(self, inputs, video_id, grids, question, text, video)
        prepared.parts = parts  # the pixel-mask path edits frames and pairs them (join)
        return prepared

    def pair_frames(self, per_frame: list[Tensor]) -> Tensor:
        """Frames' image patches [..., n, C*tp*p*p] (each frame repeated over the temporal
        axis, as the image processor writes one image) -> the video's [..., G*n, C*tp*p*p]:
        each group's patches take its frames' temporal slices; an odd count repeats the last."""
        vision = self.model.config.vision_config  # type: ignore[attr-defined]
        tp, p = int(vision.temporal_patch_size), int(vision.patch_size)
        *lead, n, width = per_frame[0].shape
        slices = [
            f.reshape(*lead, n, width // (tp * p * p), tp, p * p).select(-2, 0) for f in per_frame
        ]
        while len(slices) % tp:
            slices.append(slices[-1])  # the processor pads with the last frame
        groups = [torch.stack(slices[i : i + tp], dim=-2) for i in range(0, len(slices), tp)]
        return torch.cat([g.reshape(*lead, n, width) for g in groups], dim=-2)

    def join_pixel_values(self, per_image: list[Tensor], prepared: PreparedInputs) -> Tensor:
        """A video's frames' weights [B, *pv_frame] -> its ``pixel_values_videos`` layout
        (`pair_frames`); several images as `PixelMaskMixin.join_pixel_values`."""
        if prepared.video is not None:
            return self.pair_frames(list(per_image))
        return super().join_pixel_values(per_image, prepared)  # type: ignore[misc]
