"""Does cuDNN's fp8 attention pay here, and at what error? A probe for issue 19 item 2 (GPU only; not yet run).

Usage:
    python benchmarks/fp8_attention_probe.py [--repeats 10] [--shapes flux,wan13b,wan14b]

jax 0.10's public `jax.nn.dot_product_attention` takes no fp8; the cuDNN fp8 forward is reachable only through
the private `jax._src.cudnn.fused_attention_stablehlo.dot_product_attention(..., use_fp8=True, fp8_params=...)`
(custom call `__cudnn$fmhaSoftmaxF8`): per-TENSOR scales only (descale_q/k/v/s, scale_s/o, f32 [1,1,1,1]), no
bias, no padding mask (NO_MASK or CAUSAL), head dim <= 256 and a multiple of 16 for inference, and the OUTPUT
IS fp8 too (the query's dtype), with amax_s / amax_o returned for delayed scaling.

This probe quantizes q, k, v per tensor on the fly (amax / 448), sets scale_s = 448 (softmax probabilities are
<= 1) and scale_o = 448 / amax_v (an output row is a convex combination of v rows, so |o| <= amax_v: no
calibration needed), and prints one JSON line per shape: median ms of cuDNN bf16 and cuDNN fp8 (quantize
and dequantize included), and each one's relative error against a float32 XLA reference (computed head by
head). Random normal inputs; real activations have outliers that per-tensor scales handle worse.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

SHAPES = {  # name: (tokens, heads, head dim), batch 1
    "flux": (4608, 24, 128),  # FLUX.1-dev at 1024x1024: 4096 image + 512 text tokens
    "wan13b": (32760, 12, 128),  # Wan2.1-1.3B at 832x480x81
    "wan14b": (32760, 40, 128),  # Wan2.1-14B at 832x480x81
}
E4M3_MAX = 448.0


def quantize(x):
    """Per-tensor e4m3: (x_q, descale) with x ~= x_q * descale."""
    descale = jnp.maximum(jnp.max(jnp.abs(x)).astype(jnp.float32), 1e-12) / E4M3_MAX
    x_q = jnp.clip(x.astype(jnp.float32) / descale, -E4M3_MAX, E4M3_MAX).astype(jnp.float8_e4m3fn)
    return x_q, descale.reshape(1, 1, 1, 1)


def fp8_attention(q, k, v):
    from jax._src.cudnn.fused_attention_stablehlo import dot_product_attention, fp8_params_keys

    (q8, dq), (k8, dk), (v8, dv) = quantize(q), quantize(k), quantize(v)
    one = jnp.ones((1, 1, 1, 1), jnp.float32)
    params = dict.fromkeys(fp8_params_keys, one)  # every key must be there; the forward reads six
    params.update(
        descale_q=dq,
        descale_k=dk,
        descale_v=dv,
        descale_s=one / E4M3_MAX,
        scale_s=one * E4M3_MAX,
        scale_o=1.0 / dv,
    )
    out, _, _ = dot_product_attention(
        q8, k8, v8, fp8_params=params, scale=1.0 / math.sqrt(q.shape[-1]), qkv_layout="BTNH", use_fp8=True
    )
    return (out.astype(jnp.float32) * dv.reshape(())).astype(q.dtype)


def bf16_attention(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")


def reference(q, k, v):
    """float32 XLA attention, one head at a time (the [T, S] logits of all heads at once would not fit)."""

    def head(args):
        qh, kh, vh = (a[:, :, None].astype(jnp.float32) for a in args)
        return jax.nn.dot_product_attention(qh, kh, vh, implementation="xla")[:, :, 0]

    per_head = jax.lax.map(head, tuple(jnp.moveaxis(a, 2, 0) for a in (q, k, v)))
    return jnp.moveaxis(per_head, 0, 2)


def timed(fn, args, repeats: int) -> float:
    f = jax.jit(fn)
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return round(1e3 * float(np.median(times)), 2)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--shapes", default="flux,wan13b,wan14b")
    args = ap.parse_args()
    if jax.default_backend() != "gpu":
        raise SystemExit(
            "fp8_attention_probe: needs an NVIDIA GPU (cuDNN's fp8 attention); got " + jax.default_backend()
        )
    for name in args.shapes.split(","):
        t, n, h = SHAPES[name]
        keys = jax.random.split(jax.random.key(0), 3)
        q, k, v = (jax.random.normal(kk, (1, t, n, h), jnp.bfloat16) for kk in keys)
        row = {"shape": name, "tokens": t, "heads": n, "head_dim": h, "device": jax.devices()[0].device_kind}
        ref = jax.jit(reference)(q, k, v)
        row["bf16_ms"] = timed(bf16_attention, (q, k, v), args.repeats)
        row["bf16_rel_err"] = round(rel_err(jax.jit(bf16_attention)(q, k, v), ref), 5)
        try:
            row["fp8_ms"] = timed(fp8_attention, (q, k, v), args.repeats)
            row["fp8_rel_err"] = round(rel_err(jax.jit(fp8_attention)(q, k, v), ref), 5)
        except Exception as e:  # the private API or cuDNN may refuse: that is the finding
            row["fp8_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
