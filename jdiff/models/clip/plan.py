"""Conversion plan for transformers' `CLIPTextModel` (FLUX.1's `text_encoder`).

The module's attribute paths are the checkpoint's key names, so only the default rules are needed
(Linear `weight` -> `kernel` transposed, LayerNorm `weight` -> `scale`, Embedding `weight` -> `embedding`).

Reference quirks:
  * Key prefix. FLUX.1's `text_encoder/model.safetensors` (written by transformers 4) names every tensor
    `text_model.…`, and so does transformers 5 when it re-saves a model it loaded from such a file; but
    transformers 5 stores `CLIPTextModel` without that level (it strips the prefix on load with a
    `PrefixChange`), so a `CLIPTextModel` *built* under transformers 5 saves keys without `text_model.`.
    The rules name the shipped layout; `optional_prefix` accepts the unprefixed one too.
  * `text_model.embeddings.position_ids` is an `arange` buffer that older transformers versions saved with
    the weights; positions are recomputed, so it is ignored.
"""

from jdiff.models.clip.config import CLIPTextConfig
from jdiff.models.clip.text_encoder import CLIPTextModel
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan

PLAN = Plan(
    stacked=("text_model.encoder.layers",),
    ignore=(r"(text_model\.)?embeddings\.position_ids",),
    optional_prefix="text_model.",
)

SPEC = ComponentSpec("CLIPTextModel", CLIPTextConfig, CLIPTextModel, PLAN)
