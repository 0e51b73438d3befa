"""Conversion plan: diffusers `FluxTransformer2DModel` -> jdiff `FluxTransformer2DModel`.

The module mirrors diffusers' names, so the default rules do most of the work (including the double blocks'
merged q/k/v projections, `merged_qkv` / `merged_added_qkv`); both block lists are stacked. The single blocks'
q/k/v and MLP input (`attn.to_q` / `to_k` / `to_v`, `proj_mlp`) load into one head-major linear.
"""

from jdiff.models.flux.config import FluxConfig
from jdiff.models.flux.transformer import FluxTransformer2DModel
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan, Rule


def _qkv_mlp(param: str, source: str, transform: str) -> Rule:
    at = r"(.+)\.attn\.merged_qkv_mlp\." + param
    sources = (*(rf"\1.attn.{p}.{source}" for p in ("to_q", "to_k", "to_v")), rf"\1.proj_mlp.{source}")
    return Rule(at, sources, transform, heads=r"\1.attn.norm_q.scale", widths=(1, 1, 1, 4))


PLAN = Plan(
    rules=(_qkv_mlp("kernel", "weight", "torch_kernel_heads"), _qkv_mlp("bias", "bias", "heads")),
    stacked=("transformer_blocks", "single_transformer_blocks"),
)

# fp8 (quantization="fp8"): the blocks' attention and MLP linears; their AdaLN modulation (`norm1.linear`,
# `norm1_context.linear`, the single blocks' `norm.linear`), the embedders and the final layer stay as they are.
FP8 = (r"(single_)?transformer_blocks\.(?!norm).+",)
SPEC = ComponentSpec("FluxTransformer2DModel", FluxConfig, FluxTransformer2DModel, PLAN, fp8=FP8)
