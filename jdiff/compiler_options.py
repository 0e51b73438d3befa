"""XLA options jdiff compiles its jitted stages with, chosen per platform.

They go to `jax.jit(..., compiler_options=...)`, so they apply to jdiff's own stages only, override XLA_FLAGS
for the options named, and are part of the persistent compilation cache's key.

GPU: `xla_gpu_enable_triton_gemm=False` sends every matmul to cuBLAS instead of letting XLA's autotuner pick
Triton GEMM fusions for some. Measured on one H100 with jax 0.11.2 (docs/benchmarks.md): the FLUX.1-dev
1024^2 transformer step goes from 149.1 to 138.3 ms and compiles in 3.5 s instead of 10.7 s (no Triton
autotuning); Wan2.1-1.3B's 832x480x81 forward goes from 502.5 to 492.1 ms. With Triton, XLA fused small
elementwise producers into Triton GEMMs and copied more of the stacked layer weights per scan iteration.

GPU: `xla_gpu_dot_merger_threshold_mb=0` stops XLA from merging matmuls that share an input (q/k/v, and the
single block's MLP) into one matmul over weights concatenated at run time, a copy of those weights per layer
and step. Unmerged, each matmul reads its layer's weight in place from the stacked array (with its bias kept
apart, `jdiff.layers.linear.Linear`). FLUX.1-dev step: 137.7 -> 130.5 ms for the two together (same run);
Wan2.1-1.3B unchanged within noise.

Edit `GPU_OPTIONS` before building a pipeline to experiment; an empty dict restores XLA's defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

GPU_OPTIONS: dict[str, Any] = {"xla_gpu_enable_triton_gemm": False, "xla_gpu_dot_merger_threshold_mb": 0}


def compiler_options(backend: str | None = None) -> dict[str, Any]:
    """The options for `backend` (default: jax's default backend); empty where jdiff keeps XLA's defaults."""
    backend = backend or jax.default_backend()
    return dict(GPU_OPTIONS) if backend in ("gpu", "cuda", "rocm") else {}


def jit(fn: Callable, **kwargs: Any) -> Callable:
    """`jax.jit(fn, **kwargs)` with jdiff's compiler options for the default backend."""
    return jax.jit(fn, compiler_options=compiler_options() or None, **kwargs)
