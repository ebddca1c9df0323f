"""LFM2-VL (`Lfm2VlForConditionalGeneration`: LiquidAI/LFM2-VL-450M and -1.6B).

Layout. The image processor (`Lfm2VlImageProcessor`, SigLIP2 NaFlex) keeps one view for an
image whose pixels fit ``max_pixels_tolerance`` x the one-view budget: the whole image
resized, aspect kept, to multiples of 32 px (``encoder_patch_size`` x ``downsample_factor``)
within ``min_image_tokens``..``max_image_tokens`` tokens. A larger image is tiled: the whole
image stretched onto a canvas of ``cols x rows`` square tiles (``tile_size`` px, 2 to 10 tiles,
the aspect closest to the image's) cut row-major, then, with ``use_thumbnail``, the one-view
resize of the whole image as a thumbnail, last. Each view is a patch list (16 px patches,
padded to a fixed budget); the projector's pixel unshuffle merges each 2 x 2 block of
patches into one token, in raster order over the view's ``(h/32) x (w/32)`` blocks. The
prompt holds ``<|image_start|>``, per tile its tag ``<|img_row_r_col_c|>`` and its tokens,
``<|img_thumbnail|>`` and the thumbnail's tokens, ``<|image_end|>`` (an untiled image: the
tokens alone between the markers); tags and markers are not visual tokens. The processor
returns no canvas, so the grids are recomputed with the image processor's own split rule
and checked against the views, their patch grids (``spatial_shapes``) and the token count.
A very elongated image can need more patches in one view than the processor's fixed budget
(``max_num_patches``): the processor then fails (a tiled image's thumbnail) or emits a view
longer than its own ``pixel_attention_mask`` (an untiled one, e.g. 12000 x 40 px at the
checkpoints' settings); either way the adapter raises a CaptureError naming the image size.

Layers. The language model (LFM2) is a hybrid: most layers are gated short convolutions,
``y_t = C_t ⊙ Σ_{k<3} w_k ⊙ (B ⊙ x)_{t−k}`` per channel (``B``, ``C``, ``x`` the three
chunks of one linear projection of the normed input, ``w_k`` the depthwise kernel's tap at
lag k, ``conv.weight[:, 0, 2 − k]``; no softmax, no heads), the others GQA softmax
attention (causal, RoPE, q/k RMS-normed). The trace holds the softmax layers only, in
order: ``trace.attentions[l]`` is the l-th attention layer (`trace_layers`, and the trace's
``meta["decoder_layers"]``, map it to its decoder layer). A convolution layer is, like an
MLP, part of the residual stream between traced layers: gradients ``dz/dA`` pass through it
exactly; attention-propagating methods treat it as the identity, so they leave out its
mixing of each token with the two before it (docs/math.md §6e, docs/methods.md "Layer
kinds"). DEX-AR is refused: its logit lens reads the hidden state after every traced
layer, which the model's ``hidden_states`` (one per decoder layer) do not line up with.

Processor. transformers ships the image processor on its torchvision backend only;
`Lfm2VlTorchImageProcessor` is that class with the backend's torchvision calls done in plain
torch (`PlainTorchBackend`: the same bilinear antialiased resize, uint8 where torchvision
resizes in uint8), and `Lfm2VlImageOnlyProcessor` the processor around it, used where
torchvision is missing; both save as the real classes. Where torchvision is installed the
tests check that they give the real processor's tensors exactly.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Lfm2VlProcessor

from ..layout import Grid, LayoutError, VisualLayout
from ..trace import Trace
from ..views import PixelView
from .base import FamilyCard, ModelAdapter
from .processors import ImageOnlyProcessorMixin, image_only_processor
from .prompting import CaptureError, PreparedInputs
from .torch_backend import PlainTorchBackend

_IMAGE_PROCESSING = "transformers.models.lfm2_vl.image_processing_lfm2_vl"
_TORCHVISION_V2 = "torchvision.transforms.v2"


class _MissingTorchvision(types.ModuleType):
    """Stands in for ``torchvision.transforms.v2.functional``: any use names torchvision."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(f"{self.__name__}.{name} needs torchvision, which is not installed")


def real_image_processor_class() -> type:
    """transformers' own `Lfm2VlImageProcessor`, importable without torchvision.

    Its module imports torchvision's functional module, which it names only in string
    annotations (its backend's calls into it are the ones `PlainTorchBackend` replaces).
    Where that import fails, a placeholder (`_MissingTorchvision`) is put in its place for
    the import only.
    """
    if _IMAGE_PROCESSING in sys.modules:
        return sys.modules[_IMAGE_PROCESSING].Lfm2VlImageProcessor
    try:
        return importlib.import_module(_IMAGE_PROCESSING).Lfm2VlImageProcessor
    except ImportError:
        pass
    v2 = types.ModuleType(_TORCHVISION_V2)
    v2.functional = _MissingTorchvision(f"{_TORCHVISION_V2}.functional")
    sys.modules[_TORCHVISION_V2] = v2
    try:
        return importlib.import_module(_IMAGE_PROCESSING).Lfm2VlImageProcessor
    finally:
        del sys.modules[_TORCHVISION_V2]


