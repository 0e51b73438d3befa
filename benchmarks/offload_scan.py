"""The streamed layer scan alone, no model files: does XLA on this backend stream host-memory layers, and
does the copy hide behind the compute?

Usage: python benchmarks/offload_scan.py [--layers 40] [--width 5120] [--tokens 4096] [--batch 2]
                                        [--resident 0.5]

A stack of `layers` MLP blocks ([D, 4D] and [4D, D] bf16 kernels, 4 x 5120^2 x 2 B = 210 MB per layer at the
defaults, about a Wan 14B block's 0.7 GB / 3) runs through `jdiff.layers.stack.scan` twice: weights on the
device, and weights in `pinned_host` memory (streamed, layer i+1 fetched while layer i runs). Prints one JSON
line: max |difference| (should be 0), median seconds per pass for both, the transfer-bound floor
(weight bytes / measured host-to-device bandwidth), and XLA's temporary bytes for both programs (the streamed
one should hold about two layers, not all of them). With `--resident F`, a third run keeps the first F of the
layers on the device and streams the rest (`stack.Split`, as `offload="layers"` does where the device has
room): `partial_s` against resident + (1 - F) x the floor.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff.layers.stack import Split, scan, stacked


class Block(nnx.Module):
    def __init__(self, width: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.up = nnx.Param(init(rngs.params(), (width, 4 * width), jnp.bfloat16))
        self.down = nnx.Param(init(rngs.params(), (4 * width, width), jnp.bfloat16))

    def __call__(self, x):
        return x + jax.nn.gelu(x @ self.up[...]) @ self.down[...]


def median_time(fn, *args, n: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=40)
    p.add_argument("--width", type=int, default=5120)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--resident", type=float, help="also run with this fraction of the layers kept resident")
    a = p.parse_args()

    blocks = stacked(lambda r: Block(a.width, rngs=r), a.layers, nnx.Rngs(0))
    graphdef, state = nnx.split(blocks)
    device = jax.devices()[0]
    on_host = jax.sharding.SingleDeviceSharding(device, memory_kind="pinned_host")
    host_state = jax.tree.map(lambda x: jax.device_put(x, on_host), state)
    x = jax.random.normal(jax.random.key(1), (a.batch, a.tokens, a.width), jnp.bfloat16)

    @jax.jit
    def run(params, x):
        return scan(nnx.merge(graphdef, params), x)

    resident_out, streamed_out = run(state, x), run(host_state, x)
    diff = float(jnp.max(jnp.abs(resident_out.astype(jnp.float32) - streamed_out.astype(jnp.float32))))
    weight_bytes = sum(v.nbytes for v in jax.tree.leaves(state))
    one = jax.tree.leaves(host_state)[0]
    t = time.perf_counter()
    jax.block_until_ready(jax.device_put(one, jax.sharding.SingleDeviceSharding(device)))
    bandwidth = one.nbytes / (time.perf_counter() - t)

    partial = {}
    if a.resident:
        k = int(a.resident * a.layers)
        split_state = jax.tree.map(lambda d, h: Split(d[:k], h), state, host_state)
        partial_out = run(split_state, x)
        partial = {
            "resident_layers": k,
            "partial_s": round(median_time(run, split_state, x), 4),
            "partial_max_abs_diff": float(
                jnp.max(jnp.abs(resident_out.astype(jnp.float32) - partial_out.astype(jnp.float32)))
            ),
        }

    def temp(params) -> int:
        return int(run.lower(params, x).compile().memory_analysis().temp_size_in_bytes)

    print(
        json.dumps(
            {
                "backend": jax.default_backend(),
                "max_abs_diff": diff,
                "resident_s": round(median_time(run, state, x), 4),
                "streamed_s": round(median_time(run, host_state, x), 4),
                "transfer_floor_s": round(weight_bytes / bandwidth, 4),
                "h2d_gb_s": round(bandwidth / 1e9, 1),
                "weights_gib": round(weight_bytes / 2**30, 2),
                "temp_resident_gib": round(temp(state) / 2**30, 3),
                "temp_streamed_gib": round(temp(host_state) / 2**30, 3),
                **partial,
            }
        )
    )


if __name__ == "__main__":
    main()
