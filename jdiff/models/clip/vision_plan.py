"""Conversion plan for transformers' `CLIPVisionModel` (Wan2.1 I2V's `image_encoder`, an open-clip ViT-H/14).

The module's attribute paths are the checkpoint's key names, so the default rules cover everything but the
class token, a bare `nn.Parameter` (no `.weight` suffix).

Reference quirks:
  * Key prefix. Wan's `image_encoder/model.safetensors` (written by transformers 4) names every tensor
    `vision_model.…`; transformers 5 stores `CLIPVisionModel` without that level, so a model built under
    transformers 5 saves unprefixed keys. The rules name the shipped layout; `optional_prefix` accepts both.
  * `post_layernorm` normalises only the pooled class token (`pooler_output`); Wan keeps
    `hidden_states[-2]`, so the module has no post-norm and its weights are ignored here. The last encoder
    layer, also unused, stays loaded instead: a plan cannot name it without the config, and loading every
    layer keeps the check that the checkpoint's layer count matches the config.
  * `embeddings.position_ids` is an `arange` buffer that older transformers versions saved with the weights;
    positions are implicit, so it is ignored.
"""

from jdiff.models.clip.vision_config import CLIPVisionConfig
from jdiff.models.clip.vision_encoder import CLIPVisionModel
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan, Rule

PLAN = Plan(
    rules=(Rule(r"vision_model\.embeddings\.class_embedding", "vision_model.embeddings.class_embedding"),),
    stacked=("vision_model.encoder.layers",),
    ignore=(
        r"(vision_model\.)?post_layernorm\.(weight|bias)",
        r"(vision_model\.)?embeddings\.position_ids",
    ),
    optional_prefix="vision_model.",
)

SPEC = ComponentSpec("CLIPVisionModel", CLIPVisionConfig, CLIPVisionModel, PLAN)
