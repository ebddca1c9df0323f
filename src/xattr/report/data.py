"""What a report page shows, as plain JSON-able data: maps, tokens, words, layer and head weights.

`page_data` turns ``{method: Explanation}`` and the image into one dict that the HTML page
(`xattr.report.html`) draws in the browser. Maps travel at their own resolution as min-max
normalised 8-bit values (base64); the page colours them with the jet colormap and lets the
browser upsample them bilinearly onto the image. A map made of one grid over the whole image
is sent as that grid; several grids (tiles, a thumbnail, a centre crop) are first composed
on the image's pixels (`Explanation.visual_pixels`) at `COMPOSED_SIDE` px on the long side.

A prompt of several images sends every image; each view (holistic, a token, a span, a layer)
has a map per image, all of one view scaled by one range (so the images' colours compare),
and each image carries its share of the method's relevance (`Explanation.image_shares`).
Image 0's maps are the view's usual fields; ``images[k]`` holds image k's (k >= 1) and
every image's ``share``.
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
    image: Image.Image | Sequence[Image.Image],
    question: str,
    *,
    title: str | None = None,
    model: str | None = None,
    answer: str | None = None,
    answer_source: str | None = None,
    extra: Mapping[str, Any] | None = None,
    references: Mapping[str, np.ndarray | Sequence[np.ndarray | None]] | None = None,
) -> dict[str, Any]:
    """Everything one report page shows for one image (or several), question and answer
    (and the reference maps the sample's scores were computed against, when there are some;
    with several images a list per name, one map or None per image)."""
    if not explanations:
        raise ValueError("a report needs at least one explanation")
    first = next(iter(explanations.values()))
    rgbs = [im.convert("RGB") for im in (image if isinstance(image, (list, tuple)) else [image])]
    for name, expl in explanations.items():
        if expl.shown()[0] != len(rgbs):
            raise ValueError(
                f"{name}: the explanation covers {expl.shown()[0]} image(s) or frame(s) but the report "
                f"was given {len(rgbs)}"
            )
    sizes = [rgb.size for rgb in rgbs]
    several = len(rgbs) > 1
    page = {
        "title": title or question,
        "question": question,
        "answer": answer or first.meta.get("answer") or "".join(first.answer_tokens).strip(),
        "answer_source": answer_source or first.meta.get("answer_source"),
        "model": model,
        "image": image_data(rgbs[0]),
        "colormap": colormap_data(),
        "methods": [method_view(name, e, *sizes) for name, e in explanations.items()],
        "references": [
            reference_view(REFERENCE_NAMES.get(name, name), ref, len(rgbs))
            for name, ref in (references or {}).items()
        ],
        **dict(extra or {}),
    }
    if several:
        page["images"] = [image_data(rgb) for rgb in rgbs]
        page["picture"] = "frame" if first.num_frames else "image"  # a video's frames
    return page


def reference_view(name: str, reference: Any, num_images: int = 1) -> dict[str, Any]:
    """A reference map for display; per image (``images``, null where an image has none,
    one range for all) when the page shows several images."""
    if num_images == 1:
        only = reference[0] if isinstance(reference, (list, tuple)) else reference
        return {"name": name, "map": map_data(reference_pixels(only))}
    parts = list(reference) if isinstance(reference, (list, tuple)) else [reference]
    parts += [None] * (num_images - len(parts))
    shown = [None if p is None else reference_pixels(p) for p in parts[:num_images]]
    maps = _jointly(shown)
    return {"name": name, "map": next(m for m in maps if m is not None), "images": maps}


REFERENCE_NAMES = {"human_map": "human attention map", "mask": "object mask"}


def reference_pixels(reference: np.ndarray) -> np.ndarray:
    """A reference map (human map or mask, at its own resolution) for display: float, its
    long side at most `COMPOSED_SIDE` (area-averaged, so a thin mask stays visible)."""
    arr = np.asarray(reference, dtype=np.float32)
    scale = min(1.0, COMPOSED_SIDE / max(arr.shape))
    size = (max(1, round(arr.shape[1] * scale)), max(1, round(arr.shape[0] * scale)))
    return np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.BOX))


def method_view(
    name: str, expl: Explanation, image_size: tuple[int, int], *more_sizes: tuple[int, int]
) -> dict[str, Any]:
    """One method's maps, token and word relevance, layer views and (GLIMPSE) weights;
    ``more_sizes``: the (width, height) of images 2.. of a prompt of several."""
    sizes = [image_size, *more_sizes]
    per = [_per_image(expl, sizes, view) for view in _views(expl)]  # [views][images]
    maps = dict(zip(_views(expl), per))
    out = {
        "name": name,
        "map": maps["map"][0],
        "tokens": token_views(expl, lambda t: maps[("token", t)][0]),
        "spans": span_views(expl, lambda k: maps[("span", k)][0]),
        "words": prompt_words(expl.prompt_tokens, expl.prompt_relevance),
        "layers": layer_views(expl, lambda k: maps[("layer", k)][0]),
        "weights": glimpse_weights(expl),
        "warnings": [str(w) for w in expl.meta.get("warnings", [])],
    }
    if more_sizes:
        shares = _floats(expl.shown()[1])  # each image's, or each video frame's
        out["images"] = [{"share": shares[0]}] + [
            {
                "share": shares[k],
                "map": maps["map"][k],
                "tokens": [
                    maps[("token", t)][k] if ("token", t) in maps else None  # none kept
                    for t in range(len(expl.answer_tokens))
                ],
                "spans": [maps[("span", j)][k] for j in range(len(expl.spans))],
                "layers": [maps[("layer", j)][k] for j in range(_num_layers(expl))],
            }
            for k in range(1, len(sizes))
        ]
    return out


def _views(expl: Explanation) -> list[Any]:
    """The views a method has maps for: the holistic map, then each token, span and layer."""
    tokens = len(expl.answer_tokens) if expl.token_maps is not None else 0
    return [
        "map",
        *(("token", t) for t in range(tokens)),
        *(("span", k) for k in range(len(expl.spans))),
        *(("layer", k) for k in range(_num_layers(expl))),
    ]


def _num_layers(expl: Explanation) -> int:
    return 0 if expl.layer_maps is None else len(expl.layer_maps)


def _per_image(expl: Explanation, sizes: list[tuple[int, int]], view: Any) -> list[Any]:
    """One view's map on each image (sizes as (width, height)), scaled by one range."""
    if view == "map":
        fn = lambda size, image: expl.visual_pixels(size, image=image)  # noqa: E731
    else:
        kind, index = view  # "token" / "span" / "layer": Explanation.<kind>_pixels
        own = getattr(expl, f"{kind}_pixels")
        fn = lambda size, image: own(index, size, image=image)  # noqa: E731
    values = [
        _raster(expl, (height, width), expl.input_of(k))(
            lambda size, k=k: fn(size, expl.input_of(k))
        )
        for k, (width, height) in enumerate(sizes)
    ]
    return _jointly(values)


