"""The fused QK norm + RoPE kernel's launch configurations at DiT shapes, timed from a profiler trace.

Usage: python benchmarks/norm_rope_kernels.py
Prints one JSON line: GPU kernel ms per call for XLA's fusions and each Pallas configuration (rows per program,
warps), with the max abs difference from XLA. Ideal (one read and one write of q in bf16 at ~3 TB/s):
about 0.02 ms at FLUX's shape, 0.07 ms at Wan's.
"""

from __future__ import annotations

import functools
import glob
import itertools
import json
import os
import sys
import tempfile

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
from profile_step import kernel_summary

from jdiff.kernels import norm_rope as nr

SHAPES = {
    "flux (L=4608, N=24, per head)": (4608, 24, False),
    "wan (L=32760, N=12, across)": (32760, 12, True),
}
CALLS = 10


def kernel_ms(fn, *args) -> float:
    jax.block_until_ready(fn(*args))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(CALLS):
                out = fn(*args)
            jax.block_until_ready(out)
        path = sorted(glob.glob(os.path.join(d, "**", "*trace.json.gz"), recursive=True))[-1]
        top = kernel_summary(path, CALLS)["top"]
        return round(sum(k["ms"] for k in top), 4)


def main() -> None:
    res = {}
    for name, (length, n, across) in SHAPES.items():
        h = 128
        x = jax.random.normal(jax.random.key(0), (1, length, n, h), jnp.bfloat16)
        scale = 1 + 0.1 * jax.random.normal(jax.random.key(2), (n * h,) if across else (h,))
        ang = jax.random.uniform(jax.random.key(1), (length, h // 2)) * 6
        cos, sin = (jnp.repeat(f(ang), 2, axis=-1) for f in (jnp.cos, jnp.sin))

        def run(impl, across=across):
            return jax.jit(
                functools.partial(nr.rms_norm_rope, eps=1e-6, across_heads=across, implementation=impl)
            )

        ref_fn = run("xla")
        ref = ref_fn(x, scale, cos, sin).astype(jnp.float32)
        res[f"{name} xla"] = kernel_ms(ref_fn, x, scale, cos, sin)
        print(name, "xla", res[f"{name} xla"], flush=True)
        for rows, warps in itertools.product((16, 32, 64), (4, 8)):
            nr.BLOCK_ROWS, nr.NUM_WARPS = rows, warps
            key = f"{name} pallas rows{rows} warps{warps}"
            try:
                fn = run("pallas")
                err = float(jnp.abs(fn(x, scale, cos, sin).astype(jnp.float32) - ref).max())
                res[key] = {"ms": kernel_ms(fn, x, scale, cos, sin), "maxdiff": err}
            except Exception as e:  # a configuration Triton rejects (registers, shared memory)
                res[key] = f"failed: {str(e).splitlines()[0][:120]}"
            print(key, res[key], flush=True)
    print("NORMROPE " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
