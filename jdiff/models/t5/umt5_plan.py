"""Conversion plan: transformers `UMT5EncoderModel` state dict -> `jdiff.models.t5.UMT5EncoderModel`.

Every parameter follows the default rules (kernel <- weight transposed, scale and embedding <- weight) with
`encoder.block` stacked over layers: unlike T5, each layer's relative position bias table sits in its own
block (`encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight`) and is stacked with it.
"""

from jdiff.models.t5.config import UMT5Config
from jdiff.models.t5.encoder import UMT5EncoderModel
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan

PLAN = Plan(
    stacked=("encoder.block",),
    ignore=(
        # Tied to `shared.weight` (`_tied_weights_keys`): save_pretrained writes it once, as `shared.weight`
        # (Wan's text_encoder checkpoints hold only that), but other exports may carry the duplicate.
        r"encoder\.embed_tokens\.weight",
    ),
    # transformers' `_keep_in_fp32_modules = ["wo"]` (float16 only); the module runs wo in the kernel's dtype.
    keep_fp32_with_fp16=(r"encoder\.block\.layer\.1\.DenseReluDense\.wo\.kernel",),
)

SPEC = ComponentSpec("UMT5EncoderModel", UMT5Config, UMT5EncoderModel, PLAN)
