"""GLM-4.6V and GLM-4.6V-Flash: GLM-4.1V's vision tower, image processor and layout; the
text model is a sub-config of its own (dense GLM-4.1V text for Flash, GLM-4.5V's MoE text
for the 106B model). `Glm46VProcessor` differs from GLM-4.1V's only in how it writes video
timestamps, which a one-image prompt never holds."""

from __future__ import annotations

from transformers import Glm46VProcessor

from .base import FamilyCard
from .glm4v import Glm4vAdapter, ImageOnlyGlmMixin
from .processors import image_only_processor


@image_only_processor("glm46v")
class Glm46VImageOnlyProcessor(ImageOnlyGlmMixin, Glm46VProcessor):
    """`Glm46VProcessor` for images only."""

    real_name = "Glm46VProcessor"


class Glm46VAdapter(Glm4vAdapter, family="glm46v"):
    """GLM-4.6V(-Flash): GLM-4.1V's layout and positions, dense or MoE text layers."""

    card = FamilyCard(
        visual_tokens="as `glm4v`",
        tested="as `glm4v`; the MoE text sub-config through the same adapter",
        caveats="the checkpoints' `model_type` not checked offline",
    )
