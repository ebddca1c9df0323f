"""One spec per model family, used by every family-parametrised test (a transformers
`ModelTester` in spirit): the family list comes from the registered adapters that have a
tiny-model builder, and what a test needs to know about a family comes from its builder
module (`xattr.toy.tiny.<family>`): ``NATIVE_SIZE`` (required), ``GEOMETRY_SIZE`` (W, H),
``TEST_OPTIONS`` (builder options for the tests' model) and ``NO_SDPA`` (why SDPA cannot
run, for families transformers refuses it for); the trace methods a family refuses by name
come from its adapter (``refused_methods``)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

import xattr
from xattr.methods import AttributionWarning
from xattr.methods.tokens import TokenSelectionWarning
from xattr.toy import tiny

QUESTION = "what color is the circle?"


@dataclass(frozen=True)
class FamilySpec:
    """What tests need to know about one family."""

    family: str
    native_size: int  # a square image of this size goes through the processor unresized
    geometry_size: tuple[int, int]  # (W, H) of a non-square image for layout tests
    build_options: dict[str, Any] = field(default_factory=dict)
    no_sdpa: str | None = None  # why transformers cannot run this family with SDPA, if so
    unsupported: tuple[str, ...] = ()  # trace methods the family refuses by name (mllama: dexar)

    def image(
        self,
        size: int | tuple[int, int] | None = None,
        *,
        seed: int = 0,
        block: tuple[int, int, int, int] | None = None,
    ) -> Image.Image:
        """A dark noisy image ((W, H), default the native square); ``block`` = (top, left,
        bottom, right) in pixels is painted white."""
        width, height = (size, size) if isinstance(size, int) else (size or (self.native_size,) * 2)
        arr = np.random.default_rng(seed).integers(0, 40, size=(height, width, 3), dtype=np.uint8)
        if block is not None:
            top, left, bottom, right = (max(0, v) for v in block)  # a box may reach past the image
            arr[top:bottom, left:right] = 255
        return Image.fromarray(arr)


def spec(family: str) -> FamilySpec:
    """The spec of ``family``, read from its tiny-model builder."""
    module = tiny.builder(family)
    native = int(module.NATIVE_SIZE)
    return FamilySpec(
        family=family,
        native_size=native,
        geometry_size=tuple(getattr(module, "GEOMETRY_SIZE", (native * 3 // 2, native))),
        build_options=dict(getattr(module, "TEST_OPTIONS", {})),
        no_sdpa=getattr(module, "NO_SDPA", None),
        unsupported=xattr.models.ADAPTERS.get_class(family).refused_methods,
    )


FAMILIES = tuple(f for f in xattr.models.available() if f in tiny.families())
SPECS = {f: spec(f) for f in FAMILIES}


def explain_quietly(adapter: Any, image: Image.Image, methods: Sequence[str], answer: str) -> dict:
    """`xattr.explain` without the warnings random tiny models raise (degenerate maps)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AttributionWarning)
        warnings.simplefilter("ignore", TokenSelectionWarning)
        return xattr.explain(adapter, image, QUESTION, method=list(methods), answer=answer)


def assert_same_maps(actual: dict, expected: dict, atol: float = 1e-4) -> None:
    """Every method's maps, grid by grid, agree to ``atol`` of the expected map's maximum."""
    for name, expl in expected.items():
        for a, b in zip(expl.visual_maps, actual[name].visual_maps, strict=True):
            scale = float(a.abs().max()) or 1.0
            torch.testing.assert_close(b / scale, a / scale, rtol=0, atol=atol, msg=name)


def check_pixel_blend(adapter, image: Image.Image, atol: float) -> None:
    """Blending two processed images with a per-pixel mask (the pixel-mask path) equals
    processing the blended image, and pixel_values map to the one view and back exactly."""
    import torch

    from xattr.images import blend_images, blur_image

    blurred = blur_image(image)
    prepared, baseline = adapter.prepare(image, QUESTION), adapter.prepare(blurred, QUESTION)
    height, width = adapter.processed_size(prepared)
    assert (width, height) == image.size, "compare at a size the processor keeps"
    keep = np.random.default_rng(1).random((height, width)).astype(np.float32)
    expected = adapter.prepare(blend_images(image, blurred, keep), QUESTION).inputs["pixel_values"]
    weight = adapter.mask_to_pixel_values(torch.from_numpy(keep)[None], prepared)[0]
    pv, pv_base = prepared.inputs["pixel_values"], baseline.inputs["pixel_values"]
    torch.testing.assert_close(weight * pv + (1 - weight) * pv_base, expected, atol=atol, rtol=0)
    (view,) = adapter.pixel_values_to_views(pv, prepared)
    assert view.shape == (3, height, width)
    # slots holding no view (mllama's unused tiles) are zeros in the processor's output
    assert torch.equal(adapter.views_to_pixel_values([view[None]], prepared, fill=0.0)[0], pv)


def visual_input_embeddings(adapter: Any, image: Image.Image | list[Image.Image]) -> torch.Tensor:
    """The language model's input embeddings at the visual positions, in V order: [|V|, D]
    (a list: the images of one prompt)."""
    prepared = adapter.prepare(image, QUESTION)
    seen = {}

    def grab(_module, _args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach()[0]

    handle = adapter.language_model().register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            adapter.model(**prepared.inputs)
    finally:
        handle.remove()
    return seen["embeds"][prepared.visual_index]


def check_one_view_raster_order(adapter: Any, spec: FamilySpec) -> None:
    """On a native-size (one-view) image, whitening exactly the pixel square of token (r, c)
    changes that token's input embedding the most, by a clear margin, for every token: the
    merged visual tokens are in raster order over the view."""
    base = visual_input_embeddings(adapter, spec.image())
    side = math.isqrt(base.shape[0])
    assert side * side == base.shape[0], "one square view"
    px = spec.native_size // side
    for r in range(side):
        for c in range(side):
            block = (r * px, c * px, (r + 1) * px, (c + 1) * px)
            moved = visual_input_embeddings(adapter, spec.image(block=block))
            change = (moved - base).norm(dim=-1)  # [|V|]
            top2 = change.topk(2).values
            assert int(change.argmax()) == r * side + c, (r, c)
            assert float(top2[0]) > 2 * float(top2[1]), (r, c, top2.tolist())
