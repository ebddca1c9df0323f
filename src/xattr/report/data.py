"""What a report page shows, as plain JSON-able data: maps, tokens, words, layer and head weights.

`page_data` turns ``{method: Explanation}`` and the image into one dict that the HTML page
(`xattr.report.html`) draws in the browser. Maps travel at their own resolution as min-max
normalised 8-bit values (base64); the page colours them with the jet colormap and lets the
browser upsample them bilinearly onto the image. A map made of one grid over the whole image
is sent as that grid; several grids (tiles, a thumbnail, a centre crop) are first composed
on the image's pixels (`Explanation.visual_pixels`) at `COMPOSED_SIDE` px on the long side.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from ..explanation import Explanation
from ..images import FULL_IMAGE

IMAGE_SIDE = 512  # the page's copy of the image: long side at most this many px
COMPOSED_SIDE = 160  # multi-grid maps are composed at this long side before upsampling


def page_data(
    explanations: Mapping[str, Explanation],
    image: Image.Image,
    question: str,
    *,
    title: str | None = None,
    model: str | None = None,
    answer: str | None = None,
    answer_source: str | None = None,
    extra: Mapping[str, Any] | None = None,
    references: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Everything one report page shows for one image, question and answer (and the
    reference maps the sample's scores were computed against, when there are some)."""
    if not explanations:
        raise ValueError("a report needs at least one explanation")
    first = next(iter(explanations.values()))
    rgb = image.convert("RGB")
    return {
        "title": title or question,
        "question": question,
        "answer": answer or first.meta.get("answer") or "".join(first.answer_tokens).strip(),
        "answer_source": answer_source or first.meta.get("answer_source"),
        "model": model,
        "image": image_data(rgb),
        "colormap": colormap_data(),
        "methods": [method_view(name, e, rgb.size) for name, e in explanations.items()],
        "references": [
            {"name": REFERENCE_NAMES.get(name, name), "map": map_data(reference_pixels(ref))}
            for name, ref in (references or {}).items()
        ],
        **dict(extra or {}),
    }


REFERENCE_NAMES = {"human_map": "human attention map", "mask": "object mask"}


def reference_pixels(reference: np.ndarray) -> np.ndarray:
    """A reference map (human map or mask, at its own resolution) for display: float, its
    long side at most `COMPOSED_SIDE` (area-averaged, so a thin mask stays visible)."""
    arr = np.asarray(reference, dtype=np.float32)
    scale = min(1.0, COMPOSED_SIDE / max(arr.shape))
    size = (max(1, round(arr.shape[1] * scale)), max(1, round(arr.shape[0] * scale)))
    return np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.BOX))


def method_view(name: str, expl: Explanation, image_size: tuple[int, int]) -> dict[str, Any]:
    """One method's maps, token and word relevance, layer views and (GLIMPSE) weights."""
    width, height = image_size
    pixels = _raster(expl, (height, width))
    return {
        "name": name,
        "map": map_data(pixels(expl.visual_pixels)),
        "tokens": token_views(expl, pixels),
        "spans": span_views(expl, pixels),
        "words": prompt_words(expl.prompt_tokens, expl.prompt_relevance),
        "layers": layer_views(expl, pixels),
        "weights": glimpse_weights(expl),
        "warnings": [str(w) for w in expl.meta.get("warnings", [])],
    }


def token_views(expl: Explanation, pixels: Callable) -> list[dict[str, Any]]:
    """Each answer token: text, relevance (and its level in [0, 1]), kept or not, own map."""
    relevance = _floats(expl.token_relevance)
    mask = expl.token_mask
    kept = [True] * len(relevance) if mask is None else [bool(k) for k in mask]
    views = []
    pieces = expl.answer_pieces or expl.answer_tokens
    rows = zip(expl.answer_tokens, pieces, relevance, levels(relevance))
    dependence = _floats(expl.visual_dependence) if expl.visual_dependence is not None else None
    for t, (text, piece, rel, level) in enumerate(rows):
        own = None
        if expl.token_maps is not None:
            own = map_data(pixels(lambda size, t=t: expl.token_pixels(t, size)))
        views.append(
            {
                "text": text,
                "raw": piece,
                "relevance": rel,
                "level": level,
                "kept": kept[t],
                "map": own,
                "dependence": None if dependence is None else dependence[t],
            }
        )
    return views


def span_views(expl: Explanation, pixels: Callable) -> list[dict[str, Any]]:
    """Each explained part of the answer (a target, each sentence): text, relevance, own map."""
    relevance = [math.nan if s.relevance is None else float(s.relevance) for s in expl.spans]
    return [
        {
            "text": span.text,
            "relevance": rel,
            "level": level,
            "map": map_data(pixels(lambda size, k=k: expl.span_pixels(k, size))),
        }
        for k, (span, rel, level) in enumerate(zip(expl.spans, relevance, levels(relevance)))
    ]


