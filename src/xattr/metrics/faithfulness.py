"""Faithfulness with the model in the loop: deletion / insertion curves and normalised perplexity.

SPEC §7. An explanation ranks the cells of a grid over the image (the visual map ``S``,
mapped onto the image's pixels). The grid is the explanation's *canvas*
(`layout.canvas_grid`): the box every token grid of the first image covers together, cut
into cells at the finest grid's density, and ``S`` is the explanation's map composed from
all its grids (`Explanation.visual_pixels`, the rule maps are shown by) read at each cell's
centre. With one grid (single-view families) the canvas is that grid and ``S`` its map;
with tiles and a thumbnail the cells are the tiles' token cells over the whole image, each
ranked by its tile's value plus the thumbnail's read there. Cells are perturbed in order of
decreasing saliency:

- **deletion**: at fraction ``f`` the top ``k(f)`` cells of the *original* image are replaced
  by the baseline image;
- **insertion**: at fraction ``f`` the top ``k(f)`` cells of the *baseline* image are replaced
  by the original image.

``k(f) = floor(f * n + 1/2)`` whole cells of the ``n`` canvas cells (round half up). The
baseline is a Gaussian blur of the image by default (``perturbation="blur"``), or its
per-channel mean colour (``"mean"``), or black (``"zero"``). Cells tied in saliency share
the removal: when the cut at ``k`` falls inside a group of equal values, every cell of that
group is blended towards the baseline by the same weight
``(k - #cells above the group) / #group``, so the result never depends on how tied cells
happen to be ordered (a constant map blends the whole image uniformly). A grid cell covers
the pixels whose centres fall inside it (nearest-neighbour: pixel row ``y`` of ``H`` belongs
to grid row ``floor((y + 1/2) h / H)``), so image sizes need not be multiples of the grid.

Score of an image: ``s = (1/T) sum_t log p(y_t | image, question, y_<t)``, the mean
teacher-forced log-likelihood of the original answer (``adapter.answer_logprobs``, which runs
the perturbed images through the model in batches of ``batch_size``). With ``s_orig`` the
score of the unperturbed image and ``s_base`` of the full baseline, a curve point is

    c(f) = (s(f) - s_base) / (s_orig - s_base)        (1 = as the original, 0 = as the baseline)

and the metrics, trapezoidal areas over ``f`` in [0, 1], are:

- ``deletion_auc`` = area under ``c`` for deletion. Lower is better (the answer's likelihood
  collapses once the most salient cells are gone). Usually in [0, 1]; points can leave
  [0, 1] when a partial perturbation scores beyond both ends, so the range is unbounded.
- ``insertion_auc`` = area under ``c`` for insertion. Higher is better; same range remark.
- ``deletion_ppl`` = area under the normalised perplexity curve
  ``PPL(answer | deleted f) / PPL(answer | original) = exp(s_orig - s(f))`` (our reading of
  DEX-AR's measure; it is 1 at ``f = 0``). Range (0, inf); higher is better (removing the
  salient regions first makes the answer less likely sooner). It needs no normalisation by
  the baseline, so it stays defined when the AUCs are not.
- ``faithfulness_passes`` = the number of images (sequences) the model scored for this
  sample: ``2 + len(curves) * (len(fractions) - 2)``, or 0 when nothing needed scoring.
  A cost, not a quality: lower is cheaper.

Undefined values are NaN with a :class:`~xattr.metrics.MetricUndefinedWarning`, never a
silent number: a map with NaN/inf entries makes every output NaN (no model pass is run); a
baseline identical to the image, or ``|s_orig - s_base| <= min_span`` (default 1e-4 nats,
far above float32 noise), leaves the normalisation undefined, so the AUCs are NaN (the
perplexity area stays defined).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..images import (
    FULL_IMAGE,
    PromptImages,
    Region,
    blend_images,
    blur_image,
    load_images,
    prompt_images,
)
from ..layout import canvas_grid
from ..video import Video
from ._base import undefined

if TYPE_CHECKING:
    from ..explanation import Explanation

PERTURBATIONS = ("blur", "mean", "zero")
CURVES = ("deletion", "insertion")
DEFAULT_FRACTIONS = tuple(i / 10 for i in range(11))


@dataclass
class FaithfulnessCurves:
    """The raw curves of one sample: mean answer log-likelihood per fraction and curve."""

    fractions: np.ndarray  # [F], rising from 0 to 1
    scores: dict[str, np.ndarray]  # curve -> [F] s(f); its ends are s_orig and s_base
    s_orig: float
    s_base: float
    passes: int  # images the model scored for this sample
    undefined_reason: str | None = None  # why the normalised curves are undefined, if they are

    def normalised(self, curve: str) -> np.ndarray:
        """``(s(f) - s_base) / (s_orig - s_base)`` (all NaN when undefined)."""
        if self.undefined_reason is not None:
            return np.full(len(self.fractions), math.nan)
        return (self.scores[curve] - self.s_base) / (self.s_orig - self.s_base)

    def ppl_ratio(self, curve: str) -> np.ndarray:
        """``PPL(answer | perturbed) / PPL(answer | original) = exp(s_orig - s(f))``."""
        return np.exp(self.s_orig - self.scores[curve])

    def auc(self, curve: str) -> float:
        """Trapezoidal area under the normalised curve over the fractions."""
        return float(np.trapezoid(self.normalised(curve), self.fractions))

    def ppl_auc(self, curve: str) -> float:
        """Trapezoidal area under the normalised perplexity curve over the fractions."""
        return float(np.trapezoid(self.ppl_ratio(curve), self.fractions))


class DeletionInsertion:
    """Deletion / insertion AUC and normalised perplexity of one explanation (module doc).

    Definition: see the module docstring. Outputs (``outputs``): ``deletion_auc`` (lower is
    better), ``insertion_auc`` (higher is better, when ``"insertion"`` is in ``curves``),
    ``deletion_ppl`` (higher is better, when ``"deletion"`` is in ``curves``) and
    ``faithfulness_passes`` (extra forward passes for the sample).

    Called as a model metric, ``metric(adapter, image, question, trace, expl) -> dict``: the
    answer is the one in ``trace`` and the map is ``expl``'s over its canvas
    (`canvas_saliency`). ``score`` takes answer ids and a map over a box directly;
    ``curves_for`` returns the raw curves for plotting. A prompt of several images takes a
    list of images, of maps and of boxes, one per image: the cells of every image are ranked
    together, and each blend perturbs every image's cells at once.
    """

    costs: ClassVar[tuple[str, ...]] = ("faithfulness_passes",)  # columns that are not scores
    higher_is_better: ClassVar[dict[str, bool]] = {
        "deletion_auc": False,
        "insertion_auc": True,
        "deletion_ppl": True,
        "faithfulness_passes": False,  # a cost
    }
    ranges: ClassVar[dict[str, str]] = {
        "deletion_auc": "unbounded, usually [0, 1]",
        "insertion_auc": "unbounded, usually [0, 1]",
        "deletion_ppl": "(0, inf)",
        "faithfulness_passes": "integer >= 0",
    }

    def __init__(
        self,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        perturbation: str = "blur",
        curves: Sequence[str] = ("deletion",),
        batch_size: int = 11,
        blur_radius: float | None = None,
        min_span: float = 1e-4,
        space: str = "auto",
    ) -> None:
        if space not in ("auto", "image", "processed"):
            raise ValueError(f"space must be auto, image or processed, got {space!r}")
        self.space = space
        fr = [float(f) for f in fractions]
        if (
            len(fr) < 2
            or not all(math.isfinite(f) for f in fr)
            or fr[0] != 0.0
            or fr[-1] != 1.0
            or any(b <= a for a, b in itertools.pairwise(fr))
        ):
            raise ValueError(f"fractions must rise strictly from 0.0 to 1.0, got {fr}")
        if perturbation not in PERTURBATIONS:
            raise ValueError(
                f"unknown perturbation {perturbation!r}; known: {', '.join(PERTURBATIONS)}"
            )
        curves = [str(c) for c in curves]
        unknown = set(curves) - set(CURVES)
        if unknown:
            raise ValueError(f"unknown curves {sorted(unknown)}; known: {', '.join(CURVES)}")
        if not curves or len(set(curves)) != len(curves):
            raise ValueError(f"curves must be a non-empty list without repeats, got {curves}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if blur_radius is not None and not blur_radius > 0:
            raise ValueError(f"blur_radius must be positive (or None), got {blur_radius}")
        if not min_span >= 0:
            raise ValueError(f"min_span must be >= 0, got {min_span}")
        self.fractions = fr
        self.perturbation = perturbation
        self.curves = [c for c in CURVES if c in curves]  # deletion first, whatever the order
        self.batch_size = int(batch_size)
        self.blur_radius = blur_radius
        self.min_span = float(min_span)
        self.outputs = [f"{c}_auc" for c in self.curves]
        if "deletion" in self.curves:
            self.outputs.append("deletion_ppl")
        self.outputs.append("faithfulness_passes")

    def __repr__(self) -> str:
        return (
            f"DeletionInsertion(fractions={self.fractions}, perturbation={self.perturbation!r}, "
            f"curves={self.curves}, batch_size={self.batch_size}, blur_radius={self.blur_radius}, "
            f"min_span={self.min_span})"
        )

    def forward_passes(self) -> int:
        """Images scored per sample and explanation: original, baseline, interior points."""
        return 2 + len(self.curves) * (len(self.fractions) - 2)

    def baseline(self, image: Image.Image) -> Image.Image:
        """The image every removed region is replaced by."""
        if self.perturbation == "blur":
            return blur_image(image, self.blur_radius)
        if self.perturbation == "mean":
            mean = tuple(
                int(v) for v in np.asarray(image, dtype=np.float64).mean(axis=(0, 1)).round()
            )
            return Image.new("RGB", image.size, mean)
        return Image.new("RGB", image.size, (0, 0, 0))

    def _processed_space(self, adapter: Any) -> bool:
        """Blend in the processor's pixel_values space when asked, or (auto) when the adapter can."""
        if self.space == "image":
            return False
        from ..models.base import ModelAdapter

        able = isinstance(adapter, ModelAdapter) and adapter.has_pixel_path
        if self.space == "processed" and not able:
            raise ValueError(f"{type(adapter).__name__} has no pixel_values blending path")
        return able

    def _score_processed(
        self,
        adapter: Any,
        prompts: tuple[Any, Any],
        question: str,
        answer_ids: torch.Tensor,
        grids: list[tuple[int, ...]],
        keeps: list[np.ndarray],
        regions: list[Region],
    ) -> torch.Tensor:
        """Scores of the blends made in pixel_values space: the prompt and its baseline (each
        an image, images or a video) are processed once, and every view's pixel takes the keep
        weight of the grid cell under its centre on its image (each cell grid placed on its
        ``region``, as in image space; a video's frames are its images)."""
        prepared = adapter.prepare(prompts[0], question)
        baseline = adapter.prepare(prompts[1], question)
        stacked = np.stack(keeps)  # [B, cells of every image]
        weights = [
            torch.as_tensor(part, dtype=torch.float32).reshape(len(keeps), *grid)
            for part, grid in zip(_per_image(stacked, grids), grids, strict=True)
        ]  # per image [B, gh, gw] over its region
        several = len(grids) > 1
        out = []
        with torch.no_grad():
            for start in range(0, len(keeps), self.batch_size):
                chunk = [w[start : start + self.batch_size] for w in weights]
                out.append(
                    adapter.masked_answer_logprobs(
                        prepared,
                        baseline,
                        chunk if several else chunk[0],
                        answer_ids,
                        box=[tuple(r) for r in regions] if several else tuple(regions[0]),
                        mode="nearest",
                    )
                )
        return torch.cat(out).float().cpu()

    def __call__(
        self, adapter: Any, image: PromptImages, question: str, trace: Any, expl: Any
    ) -> dict[str, float]:
        """Scores of ``expl`` for the answer in ``trace`` (keys: ``outputs``)."""
        if trace.input_ids is None:
            raise ValueError("the trace has no input_ids, so the answer to score is unknown")
        answer_ids = trace.input_ids[trace.answer_positions]
        pictures = expl.shown()[0]  # the images, or a video's frames (each its group's map)
        if pictures > 1:
            canvases = [canvas_saliency(expl, image=expl.input_of(k)) for k in range(pictures)]
            maps, boxes = [c[0] for c in canvases], [c[1] for c in canvases]
            return self.score(adapter, image, question, answer_ids, maps, region=boxes)
        saliency, region = canvas_saliency(expl)
        return self.score(adapter, image, question, answer_ids, saliency, region=region)

    def score(
        self,
        adapter: Any,
        image: PromptImages,
        question: str,
        answer_ids: torch.Tensor | Sequence[int],
        saliency: Any,
        region: Region | Sequence[Region] = FULL_IMAGE,
    ) -> dict[str, float]:
        """The outputs for a saliency map on a grid of cells over ``region`` of the image
        (``__call__`` passes `canvas_saliency`)."""
        result = self.curves_for(adapter, image, question, answer_ids, saliency, region=region)
        out: dict[str, float] = {}
        if result is None:  # NaN map: warned already
            out = {name: math.nan for name in self.outputs}
            out["faithfulness_passes"] = 0.0
            return out
        if result.undefined_reason is not None:
            for curve in self.curves:
                out[f"{curve}_auc"] = undefined(f"{curve}_auc", result.undefined_reason)
        else:
            for curve in self.curves:
                out[f"{curve}_auc"] = result.auc(curve)
        if "deletion" in self.curves:
            finite = np.isfinite(result.scores["deletion"]).all()
            out["deletion_ppl"] = (
                result.ppl_auc("deletion")
                if finite
                else undefined("deletion_ppl", "the model gave a non-finite answer log-likelihood")
            )
        out["faithfulness_passes"] = float(result.passes)
        return {name: out[name] for name in self.outputs}

    def curves_for(
        self,
        adapter: Any,
        image: PromptImages,
        question: str,
        answer_ids: torch.Tensor | Sequence[int],
        saliency: Any,
        region: Region | Sequence[Region] = FULL_IMAGE,
    ) -> FaithfulnessCurves | None:
        """The raw curves (None, with a warning, when the map holds NaN or inf)."""
        video = image if isinstance(image, Video) else None
        images = video.frames() if video is not None else load_images(image)
        prompt = video.with_frames if video is not None else prompt_images  # frames -> prompt
        several = len(images) > 1
        if several != isinstance(saliency, (list, tuple)) or (
            several and (len(saliency) != len(images) or len(region) != len(images))
        ):
            raise ValueError(
                f"{len(images)} image(s) need {'a list of ' if several else ''}"
                f"{len(images)} map(s) and box(es), one per image"
            )
        sals = [_as_grid(s) for s in (saliency if several else [saliency])]
        regions = list(region) if several else [region]
        if not all(np.isfinite(s).all() for s in sals):
            undefined("faithfulness", "saliency map contains NaN or inf")
            return None
        answer_ids = torch.as_tensor(answer_ids, dtype=torch.long).reshape(-1).cpu()
        if answer_ids.numel() == 0:
            raise ValueError("the answer has zero tokens: there is nothing to score")
        fractions = np.asarray(self.fractions)
        bases = [self.baseline(im) for im in images]
        sal = np.concatenate([s.reshape(-1) for s in sals])  # every image's cells, ranked together
        if all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, bases)):
            # Every perturbed image is the image itself: one pass scores the whole curve.
            logp = adapter.answer_logprobs([prompt(images)], question, answer_ids, batch_size=1)
            s_orig = float(torch.as_tensor(logp).double().mean())
            flat = np.full(len(fractions), s_orig)
            return FaithfulnessCurves(
                fractions,
                {c: flat.copy() for c in self.curves},
                s_orig,
                s_orig,
                passes=1,
                undefined_reason="the baseline image equals the image (nothing to perturb)",
            )
        interior = list(fractions[1:-1])
        keeps = [np.ones(sal.size), np.zeros(sal.size)]  # s_orig, s_base: per-cell keep weights
        for curve in self.curves:
            for f in interior:
                removed = _removed_weights(sal.reshape(-1), _cells_for(f, sal.size))
                keeps.append(1.0 - removed if curve == "deletion" else removed)
        shapes = [s.shape for s in sals]
        if self._processed_space(adapter):
            logp = self._score_processed(
                adapter, (prompt(images), prompt(bases)), question, answer_ids, shapes, keeps,
                regions,
            )  # fmt: skip
        else:  # image space: each image's cell grid placed on it
            cells = [_cell_index(sh, im.size, r) for sh, im, r in zip(shapes, images, regions)]
            blends = [prompt(images), prompt(bases)] + [
                prompt([blend_images(im, b, part[c]) for im, b, part, c
                        in zip(images, bases, _per_image(k, shapes), cells)])
                for k in keeps[2:]
            ]  # fmt: skip
            logp = adapter.answer_logprobs(blends, question, answer_ids, batch_size=self.batch_size)
        logp = torch.as_tensor(logp)
        if tuple(logp.shape) != (len(keeps), answer_ids.numel()):
            raise ValueError(
                f"answer_logprobs returned shape {tuple(logp.shape)}, "
                f"expected {(len(keeps), answer_ids.numel())}"
            )
        s = logp.double().mean(dim=1).numpy()  # mean per-token log-likelihood per image
        s_orig, s_base = float(s[0]), float(s[1])
        scores = {}
        for c, curve in enumerate(self.curves):
            inner = s[2 + c * len(interior) : 2 + (c + 1) * len(interior)]
            start, end = (s_orig, s_base) if curve == "deletion" else (s_base, s_orig)
            scores[curve] = np.concatenate([[start], inner, [end]])
        reason = None
        if not np.isfinite(s).all():
            reason = "the model gave a non-finite answer log-likelihood"
        elif abs(s_orig - s_base) <= self.min_span:
            reason = (
                f"original and baseline scores differ by {abs(s_orig - s_base):.3g} nats "
                f"(<= min_span {self.min_span:g}): the curve cannot be normalised"
            )
        return FaithfulnessCurves(
            fractions, scores, s_orig, s_base, passes=len(keeps), undefined_reason=reason
        )


