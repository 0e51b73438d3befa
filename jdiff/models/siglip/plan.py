"""Conversion plan for transformers' `SiglipVisionModel` (HunyuanVideo-1.5 I2V's `image_encoder`).

The module's attribute paths are the checkpoint's key names, so the default rules cover everything; the
encoder layers are stacked. Released checkpoints (transformers 4) prefix every key with `vision_model.`;
transformers 5 saves `SiglipVisionModel` without it: `optional_prefix` accepts both. The attention-pooling
`head.*` (the pooled output, which the DiT does not read) and the saved `position_ids` buffer are ignored.
"""

from jdiff.models.siglip.config import SiglipVisionConfig
from jdiff.models.siglip.vision import SiglipVisionModel
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan

PLAN = Plan(
    stacked=("vision_model.encoder.layers",),
    ignore=(r"(vision_model\.)?head\..+", r"(vision_model\.)?embeddings\.position_ids"),
    optional_prefix="vision_model.",
)

SPEC = ComponentSpec("SiglipVisionModel", SiglipVisionConfig, SiglipVisionModel, PLAN)