def layer_views(expl: Explanation, pixels: Callable) -> list[dict[str, Any]]:
    """Each layer's share of the map (``return_layer_maps``): model layer, share of mass, map."""
    if expl.layer_maps is None:
        return []
    layers = list(expl.meta.get("layers") or range(len(expl.layer_maps)))
    mass = [float(m.double().sum()) for m in expl.layer_maps]
    total = sum(mass)
    return [
        {
            "layer": int(layer),
            "share": (m / total) if total else 0.0,
            "map": map_data(pixels(lambda size, k=k: expl.layer_pixels(k, size))),
        }
        for k, (layer, m) in enumerate(zip(layers, mass))
    ]


def glimpse_weights(expl: Explanation) -> dict[str, Any] | None:
    """GLIMPSE's per-token layer weights [T, L'], head weights [T, L', H] and depth prior [L']."""
    meta = expl.meta
    if "layer_weights" not in meta or "head_weights" not in meta:
        return None
    layer_w = _nested(meta["layer_weights"])
    head_w = _nested(meta["head_weights"])
    if np.ndim(layer_w) != 2 or np.ndim(head_w) != 3:
        return None
    return {
        "layers": [int(x) for x in meta.get("layers") or range(len(layer_w[0]))],
        "layer_weights": layer_w,
        "head_weights": head_w,
        "depth_prior": _nested(meta["depth_prior"]) if "depth_prior" in meta else None,
    }


def prompt_words(tokens: Sequence[str], relevance: Tensor | None) -> list[dict[str, Any]]:
    """The question's tokens (display texts) joined into words, saliency summed.

    In a text with spaces a word starts at a token that begins with white space; in one
    without (Chinese, Japanese) each token is a word. A token with no text of its own (part
    of a character) joins the token that completes it.
    """
    if not tokens:
        return []
    values = _floats(relevance) if relevance is not None else [math.nan] * len(tokens)
    spaced = any(t[:1].isspace() for t in tokens[1:])
    words: list[dict[str, Any]] = []
    for tok, value in zip(tokens, values):
        joins = words and (not words[-1]["text"] or (spaced and not tok[:1].isspace()))
        if joins:
            words[-1]["text"] += tok
            words[-1]["tokens"].append(tok)
            words[-1]["saliency"] += value
        else:
            words.append({"text": tok, "tokens": [tok], "saliency": value})
    for word in words:
        word["text"] = word["text"].strip()
    for word, level in zip(words, levels([w["saliency"] for w in words])):
        word["level"] = level
    return words


def levels(values: Sequence[float]) -> list[float]:
    """Each value over the largest one, clipped to [0, 1] (NaN and negatives: 0)."""
    finite = [v for v in values if math.isfinite(v)]
    top = max(finite, default=0.0)
    if top <= 0:
        return [0.0 for _ in values]
    return [min(1.0, max(0.0, v / top)) if math.isfinite(v) else 0.0 for v in values]


def map_data(values: Tensor | np.ndarray) -> dict[str, Any]:
    """A [h, w] map as min-max normalised uint8 in base64, with its raw range."""
    arr = np.asarray(values, dtype=np.float64)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    span = hi - lo
    scaled = (arr - lo) / span if span > 0 else np.zeros_like(arr)
    q = np.nan_to_num(scaled * 255).round().clip(0, 255).astype(np.uint8)
    return {
        "w": int(arr.shape[1]),
        "h": int(arr.shape[0]),
        "data": base64.b64encode(q.tobytes()).decode("ascii"),
        "lo": lo,
        "hi": hi,
    }


def image_data(image: Image.Image) -> dict[str, Any]:
    """The image as a JPEG data: URI (long side at most `IMAGE_SIDE`) and its display size."""
    scale = min(1.0, IMAGE_SIDE / max(image.size))
    small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=90)
    uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return {"src": uri, "width": small.width, "height": small.height}


def colormap_data(name: str = "jet") -> str:
    """A matplotlib colormap as 256 RGB triples (uint8, base64): the page's lookup table."""
    from matplotlib import colormaps

    lut = (colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    return base64.b64encode(lut.tobytes()).decode("ascii")


def _raster(expl: Explanation, size: tuple[int, int]) -> Callable:
    """``pixels(fn)``: the grid's own values when one grid covers the image, else composed."""
    one_grid = len(expl.grids) == 1 and tuple(expl.grids[0].box) == FULL_IMAGE
    if one_grid:
        shape = tuple(expl.visual.shape)
        return lambda fn: fn(shape)  # the bilinear upsample of a [h, w] map to (h, w) is itself
    height, width = size
    scale = COMPOSED_SIDE / max(height, width)
    target = (max(1, round(height * scale)), max(1, round(width * scale)))
    return lambda fn: fn(target)


def _floats(values: Tensor | None) -> list[float]:
    if values is None:
        return []
    return [float(v) for v in values.detach().float().flatten().tolist()]


def _nested(value: Any) -> Any:
    """Tensors and arrays as nested lists of floats (JSON-able)."""
    if isinstance(value, Tensor):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float64).round(6).tolist()
