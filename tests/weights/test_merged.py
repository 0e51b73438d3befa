"""Projections merged at load (q/k/v, FLUX's single blocks' MLP input with them): the head-major layout, slices
by heads (tensor-parallel loading), export back to the reference keys, and bad sources named."""

import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import save_file

from jdiff.errors import ConversionError
from jdiff.layers import Linear, RMSNorm
from jdiff.weights.loading import param_shapes, source_shapes
from jdiff.weights.plan import Plan, Rule, export, materialize, materialize_slice, merged_parts, resolve
from jdiff.weights.safetensors import open_weights

N, H = 3, 4  # odd head count
D = N * H
PLAN = Plan(
    rules=(
        Rule(r"(.+)\.qkv_mlp\.kernel", tuple(rf"\1.{p}.weight" for p in ("to_q", "to_k", "to_v", "mlp")),
             "torch_kernel_heads", heads=r"\1.norm_q.scale", widths=(1, 1, 1, 4)),
        Rule(r"(.+)\.qkv_mlp\.bias", tuple(rf"\1.{p}.bias" for p in ("to_q", "to_k", "to_v", "mlp")), "heads",
             heads=r"\1.norm_q.scale", widths=(1, 1, 1, 4)),
    ),
    stacked=("blocks",),
)  # fmt: skip


class Attn(nnx.Module):
    def __init__(self, *, rngs):
        self.merged_qkv = Linear(D, 3 * D, rngs=rngs)  # the default rules' name
        self.qkv_mlp = Linear(D, 7 * D, rngs=rngs)  # the plan's rule above
        self.norm_q = RMSNorm(H)


class Model(nnx.Module):
    def __init__(self, *, rngs):
        @nnx.split_rngs(splits=2)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make(r):
            return Attn(rngs=r)

        self.blocks = make(rngs)


def _torch_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(2):
        for p, n in (("to_q", D), ("to_k", D), ("to_v", D), ("mlp", 4 * D)):
            sd[f"blocks.{i}.{p}.weight"] = torch.randn(n, D, generator=g)
            sd[f"blocks.{i}.{p}.bias"] = torch.randn(n, generator=g)
        sd[f"blocks.{i}.norm_q.weight"] = torch.randn(H, generator=g)
    return sd


def _resolved(tmp_path, sd):
    save_file(sd, tmp_path / "m.safetensors")
    weights = open_weights(tmp_path)
    state = nnx.state(nnx.eval_shape(lambda: Model(rngs=nnx.Rngs(0))))
    targets = param_shapes(state)
    assignments = resolve(PLAN, targets, source_shapes(weights), component="toy")
    return {a.target: a for a in assignments}, weights, targets


