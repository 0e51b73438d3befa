"""bf16 GEMM throughput at the DiTs' projection shapes, under whatever XLA_FLAGS the environment sets.

Usage: XLA_FLAGS="..." python benchmarks/gemm_shapes.py
Prints one JSON line: TFLOP/s per (M, K, N), timed over back-to-back calls (device time dominates).
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp

# (M tokens, K in, N out): FLUX 1024^2 (4608 joint / 4096 image tokens, D 3072, F 12288), Wan-1.3B (32760
# tokens, D 1536, F 8960), and a square reference shape.
SHAPES = {
    "flux qkv": (4608, 3072, 3072),
    "flux qkv fused": (4608, 3072, 9216),
    "flux single fused qkv+mlp": (4608, 3072, 21504),
    "flux ff up": (4096, 3072, 12288),
    "flux ff down": (4096, 12288, 3072),
    "flux single proj_out": (4608, 15360, 3072),
    "wan qkv": (32760, 1536, 1536),
    "wan ff up": (32760, 1536, 8960),
    "wan ff down": (32760, 8960, 1536),
    "square 8192": (8192, 8192, 8192),
}


def main() -> None:
    res = {"xla_flags": os.environ.get("XLA_FLAGS", "")}
    mm = jax.jit(lambda a, b: a @ b)
    for name, (m, k, n) in SHAPES.items():
        a = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
        b = jax.random.normal(jax.random.key(1), (k, n), jnp.bfloat16) * 0.02
        jax.block_until_ready(mm(a, b))
        reps = 30
        t0 = time.perf_counter()
        for _ in range(reps):
            out = mm(a, b)
        jax.block_until_ready(out)
        ms = 1e3 * (time.perf_counter() - t0) / reps
        res[name] = round(2 * m * k * n / ms / 1e9, 1)
    print("GEMM " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
