"""FLUX.1-dev transformer at real size with random bf16 weights: one step, and a 28-step jitted denoise loop.

Usage: python benchmarks/flux_step.py [--size 1024] [--steps 28] [--unroll]
Prints compile time, median step time and TFLOP/s, counting 74.4 TFLOP per 1024^2 step (2 FLOPs per multiply-add).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff import compiler_options
from jdiff.layers.attention import default_implementation
from jdiff.models.flux.config import FluxConfig
from jdiff.models.flux.transformer import FluxTransformer2DModel
from jdiff.pipelines.flux import _rope_tables
from jdiff.sampling.flow_match import FlowMatchEulerConfig, calculate_shift, default_sigmas
from jdiff.sampling.loop import sample
from jdiff.sampling.table import SAMPLERS

FLUX_DEV = FluxConfig.dev()
TFLOP_1024 = 74.4


def random_model(cfg: FluxConfig, dtype=jnp.bfloat16) -> nnx.Module:
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: FluxTransformer2DModel(cfg, rngs=nnx.Rngs(0))))
    leaves = nnx.to_flat_state(abstract)

    @jax.jit
    def init(key):
        keys = jax.random.split(key, len(leaves))
        return [jax.random.normal(k, v.shape, dtype) * 0.02 for k, (_, v) in zip(keys, leaves, strict=True)]

    values = init(jax.random.key(0))
    flat = [(p, v.replace(x)) for (p, v), x in zip(leaves, values, strict=True)]
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument(
        "--attention-fp16",
        action="store_true",
        help="experiment: run the DiT attention in float16 (q, k, v cast)",
    )
    args = ap.parse_args()
    if args.attention_fp16:
        import jdiff.models.flux.transformer as flux_module
        from jdiff.layers.attention import dot_product_attention

        def fp16_attention(q, k, v, **kw):
            f16 = (x.astype(jnp.float16) for x in (q, k, v))
            return dot_product_attention(*f16, **kw).astype(q.dtype)

        flux_module.dot_product_attention = fp16_attention
    cfg = FLUX_DEV
    h = w = args.size // 16
    s, t, b = h * w, 512, 1
    model = random_model(cfg)
    graphdef, params = nnx.split(model)
    cos, sin = (jnp.asarray(a) for a in _rope_tables(t, h, w, tuple(cfg.axes_dims_rope)))
    key = jax.random.key(1)
    x = jax.random.normal(key, (b, s, 64), jnp.float32)
    txt = jax.random.normal(key, (b, t, 4096), jnp.bfloat16)
    pooled = jax.random.normal(key, (b, 768), jnp.bfloat16)
    g = jnp.full((b,), 3.5, jnp.float32)

    @compiler_options.jit
    def step(params, x, txt, pooled, tstep, g):
        m = nnx.merge(graphdef, params)
        return m(x.astype(jnp.bfloat16), txt, pooled, tstep, (cos, sin), guidance=g)

    @compiler_options.jit
    def loop(params, x, txt, pooled, schedule, g):
        m = nnx.merge(graphdef, params)

        def velocity(z, tt):
            tb = jnp.full((b,), tt / 1000, jnp.float32)
            return m(z.astype(jnp.bfloat16), txt, pooled, tb, (cos, sin), guidance=g)

        euler = SAMPLERS["FlowMatchEulerDiscreteScheduler"]
        return sample(euler, sched, lambda z, tt, _: velocity(z, tt), x, schedule)

    t0 = time.perf_counter()
    step.lower(params, x, txt, pooled, jnp.full((b,), 0.5), g).compile()
    compile_step = time.perf_counter() - t0
    out = jax.block_until_ready(step(params, x, txt, pooled, jnp.full((b,), 0.5), g))
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(step(params, x, txt, pooled, jnp.full((b,), 0.5), g))
        times.append(time.perf_counter() - t0)
    step_ms = 1e3 * float(np.median(times))

    sched = FlowMatchEulerConfig(shift=3.0, use_dynamic_shifting=True)
    schedule = SAMPLERS["FlowMatchEulerDiscreteScheduler"].schedule(
        sched, args.steps, mu=calculate_shift(s), sigmas=default_sigmas(args.steps)
    )
    t0 = time.perf_counter()
    loop.lower(params, x, txt, pooled, schedule, g).compile()
    compile_loop = time.perf_counter() - t0
    jax.block_until_ready(loop(params, x, txt, pooled, schedule, g))
    t0 = time.perf_counter()
    final = jax.block_until_ready(loop(params, x, txt, pooled, schedule, g))
    loop_s = time.perf_counter() - t0
    flops = TFLOP_1024 if args.size == 1024 else None  # counted for 1024^2 only
    stats = jax.devices()[0].memory_stats() or {}
    res = {
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "attention": default_implementation(jnp.bfloat16) + (" fp16" if args.attention_fp16 else ""),
        "size": args.size,
        "step_ms_median": round(step_ms, 2),
        "step_tflops": round(flops / step_ms * 1e3, 1) if flops else None,
        "compile_step_s": round(compile_step, 2),
        f"loop_{args.steps}_steps_s": round(loop_s, 3),
        "loop_ms_per_step": round(1e3 * loop_s / args.steps, 2),
        "compile_loop_s": round(compile_loop, 2),
        "peak_gib": round(stats.get("peak_bytes_in_use", 0) / 2**30, 2),
        "finite": bool(jnp.isfinite(final).all() and jnp.isfinite(out).all()),
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
