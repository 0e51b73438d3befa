"""Each DiT's fp8 rule (`SPEC.fp8` in its plan.py) picks its blocks' attention and MLP linears and keeps what
the reference keeps in high precision: modulation, embedders, the final layer (abstract modules, no weights)."""

import importlib
import re

import pytest
from flax import nnx

from jdiff.layers.linear import Linear
from jdiff.pipelines.quantize import fp8_linears

EMBED_FINAL = {  # every family keeps these outside its blocks
    "flux": ["x_embedder", "context_embedder", "norm_out.linear", "proj_out"],
    "flux2": ["x_embedder", "context_embedder", "norm_out.linear", "proj_out"],
    "wan": ["condition_embedder.time_proj", "condition_embedder.text_embedder.linear_1", "proj_out"],
    "qwen_image": ["img_in", "txt_in", "norm_out.linear", "proj_out"],
    "z_image": ["x_embedder", "cap_embedder.1", "t_embedder.mlp.0", "final_layer.linear"],
    "hunyuan_video15": ["context_embedder.proj_in", "image_embedder.linear_1", "norm_out.linear", "proj_out"],
}
MODULATION = {  # AdaLN linears inside or beside the blocks
    "flux": ["transformer_blocks.norm1.linear", "transformer_blocks.norm1_context.linear",
             "single_transformer_blocks.norm.linear"],
    "flux2": ["double_stream_modulation_img.linear", "single_stream_modulation.linear"],
    "wan": [],  # its blocks modulate with the scale_shift_table parameter
    "qwen_image": ["transformer_blocks.img_mod.1", "transformer_blocks.txt_mod.1"],
    "z_image": ["layers.adaLN_modulation.0", "noise_refiner.adaLN_modulation.0", "final_layer.adaLN_modulation.1"],
    "hunyuan_video15": ["transformer_blocks.norm1.linear", "transformer_blocks.norm1_context.linear",
                        "context_embedder.token_refiner.refiner_blocks.norm_out.linear"],
}  # fmt: skip
FP8 = {  # a sample of what must be fp8
    "flux": ["transformer_blocks.attn.to_q", "transformer_blocks.ff_context.net.2",
             "single_transformer_blocks.proj_mlp", "single_transformer_blocks.proj_out"],
    "flux2": ["transformer_blocks.attn.add_k_proj", "transformer_blocks.ff.linear_in",
              "single_transformer_blocks.attn.to_qkv_mlp_proj", "single_transformer_blocks.attn.to_out"],
    "wan": ["blocks.attn1.to_q", "blocks.attn2.to_k", "blocks.attn2.to_out.0", "blocks.ffn.net.0.proj",
            "blocks.ffn.net.2"],
    "qwen_image": ["transformer_blocks.attn.to_q", "transformer_blocks.attn.to_add_out",
                   "transformer_blocks.img_mlp.net.0.proj", "transformer_blocks.txt_mlp.net.2"],
    "z_image": ["layers.attention.to_q", "layers.feed_forward.w2", "noise_refiner.attention.to_out.0",
                "context_refiner.feed_forward.w3"],
    "hunyuan_video15": ["transformer_blocks.attn.to_v", "transformer_blocks.attn.add_q_proj",
                        "transformer_blocks.ff.net.0.proj", "transformer_blocks.ff_context.net.2"],
}  # fmt: skip


def _linears(family: str):
    spec = importlib.import_module(f"jdiff.models.{family}.plan").SPEC
    module = nnx.merge(*spec.abstract(spec.config_cls.tiny()))
    every = {".".join(map(str, p)) for p, n in nnx.iter_graph(module) if isinstance(n, Linear)}
    return every, {p for p, _ in fp8_linears(module, spec.fp8)}


@pytest.mark.parametrize("family", sorted(FP8))
def test_fp8_rule(family):
    every, fp8 = _linears(family)
    assert set(FP8[family]) <= fp8, sorted(fp8)
    kept = set(EMBED_FINAL[family]) | set(MODULATION[family])
    assert kept <= every and not kept & fp8, sorted(kept & fp8)
    # Nothing named like an embedding, a modulation or a norm is quantized; no text refiner either.
    assert not [p for p in fp8 if re.search(r"embed|mod|norm|refiner_blocks|final_layer|proj_out$", p)
                and not p.startswith(("single_transformer_blocks.proj_out",))], sorted(fp8)  # fmt: skip


def test_unet_has_no_fp8_rule():
    from jdiff.models.unet.plan import SPEC

    assert SPEC.fp8 == ()