def canvas_saliency(expl: Explanation, image: int = 0) -> tuple[Tensor, Region]:
    """The map ``expl`` ranks on image ``image``: [rows, cols] over its canvas
    (`layout.canvas_grid` of that image's grids), and the canvas's box; the composed map
    (`Explanation.visual_pixels`) read at the cells' centres, or the one grid's own map when
    the image has one grid."""
    canvas = canvas_grid(expl.grids, image)
    mine = [m for m, g in zip(expl.visual_maps, expl.grids, strict=True) if g.image == image]
    if len(mine) == 1:
        return mine[0], canvas.box  # itself, in its own dtype
    return expl.visual_pixels(canvas.shape, image=image, box=canvas.box), canvas.box


def _per_image(values: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """[..., cells of every image] -> each image's [..., cells] (in the images' order)."""
    ends = np.cumsum([int(np.prod(s)) for s in shapes])[:-1]
    return np.split(values, ends, axis=-1)


def _as_grid(saliency: Any) -> np.ndarray:
    """The map as a 2-D float64 array."""
    if isinstance(saliency, torch.Tensor):
        saliency = saliency.detach().to(device="cpu", dtype=torch.float64).numpy()
    arr = np.asarray(saliency, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"saliency must be a non-empty 2-D token-grid map, got shape {arr.shape}")
    return arr


def _cells_for(fraction: float, n: int) -> int:
    """Whole cells perturbed at ``fraction`` of ``n``: round half up (tolerant to 0.1 * 10)."""
    return min(n, math.floor(fraction * n + 0.5 + 1e-9))


def _removed_weights(values: np.ndarray, k: int) -> np.ndarray:
    """Per-cell weight in [0, 1] of the top-``k`` cells by value, ties sharing the boundary."""
    n = values.size
    if k <= 0:
        return np.zeros(n)
    if k >= n:
        return np.ones(n)
    threshold = np.sort(values)[::-1][k - 1]  # value of the k-th most salient cell
    above = values > threshold
    tied = values == threshold
    out = above.astype(np.float64)
    out[tied] = (k - int(above.sum())) / int(tied.sum())
    return out


def _cell_index(
    grid: tuple[int, int],
    size: tuple[int, int],
    region: Region = FULL_IMAGE,
) -> np.ndarray:
    """[H, W] raster index of the grid cell holding each pixel's centre.

    The grid covers ``region`` (top, left, bottom, right fractions of the image, e.g. a
    centre crop); pixels outside it, which the model never sees, take the nearest cell.
    Exact integers when the grid covers the whole image.
    """
    gh, gw = grid
    width, height = size
    if tuple(region) == FULL_IMAGE:
        rows = ((2 * np.arange(height) + 1) * gh) // (2 * height)
        cols = ((2 * np.arange(width) + 1) * gw) // (2 * width)
    else:
        top, left, bottom, right = region
        y = ((np.arange(height) + 0.5) / height - top) / (bottom - top)
        x = ((np.arange(width) + 0.5) / width - left) / (right - left)
        rows = np.clip(np.floor(y * gh), 0, gh - 1).astype(np.int64)
        cols = np.clip(np.floor(x * gw), 0, gw - 1).astype(np.int64)
    return rows[:, None] * gw + cols[None, :]
