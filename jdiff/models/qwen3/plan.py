"""Conversion plan: transformers `Qwen3ForCausalLM` / `Qwen3Model` state dict -> `Qwen3TextEncoder`.

Default rules (kernel <- weight transposed, scale and embedding <- weight) with `model.layers` stacked. The
rules name `Qwen3ForCausalLM`'s keys (`model.layers.0...`); `Qwen3Model` saves them without `model.`
(`optional_prefix`). The LM head is not needed by an encoder: `lm_head.weight` is ignored (Qwen3-4B ties it
to the embeddings and may not store it; Qwen3-8B stores its own).
"""

from jdiff.models.qwen3.config import Qwen3Config
from jdiff.models.qwen3.text_encoder import Qwen3TextEncoder
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan

PLAN = Plan(
    stacked=("model.layers",),
    ignore=(r"lm_head\.weight",),
    optional_prefix="model.",
)

SPEC = ComponentSpec("Qwen3ForCausalLM", Qwen3Config, Qwen3TextEncoder, PLAN)