Lfm2VlImageProcessor = real_image_processor_class()


class Lfm2VlTorchImageProcessor(Lfm2VlImageProcessor, PlainTorchBackend):
    """`Lfm2VlImageProcessor` with its torchvision calls done in plain torch (bilinear
    resize with antialias, per-channel normalisation, grey to RGB: `PlainTorchBackend`), so
    it runs where torchvision is missing; the split rule, tiling, thumbnail, patching and
    padding are the real class's. Saved as the real class."""

    def to_dict(self) -> dict:
        """Saved as the real class."""
        out = super().to_dict()
        out["image_processor_type"] = "Lfm2VlImageProcessor"
        return out


@image_only_processor("lfm2_vl")
class Lfm2VlImageOnlyProcessor(ImageOnlyProcessorMixin, Lfm2VlProcessor):
    """`Lfm2VlProcessor` with `Lfm2VlTorchImageProcessor` (the real image processor needs
    torchvision); every text and prompt path is the real class's; saves as the real class."""

    real_name = "Lfm2VlProcessor"

    def __init__(
        self, image_processor: Any, tokenizer: Any, chat_template: Any = None, **kwargs: Any
    ) -> None:
        if not isinstance(image_processor, Lfm2VlImageProcessor):
            raise TypeError(f"expected an Lfm2VlImageProcessor, got {type(image_processor)}")
        if type(image_processor) is not Lfm2VlTorchImageProcessor:
            image_processor = Lfm2VlTorchImageProcessor(**image_processor.to_dict())
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    @classmethod
    def from_pretrained(cls, path: Any, **kwargs: Any) -> Lfm2VlImageOnlyProcessor:
        """The tokenizer and the image processor (as `Lfm2VlTorchImageProcessor`) of a saved
        LFM2-VL processor folder."""
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, **kwargs)
        image_processor = Lfm2VlTorchImageProcessor.from_pretrained(path, **kwargs)
        return cls(image_processor, tok, chat_template=tok.chat_template)


SPLIT_KEYS = (  # the image processor's arguments to its split rule (`_get_split_layout`)
    "downsample_factor",
    "min_tiles",
    "max_tiles",
    "min_image_tokens",
    "max_image_tokens",
    "encoder_patch_size",
    "tile_size",
    "max_pixels_tolerance",
)


