"""Ways to add a LoRA delta to one linear layer, timed at FLUX.1-dev's shapes: which costs least on this GPU?

Usage: python benchmarks/lora_linear.py [--tokens 4608] [--rank 32] [--slots 1] [--repeats 30] [--tiny]

The FLUX.1-dev step with one rank-32 adapter on every block linear costs 8.6-8.9% more than without
(docs/benchmarks.md; issue 20 asks for 5%). Each variant below computes `LN(x) @ W + b + ((LN(x) @ A) * s) @ B`
for the step's three linear shapes (a single block's merged q/k/v + MLP input, its output projection, a double
block's MLP input), with the layer norm inside the program as in the model, so that XLA may fuse the input's
producer into what follows:
  base     no adapter (the floor)
  delta    jdiff's form today (`jdiff.layers.lora.delta`): y = x W + b, then y + (x A s) B
  addend   the delta and the bias summed first, then added to x W: one addend that XLA's GEMM rewriter can pass
           to cuBLAS as its C matrix (beta = 1) instead of an elementwise pass over y
  kconcat  one GEMM over [x, x A s] and [W; B] (B stored under W, as a loaded adapter would be written into the
           kernel's extra rows): no [tokens, out] delta is ever written
Prints one JSON line per shape: median ms per variant, the overhead over `base` in ms and %, and the largest
difference from `delta` (relative), so a faster variant is also a correct one.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from jdiff.bench.workloads import timed_calls

SHAPES = {  # name: (input width, output width, token share of the joint sequence)
    "single_qkv_mlp": (3072, 21504, 1.0),
    "single_out": (15360, 3072, 1.0),
    "double_mlp_in": (3072, 12288, 4096 / 4608),
}


def layer_norm(x):
    x = x.astype(jnp.float32)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return ((x - mu) * jax.lax.rsqrt(var + 1e-6)).astype(jnp.bfloat16)


def variants():
    def base(x, w, b, a, bb, wext, s):
        return layer_norm(x) @ w + b

    def delta(x, w, b, a, bb, wext, s):
        x = layer_norm(x)
        y = x @ w + b
        return y + ((x @ a) * s) @ bb

    def addend(x, w, b, a, bb, wext, s):
        x = layer_norm(x)
        return x @ w + (((x @ a) * s) @ bb + b)

    def kconcat(x, w, b, a, bb, wext, s):
        x = layer_norm(x)
        return jnp.concatenate([x, (x @ a) * s], axis=-1) @ wext + b

    return {"base": base, "delta": delta, "addend": addend, "kconcat": kconcat}


def time_call(fn, args, repeats: int) -> float:
    """Median seconds of `repeats` calls after two warm-up ones."""
    _, _, times = timed_calls(lambda: jax.block_until_ready(fn(*args)), 1, repeats)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4608)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--slots", type=int, default=1, help="adapter slots (K = slots x rank)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--tiny", action="store_true", help="toy widths (a CPU check of the script)")
    args = ap.parse_args()
    k = args.rank * args.slots
    rng = np.random.default_rng(0)
    print(json.dumps({"device": jax.devices()[0].device_kind, "jax": jax.__version__}), flush=True)
    for name, (i, o, share) in SHAPES.items():
        if args.tiny:
            i, o = i // 64, o // 64
        tokens = max(8, int(args.tokens * share) // (64 if args.tiny else 1))

        def arr(*shape, scale=1.0):
            return jnp.asarray(rng.standard_normal(shape, np.float32) * scale, jnp.bfloat16)

        x, w, b = arr(tokens, i), arr(i, o, scale=i**-0.5), arr(o, scale=0.1)
        a, bb = arr(i, k, scale=i**-0.5), arr(k, o, scale=0.05)
        wext = jnp.concatenate([w, bb], axis=0)
        s = jnp.asarray(np.full((1, k), 0.8), jnp.bfloat16)
        call = (x, w, b, a, bb, wext, s)
        row = {"shape": name, "tokens": tokens, "in": i, "out": o, "k": k}
        outs = {}
        for vname, fn in variants().items():
            jitted = jax.jit(fn)
            row[f"{vname}_ms"] = round(1e3 * time_call(jitted, call, args.repeats), 3)
            outs[vname] = np.asarray(jitted(*call), np.float32)
        ref = outs["delta"]
        for vname in ("delta", "addend", "kconcat"):
            over = row[f"{vname}_ms"] - row["base_ms"]
            row[f"{vname}_over_ms"] = round(over, 3)
            row[f"{vname}_over_pct"] = round(100 * over / row["base_ms"], 1)
            if vname != "delta":
                err = np.linalg.norm(outs[vname] - ref) / np.linalg.norm(ref)
                row[f"{vname}_rel_diff"] = float(f"{err:.2e}")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
