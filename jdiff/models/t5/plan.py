"""Conversion plan: transformers `T5EncoderModel` state dict -> `jdiff.models.t5.T5EncoderModel`.

Everything but the relative position bias follows the default rules (kernel <- weight transposed, scale and
embedding <- weight), with `encoder.block` stacked over layers.
"""

from jdiff.models.t5.config import T5Config
from jdiff.models.t5.encoder import T5EncoderModel
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan, Rule

PLAN = Plan(
    rules=(
        # transformers gives only block 0 a relative_attention_bias and passes its output to every layer;
        # jdiff holds the one table beside the stack.
        Rule(
            r"encoder\.relative_attention_bias\.embedding",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        ),
    ),
    stacked=("encoder.block",),
    ignore=(
        # Tied to `shared.weight`: save_pretrained drops it, but older exports may still carry the duplicate.
        r"encoder\.embed_tokens\.weight",
        # transformers' `_keys_to_ignore_on_load_unexpected` for T5EncoderModel: a full T5 checkpoint's
        # decoder is dropped when only the encoder is loaded.
        r"decoder\..*",
    ),
    # transformers' `_keep_in_fp32_modules = ["wo"]` (float16 only); the module runs wo in the kernel's dtype.
    keep_fp32_with_fp16=(r"encoder\.block\.layer\.1\.DenseReluDense\.wo\.kernel",),
)

SPEC = ComponentSpec("T5EncoderModel", T5Config, T5EncoderModel, PLAN)
