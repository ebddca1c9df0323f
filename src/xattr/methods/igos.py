"""LVLM iGOS+ / iGOS++ (SPEC §5): optimise a perturbation mask so that deleting the masked
region lowers, and inserting it raises, the teacher-forced log-likelihood of the answer.

Following the public iGOS++ code and its LVLM extension (lvlm-igos-summary.txt):

- Baseline: a strong Gaussian blur of the image (`images.blur_image`). Blends are made in the
  processor's ``pixel_values`` space through `ModelAdapter.masked_answer_logprobs`
  (blending processed tensors = processing the blended image, up to resampling).
- Masks live on a coarse ``mask_size`` grid (public default 32, clipped to the processed
  size) over the image's mask box (`PixelMaskMixin.mask_box`, the part the views see) and
  are upsampled bilinearly to the processed size (the mask box at the finest view's
  resolution, `processed_size`); every view of the image (a tile, the thumbnail, a crop, or
  the one resized image) sees that mask over its own box (`views.sample_mask`). With one
  view the processed size is that view's and the blend is the public code's. As in the
  public code both masks hold **0 on important pixels**: deletion shows
  ``image * M + blur * (1 - M)``, insertion ``blur * M + image * (1 - M)``.
- Score ``s(x) = sum_t log p(y_t | x)`` over the selected answer tokens (``token_policy``,
  default "visual": the likelihood-ratio selection of `tokens`).
- Integrated gradients: each term averages ``s`` over ``ig_steps`` blends ``alpha M``,
  ``alpha = k / ig_steps``, with Gaussian noise (std ``noise`` in ``pixel_values`` units).
- ``variant="igos++"``: deletion mask D and insertion mask I, objective
  ``(S_del(D I) - S_ins(D I) + S_del(D) - S_ins(I)) / 2 + R(D I)``; ``"igos+"``: one mask M,
  ``S_del(M) - S_ins(M) + R(M)``. ``R(M) = l1 mean|1 - M| + tv BTV(M) + l2_i sum (1 - M)^2``
  with the edge-aware (bilateral) total variation BTV of the public code and a decaying
  ``l2_i = l2 exp(-l2_decay i (i + 1) / 2)`` (the public code's repeated decay).
- Nesterov momentum ``e = i / (i + momentum)``, step ``lr``, masks clamped to [0, 1].

Ours: masks start at ``init`` (1 = nothing deleted) everywhere; the bilateral weights
``exp(-d^2 / tv_sigma)`` use the channel mean of neighbouring processed pixel differences
(on `canvas_image`: the finest view's pixels over the mask box);
the four integrated-gradient terms of one iteration are evaluated in shared batches of
``batch_size`` blends (one backward per batch; the gradient equals the public code's four
separate backward calls). The visual map is the final importance ``1 - D I`` (or ``1 - M``)
area-averaged over each cell of every token grid, each grid on its own box. Token relevance is
``log p(y_t | image) - log p(y_t | blurred)``.

Several images in one prompt (`Strip`; a video's frames are its images, and a grid that
shows several frames, a Qwen frame pair, takes the mean of their importance): their mask
boxes lie side by side at the tallest
one's processed height, each keeping its aspect; one mask of ``mask_size`` rows and
``mask_size`` columns per image spans them (one regulariser: the total variation meets
across an image boundary in one column pair, whose processed pixels usually differ, so its
edge weight is small), every image's views see its own columns over its own box, and every
image is blurred for the baseline.

Cost per iteration: ``4 * ig_steps`` (iGOS++) or ``2 * ig_steps`` (iGOS+) forward and
backward passes through the whole model, plus 2 forward passes for the token scores;
reported per sample in ``meta["forward_passes"]`` and ``meta["backward_passes"]`` (one pass =
one image through the model, whatever the batching) with the objective per iteration in
``meta["objective"]``.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..explanation import Explanation
from ..images import Region, blur_images
from ..layout import Grid
from ..trace import Trace, TraceError
from ..views import PixelView, sample_mask
from .base import (
    AttributionWarning,
    Attributor,
    Needs,
    hparam,
    non_negative,
    positive,
    unit_interval,
)
from .packaging import make_explanation
from .tokens import (
    POLICIES,
    answer_ids,
    model_context,
    policy_needs,
    select_tokens,
    visual_logprobs,
)

VARIANTS = ("igos++", "igos+")


class IGOS(Attributor, name="igos"):
    """LVLM iGOS++ (deletion x insertion masks) or iGOS+ (one mask) on a blurred baseline."""

    requires = Needs(attentions=False, model=True)
    variant: str = hparam(
        "igos++", choices=VARIANTS, doc="igos++ (deletion and insertion masks) | igos+ (one mask)"
    )
    mask_size: int = hparam(
        32,
        check=positive,
        doc="coarse mask grid side, clipped to the processed image",
    )
    iterations: int = hparam(15, check=positive, doc="NAG steps")
    ig_steps: int = hparam(10, check=positive, doc="integrated-gradient blends per term")
    lr: float = hparam(10.0, check=positive, doc="NAG step size")
    momentum: float = hparam(5.0, check=non_negative, doc="NAG: e = i / (i + momentum)")
    l1: float = hparam(1.0, check=non_negative, doc="weight of mean |1 - M|")
    l2: float = hparam(0.1, check=non_negative, doc="weight of sum (1 - M)^2, decayed")
    l2_decay: float = hparam(1.0, check=non_negative)
    tv: float = hparam(
        10.0,
        check=non_negative,
        doc="weight of the edge-aware total variation",
    )
    tv_beta: float = hparam(2.0, check=positive, doc="TV exponent")
    tv_sigma: float = hparam(0.01, check=positive, doc="bilateral weight exp(-d^2 / tv_sigma)")
    noise: float = hparam(0.2, check=non_negative, doc="std of the noise added to each blend")
    blur_radius: float | None = hparam(
        None, doc="baseline blur radius in pixels (None: 1/10 of the long side)"
    )
    token_policy: str = hparam(
        "visual", choices=POLICIES, needs=policy_needs, doc="tokens whose log-prob is scored"
    )
    threshold: float = hparam(1.0, doc='"visual": keep t if log p - log p_blur > threshold')
    init: float = hparam(1.0, check=unit_interval, doc="initial mask value")
    batch_size: int = hparam(8, check=positive, doc="blends per forward/backward call")
    seed: int = hparam(0, doc="noise seed")

    # ------------------------------------------------------------------ main loop
    @torch.enable_grad()  # callers (the evaluation's test loop) may run in no_grad
    def attribute(self, trace: Trace) -> Explanation:
        """Optimise the mask(s) with NAG for ``iterations`` steps and pool 1 - M onto the token grid."""
        context = model_context(trace, "igos")
        adapter, image, question = context.adapter, context.image, context.question
        prepared = adapter.prepare(image, question)
        baseline = adapter.prepare(blur_images(image, self.blur_radius), question)
        prefix = int(trace.meta.get("visual_prefix", 0))  # image tokens outside the sequence
        if prepared.prompt_ids.numel() != int(trace.answer_positions[0]) - prefix:
            raise TraceError(
                "the trace's prompt differs from the re-processed one; explain the same image"
            )
        answer = answer_ids(trace)  # [T]
        logp = visual_logprobs(trace, self.blur_radius)  # [2, T] image, blurred
        selected = select_tokens(
            trace, self.token_policy, threshold=self.threshold, blur_radius=self.blur_radius
        )  # [T]
        weights = selected.float()  # [T]

        # families without the pixel-mask path fail here, with their own message
        strip = Strip.of(adapter, prepared)
        height, width = strip.size  # the mask box(es) at the finest view's resolution
        size = (min(self.mask_size, height), min(self.mask_size * len(strip.boxes), width))
        pixels = strip.canvas(adapter, prepared)  # [C, H, W]
        edges = _edge_weights(pixels.detach().float().cpu(), self.tv_sigma)
        n_masks = 2 if self.variant == "igos++" else 1
        masks = torch.full((n_masks, *size), float(self.init)).requires_grad_(True)  # [n, h, w]
        generator = torch.Generator().manual_seed(self.seed)
        counts = {"forward_passes": 2, "backward_passes": 0, "model_calls": 1}
        objective: list[float] = []
        previous = masks.detach().clone()  # NAG's previous look-ahead point
        for i in range(self.iterations):
            grads, value = self._model_terms(
                adapter, prepared, baseline, answer, weights, masks, strip, generator, counts
            )
            reg = self._regulariser(masks, (height, width), edges, i)
            (reg_grad,) = torch.autograd.grad(reg, masks)
            objective.append(value + float(reg.detach()))
            with torch.no_grad():  # Nesterov momentum, then clamp
                step = masks - self.lr * (grads + reg_grad)
                masks.copy_(step + (i / (i + self.momentum)) * (step - previous)).clamp_(0, 1)
                previous = step
        final = masks.detach().prod(dim=0)  # [h, w] D * I (or M)
        box = strip.boxes[0]
        if len(strip.boxes) == 1:
            pooled = [_pool_onto(1 - final, box, (height, width), g) for g in trace.layout.grids]
        else:  # each image's columns of the strip, at the strip's resolution
            parts = strip.split(1 - _upsample(final[None], strip.size)[0])
            pooled = []
            for g in trace.layout.grids:  # a video's grid: the mean over the frames it shows
                shown = range(*g.frames) if g.frames is not None else [g.image]
                pooled.append(torch.stack([
                    _pool_onto(parts[k], strip.boxes[k], tuple(parts[k].shape), g) for k in shown
                ]).mean(dim=0))  # fmt: skip
        visual = torch.cat([p.reshape(-1) for p in pooled])
        # [|V|] each grid's cells: the area average of the importance over their boxes
        meta: dict[str, Any] = {
            **counts,
            "objective": objective,
            "mask": final,
            "mask_grid": list(size),
            "processed_size": [height, width],
            "mask_box": list(box),  # the mask's (top, left, bottom, right) on the image
            # several images: the mask spans them side by side, image k over these columns
            **({"image_columns": strip.columns} if len(strip.boxes) > 1 else {}),
            "logprob_image": logp[0],
            "logprob_blurred": logp[1],
        }
        if n_masks == 2:
            meta["deletion_mask"], meta["insertion_mask"] = masks.detach()[0], masks.detach()[1]
        with warnings.catch_warnings():
            if not bool((visual > 0).any()):
                warnings.warn(
                    "igos: the mask never left 1 (no region changes the answer's likelihood); "
                    "returning a zero map",
                    AttributionWarning,
                    stacklevel=3,
                )
                warnings.simplefilter("ignore", AttributionWarning)
            return make_explanation(
                trace,
                "igos",
                visual=visual,
                prompt=None,  # type: ignore[arg-type]
                token_relevance=logp[0] - logp[1],
                token_mask=selected,
                meta=meta,
            )

    def _terms(self) -> list[tuple[str, int | None, float]]:
        """(path, mask index or None for the product, weight) of each integrated-gradient term."""
        if self.variant == "igos++":
            return [("del", None, 0.5), ("ins", None, 0.5), ("del", 0, 0.5), ("ins", 1, 0.5)]
        return [("del", 0, 1.0), ("ins", 0, 1.0)]

    def _model_terms(
        self,
        adapter: Any,
        prepared: Any,
        baseline: Any,
        answer: Tensor,
        weights: Tensor,
        masks: Tensor,
        strip: Strip,
        generator: torch.Generator,
        counts: dict[str, int],
    ) -> tuple[Tensor, float]:
        """Gradient w.r.t. the masks [n, h, w] and value of the integrated-gradient terms."""
        alphas = torch.arange(1, self.ig_steps + 1, dtype=torch.float32) / self.ig_steps  # [n_ig]
        blends = [(path, which, a, w) for path, which, w in self._terms() for a in alphas.tolist()]
        grads = torch.zeros_like(masks)
        value = 0.0
        for start in range(0, len(blends), max(1, self.batch_size)):
            chunk = blends[start : start + max(1, self.batch_size)]
            up = _upsample(masks, strip.size)  # [n, H, W]
            product = up.prod(dim=0)  # [H, W]
            keeps, coefs = [], []
            for path, which, alpha, w in chunk:
                m = product if which is None else up[which]
                # deletion: image * aM + blur * (1 - aM); insertion: blur * aM + image * (1 - aM)
                keeps.append(alpha * m if path == "del" else 1 - alpha * m)
                coefs.append((w if path == "del" else -w) / self.ig_steps)
            stacked = torch.stack(keeps)  # [b, H, W]
            several = len(strip.boxes) > 1  # each image's columns, a mask over its own box
            logp = adapter.masked_answer_logprobs(
                prepared,
                baseline,
                strip.split(stacked) if several else stacked,
                answer,
                noise=self.noise,
                generator=generator,
                **({"box": strip.boxes} if several else {}),
            )  # [b, T]
            score = (logp * weights.to(logp.device)).sum(dim=-1)  # [b]
            loss = (torch.tensor(coefs, device=score.device) * score).sum()
            (grad,) = torch.autograd.grad(loss, masks)
            grads += grad
            value += float(loss.detach())
            counts["forward_passes"] += len(chunk)
            counts["backward_passes"] += len(chunk)
            counts["model_calls"] += 1
        return grads, value

    def _regulariser(
        self, masks: Tensor, size: tuple[int, int], edges: tuple[Tensor, Tensor], i: int
    ) -> Tensor:
        """l1 mean|1 - M| + tv BTV(M) + l2_i sum (1 - M)^2 on the combined mask M."""
        m = masks.prod(dim=0)  # [h, w]
        l2 = self.l2 * math.exp(-self.l2_decay * i * (i + 1) / 2)
        return (
            self.l1 * (1 - m).abs().mean()
            + self.tv * bilateral_tv(m, _upsample(m[None], size)[0], edges, self.tv_beta)
            + l2 * ((1 - m) ** 2).sum()
        )


@dataclass(frozen=True)
class Strip:
    """Where the mask lies: one image's mask box at its processed size, or the images of a
    prompt side by side at the tallest one's height (each keeping its aspect), so one mask and
    one regulariser cover them all and each image sees its own columns over its own box."""

    boxes: list[Region]  # each image's mask box (`PixelMaskMixin.mask_box`)
    columns: list[int]  # the strip's column where each image starts, then its width
    size: tuple[int, int]  # (H, W) of the strip

    @classmethod
    def of(cls, adapter: Any, prepared: Any) -> Strip:
        """The strip of a prepared prompt: its one image, or each of its ``parts``."""
        parts = prepared.parts or (prepared,)
        sizes = [adapter.processed_size(p) for p in parts]  # [(H_k, W_k)]
        height = max(h for h, _ in sizes)
        widths = [max(1, round(w * height / h)) for h, w in sizes]
        columns = [0, *itertools.accumulate(widths)]
        return cls([adapter.mask_box(p) for p in parts], columns, (height, columns[-1]))

    def split(self, values: Tensor) -> list[Tensor]:
        """[..., H, W] over the strip -> each image's columns [..., H, W_k]."""
        return [values[..., a:b] for a, b in itertools.pairwise(self.columns)]

    def canvas(self, adapter: Any, prepared: Any) -> Tensor:
        """The processed images side by side at the strip's size: [C, H, W]."""
        parts = prepared.parts or (prepared,)
        if len(parts) == 1:
            return adapter.canvas_image(prepared)
        return torch.cat(
            [
                F.interpolate(adapter.canvas_image(p)[None].float(), size=(self.size[0], b - a),
                              mode="bilinear", align_corners=False)[0]
                for p, (a, b) in zip(parts, itertools.pairwise(self.columns), strict=True)
            ],
            dim=-1,
        )  # fmt: skip


