"""Wan transformer parity with diffusers through the real loader, rope tables, real-size shape / key coverage."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel as TorchWan
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from flax import nnx

from jdiff.errors import ConversionError, InputError
from jdiff.models.wan.config import WanTransformerConfig
from jdiff.models.wan.plan import SPEC
from jdiff.models.wan.rope import wan_rope_tables
from jdiff.weights.config import from_dict
from jdiff.weights.loading import check, param_shapes
from jdiff.weights.plan import export
from jdiff.weights.safetensors import open_weights
from tests import parity
from tests.utils import write_sparse_safetensors

# The released diffusers configs (diffusers `scripts/convert_wan_to_diffusers.py`): the config's presets.
WAN21_T2V_1_3B = parity.kwargs(WanTransformerConfig.t2v_1_3b())
WAN21_T2V_14B = parity.kwargs(WanTransformerConfig.t2v_14b())
WAN21_I2V_14B = parity.kwargs(WanTransformerConfig.i2v_14b())
WAN22_I2V_A14B = parity.kwargs(WanTransformerConfig.i2v_a14b())
WAN22_TI2V_5B = parity.kwargs(WanTransformerConfig.ti2v_5b())
TINY = parity.kwargs(WanTransformerConfig.tiny())


# One compile is faster than running the model op by op on CPU.
_call = nnx.jit(lambda model, *args: model(*args))


def _reference(tmp_path, cfg: dict) -> TorchWan:
    """The randomised reference, saved and read back by jdiff's loader: (reference, jdiff config, jdiff model)."""
    ref = parity.randomized(TorchWan(**cfg))
    return (ref, *parity.load(ref, SPEC, tmp_path))