def view_grids(image_size: tuple[int, int], image_processor: Any) -> list[Grid]:
    """The token grids of a (W, H) image, in ``pixel_values`` order: one view, or the tiles
    row-major then (``use_thumbnail``) the thumbnail; each view's tokens are its
    ``encoder_patch_size * downsample_factor`` px blocks."""
    width, height = image_size
    ip = image_processor
    kwargs = {key: getattr(ip, key) for key in SPLIT_KEYS}
    if not ip.do_image_splitting:
        kwargs["min_tiles"] = kwargs["max_tiles"] = 1
    split, rows, cols, new_h, new_w = ip._get_split_layout(height, width, **kwargs)
    block = int(ip.encoder_patch_size) * int(ip.downsample_factor)  # px per token side
    whole = Grid(new_h // block, new_w // block, name="thumbnail" if split else "image")
    if not split:
        return [whole]
    side = int(ip.tile_size) // block
    tiles = [
        Grid(
            side,
            side,
            box=(r / rows, c / cols, (r + 1) / rows, (c + 1) / cols),
            name=f"tile {r},{c}",
        )
        for r in range(rows)
        for c in range(cols)
    ]
    return [*tiles, whole] if ip.use_thumbnail else tiles


class Lfm2VlAdapter(ModelAdapter, family="lfm2_vl"):
    """LFM2-VL: one view, or tiles row-major then a thumbnail; softmax layers traced."""

    card = FamilyCard(
        visual_tokens=(
            "one view (the image resized to multiples of 32 px, 64–256 tokens), or 512 px tiles "
            "row-major (2–10) + a thumbnail; a token = 2 × 2 unshuffled SigLIP2 patches"
        ),
        tested=(
            "the split rule vs the real-settings processor's views, patch grids and tile tags "
            "(aspects up to 250:1; a view over the patch budget refused); tiles vs its pixels; the projector's raster order, exactly; "
            "only the attention layers traced; the convolution's formula and 3-token band; "
            "the torch stand-in's tensors = the torchvision processor's, exactly (where installed)"
        ),
        caveats=(
            "most LM layers are gated 3-tap convolutions, not in the trace: propagation takes "
            'them as the identity, gradients pass through them (docs/methods.md, "Layer '
            'kinds"); `dexar` refused; without torchvision a torch stand-in resizes (the '
            "same bilinear antialiased kernel)"
        ),
    )
    refused_methods = ("dexar",)

    # ------------------------------------------------------------------ layers
    def trace_layers(self) -> list[int]:
        """The decoder layers the trace holds (its softmax-attention layers), ascending."""
        types = self.model.config.get_text_config().layer_types
        return [i for i, kind in enumerate(types) if kind != "conv"]

    def trace(self, *args: Any, **kwargs: Any) -> Trace:
        """`CaptureMixin.trace`, with the decoder layer of each traced layer in
        ``meta["decoder_layers"]`` (methods that need every layer refuse such a trace)."""
        trace = super().trace(*args, **kwargs)
        trace.meta["decoder_layers"] = self.trace_layers()
        return trace

    def attention_modules(self) -> list[nn.Module]:
        """The softmax-attention layers' ``self_attn``; convolution layers are not traced."""
        layers = self.language_model().layers
        return [layers[i].self_attn for i in self.trace_layers()]

    def final_norm(self) -> nn.Module:
        """LFM2's final norm (named ``embedding_norm``, applied after the last layer)."""
        return self.language_model().embedding_norm

    # ---------------------------------------------------------------- layout
    def visual_layout(self, inputs: dict[str, Tensor], image_size: tuple[int, int]) -> VisualLayout:
        """The ``<image>`` positions, view after view, and each view's grid (module docstring),
        checked against the views' patch grids and the token count."""
        ids = inputs["input_ids"][0]
        positions = torch.nonzero(ids == self.image_token_id).flatten()
        start = self.tokenizer.convert_tokens_to_ids(self.processor.image_start_token)
        blocks = int((ids == start).sum())
        if blocks > 1:
            raise CaptureError(f"the prompt holds {blocks} images; lfm2_vl takes one per prompt")
        patches = int(inputs["pixel_values"].shape[-2])  # [views, P, p*p*C]
        budget = int(inputs["pixel_attention_mask"].shape[-1])  # [views, budget]
        if patches != budget:
            raise CaptureError(
                f"the lfm2_vl processor made a view of {patches} patches for a "
                f"{image_size[0]}x{image_size[1]} image, over its budget of {budget} "
                "(pixel_attention_mask): the image is too elongated; crop it nearer to square"
            )
        grids = view_grids(image_size, self.processor.image_processor)
        factor = int(self.model.config.downsample_factor)
        emitted = [tuple(int(v) // factor for v in s) for s in inputs["spatial_shapes"]]
        expected = [g.shape for g in grids]
        if emitted != expected or positions.numel() != sum(g.cells for g in grids):
            raise LayoutError(
                f"the processor emitted views of {emitted} tokens and {positions.numel()} image "
                f"tokens, but its split rule gives a {image_size[0]}x{image_size[1]} image the "
                f"views {expected} ({sum(g.cells for g in grids)} tokens)"
            )
        return VisualLayout(positions, grids)

    # ------------------------------------------------------------ pixel path
    @property
    def patch_size(self) -> int:
        return int(self.processor.image_processor.encoder_patch_size)

    def pixel_views(self, prepared: PreparedInputs) -> list[PixelView]:
        """A view per grid: its box of the image at its patch grid times the patch size."""
        p = self.patch_size
        shapes = prepared.inputs["spatial_shapes"]  # [views, 2] patch rows, cols
        return [
            PixelView(g.box, (int(s[0]) * p, int(s[1]) * p), g.name)
            for g, s in zip(prepared.layout.grids, shapes, strict=True)
        ]

    def views_to_pixel_values(
        self, views: Sequence[Tensor], prepared: PreparedInputs, fill: float = 1.0
    ) -> Tensor:
        """Views [B, C, h_i, w_i] -> [B, views, P, p*p*C]: each view's raster patches, flattened
        (row, col, channel) as the processor writes them; the budget's padding patches take
        ``fill``."""
        p = self.patch_size
        budget = int(prepared.inputs["pixel_values"].shape[-2])
        out = []
        for image in views:
            b, c, h, w = image.shape
            x = image.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
            x = x.reshape(b, (h // p) * (w // p), p * p * c)  # [B, n_i, p*p*C]
            pad = x.new_full((b, budget - x.shape[1], x.shape[2]), float(fill))
            out.append(torch.cat([x, pad], dim=1))
        return torch.stack(out, dim=1)

    def pixel_values_to_views(self, pixel_values: Tensor, prepared: PreparedInputs) -> list[Tensor]:
        """[views, P, p*p*C] -> each view [C, h, w] (its padding patches dropped)."""
        p = self.patch_size
        out = []
        for i, view in enumerate(self.pixel_views(prepared)):
            h, w = view.size
            x = pixel_values[i, : (h // p) * (w // p)].reshape(h // p, w // p, p, p, -1)
            out.append(x.permute(4, 0, 2, 1, 3).reshape(-1, h, w))
        return out