def _jointly(values: Sequence[Any]) -> list[dict[str, Any] | None]:
    """`map_data` of each map (None stays None), all scaled by their common range."""
    arrays = [None if v is None else np.asarray(v, dtype=np.float64) for v in values]
    present = [a for a in arrays if a is not None]
    lo = min(float(np.nanmin(a)) for a in present)
    hi = max(float(np.nanmax(a)) for a in present)
    return [None if a is None else map_data(a, lo, hi) for a in arrays]


def token_views(expl: Explanation, pixels: Callable) -> list[dict[str, Any]]:
    """Each answer token: text, relevance (and its level in [0, 1]), kept or not, own map
    (``pixels(t)``: token t's map data)."""
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
            own = pixels(t)
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
    """Each explained part of the answer (a target, each sentence): text, relevance, own map
    (``pixels(k)``: span k's map data)."""
    relevance = [math.nan if s.relevance is None else float(s.relevance) for s in expl.spans]
    return [
        {
            "text": span.text,
            "relevance": rel,
            "level": level,
            "map": pixels(k),
        }
        for k, (span, rel, level) in enumerate(zip(expl.spans, relevance, levels(relevance)))
    ]


def layer_views(expl: Explanation, pixels: Callable) -> list[dict[str, Any]]:
    """Each layer's share of the map (``return_layer_maps``): model layer, share of mass, map
    (``pixels(k)``: layer k's map data)."""
    if expl.layer_maps is None:
        return []
    layers = list(expl.meta.get("layers") or range(len(expl.layer_maps)))
    mass = [float(m.double().sum()) for m in expl.layer_maps]
    total = sum(mass)
    return [
        {
            "layer": int(layer),
            "share": (m / total) if total else 0.0,
            "map": pixels(k),
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


def map_data(
    values: Tensor | np.ndarray, lo: float | None = None, hi: float | None = None
) -> dict[str, Any]:
    """A [h, w] map as min-max normalised uint8 in base64, with its raw range (``lo``,
    ``hi``: a range to scale by instead, e.g. one shared by several images' maps)."""
    arr = np.asarray(values, dtype=np.float64)
    lo = float(np.nanmin(arr)) if lo is None else lo
    hi = float(np.nanmax(arr)) if hi is None else hi
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


def _raster(expl: Explanation, size: tuple[int, int], image: int = 0) -> Callable:
    """``pixels(fn)``: the grid's own values when one grid covers image ``image``, else
    composed."""
    mine = [(g, m) for g, m in zip(expl.grids, expl.visual_maps) if g.image == image]
    one_grid = len(mine) == 1 and tuple(mine[0][0].box) == FULL_IMAGE
    if one_grid:
        shape = tuple(mine[0][1].shape)
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
