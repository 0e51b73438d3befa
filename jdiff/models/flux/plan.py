"""Conversion plan: diffusers `FluxTransformer2DModel` -> jdiff `FluxTransformer2DModel`.

The module mirrors diffusers' names, so the default rules do all the work; both block lists are stacked.
"""

from jdiff.models.flux.config import FluxConfig
from jdiff.models.flux.transformer import FluxTransformer2DModel
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan

PLAN = Plan(stacked=("transformer_blocks", "single_transformer_blocks"))

SPEC = ComponentSpec("FluxTransformer2DModel", FluxConfig, FluxTransformer2DModel, PLAN)
