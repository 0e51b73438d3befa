"""Sequence-parallel and CFG-parallel scaling of one DiT forward (with CFG: batch of two) over N devices.

    python benchmarks/multigpu.py --model wan14b --size 1280x720x81        # on a host with N GPUs
    python benchmarks/multigpu.py --model flux --size 1024x1024
    python benchmarks/multigpu.py --tiny                                  # CPU, 8 fake devices: the dry run

For each mesh (context=N with Ulysses and with ring, data=2 x context=N/2, and fsdp=N), it builds random
bf16 weights directly in their shardings (the same values on every mesh: threefry is sharding-invariant),
runs one forward, checks the output against the 1-device run (relative error, bf16 tolerance), and prints
step time, scaling efficiency (t_1 / (N t_N)) and peak memory per device. Run with NCCL_NVLS_ENABLE=0.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff import compiler_options
from jdiff.parallel.mesh import make_mesh
from jdiff.parallel.placement import Placement


def _model(name: str, tiny: bool):
    if name == "flux":
        from jdiff.models.flux.config import FluxConfig
        from jdiff.models.flux.transformer import FluxTransformer2DModel

        # 8 heads in the toy: head-sharded meshes of up to 8 devices divide them.
        cfg = FluxConfig.tiny(num_attention_heads=8) if tiny else FluxConfig.dev()
        return cfg, FluxTransformer2DModel
    from jdiff.models.wan.config import WanTransformerConfig
    from jdiff.models.wan.transformer import WanTransformer3DModel

    if tiny:
        return WanTransformerConfig.tiny(
            num_attention_heads=8, text_dim=32, freq_dim=256, in_channels=16, out_channels=16
        ), WanTransformer3DModel
    cfg = WanTransformerConfig.t2v_1_3b() if name == "wan1.3b" else WanTransformerConfig.t2v_14b()
    return cfg, WanTransformer3DModel


def _inputs(name: str, cfg, size: tuple[int, ...], key):
    """(model inputs as a function of the model, their shapes) for one CFG-batched forward."""
    k1, k2, k3 = jax.random.split(key, 3)
    if name == "flux":
        from jdiff.pipelines.flux import _rope_tables

        w, h = size
        s = (h // 16) * (w // 16)
        x = jax.random.normal(k1, (2, s, cfg.in_channels), jnp.bfloat16)
        txt = jax.random.normal(k2, (2, 512, cfg.joint_attention_dim), jnp.bfloat16)
        pooled = jax.random.normal(k3, (2, cfg.pooled_projection_dim), jnp.bfloat16)
        cos, sin = _rope_tables(512, h // 16, w // 16, tuple(cfg.axes_dims_rope))
        args = (
            x,
            txt,
            pooled,
            jnp.full((2,), 0.5),
            (jnp.asarray(cos), jnp.asarray(sin)),
            jnp.full((2,), 3.5),
        )
        return lambda m, a: m(a[0], a[1], a[2], a[3], a[4], guidance=a[5]), args
    from jdiff.models.wan.rope import wan_rope_tables

    w, h, frames = size
    f, lh, lw = (frames - 1) // 4 + 1, h // 8, w // 8
    x = jax.random.normal(k1, (2, f, lh, lw, cfg.in_channels), jnp.bfloat16)
    txt = jax.random.normal(k2, (2, 512, cfg.text_dim), jnp.bfloat16)
    cos, sin = wan_rope_tables(cfg, f, lh, lw)
    args = (x, jnp.full((2,), 500.0), txt, (jnp.asarray(cos), jnp.asarray(sin)))
    return lambda m, a: m(a[0], a[1], a[2], a[3]), args


def run(name: str, size, mesh_spec: str | None, mode: str, repeats: int, tiny: bool) -> dict:
    cfg, cls = _model(name, tiny)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0))))
    leaves = nnx.to_flat_state(abstract)
    placement = Placement(make_mesh(mesh_spec), sequence_parallel=mode) if mesh_spec else None
    devices = jax.devices() if placement else jax.devices()[:1]
    shardings = placement.shardings(abstract) if placement else {}
    names = [".".join(map(str, p)) for p, _ in leaves]
    outs = [shardings.get(n, jax.sharding.SingleDeviceSharding(devices[0])) for n in names]

    @jax.jit
    def init(key):
        keys = jax.random.split(key, len(leaves))
        return [
            jax.random.normal(k, v.shape, jnp.bfloat16) * 0.02 for k, (_, v) in zip(keys, leaves, strict=True)
        ]

    values = jax.jit(init, out_shardings=outs)(jax.random.key(0))
    params = nnx.from_flat_state([(p, v.replace(x)) for (p, v), x in zip(leaves, values, strict=True)])
    call, args = _inputs(name, cfg, size, jax.random.key(1))
    if placement:
        args = jax.tree.map(lambda a: placement.put(a), args)
    ctx = placement.context() if placement else _null()
    with ctx:
        fwd = compiler_options.jit(lambda p, a: call(nnx.merge(graphdef, p), a))
        t0 = time.perf_counter()
        out = jax.block_until_ready(fwd(params, args))
        first = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fwd(params, args))
            times.append(time.perf_counter() - t0)
    peak = max((d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in devices)
    return {
        "mesh": mesh_spec or "1 device",
        "mode": mode,
        "ms": 1e3 * float(np.median(times)),
        "first_s": first,
        "peak_gib": peak / 2**30,
        "out": np.asarray(out, np.float32),
    }


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["wan14b", "wan1.3b", "flux"], default="wan14b")
    ap.add_argument("--size", default=None, help="WxH for flux, WxHxF for wan")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="tiny configs (CPU dry run with fake devices)")
    ap.add_argument(
        "--meshes",
        help="';'-separated 'spec:mode' pairs (e.g. 'context=2:ulysses;data=2,context=1:ulysses') instead of the default set",
    )
    ap.add_argument(
        "--baseline-ms",
        type=float,
        help="the 1-device time from an earlier run: skips the 1-device run (outputs are then compared with "
        "the first mesh's)",
    )
    args = ap.parse_args()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    size = args.size or ("1024x1024" if args.model == "flux" else "1280x720x81")
    dims = tuple(int(v) for v in size.split("x"))
    if args.tiny:
        dims = (64, 64) if args.model == "flux" else (32, 32, 5)
    n = jax.device_count()
    meshes = [(f"context={n}", "ulysses"), (f"context={n}", "ring"), (f"fsdp={n}", "ulysses")]
    if n >= 2 and n % 2 == 0:  # CFG-parallel: the two guidance branches on two halves of the devices
        meshes.insert(2, (f"data=2,context={n // 2}", "ulysses"))
    if args.meshes:
        meshes = [tuple(item.split(":")) for item in args.meshes.split(";")]
    if args.baseline_ms:
        base = {"mesh": "1 device (earlier run)", "mode": "-", "ms": args.baseline_ms, "first_s": 0.0}
        base["peak_gib"] = float("nan")
    else:
        base = run(args.model, dims, None, "ulysses", args.repeats, args.tiny)
    print("ROW " + json.dumps({k: v for k, v in base.items() if k != "out"}), flush=True)
    rows = [base]
    for spec, mode in meshes:
        r = run(args.model, dims, spec, mode, args.repeats, args.tiny)
        ref = base.get("out", rows[1]["out"] if len(rows) > 1 else r["out"])
        r["rel_err_vs_1"] = float(np.linalg.norm(r["out"] - ref) / np.linalg.norm(ref))
        r["efficiency"] = base["ms"] / (n * r["ms"])
        rows.append(r)
        print("ROW " + json.dumps({k: v for k, v in r.items() if k != "out"}), flush=True)
    print(
        f"{args.model} {'x'.join(map(str, dims))} on {n} x {jax.devices()[0].device_kind}, jax {jax.__version__}"
    )
    print(
        f"{'mesh':28s} {'mode':8s} {'ms':>10s} {'eff':>6s} {'rel err':>9s} {'peak GiB':>9s} {'first s':>8s}"
    )
    for r in rows:
        print(
            f"{r['mesh']:28s} {r['mode']:8s} {r['ms']:10.1f} {r.get('efficiency', 1.0):6.2f} "
            f"{r.get('rel_err_vs_1', 0.0):9.2e} {r['peak_gib']:9.2f} {r['first_s']:8.1f}"
        )
    print(json.dumps([{k: v for k, v in r.items() if k != "out"} for r in rows]))


if __name__ == "__main__":
    main()
