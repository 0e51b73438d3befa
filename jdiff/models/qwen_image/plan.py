"""Conversion plan: diffusers `QwenImageTransformer2DModel` -> jdiff `QwenImageTransformer2DModel`.

The module mirrors diffusers' names (`img_mod.1` is an `nnx.List` entry), so the default rules do all the
work; the block list is stacked.
"""

from jdiff.models.qwen_image.config import QwenImageConfig
from jdiff.models.qwen_image.transformer import QwenImageTransformer2DModel
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan

PLAN = Plan(stacked=("transformer_blocks",))

# fp8 (quantization="fp8"): the blocks' attention and MLP linears; their modulation (`img_mod`, `txt_mod`),
# the embedders and the final layer stay as they are.
FP8 = (r"transformer_blocks\.(?!(img|txt)_mod\.).+",)
SPEC = ComponentSpec(
    "QwenImageTransformer2DModel", QwenImageConfig, QwenImageTransformer2DModel, PLAN, fp8=FP8
)
