"""fp8 linears (`jdiff.layers.quant`, `Linear.quantize_fp8`): the recipe against a numpy reference, its error
bounds, stacked layers under the scan, and LoRA on top."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from jdiff.layers import lora, quant, stack
from jdiff.layers.linear import Linear
from tests.utils import rel_err

E4M3 = ml_dtypes.float8_e4m3fn
D_IN, D_OUT = 40, 24  # a linear's input and output widths (odd-ish, not equal)


def _np_quantize(a: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """torchao's PerRow recipe in numpy: scale = max(amax, EPS) / 448 along `axis`, q = e4m3(clip(a / s))."""
    a = a.astype(np.float32)
    scale = np.maximum(np.abs(a).max(axis=axis, keepdims=True), np.float32(quant.EPS)) / np.float32(448)
    return np.clip(a / scale, -448, 448).astype(E4M3), scale


def _np_linear(x, kernel, bias):
    """The recipe's output for x [.., D_IN], kernel [D_IN, D_OUT]: both operands quantized, f32 accumulation."""
    xq, xs = _np_quantize(x, -1)
    wq, ws = _np_quantize(kernel, 0)
    y = xq.astype(np.float32) @ wq.astype(np.float32)
    return y * xs * ws + (0 if bias is None else bias)


def _linear(rngs_seed=0, use_bias=True) -> Linear:
    layer = Linear(D_IN, D_OUT, use_bias=use_bias, rngs=nnx.Rngs(rngs_seed))
    if use_bias:
        layer.bias = layer.bias.replace(jax.random.normal(jax.random.key(9), (D_OUT,)) * 0.1)
    return layer


def test_weight_round_trip_within_e4m3_rounding():
    k = np.array(jax.random.normal(jax.random.key(0), (3, D_IN, D_OUT)) * 0.02)
    k[1, :, 5] = 0.0  # an all-zero output channel: finite scale, exact zeros
    w_q, scale = quant.quantize_weight(jnp.asarray(k))
    assert w_q.dtype == quant.FP8 and w_q.shape == (3, D_OUT, D_IN) and scale.shape == (3, D_OUT)
    assert scale.dtype == jnp.float32 and np.isfinite(np.asarray(scale)).all()
    q = np.asarray(w_q.astype(jnp.float32))
    # Each channel's largest magnitude lands on 448 (the scale is amax / 448); the zero channel stays zero.
    amax = np.abs(q).max(axis=-1)
    assert np.allclose(np.delete(amax.ravel(), 1 * D_OUT + 5), 448.0) and amax[1, 5] == 0
    back = np.asarray(quant.dequantize_weight(w_q, scale))
    # e4m3: 3 mantissa bits, so a normal value rounds within 2^-4 of itself; below 2^-6 (scaled) the
    # subnormal spacing 2^-9 bounds the absolute error by 2^-10 in scaled units.
    bound = np.maximum(2.0**-4 * np.abs(k), 2.0**-10 * np.asarray(scale)[:, None, :])
    assert (np.abs(back - k) <= bound * (1 + 1e-6)).all()
    assert rel_err(back, k) < 0.04


def test_tokens_scale_per_row_and_survive_zeros():
    x = np.array(jax.random.normal(jax.random.key(1), (2, 7, D_IN)), np.float32)
    x[0, 3] = 0.0
    x_q, s = quant.quantize_tokens(jnp.asarray(x))
    assert x_q.shape == x.shape and s.shape == (2, 7, 1)
    q = np.asarray(x_q.astype(jnp.float32))
    assert np.isfinite(q).all() and (q[0, 3] == 0).all()
    assert np.allclose(np.delete(np.abs(q).max(-1).ravel(), 3), 448.0)
    want_q, want_s = _np_quantize(x, -1)
    np.testing.assert_array_equal(q, want_q.astype(np.float32))
    np.testing.assert_allclose(np.asarray(s), want_s, rtol=1e-6)


def test_bf16_scales_round_as_torchao():
    """torchao divides a bfloat16 amax by 448 in bfloat16: the scales are bfloat16 values, for tokens and
    weights alike, and the quantized values follow from them (jitted: XLA must not drop the rounding)."""
    bf16 = ml_dtypes.bfloat16
    x = (np.array(jax.random.normal(jax.random.key(3), (6, D_IN))) * 3).astype(bf16)
    k = (np.array(jax.random.normal(jax.random.key(4), (D_IN, D_OUT))) * 0.02).astype(bf16)

    def want(a, axis):
        amax = np.abs(a).max(axis=axis, keepdims=True).astype(np.float32)
        scale = (amax / np.float32(448)).astype(bf16).astype(np.float32)  # torch: bf16 / 448 -> bf16
        return np.clip(a.astype(np.float32) / scale, -448, 448).astype(E4M3), scale

    x_q, x_s = jax.jit(quant.quantize_tokens)(jnp.asarray(x))
    w_q, w_s = quant.quantize_weight(jnp.asarray(k))
    (wx_q, wx_s), (wk_q, wk_s) = want(x, -1), want(k, 0)
    np.testing.assert_array_equal(np.asarray(x_s), wx_s)
    np.testing.assert_array_equal(np.asarray(w_s), wk_s[0])
    np.testing.assert_array_equal(np.asarray(x_q.astype(jnp.float32)), wx_q.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(w_q.astype(jnp.float32)).T, wk_q.astype(np.float32))


