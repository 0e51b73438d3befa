"""UNet2DConditionModel: parity with diffusers through the real loader (SD 1.5-, SD 2.x- and SDXL-like tiny
configs), real-size key coverage from headers (SD 1.5, SDXL base), config validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel as TorchUNet
from flax import nnx

from jdiff.errors import InputError
from jdiff.models.unet.config import UNet2DConditionConfig
from jdiff.models.unet.plan import SPEC
from jdiff.weights.config import from_dict
from tests import parity

# name -> (config, latent [B, C, H, W]); non-square latents, odd head counts, one size not a multiple of the
# total downsampling (upsamplers resize to the skip's size).
VARIANTS = {
    # SD 1.5-like: 1x1-conv projections, one head count for every level.
    "sd15": (UNet2DConditionConfig.tiny(), (2, 4, 8, 12)),
    # SD 2.x-like: heads per level, linear projections, three levels, 2 layers a block, odd latent size.
    "sd2": (
        UNet2DConditionConfig.tiny(
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(24, 40, 40), layers_per_block=2, attention_head_dim=(3, 5, 5),
            use_linear_projection=True, cross_attention_dim=48, upcast_attention=True,
        ),
        (1, 4, 10, 7),
    ),
    # SDXL-like: a plain first level, 1 and 2 transformer layers, text_time added embedding.
    "sdxl": (
        UNet2DConditionConfig.tiny(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(16, 24, 40), attention_head_dim=(1, 3, 5), transformer_layers_per_block=(1, 1, 2),
            use_linear_projection=True, cross_attention_dim=40, addition_embed_type="text_time",
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=24 + 6 * 8,
        ),
        (2, 4, 12, 8),
    ),
}  # fmt: skip
POOLED = 24


def _reference(cfg: UNet2DConditionConfig):
    ref = parity.randomized(TorchUNet(**parity.kwargs(cfg)))
    with torch.no_grad():  # norm scales near 1, so a wrong attention scale or norm still shows
        for m in ref.modules():
            if isinstance(m, torch.nn.GroupNorm | torch.nn.LayerNorm):
                m.weight += 1.0
    return ref


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_parity_with_diffusers(name, tmp_path):
    cfg, shape = VARIANTS[name]
    ref = _reference(cfg)
    got_cfg, model = parity.load(ref, SPEC, tmp_path)
    assert got_cfg == cfg

    rng = np.random.default_rng(0)
    b = shape[0]
    x = rng.standard_normal(shape).astype(np.float32)
    t = np.array([999.0, 37.5][:b], np.float32)
    text = rng.standard_normal((b, 7, cfg.cross_dim_at(0))).astype(np.float32)
    added = {}
    if cfg.addition_embed_type == "text_time":
        added = {
            "text_embeds": rng.standard_normal((b, POOLED)).astype(np.float32),
            "time_ids": np.array([[64, 48, 0, 8, 64, 48], [32, 40, 4, 0, 96, 64]][:b], np.float32),
        }
    with torch.no_grad():
        want = ref(
            torch.from_numpy(x),
            torch.from_numpy(t),
            torch.from_numpy(text),
            added_cond_kwargs={k: torch.from_numpy(v) for k, v in added.items()} or None,
        ).sample
    got = nnx.jit(lambda m, *a, **k: m(*a, **k))(
        model, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t), jnp.asarray(text),
        **{k: jnp.asarray(v) for k, v in added.items()},
    )  # fmt: skip
    assert got.shape == (shape[0], shape[2], shape[3], cfg.out_channels)
    parity.assert_close(np.asarray(got).transpose(0, 3, 1, 2), want)


def test_activations_keep_dtype():
    cfg = VARIANTS["sdxl"][0]
    graphdef, state = SPEC.abstract(cfg)
    state = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, jnp.bfloat16), state)
    model = nnx.merge(graphdef, state)
    out = nnx.eval_shape(
        lambda m: m(
            jnp.zeros((1, 8, 8, 4), jnp.bfloat16), jnp.ones(()), jnp.zeros((1, 7, 40), jnp.bfloat16),
            text_embeds=jnp.zeros((1, POOLED), jnp.bfloat16), time_ids=jnp.zeros((1, 6)),
        ),
        model,
    )  # fmt: skip
    assert out.dtype == jnp.bfloat16 and out.shape == (1, 8, 8, 4)


@pytest.mark.parametrize(
    ("preset", "missing", "stray"),
    [
        ("sd15", "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj.weight", "mid_block.attentions.1.norm.weight"),
        ("sdxl", "mid_block.attentions.0.transformer_blocks.9.attn2.to_k.weight", "add_embedding.linear_3.weight"),
    ],
)  # fmt: skip
def test_real_size_coverage(preset, missing, stray, tmp_path):
    cfg = getattr(UNet2DConditionConfig, preset)()
    layout = parity.real_layout(lambda: TorchUNet(**parity.kwargs(cfg)))
    shapes = parity.check_coverage(
        SPEC, cfg, layout, tmp_path, component="unet", missing=missing, unexpected=(stray, (320, 320))
    )
    n = parity.n_params(shapes)
    if preset == "sdxl":
        assert 2.56e9 < n < 2.57e9, n
        assert shapes["mid_block.attentions.0.transformer_blocks.attn1.to_q.kernel"] == (10, 1280, 1280)
        assert shapes["add_embedding.linear_1.kernel"] == (2816, 1280)
    else:
        assert 0.85e9 < n < 0.86e9, n
        assert shapes["down_blocks.0.attentions.0.proj_in.kernel"] == (1, 1, 320, 320)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"down_block_types": ["SimpleCrossAttnDownBlock2D", "DownBlock2D"]}, "down_block_types"),
        ({"attention_head_dim": [3, 5]}, r"block_out_channels\[1\]=48 does not split into 5 heads"),
        ({"attention_head_dim": [3, 3, 3]}, "3 entries for 2 down blocks"),
        ({"addition_embed_type": "text"}, "addition_embed_type 'text' not supported"),
        ({"class_embed_type": "timestep"}, "class_embed_type='timestep' not supported"),
        ({"time_cond_proj_dim": 256}, "time_cond_proj_dim=256 not supported"),
        ({"num_attention_heads": 8}, "num_attention_heads must be null"),
        ({"norm_num_groups": 5}, "norm_num_groups=5"),
        ({"layers_per_block": 8}, "covers up to 6 levels of 7 layers"),
    ],
)
def test_bad_config(change, match):
    with pytest.raises(InputError, match=match):
        from_dict(UNet2DConditionConfig, {**parity.kwargs(UNet2DConditionConfig.tiny()), **change})
