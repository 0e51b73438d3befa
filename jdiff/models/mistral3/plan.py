"""Conversion plan: transformers `Mistral3ForConditionalGeneration` state dict -> `Mistral3TextEncoder`.

Default rules with `model.language_model.layers` stacked; the rules name transformers 5's layout
(`model.language_model.*`). Checkpoints saved before transformers 4.52 write the language model as
`language_model.model.*` (its head as `language_model.lm_head`): `source_aliases` reads them too, and the
head-less `Mistral3Model` layout (`language_model.*`).
Deliberately unused, in either layout: the Pixtral vision tower (`vision_tower.*`), the multimodal projector
(`multi_modal_projector.*`), both only used for image inputs, which FLUX.2-dev never gives its encoder; and the
LM head (`lm_head.weight`), which an encoder does not need.
"""

from jdiff.models.mistral3.config import Mistral3Config
from jdiff.models.mistral3.text_encoder import Mistral3TextEncoder
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan

PLAN = Plan(
    stacked=("model.language_model.layers",),
    ignore=(
        r"(model\.)?vision_tower\..*",
        r"(model\.)?multi_modal_projector\..*",
        r"(language_model\.)?lm_head\.weight",
    ),
    source_aliases=(
        (r"language_model\.model\.(.*)", r"model.language_model.\1"),
        (r"language_model\.(.*)", r"model.language_model.\1"),  # head-less Mistral3Model
    ),
)

SPEC = ComponentSpec("Mistral3ForConditionalGeneration", Mistral3Config, Mistral3TextEncoder, PLAN)
