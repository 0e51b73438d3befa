"""Fused QK RMS-norm + interleaved RoPE: one Pallas (Triton) kernel on NVIDIA GPUs, plain XLA elsewhere.

Axis letters: B batch, L sequence, N heads, H head dim.

The DiTs normalise q and k (RMS over each head, or over all heads for Wan) and then rotate interleaved pairs
(x[2i], x[2i+1]). XLA fuses neither step into the other on GPU: the norm is a reduction fusion that writes q in
float32, and the rope's pair swap becomes a concatenate fusion that reads it back. The kernel reads each block
of q once (the pair-swapped copy is a gather that hits the cache), keeps the statistics in float32 registers
and writes the result once. On one H100 (docs/benchmarks.md, `benchmarks/norm_rope_kernels.py`), per call:

    FLUX single block, L=4608, N=24:  XLA 0.071 ms -> 0.03 ms
    Wan2.1-1.3B, L=32760, N=12:       XLA 0.232 ms -> 0.10 ms   (one read + one write at 3 TB/s: 0.067 ms)

A part may carry the bias of the projection that produced it ([N * H], added in float32 before the norm):
FLUX keeps its q/k biases out of the matmuls (jdiff.layers.linear) and this pass adds them for free.

`joint_rms_norm_rope` serves FLUX's double blocks, whose text and image streams have their own norm weights
but attend jointly: each stream's kernel writes its rows straight into the joint [text; image] buffer (the
second call aliases the first one's output), so the concatenation costs nothing.

The kernel is opaque to XLA's SPMD partitioner, so under a multi-device mesh the XLA path is used.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from jdiff import sharding
from jdiff.kernels.rope import apply_rope

# Overrides the choice for every call traced in this thread when set ("pallas" or "xla"): tests and
# benchmarks comparing the two (`forced`).
_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("jdiff_norm_rope", default=None)


@contextlib.contextmanager
def forced(implementation: str | None) -> Iterator[None]:
    """Within the block, calls traced in this thread use `implementation` ("pallas", "xla"; None: choose)."""
    token = _FORCED.set(implementation)
    try:
        yield
    finally:
        _FORCED.reset(token)


# Launch configuration, the best of 18 measured at both DiT shapes (benchmarks/norm_rope_kernels.py).
BLOCK_ROWS = 32
NUM_WARPS = 8

# (x [B, L_i, N, H], norm weight or None, eps[, bias [N * H] or None]).
Part = tuple[jax.Array, jax.Array | None, float] | tuple[jax.Array, jax.Array | None, float, jax.Array | None]


def rms_norm_rope(
    x: Float[Array, "b l n h"],
    scale: jax.Array | None,
    cos: Float[Array, "l h"],
    sin: Float[Array, "l h"],
    *,
    eps: float,
    across_heads: bool = False,
    bias: jax.Array | None = None,
    implementation: str | None = None,
) -> Float[Array, "b l n h"]:
    """RMS-normalise `x` (+ `bias`) over H (or over N and H) times `scale`, then apply interleaved RoPE.

    Args:
        x: queries or keys.
        scale: the norm's weight, [H] (per head) or [N * H] (across heads); None for no weight.
        cos, sin: rotary tables [L, H], each frequency repeated for both elements of its pair.
        eps: added to the mean square.
        across_heads: one statistic per token over all heads (Wan's `rms_norm_across_heads`).
        bias: [N * H], added to `x` in float32 first (the bias of the projection that made `x`); None: none.
        implementation: "pallas" or "xla"; None picks Pallas on an NVIDIA GPU outside a mesh.

    Returns:
        The normalised, rotated `x`, in its dtype.
    """
    return joint_rms_norm_rope(
        [(x, scale, eps, bias)], cos, sin, across_heads=across_heads, implementation=implementation
    )


def joint_rms_norm_rope(
    parts: Sequence[Part],
    cos: Float[Array, "l h"],
    sin: Float[Array, "l h"],
    *,
    across_heads: bool = False,
    implementation: str | None = None,
) -> Float[Array, "b l n h"]:
    """`rms_norm_rope` of each part with its own weight, concatenated along L; the tables cover the joint L.

    Raises:
        ValueError: for an unknown implementation or tables that do not cover the parts.
    """
    parts = [(*p, None) if len(p) == 3 else tuple(p) for p in parts]
    length = sum(p[0].shape[1] for p in parts)
    if cos.shape[0] != length or sin.shape != cos.shape:
        raise ValueError(f"rope tables {cos.shape}/{sin.shape} do not cover the joint length {length}")
    impl = implementation or _FORCED.get() or _default_implementation(parts[0][0])
    if impl not in ("pallas", "xla"):
        raise ValueError(f"rms_norm_rope: implementation must be 'pallas' or 'xla', got {impl!r}")
    starts = [0]
    for p in parts:
        starts.append(starts[-1] + p[0].shape[1])
    if impl == "xla":
        outs = [
            _reference(x, scale, cos[a:b], sin[a:b], eps=eps, across_heads=across_heads, bias=bias)
            for (x, scale, eps, bias), a, b in zip(parts, starts, starts[1:], strict=False)
        ]
        return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
    rows = _rows(length)
    if any(start % rows for start in starts[1:-1]):  # a part boundary inside a block: no shared buffer
        outs = [
            _pallas(
                x, scale, bias, cos[a:b], sin[a:b], None, 0, b - a, _rows(b - a), eps=eps, across=across_heads
            )
            for (x, scale, eps, bias), a, b in zip(parts, starts, starts[1:], strict=False)
        ]
        return jnp.concatenate(outs, axis=1)
    out = None
    for (x, scale, eps, bias), a, b in zip(parts, starts, starts[1:], strict=False):
        out = _pallas(
            x, scale, bias, cos[a:b], sin[a:b], out, a // rows, length, rows, eps=eps, across=across_heads
        )
    return out


def _default_implementation(x: jax.Array) -> str:
    device = jax.devices()[0]
    if device.platform != "gpu" or "nvidia" not in device.device_kind.lower():
        return "xla"  # the kernel is written and tested for NVIDIA GPUs (Triton); ROCm keeps XLA
    h = x.shape[-1]
    if h < 2 or h & (h - 1):  # Triton blocks need power-of-two sizes: the head dim is a block's width
        return "xla"
    placement = sharding.ambient()
    if placement is not None and placement.mesh.size > 1:
        return "xla"
    return "pallas"


def _rows(length: int) -> int:
    from jax.experimental import pallas as pl

    return min(BLOCK_ROWS, pl.next_power_of_2(length))


def _reference(x, scale, cos, sin, *, eps, across_heads, bias=None):
    """The unfused composition: RMSNorm in float32, cast, then RoPE in float32 (as diffusers computes it)."""
    x32 = x.astype(jnp.float32)
    if bias is not None:
        x32 = x32 + bias.astype(jnp.float32).reshape(x.shape[-2:])
    axes = (-2, -1) if across_heads else (-1,)
    y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(axes, keepdims=True) + eps)
    if scale is not None:
        y = y * scale.astype(jnp.float32).reshape(x.shape[-2:] if across_heads else x.shape[-1:])
    return apply_rope(y.astype(x.dtype), cos, sin)


# A nested jit: the q and k calls of a block have the same signature, so they share one traced jaxpr, and jax
# lowers that Pallas kernel once per program instead of once per call (a FLUX warm start's tracing: 1.17 ->
# 0.96 s on the H100 machine).
@functools.partial(jax.jit, static_argnums=(6, 7, 8), static_argnames=("eps", "across"))
def _pallas(x, scale, bias, cos, sin, joint, block_offset, joint_length, rows, *, eps, across):
    """One part: writes rows [block_offset * rows, ...) of the joint output (`joint`, aliased, when given)."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    b, length, n, h = x.shape
    if scale is None:
        scale = jnp.ones((n * h,) if across else (h,), jnp.float32)
    w = scale.astype(jnp.float32).reshape(n if across else 1, h)
    bias = jnp.zeros((n, h), jnp.float32) if bias is None else bias.astype(jnp.float32).reshape(n, h)
    # Per-head statistics: one program per (row block, head). Across heads: one program per row block, which
    # loops over the heads twice (statistics, then output); N need not be a power of two.
    heads = n if across else 1
    if across:
        grid = (b, pl.cdiv(length, rows))
        x_map = lambda i, j: (i, j, 0, 0)
        o_map = lambda i, j: (i, j + block_offset, 0, 0)
        b_map = lambda i, j: (0, 0)
    else:
        grid = (b, pl.cdiv(length, rows), n)
        x_map = lambda i, j, k: (i, j, k, 0)
        o_map = lambda i, j, k: (i, j + block_offset, k, 0)
        b_map = lambda i, j, k: (k, 0)
    w_map = lambda *idx: (0, 0)
    t_map = lambda i, j, *rest: (j, 0)
    block = (None, rows, heads, h)
    in_specs = [pl.BlockSpec(block, x_map), pl.BlockSpec(w.shape, w_map), pl.BlockSpec((heads, h), b_map)]
    in_specs += [pl.BlockSpec((rows, h), t_map)] * 2
    args = [x, w, bias, cos.astype(jnp.float32), sin.astype(jnp.float32)]
    aliases = {}
    if joint is not None:  # written in place: only this part's rows change
        in_specs.append(pl.BlockSpec(block, o_map))
        args.append(joint)
        aliases = {5: 0}
    return pl.pallas_call(
        functools.partial(_kernel, eps=eps, heads=heads, width=heads * h, across=across, length=length),
        grid=grid,
        in_specs=in_specs,
        out_specs=pl.BlockSpec(block, o_map),
        out_shape=jax.ShapeDtypeStruct((b, joint_length, n, h), x.dtype),
        input_output_aliases=aliases,
        compiler_params=plgpu.CompilerParams(num_warps=NUM_WARPS, num_stages=1),
        interpret=jax.default_backend() not in ("gpu", "cuda"),
        name="rms_norm_rope",
    )(*args)


def _kernel(x_ref, w_ref, b_ref, cos_ref, sin_ref, *refs, eps, heads, width, across, length):
    """One block: x_ref [rows, heads, H] -> o_ref (the last ref); w_ref [N or 1, H]; b_ref [heads, H] (the
    block's heads' bias); tables [rows, H]."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    o_ref = refs[-1]
    rows, _, h = x_ref.shape
    row = jnp.arange(rows)[:, None]
    lanes = jnp.arange(h)[None, :]
    swap = jnp.bitwise_xor(lanes, 1)  # the other element of each pair
    # The last block may run past the part's end: its rows are read as 0 and not written.
    valid = jnp.broadcast_to(pl.program_id(1) * rows + row < length, (rows, h))

    def load(ref, *idx):
        return plgpu.load(ref.at[idx], mask=valid, other=0.0).astype(jnp.float32)

    c = load(cos_ref, row, lanes)
    s = load(sin_ref, row, lanes) * jnp.where(lanes % 2 == 0, -1.0, 1.0)  # -sin on even lanes

    def biased(head, idx):  # x + bias, float32; padded rows hold the bias only and are never written
        return load(x_ref, row, head, idx) + plgpu.load(b_ref.at[head, idx[0]])[None, :]

    total = None
    for head in range(heads):
        a = biased(head, lanes)
        part = jnp.sum(a * a, axis=1)  # [rows]
        total = part if total is None else total + part
    inv = jax.lax.rsqrt(total / width + eps)[:, None]
    for head in range(heads):
        wi = head if across else 0
        a = biased(head, lanes) * inv * w_ref[wi, :][None, :]
        b = biased(head, swap) * inv * plgpu.load(w_ref.at[wi, swap[0]])[None, :]
        plgpu.store(o_ref.at[row, head, lanes], (a * c + b * s).astype(o_ref.dtype), mask=valid)
