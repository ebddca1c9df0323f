"""GLM-4.5V: GLM-4.1V's vision side and layout before a mixture-of-experts language model.

The text model is GLM-4.5-Air's: after ``first_k_dense_replace`` dense layers every MLP is
a router (sigmoid scores plus a score-correction bias choose the top ``num_experts_per_tok``
of ``n_routed_experts``) and a shared expert. The router's choice is a discrete top-k; the
gradients the capture streams flow through the chosen experts and the routing weights, as
autograd gives them (a token's choice of experts is held fixed, as in any backward pass).
Attention is GLM-4.1V's, with biases on q, k and v; nothing in the capture depends on the MLP.
"""

from __future__ import annotations

from .base import FamilyCard
from .glm4v import Glm4vAdapter


class Glm4vMoeAdapter(Glm4vAdapter, family="glm4v_moe"):
    """GLM-4.5V (106B total, 12B active): GLM-4.1V's layout with MoE text layers."""

    card = FamilyCard(
        visual_tokens="as `glm4v`",
        tested=(
            "as `glm4v`; gradients through the sigmoid top-k router equal autograd; routing "
            "unchanged by the capture; bf16 with fp32 routers"
        ),
        caveats=(
            "the router's expert choice is held fixed in the gradients (autograd's); "
            "`<|begin_of_box|>` markers stay in `final`"
        ),
    )
