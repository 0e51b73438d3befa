"""FLUX.1's q/k/v (and the single blocks' MLP input) merged at load: exported back to exactly diffusers' keys
and tensors, and each merged column block is its torch projection."""

import numpy as np
from diffusers import FluxTransformer2DModel as TorchFlux
from flax import nnx

from jdiff.models.flux.config import FluxConfig
from jdiff.models.flux.plan import SPEC
from jdiff.weights.plan import export
from tests import parity


def test_export_round_trips_and_blocks_are_the_torch_projections(tmp_path):
    cfg = FluxConfig.tiny(num_layers=2, num_single_layers=2, num_attention_heads=3, attention_head_dim=8,
                          axes_dims_rope=(2, 2, 4), joint_attention_dim=20)  # fmt: skip
    ref = parity.randomized(TorchFlux(**parity.kwargs(cfg)), 0.1)
    _, model = parity.load(ref, SPEC, tmp_path)
    params = {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model))}
    want = {k: v.numpy() for k, v in ref.state_dict().items()}
    exported = export(SPEC.plan, params)
    assert sorted(exported) == sorted(want)
    for k, v in want.items():
        np.testing.assert_array_equal(exported[k], v, err_msg=k)

    n, h, d = 3, 8, 24
    single = params["single_transformer_blocks.attn.merged_qkv_mlp.kernel"][1].reshape(d, n, 7 * h)
    blocks = ("attn.to_q", "attn.to_k", "attn.to_v")
    for i, name in enumerate(blocks):
        w = want[f"single_transformer_blocks.1.{name}.weight"].T.reshape(d, n, h)
        np.testing.assert_array_equal(single[..., i * h : (i + 1) * h], w, err_msg=name)
    mlp = want["single_transformer_blocks.1.proj_mlp.weight"].T.reshape(d, n, 4 * h)
    np.testing.assert_array_equal(single[..., 3 * h :], mlp)
    text = params["transformer_blocks.attn.merged_added_qkv.bias"][0].reshape(n, 3, h)
    torch_k = want["transformer_blocks.0.attn.add_k_proj.bias"].reshape(n, h)
    np.testing.assert_array_equal(text[:, 1], torch_k)
    assert not np.array_equal(text[:, 0], torch_k)


def test_single_blocks_mlp_apart_computes_the_same(tmp_path, monkeypatch):
    """The experiment switch (benchmarks/profile_step.py --single-mlp apart): `proj_mlp` a linear of its
    own, q/k/v still merged, loaded from the same files by the same plan, gives the merged model's output."""
    import jax.numpy as jnp

    import jdiff.models.flux.transformer as flux_module
    from jdiff.layers.rope import rope_cos_sin
    from jdiff.weights.loading import load_component

    cfg = FluxConfig.tiny(num_layers=1, num_single_layers=2, num_attention_heads=3, attention_head_dim=8,
                          axes_dims_rope=(2, 2, 4), joint_attention_dim=20)  # fmt: skip
    ref = parity.randomized(TorchFlux(**parity.kwargs(cfg)), 0.1)
    _, merged = parity.load(ref, SPEC, tmp_path)
    monkeypatch.setattr(flux_module, "MERGE_SINGLE_MLP", False)
    _, apart = load_component(SPEC, tmp_path)
    assert apart.single_transformer_blocks.proj_mlp.kernel.shape == (2, 24, 96)
    rng = np.random.default_rng(0)
    x, ctx = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((1, 6, 64), (1, 4, 20)))
    pooled = jnp.asarray(rng.standard_normal((1, 16)), jnp.float32)
    ids = np.stack([np.zeros(10), np.arange(10) // 3, np.arange(10) % 3], 1)
    rope = tuple(jnp.asarray(a) for a in rope_cos_sin(ids, (2, 2, 4), 10000.0))
    t, g = jnp.asarray([0.6]), jnp.asarray([3.0])
    np.testing.assert_allclose(
        np.asarray(apart(x, ctx, pooled, t, rope, guidance=g)),
        np.asarray(merged(x, ctx, pooled, t, rope, guidance=g)),
        rtol=1e-5,
        atol=1e-5,
    )
