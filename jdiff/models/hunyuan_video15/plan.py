"""Conversion plan: diffusers `HunyuanVideo15Transformer3DModel` -> jdiff `HunyuanVideo15Transformer3DModel`.

The module mirrors diffusers' names, so the default rules map everything (the Conv3d patch embedding weight
[D, C, pt, ph, pw] becomes a channels-last kernel [pt, ph, pw, C, D]); the dual-stream blocks and the text
refiner's blocks are stacked. diffusers keeps no parameter of this model in float32.
"""

from jdiff.models.hunyuan_video15.config import HunyuanVideo15Config
from jdiff.models.hunyuan_video15.transformer import HunyuanVideo15Transformer3DModel
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan

PLAN = Plan(stacked=("transformer_blocks", "context_embedder.token_refiner.refiner_blocks"))

# fp8 (quantization="fp8"): the double-stream blocks' attention and MLP linears; their AdaLN modulation
# (`norm1.linear`, `norm1_context.linear`), the text token refiner, the embedders and the final layer stay as
# they are.
FP8 = (r"transformer_blocks\.(?!norm1).+",)
SPEC = ComponentSpec(
    "HunyuanVideo15Transformer3DModel", HunyuanVideo15Config, HunyuanVideo15Transformer3DModel, PLAN, fp8=FP8
)
