"""How XLA on this GPU lowers fp8 GEMMs, and what they cost at FLUX.1's sizes (docs/quantization.md).

Usage: python benchmarks/fp8_gemm_probe.py

For each GEMM shape (4608 tokens: FLUX.1 at 1024x1024 with 512 text tokens) prints one line per variant: the
median of 30 jitted calls, TFLOP/s, how many other kernels (fusions) the program has and the custom-call
targets XLA chose (`__cublas$lt$matmul$f8` is cuBLASLt's fp8 GEMM):

  bf16                 x @ W in bfloat16
  f8 raw KN / NK       pre-quantized fp8 x and W, W stored [K, N] or [N, K] (contracting axis minor)
  f8 dyn ...           the whole recipe: per-token quantization of x, fp8 GEMM, per-row x per-column scales,
                       float32 or bfloat16 GEMM output
  f8 deq scalar        XLA's documented pattern (dequantize with scalar scales, then a bf16 dot)

Then the recipe's relative error on random data against a float32 product.
"""

from __future__ import annotations

import re
import time

import jax
import jax.numpy as jnp
from jax import lax

F8 = jnp.float8_e4m3fn
SHAPES = [(4608, 3072, 3072), (4608, 3072, 12288), (4608, 12288, 3072), (4608, 15360, 3072)]
KN = (((1,), (0,)), ((), ()))
NK = (((1,), (1,)), ((), ()))


def median_ms(f, *args, n: int = 30) -> float:
    jax.block_until_ready(f(*args))
    t = time.perf_counter()
    for _ in range(n):
        r = f(*args)
    jax.block_until_ready(r)
    return (time.perf_counter() - t) / n * 1e3


def lowered(f, *args) -> tuple[list[str], int]:
    text = f.lower(*args).compile().as_text()
    return sorted(set(re.findall(r'custom_call_target="([^"]+)"', text))), text.count("fusion(")


def quantize_rows(x):
    s = jnp.maximum(jnp.max(jnp.abs(x.astype(jnp.float32)), axis=-1, keepdims=True), 1e-12) / 448.0
    return (x.astype(jnp.float32) / s).astype(F8), s


def recipe(x, w_q, w_scale, dims, out):
    x_q, s = quantize_rows(x)
    y = lax.dot_general(x_q, w_q, dims, preferred_element_type=out)
    return (y.astype(jnp.float32) * s * w_scale).astype(jnp.bfloat16)


def dequantized(x_q, w_q, a, b):
    bf = jnp.bfloat16
    return (x_q.astype(bf) * a.astype(bf)) @ (w_q.astype(bf) * b.astype(bf))


def main() -> None:
    key = jax.random.PRNGKey(0)
    for m, k, n in SHAPES:
        x = jax.random.normal(key, (m, k), jnp.bfloat16)
        w = jax.random.normal(key, (k, n), jnp.float32) * 0.02
        w_scale = jnp.max(jnp.abs(w), axis=0) / 448.0
        w_kn = (w / w_scale).astype(F8)
        w_nk = w_kn.T.copy()
        x_q, _ = jax.jit(quantize_rows)(x)
        one = jnp.float32(1.0)
        variants = [
            ("bf16", jax.jit(lambda x, w: x @ w), (x, w.astype(jnp.bfloat16))),
            ("f8 raw KN", jax.jit(lambda a, b: lax.dot_general(a, b, KN, preferred_element_type=jnp.bfloat16)), (x_q, w_kn)),
            ("f8 raw NK", jax.jit(lambda a, b: lax.dot_general(a, b, NK, preferred_element_type=jnp.bfloat16)), (x_q, w_nk)),
            ("f8 dyn KN f32out", jax.jit(lambda x, w, s: recipe(x, w, s, KN, jnp.float32)), (x, w_kn, w_scale)),
            ("f8 dyn NK f32out", jax.jit(lambda x, w, s: recipe(x, w, s, NK, jnp.float32)), (x, w_nk, w_scale)),
            ("f8 dyn NK bf16out", jax.jit(lambda x, w, s: recipe(x, w, s, NK, jnp.bfloat16)), (x, w_nk, w_scale)),
            ("f8 deq scalar", jax.jit(dequantized), (x_q, w_kn, one, one)),
        ]  # fmt: skip
        for name, f, args in variants:
            label = f"{m}x{k}x{n} {name:18s}"
            try:
                ms = median_ms(f, *args)
                targets, fusions = lowered(f, *args)
                tflops = 2 * m * k * n / ms / 1e9
                print(f"{label} {ms:7.3f} ms {tflops:7.1f} TF/s fusions={fusions} {targets}", flush=True)
            except Exception as e:  # a variant this backend refuses is a result too
                print(f"{label} FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
    x = jax.random.normal(key, (512, 3072), jnp.float32)
    w = jax.random.normal(jax.random.PRNGKey(1), (3072, 3072)) * 0.02
    w_scale = jnp.max(jnp.abs(w), axis=0) / 448.0
    want = x @ w
    got = recipe(x, (w / w_scale).astype(F8), w_scale, KN, jnp.float32).astype(jnp.float32)
    print("recipe relative error", float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)))


if __name__ == "__main__":
    main()
