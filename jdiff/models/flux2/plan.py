"""Conversion plan: diffusers `Flux2Transformer2DModel` -> jdiff `Flux2Transformer2DModel`.

The module mirrors diffusers' names, so the default rules do all the work; both block lists are stacked.
"""

from jdiff.models.flux2.config import Flux2Config
from jdiff.models.flux2.transformer import Flux2Transformer2DModel
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan

PLAN = Plan(stacked=("transformer_blocks", "single_transformer_blocks"))

# fp8 (quantization="fp8"): every linear of the blocks; the shared modulations, embedders and final layer
# live outside them and stay as they are.
FP8 = (r"(single_)?transformer_blocks\..+",)
SPEC = ComponentSpec("Flux2Transformer2DModel", Flux2Config, Flux2Transformer2DModel, PLAN, fp8=FP8)
