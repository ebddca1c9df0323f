"""SmolVLM / SmolVLM2 (`SmolVLMForConditionalGeneration`): Idefics3's tiles + global layout.

SmolVLM is Idefics3 with another processor front end: the same image processing (resize of
the long side, stretch to whole tiles, rows x cols crops then the global image), the same
pixel shuffle and the same prompt (``<fake_token_around_image><row_r_col_c>`` + ``<image>`` ids
per frame, ``<global-img>`` last), so the grids are Idefics3's (`idefics3`): the stitched
``tiles`` grid and the ``global`` one. The geometry differs by checkpoint: SmolVLM2-2.2B has
384 px frames of 14 px patches shuffled by 3 (9 x 9 tokens a frame, the last 6 px of every
frame unseen, so the stitched grid's cells are uniform over the seen box up to half a seam
gap per tile), the 256M / 500M ones 512 / 16 / 4 (8 x 8). Caveats as for Idefics3 (two
overlapping views, tags and "\\n" between the visual tokens, the stretch, all-zero frames
dropped as padding); the LM (SmolLM2, a Llama at ``model.model.text_model``) is full causal.
Video prompts are not explained. The pixel-mask path is Idefics3's (tiles, then the global frame).

The real processor needs torchvision (its video processor) and ``num2words`` (video prompts)
to be built; `SmolVLMImageOnlyProcessor` is the image-only stand-in used without them.
"""

from __future__ import annotations

from transformers import ProcessorMixin, SmolVLMProcessor

from .base import FamilyCard
from .idefics3 import Idefics3Adapter
from .processors import ImageOnlyProcessorMixin, image_only_processor


@image_only_processor("smolvlm")
class SmolVLMImageOnlyProcessor(ImageOnlyProcessorMixin, SmolVLMProcessor):
    """`SmolVLMProcessor` for images only: no video processor (torchvision) and no
    ``num2words`` check; every image/text code path is the real class's."""

    real_name = "SmolVLMProcessor"

    def __init__(
        self, image_processor, tokenizer, image_seq_len: int = 169, chat_template=None, **kwargs
    ):
        self.fake_image_token = getattr(tokenizer, "fake_image_token", "<fake_token_around_image>")
        self.image_token = getattr(tokenizer, "image_token", "<image>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.end_of_utterance_token = getattr(
            tokenizer, "end_of_utterance_token", "<end_of_utterance>"
        )
        self.global_image_token = getattr(tokenizer, "global_image_token", "<global-img>")
        self.image_seq_len = image_seq_len
        self.video_token = getattr(tokenizer, "video_token", "<video>")
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        """The generic template rendering (the real one reads video-processor defaults first)."""
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)


class SmolVLMAdapter(Idefics3Adapter, family="smolvlm"):
    """SmolVLM(2)-*: Idefics3's stitched tiles, then the global image."""

    card = FamilyCard(
        visual_tokens="as Idefics3",
        tested="as Idefics3",
        caveats="as Idefics3",
    )
