"""Conversion plan: diffusers `WanTransformer3DModel` -> jdiff `WanTransformer3DModel`.

The module mirrors diffusers' names, so the default rules map almost everything (the Conv3d patch embedding
weight [D, C, pt, ph, pw] becomes a channels-last kernel [pt, ph, pw, C, D]); the modulation tables and the
FLF2V image position embedding are bare parameters taken as they are. Wan2.2 A14B's two experts
(`transformer`, `transformer_2`) are two components loaded with this same spec.
"""

from jdiff.models.wan.config import WanTransformerConfig
from jdiff.models.wan.transformer import WanTransformer3DModel
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan, Rule

PLAN = Plan(
    rules=(
        Rule(r"(.*scale_shift_table)", r"\1"),
        Rule(r"(condition_embedder\.image_embedder\.pos_embed)", r"\1"),
    ),
    stacked=("blocks",),
    ignore=(
        # diffusers' `_keys_to_ignore_on_load_unexpected = ["norm_added_q"]`: early diffusers I2V exports
        # carry an image-query norm that the model never had.
        r"blocks\.\d+\.attn2\.norm_added_q\.(weight|bias)",
    ),
    # diffusers' `_keep_in_fp32_modules` ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"),
    # applied by diffusers under every dtype: any parameter with one of those names as a path component.
    # LoRA files trained on the original Wan checkpoints (`diffusion_model.` keys: Wan's repository, LightX2V;
    # musubi-tuner's kohya names) name its modules as diffusers' `_convert_non_diffusers_wan_lora_to_diffusers`
    # renames them.
    lora_aliases=(
        (r"blocks\.(\d+)\.self_attn\.([qkv])", r"blocks.\1.attn1.to_\2"),
        (r"blocks\.(\d+)\.self_attn\.o", r"blocks.\1.attn1.to_out.0"),
        (r"blocks\.(\d+)\.cross_attn\.([qkv])", r"blocks.\1.attn2.to_\2"),
        (r"blocks\.(\d+)\.cross_attn\.o", r"blocks.\1.attn2.to_out.0"),
        (r"blocks\.(\d+)\.cross_attn\.([kv])_img", r"blocks.\1.attn2.add_\2_proj"),
        (r"blocks\.(\d+)\.ffn\.0", r"blocks.\1.ffn.net.0.proj"),
        (r"blocks\.(\d+)\.ffn\.2", r"blocks.\1.ffn.net.2"),
        (r"head\.head", "proj_out"),
        (r"text_embedding\.0", "condition_embedder.text_embedder.linear_1"),
        (r"text_embedding\.2", "condition_embedder.text_embedder.linear_2"),
        (r"time_embedding\.0", "condition_embedder.time_embedder.linear_1"),
        (r"time_embedding\.2", "condition_embedder.time_embedder.linear_2"),
        (r"time_projection\.1", "condition_embedder.time_proj"),
        (r"img_emb\.proj\.1", "condition_embedder.image_embedder.ff.net.0.proj"),
        (r"img_emb\.proj\.3", "condition_embedder.image_embedder.ff.net.2"),
    ),
    keep_fp32=(
        r"condition_embedder\.time_embedder\..+",
        r"(blocks\.)?scale_shift_table",
        r"(.+\.)?norm[123]\.(scale|bias)",
    ),
)

# fp8 (quantization="fp8"): every linear of the blocks (their modulation is the `scale_shift_table`
# parameter); the patch, text and time embedders and the output projection stay as they are.
FP8 = (r"blocks\..+",)
SPEC = ComponentSpec("WanTransformer3DModel", WanTransformerConfig, WanTransformer3DModel, PLAN, fp8=FP8)
