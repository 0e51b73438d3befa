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