@pytest.mark.parametrize(
    "variant,latent",
    [
        ("t2v", (3, 4, 6)),  # non-square, multi-frame
        ("t2v_patch_t2_no_cross_norm", (4, 4, 6)),
        ("i2v", (2, 4, 4)),
        ("flf2v", (2, 4, 2)),
        ("ti2v_per_token_timestep", (3, 4, 6)),
    ],
)
def test_parity(tmp_path, variant, latent):
    cfg = dict(TINY)
    b, t, n_img = 2, 7, 5
    if variant == "t2v_patch_t2_no_cross_norm":
        cfg.update(patch_size=[2, 2, 2], num_attention_heads=3, attention_head_dim=16, out_channels=None)
        cfg["cross_attn_norm"] = False
    if variant in ("i2v", "flf2v"):
        cfg.update(in_channels=8, image_dim=20, added_kv_proj_dim=24)
        t = 512  # diffusers splits image tokens off the text assuming exactly 512 text tokens
    if variant == "flf2v":
        cfg.update(pos_embed_seq_len=2 * n_img)
    if variant == "ti2v_per_token_timestep":
        cfg.update(in_channels=6, out_channels=6)
    ref, jcfg, model = _reference(tmp_path, cfg)

    f, h, w = latent
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, cfg["in_channels"], f, h, w)).astype(np.float32)
    ctx = rng.standard_normal((b, t, 16)).astype(np.float32)
    img = None
    if variant in ("i2v", "flf2v"):
        img = rng.standard_normal((2 * b if variant == "flf2v" else b, n_img, 20)).astype(np.float32)
    timestep = np.array([999.0, 250.5], np.float32)
    if variant == "ti2v_per_token_timestep":
        # Wan2.2 TI2V: the first (conditioning) frame's tokens at timestep 0, the rest at the step's t.
        pt, ph, pw = cfg["patch_size"]
        grid = (f // pt, h // ph, w // pw)
        mask = np.ones((b, *grid), np.float32)
        mask[:, 0] = 0
        timestep = (mask * timestep[:, None, None, None]).reshape(b, -1)
    with torch.no_grad():
        want = ref(
            hidden_states=torch.from_numpy(x),
            timestep=torch.from_numpy(timestep),
            encoder_hidden_states=torch.from_numpy(ctx),
            encoder_hidden_states_image=None if img is None else torch.from_numpy(img),
        ).sample.numpy()
    rope = tuple(jnp.asarray(a) for a in wan_rope_tables(jcfg, f, h, w))
    got = _call(
        model,
        jnp.asarray(x.transpose(0, 2, 3, 4, 1)),
        jnp.asarray(timestep),
        jnp.asarray(ctx),
        rope,
        None if img is None else jnp.asarray(img),
    )
    assert got.shape == (b, f, h, w, cfg["out_channels"] or cfg["in_channels"])
    parity.assert_close(got, want.transpose(0, 2, 3, 4, 1))


@pytest.mark.parametrize(
    "head_dim,patch,latent", [(12, (1, 2, 2), (3, 4, 6)), (128, (1, 2, 2), (21, 60, 104))]
)
def test_rope_tables_match_diffusers(head_dim, patch, latent):
    cfg = WanTransformerConfig(attention_head_dim=head_dim, patch_size=patch)
    cos, sin = wan_rope_tables(cfg, *latent)
    want_cos, want_sin = WanRotaryPosEmbed(head_dim, patch, cfg.rope_max_seq_len)(torch.zeros(1, 1, *latent))
    np.testing.assert_array_equal(cos, want_cos.numpy().reshape(cos.shape))
    np.testing.assert_array_equal(sin, want_sin.numpy().reshape(sin.shape))


@pytest.mark.parametrize(
    "name,config,n_params",
    [
        ("Wan2.1-T2V-1.3B", WAN21_T2V_1_3B, 1.42e9),
        ("Wan2.1-T2V-14B", WAN21_T2V_14B, 14.29e9),
        ("Wan2.1-I2V-14B", WAN21_I2V_14B, 16.39e9),
        ("Wan2.2-I2V-A14B", WAN22_I2V_A14B, 14.29e9),
        ("Wan2.2-TI2V-5B", WAN22_TI2V_5B, 5.0e9),
    ],
)
def test_real_size_shapes_and_keys(tmp_path, name, config, n_params):
    cfg = from_dict(WanTransformerConfig, {"_class_name": "WanTransformer3DModel", **config})
    shapes = param_shapes(SPEC.abstract(cfg)[1])
    d, layers = cfg.inner_dim, cfg.num_layers
    assert shapes["patch_embedding.kernel"] == (1, 2, 2, cfg.in_channels, d)
    assert shapes["blocks.attn1.to_q.kernel"] == (layers, d, d)
    assert shapes["blocks.ffn.net.0.proj.kernel"] == (layers, d, cfg.ffn_dim)
    assert shapes["blocks.scale_shift_table"] == (layers, 1, 6, d)
    assert shapes["proj_out.kernel"] == (d, 4 * cfg.out_channels)
    assert ("blocks.attn2.add_k_proj.kernel" in shapes) == (cfg.image_dim is not None)
    total = sum(int(np.prod(s)) for s in shapes.values())
    assert abs(total / n_params - 1) < 0.01, total

    ref_shapes = parity.real_layout(lambda: TorchWan(**config).to(torch.bfloat16))
    write_sparse_safetensors(tmp_path / "diffusion_pytorch_model.safetensors", ref_shapes)
    assert len(check(SPEC, cfg, open_weights(tmp_path), component="transformer")) == len(shapes)

    broken = dict(ref_shapes)
    del broken[f"blocks.{layers - 1}.attn1.norm_k.weight"]
    broken["blocks.0.attn1.to_q.lora_A.weight"] = ((16, d), "BF16")
    broken["blocks.3.attn2.norm_added_q.weight"] = ((d,), "BF16")  # ignored, as diffusers does
    write_sparse_safetensors(tmp_path / "diffusion_pytorch_model.safetensors", broken)
    with pytest.raises(ConversionError) as e:
        check(SPEC, cfg, open_weights(tmp_path), component="transformer")
    assert f"blocks.{layers - 1}.attn1.norm_k.weight" in str(e.value)
    assert "blocks.0.attn1.to_q.lora_A.weight" in str(e.value)
    assert "norm_added_q" not in str(e.value)
    assert len(e.value.problems) == 2


def test_export_round_trips(tmp_path):
    ref, _, model = _reference(tmp_path, dict(TINY, image_dim=20, added_kv_proj_dim=24, pos_embed_seq_len=4))
    params = {".".join(map(str, p)): v[...] for p, v in nnx.to_flat_state(nnx.state(model))}
    exported = export(SPEC.plan, params)
    want = ref.state_dict()
    assert sorted(exported) == sorted(want)
    for k, v in want.items():
        np.testing.assert_array_equal(exported[k], v.numpy())


def test_fp32_islands_under_bf16(tmp_path):
    ref = parity.randomized(TorchWan(**dict(TINY, image_dim=20, added_kv_proj_dim=24)))
    _, model = parity.load(ref, SPEC, tmp_path, dtype=jnp.bfloat16)
    assert model.condition_embedder.time_embedder.linear_1.kernel.dtype == jnp.float32
    assert model.scale_shift_table.dtype == model.blocks.scale_shift_table.dtype == jnp.float32
    assert model.blocks.norm2.scale.dtype == jnp.float32
    assert model.condition_embedder.image_embedder.norm1.scale.dtype == jnp.float32
    assert (
        model.blocks.attn1.to_q.kernel.dtype
        == model.condition_embedder.time_proj.kernel.dtype
        == jnp.bfloat16
    )
    cfg = from_dict(WanTransformerConfig, dict(TINY, image_dim=20, added_kv_proj_dim=24))
    rope = tuple(jnp.asarray(a) for a in wan_rope_tables(cfg, 1, 2, 2))
    out = _call(
        model, jnp.ones((1, 1, 2, 2, 4)), jnp.array([500.0]), jnp.ones((1, 3, 16)), rope, jnp.ones((1, 2, 20))
    )
    assert out.dtype == jnp.bfloat16 and out.shape == (1, 1, 2, 2, 4)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(attention_head_dim=13), "attention_head_dim"),
        (dict(qk_norm="rms_norm"), "qk_norm"),
        (dict(image_dim=1280), "added_kv_proj_dim"),
        (dict(image_dim=1280, added_kv_proj_dim=4096), "added_kv_proj_dim"),
        (dict(patch_size=[2, 2]), "patch_size"),
        (dict(pos_embed_seq_len=514), "pos_embed_seq_len"),
    ],
)
def test_bad_config(change, match):
    with pytest.raises(InputError, match=match):
        from_dict(WanTransformerConfig, {**WAN21_T2V_1_3B, **change})


def test_bad_inputs():
    cfg = from_dict(WanTransformerConfig, TINY)
    with pytest.raises(InputError, match="multiples of the patch size"):
        wan_rope_tables(cfg, 3, 5, 6)
    with pytest.raises(InputError, match="rope_max_seq_len"):
        wan_rope_tables(cfg, 33, 4, 4)