def test_head_major_layout_and_export_round_trip(tmp_path):
    sd = _torch_state()
    by_target, weights, targets = _resolved(tmp_path, sd)
    x = np.random.default_rng(0).standard_normal((5, D)).astype(np.float32)
    for layer in range(2):
        w = {p: sd[f"blocks.{layer}.{p}.weight"].numpy() for p in ("to_q", "to_k", "to_v", "mlp")}
        b = {p: sd[f"blocks.{layer}.{p}.bias"].numpy() for p in w}
        kernel = materialize(by_target["blocks.qkv_mlp.kernel"], weights.read)[layer]
        bias = materialize(by_target["blocks.qkv_mlp.bias"], weights.read)[layer]
        # Per head n: its q, k, v, then its quarter... of the MLP input: [N, 7H].
        y = (x @ kernel + bias).reshape(5, N, 7 * H)
        for i, p in enumerate(("to_q", "to_k", "to_v")):
            want = (x @ w[p].T + b[p]).reshape(5, N, H)
            np.testing.assert_allclose(y[..., i * H : (i + 1) * H], want, rtol=1e-5, atol=1e-5, err_msg=p)
        mlp = (x @ w["mlp"].T + b["mlp"]).reshape(5, N, 4 * H)
        np.testing.assert_allclose(y[..., 3 * H :], mlp, rtol=1e-5, atol=1e-5)
        # The default rules: q/k/v only, [N, 3H].
        qkv = materialize(by_target["blocks.merged_qkv.kernel"], weights.read)[layer].reshape(D, N, 3, H)
        np.testing.assert_array_equal(qkv[:, :, 1], w["to_k"].T.reshape(D, N, H))

    params = {t: materialize(a, weights.read) for t, a in by_target.items()}
    exported = export(PLAN, params)
    # The q/k/v sources feed two targets here (both merged layers); each exports them back unchanged.
    assert sorted(exported) == sorted(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(exported[k], v.numpy(), err_msg=k)

    parts = merged_parts(PLAN, "blocks.qkv_mlp.kernel", targets)
    assert [s for s, _ in parts] == [f"blocks.{{layer}}.{p}.weight" for p in ("to_q", "to_k", "to_v", "mlp")]
    assert list(parts[1][1][:H]) == list(range(H, 2 * H)) and len(parts[3][1]) == 4 * D


def test_slices_by_whole_heads_read_only_those_heads(tmp_path):
    """A split of the merged axis by heads (the tensor axis) gives each shard its heads' q, k, v and MLP
    share, read from the matching source rows; any other slice still comes out right (read whole)."""
    sd = _torch_state(1)
    by_target, weights, _ = _resolved(tmp_path, sd)
    reads = []

    class Spy:
        def __init__(self, a):
            self.a, self.shape = a, a.shape

        def __getitem__(self, index):
            out = self.a[index]
            reads.append(out.size)
            return out

        def __array__(self, dtype=None, copy=None):
            reads.append(self.a.size)
            return self.a

    def read(key):
        return Spy(weights.read(key))

    for target in ("blocks.qkv_mlp.kernel", "blocks.qkv_mlp.bias", "blocks.merged_qkv.kernel"):
        a = by_target[target]
        full = materialize(a, weights.read)
        width = full.shape[-1] // N
        for index in (
            (slice(None), slice(None), slice(width, 3 * width)),  # heads 1 and 2 (a tensor shard)
            (slice(1, 2), slice(0, 6), slice(0, width)),  # a layer, some inputs, head 0
            (slice(None), slice(None), slice(1, width + 3)),  # not whole heads: read whole, still right
        ):
            index = index[: full.ndim - 1] + index[-1:]
            reads.clear()
            got = materialize_slice(a, read, index)
            np.testing.assert_array_equal(got, full[index], err_msg=f"{target} {index}")
            if index[-1].start % width == 0:
                assert sum(reads) == got.size, (target, index, reads)


def test_sources_that_do_not_merge_are_named(tmp_path):
    sd = _torch_state()
    sd["blocks.1.mlp.weight"] = sd["blocks.1.mlp.weight"][: 2 * D]  # MLP input of the wrong width
    with pytest.raises(ConversionError) as e:
        _resolved(tmp_path, sd)
    msg = str(e.value)
    assert "blocks.qkv_mlp.kernel" in msg and "blocks.1.mlp.weight" in msg and "ratio" in msg, msg

    sd = _torch_state()
    for i in range(2):
        sd[f"blocks.{i}.norm_q.weight"] = torch.ones(5)  # a head dim that does not divide D
    with pytest.raises(ConversionError) as e:
        save_file(sd, tmp_path / "m.safetensors")
        state = nnx.state(nnx.eval_shape(lambda: Model(rngs=nnx.Rngs(0))))
        targets = dict(param_shapes(state), **{"blocks.norm_q.scale": (2, 5)})
        resolve(PLAN, targets, source_shapes(open_weights(tmp_path)), component="toy")
    assert "not a multiple of the head dim 5" in str(e.value)
    with pytest.raises(ValueError, match="grouped"):
        Rule("x", ("a", "b"), "torch_kernel_heads")