def _pool_onto(importance: Tensor, box: Region, size: tuple[int, int], grid: Grid) -> Tensor:
    """The coarse importance [h, w] over the mask ``box`` (seen at ``size`` = (H, W) pixels)
    averaged over each cell of ``grid``'s box: [rows, cols]. The grid's box is sampled at the
    mask box's pixel density (bilinear, as the views see the mask), then area-averaged."""
    top, left, bottom, right = grid.box
    sample_h = max(grid.rows, round(size[0] * (bottom - top) / (box[2] - box[0])))
    sample_w = max(grid.cols, round(size[1] * (right - left) / (box[3] - box[1])))
    seen = sample_mask(importance[None], box, PixelView(grid.box, (sample_h, sample_w)))
    return F.adaptive_avg_pool2d(seen[None], grid.shape)[0, 0]


def _upsample(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of coarse masks [n, h, w] to [n, H, W]."""
    return F.interpolate(masks[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _edge_weights(image: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """Bilateral weights exp(-d^2 / sigma) between vertical and horizontal neighbours of [C, H, W]."""
    dv = (image[:, 1:, :] - image[:, :-1, :]).mean(dim=0)  # [H-1, W]
    dh = (image[:, :, 1:] - image[:, :, :-1]).mean(dim=0)  # [H, W-1]
    return torch.exp(-(dv**2) / sigma), torch.exp(-(dh**2) / sigma)


def bilateral_tv(
    mask: Tensor, up: Tensor, edges: tuple[Tensor, Tensor], beta: float = 2.0
) -> Tensor:
    """Edge-aware total variation (public iGOS++): TV of the coarse mask plus image-weighted TV
    of the upsampled one, ``0.5 * (tv_v + tv_h + btv_v + btv_h)``; means over neighbour pairs."""
    tv_v = (
        (mask[1:, :] - mask[:-1, :]).abs().pow(beta).mean()
        if mask.shape[0] > 1
        else mask.new_zeros(())
    )
    tv_h = (
        (mask[:, 1:] - mask[:, :-1]).abs().pow(beta).mean()
        if mask.shape[1] > 1
        else mask.new_zeros(())
    )
    btv_v = (edges[0] * (up[1:, :] - up[:-1, :]).abs().pow(beta)).mean()
    btv_h = (edges[1] * (up[:, 1:] - up[:, :-1]).abs().pow(beta)).mean()
    return 0.5 * (tv_v + tv_h + btv_v + btv_h)
