"""How a loop over a range of stacked layers indexes the stack: does XLA read each layer's weights in place?

Usage: python benchmarks/stack_index.py [--layers 8] [--width 5120] [--tokens 4096] [--repeats 20] [--tiny]

A stack of MLP layers ([D, 4D] and [4D, D] bf16 kernels) runs layers 1..L-1 (what a step cache's "rest" runs)
three ways, and all L layers once as the floor's reference:
  whole     `lax.scan` over the whole stack as its xs (all L layers)
  arange    `lax.scan` over `jnp.arange(1, L)`, each layer's weights `dynamic_index_in_dim(stack, i)` (jdiff's
            ranged `stack.scan` and `map_layers` before 2026-12-05's fix)
  counter   `jdiff.layers.stack.scan(..., layers=slice(1, None))`: a while loop indexing the stack by its own
            counter, as `lax.scan` indexes its xs
Prints one JSON line: ms per call for each, the expected in-place time of the range ((L-1)/L of `whole`), and
the largest difference between `arange` and `counter` (should be 0). A copying form shows up as the weight
bytes' copy time on top.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from offload_scan import Block  # benchmarks/offload_scan.py: the same MLP layer

from jdiff.bench.workloads import timed_calls
from jdiff.layers.stack import scan, stacked


def timed(fn, args, repeats: int) -> float:
    """Median seconds of `repeats` calls after two warm-up ones."""
    _, _, times = timed_calls(lambda: jax.block_until_ready(fn(*args)), 1, repeats)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=5120)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--tiny", action="store_true", help="toy sizes (a CPU check of the script)")
    args = ap.parse_args()
    width, tokens = (64, 32) if args.tiny else (args.width, args.tokens)
    blocks = stacked(lambda rngs: Block(width, rngs=rngs), args.layers, nnx.Rngs(0))
    graphdef, state = nnx.split(blocks)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((tokens, width)), jnp.bfloat16)

    @jax.jit
    def whole(state, x):
        return scan(nnx.merge(graphdef, state), x)

    @jax.jit
    def arange(state, x):
        def body(c, i):
            layer = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), state)
            return nnx.merge(graphdef, layer)(c), None

        return jax.lax.scan(body, x, jnp.arange(1, args.layers))[0]

    @jax.jit
    def counter(state, x):
        return scan(nnx.merge(graphdef, state), x, layers=slice(1, None))

    res = {"device": jax.devices()[0].device_kind, "layers": args.layers, "width": width, "tokens": tokens}
    for name, fn in (("whole", whole), ("arange", arange), ("counter", counter)):
        res[f"{name}_ms"] = round(1e3 * timed(fn, (state, x), args.repeats), 3)
    res["range_in_place_ms"] = round(res["whole_ms"] * (args.layers - 1) / args.layers, 3)
    diff = jnp.abs(arange(state, x).astype(jnp.float32) - counter(state, x).astype(jnp.float32)).max()
    res["max_diff_arange_counter"] = float(diff)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