@pytest.mark.parametrize("use_bias", [True, False])
def test_fp8_linear_is_the_recipe_and_close_to_float32(use_bias):
    layer = _linear(use_bias=use_bias)
    kernel = np.asarray(layer.kernel[...])
    bias = np.asarray(layer.bias[...]) if use_bias else None
    x = jax.random.normal(jax.random.key(2), (3, 5, D_IN))
    want_f32 = np.asarray(layer(x))
    layer.quantize_fp8()
    assert layer.is_fp8 and not hasattr(layer, "kernel")
    got = np.asarray(layer(x))
    np.testing.assert_allclose(got, _np_linear(np.asarray(x), kernel, bias), rtol=1e-5, atol=1e-6)
    assert rel_err(got, want_f32) < 0.05
    # `matmul` is the same without the bias (callers that add it apart).
    np.testing.assert_allclose(
        np.asarray(layer.matmul(x)) + (0 if bias is None else bias), got, rtol=1e-5, atol=1e-6
    )
    # bf16 activations: bf16 out, same recipe up to bf16 rounding.
    y16 = layer(x.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16 and rel_err(np.asarray(y16, np.float32), got) < 0.02


def test_quantized_variables_keep_logical_axes():
    blocks = stack.stacked(lambda r: Linear(D_IN, D_OUT, rngs=r), 2, nnx.Rngs(0))
    names = blocks.kernel.get_metadata()["out_sharding"]
    blocks.quantize_fp8()
    assert blocks.kernel_fp8.get_metadata()["out_sharding"] == (names[0], names[2], names[1])
    assert blocks.kernel_scale.get_metadata()["out_sharding"] == (names[0], names[2])


class _Block(nnx.Module):
    def __init__(self, rngs):
        self.up = Linear(D_IN, D_OUT, rngs=rngs)
        self.down = Linear(D_OUT, D_IN, rngs=rngs)

    def __call__(self, x):
        return x + self.down(jax.nn.gelu(self.up(x)))


def test_scanned_fp8_stack_equals_layer_by_layer():
    layers = 3
    blocks = stack.stacked(_Block, layers, nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (2, 6, D_IN))
    want_f32 = stack.scan(blocks, x)
    for _, node in nnx.iter_graph(blocks):
        if isinstance(node, Linear):
            node.quantize_fp8()
    got = jax.jit(lambda b, x: stack.scan(b, x))(blocks, x)
    # By hand: layer i's slices of the stacked fp8 kernels and scales, through the recipe.
    y = x
    for i in range(layers):
        up, down = blocks.up, blocks.down
        h = quant.linear(y, up.kernel_fp8[...][i], up.kernel_scale[...][i], up.bias[...][i])
        y = y + quant.linear(
            jax.nn.gelu(h), down.kernel_fp8[...][i], down.kernel_scale[...][i], down.bias[...][i]
        )
    np.testing.assert_allclose(np.asarray(got), np.asarray(y), rtol=1e-5, atol=1e-5)
    assert rel_err(got, want_f32) < 0.05
    # The ranged scan (step caching's) reads the same slices.
    rest = stack.scan(blocks, stack.scan(blocks, x, layers=slice(0, 1)), layers=slice(1, None))
    np.testing.assert_allclose(np.asarray(rest), np.asarray(got), rtol=1e-5, atol=1e-5)


def test_lora_delta_stays_unquantized():
    layer = _linear()
    rank = 4
    a = jax.random.normal(jax.random.key(4), (D_IN, rank)) * 0.3
    b = jax.random.normal(jax.random.key(5), (rank, D_OUT)) * 0.3
    x = jax.random.normal(jax.random.key(6), (2, 5, D_IN))
    layer.quantize_fp8()
    base = np.asarray(layer(x))
    layer.lora_a, layer.lora_b = lora.LoraParam(a), lora.LoraParam(b)
    scales = jnp.full((2, rank), 0.5)
    with lora.rows(scales):
        got = np.asarray(layer(x))
    want = base + 0.5 * np.asarray(x) @ np.asarray(a) @ np.asarray(b)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
