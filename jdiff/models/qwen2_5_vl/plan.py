"""Conversion plan: transformers `Qwen2_5_VLForConditionalGeneration` state dict -> `Qwen2_5_VLTextEncoder`.

Default rules (kernel <- weight transposed, also the patch embedding's Conv3d weight [D, C, T, p, p] ->
[T, p, p, C, D]; scale and embedding <- weight) with the language model's layers and the vision blocks
stacked. The rules name transformers 5's layout (`model.language_model.*`, `model.visual.*`); the published
checkpoints (Qwen2.5-VL-7B-Instruct, Qwen-Image's text_encoder) write `model.*` and `visual.*`, read through
`source_aliases` (transformers' own conversion mapping renames the same way), and so is the head-less
`Qwen2_5_VLModel` layout (`language_model.*`, `visual.*`). The LM head (`lm_head.weight`)
is not needed by an encoder and is ignored.
"""

from jdiff.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from jdiff.models.qwen2_5_vl.text_encoder import Qwen2_5_VLTextEncoder
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan

PLAN = Plan(
    stacked=("model.language_model.layers", "model.visual.blocks"),
    ignore=(r"lm_head\.weight",),
    source_aliases=(
        (r"visual\.(.*)", r"model.visual.\1"),
        (r"model\.(?!language_model\.|visual\.)(.*)", r"model.language_model.\1"),
        (r"language_model\.(.*)", r"model.language_model.\1"),
    ),
)

SPEC = ComponentSpec("Qwen2_5_VLForConditionalGeneration", Qwen2_5_VLConfig, Qwen2_5_VLTextEncoder, PLAN)
