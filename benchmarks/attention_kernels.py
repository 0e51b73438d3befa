"""Fused attention kernels on one GPU at DiT shapes: cuDNN (jax.nn.dot_product_attention) vs the Pallas
Mosaic-GPU flash attention (Hopper), float16, B=1, no mask. Prints ms, TFLOP/s and error vs cuDNN.

    python benchmarks/attention_kernels.py
"""

from __future__ import annotations

import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np

# Mosaic GPU attention in jax 0.11 rejects bfloat16 inputs (an internal f16 dtype check), so both kernels
# are timed in float16 here; the DiTs run bf16.
DTYPE = jnp.float16
SHAPES = {"FLUX 1024^2 (S=4608, N=24)": (4608, 24), "Wan-like (S=32768, N=12)": (32768, 12)}


def _time(fn, *args, reps: int = 20) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main() -> None:
    from jax.experimental.pallas.ops.gpu import attention_mgpu as mgpu

    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}")
    for name, (s, n) in SHAPES.items():
        h = 128
        keys = jax.random.split(jax.random.key(0), 3)
        q, k, v = (jax.random.normal(kk, (1, s, n, h), DTYPE) for kk in keys)
        flops = 4 * s * s * h * n
        cudnn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"))
        ref = cudnn(q, k, v).astype(jnp.float32)
        ms = _time(cudnn, q, k, v)
        print(f"{name:28s} cudnn                      {ms:7.3f} ms {flops / ms / 1e9:6.0f} TFLOP/s")
        for bq, bkv, steps in itertools.product((64,), (64, 128, 256), (2, 3, 4)):
            cfg = mgpu.TuningConfig(block_q=bq, block_kv=bkv, max_concurrent_steps=steps)
            fn = jax.jit(lambda q, k, v, cfg=cfg, h=h: mgpu.attention(q * DTYPE(h**-0.5), k, v, cfg))
            try:
                out = fn(q, k, v).astype(jnp.float32)
                err = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
                ms = _time(fn, q, k, v)
                print(
                    f"{name:28s} mgpu q{bq} kv{bkv} steps{steps}   {ms:7.3f} ms {flops / ms / 1e9:6.0f} TFLOP/s  err {err:.1e}"
                )
            except Exception as e:  # a config the kernel rejects (shared memory, sizes)
                print(f"{name:28s} mgpu q{bq} kv{bkv} steps{steps}   failed: {str(e).splitlines()[0][:90]}")


if __name__ == "__main__":
    main()
