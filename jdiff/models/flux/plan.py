"""Conversion plan: diffusers `FluxTransformer2DModel` -> jdiff `FluxTransformer2DModel`.

The module mirrors diffusers' names, so the default rules do all the work; both block lists are stacked.
"""

from jdiff.models.flux.config import FluxConfig
from jdiff.models.flux.transformer import FluxTransformer2DModel
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan

PLAN = Plan(stacked=("transformer_blocks", "single_transformer_blocks"))

# fp8 (quantization="fp8"): the blocks' attention and MLP linears; their AdaLN modulation (`norm1.linear`,
# `norm1_context.linear`, the single blocks' `norm.linear`), the embedders and the final layer stay as they are.
FP8 = (r"(single_)?transformer_blocks\.(?!norm).+",)
SPEC = ComponentSpec("FluxTransformer2DModel", FluxConfig, FluxTransformer2DModel, PLAN, fp8=FP8)
