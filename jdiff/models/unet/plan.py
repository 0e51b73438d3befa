"""Conversion plan: diffusers `UNet2DConditionModel` -> jdiff `UNet2DConditionModel`.

The module mirrors diffusers' names (`nnx.List` where diffusers has a `ModuleList`, `None` for param-less
dropouts), so the default rules map every parameter: conv and linear `weight` -> `kernel` (permuted to
channels-last / transposed), norm `weight` -> `scale`. The `transformer_blocks` of every spatial transformer
are stacked for a scan; the plan names each possible transformer (levels and attentions up to generous
bounds, since a plan is static data while the UNet's shape comes from its config).

Reference quirk: `proj_in` / `proj_out` are 1x1 convs ([C, C, 1, 1]) in SD 1.5 and linears ([C, C]) with
`use_linear_projection` (SD 2.x, SDXL); the module builds whichever the config names, so the default rules
apply either way.
"""

from jdiff.models.unet.config import MAX_ATTENTIONS, MAX_LEVELS, UNet2DConditionConfig
from jdiff.models.unet.unet import UNet2DConditionModel
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan

STACKED = (
    *(
        f"{side}_blocks.{i}.attentions.{j}.transformer_blocks"
        for side in ("down", "up")
        for i in range(MAX_LEVELS)
        for j in range(MAX_ATTENTIONS)
    ),
    "mid_block.attentions.0.transformer_blocks",
)

PLAN = Plan(stacked=STACKED)

SPEC = ComponentSpec("UNet2DConditionModel", UNet2DConditionConfig, UNet2DConditionModel, PLAN)
