"""Where a jdiff workload spends its GPU time: a `jax.profiler` trace, kernels summed by name and category.

Usage:
    python benchmarks/profile_step.py --workload flux_step [--out DIR] [--no-trace] [--repeats 10]

Uses `jdiff bench`'s random real-size models. Prints one JSON line: the median wall time per call (timed
outside the trace), then, from the trace, the GPU kernel time per category (GEMM, attention, XLA fusions, ...)
and the top kernels. The perfetto trace is kept under DIR for a closer look (ui.perfetto.dev).
Compiled with jdiff's own compiler options (`jdiff.compiler_options`); further XLA flags come from the
environment (XLA_FLAGS), so one script serves flag experiments too.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import shutil
import time

# Category of a GPU kernel by its name; the first match wins.
CATEGORIES = (
    ("attention", ("fmha", "flash", "sdpa", "attention", "mha")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "matmul", "dot", "sm90_")),
    ("copy", ("memcpy", "memset", "copy", "transpose")),
    ("reduce", ("reduce", "reduction")),
    ("fusion", ("fusion", "loop_", "input_", "triton")),
)


def category(name: str) -> str:
    low = name.lower()
    for cat, needles in CATEGORIES:
        if any(n in low for n in needles):
            return cat
    return "other"


def kernel_summary(trace_path: str, calls: int, top: int = 40) -> dict:
    """Device kernel time per call from a perfetto trace: totals per category and the `top` kernels by time."""
    with gzip.open(trace_path, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    procs, threads = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            procs[e["pid"]] = e["args"]["name"]
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e["pid"], e["tid"])] = e["args"]["name"]
    devices = {pid for pid, name in procs.items() if name.startswith("/device:")}
    # GPU traces list kernels per CUDA stream ("Stream #N"); TPU traces per op ("XLA Ops"). The other lines
    # ("XLA Modules", "Steps") repeat the same time at coarser grain.
    names = {name for (pid, _), name in threads.items() if pid in devices}
    kernel_line = "Stream" if any("Stream" in n for n in names) else "XLA Ops"
    per_thread = collections.Counter()
    kernels = collections.Counter()
    counts = collections.Counter()
    for e in events:
        if e.get("ph") != "X" or e.get("pid") not in devices:
            continue
        tname = threads.get((e["pid"], e["tid"]), str(e["tid"]))
        per_thread[tname] += e.get("dur", 0)
        if kernel_line not in tname:
            continue
        kernels[e["name"]] += e.get("dur", 0)
        counts[e["name"]] += 1
    cats = collections.Counter()
    for name, us in kernels.items():
        cats[category(name)] += us
    total = sum(kernels.values())
    spans = sorted(
        (e["ts"], e["ts"] + e.get("dur", 0), e["name"])
        for e in events
        if e.get("ph") == "X"
        and e.get("pid") in devices
        and kernel_line in threads.get((e["pid"], e["tid"]), "")
    )
    return {
        "threads_ms": {k: round(v / 1e3 / calls, 2) for k, v in per_thread.items()},
        "kernel_ms_per_call": round(total / 1e3 / calls, 2),
        **idle_gaps(spans, calls),
        "categories_ms": {k: round(v / 1e3 / calls, 2) for k, v in cats.most_common()},
        "top": [
            {
                "name": name[:160],
                "ms": round(us / 1e3 / calls, 3),
                "launches": counts[name] // calls,
                "cat": category(name),
            }
            for name, us in kernels.most_common(top)
        ],
    }


def idle_gaps(spans: list[tuple[float, float, str]], calls: int, top: int = 12) -> dict:
    """Time the device sits idle between kernels (any stream busy counts as busy), per call.

    Gaps over 1 ms are taken for the host's time between calls and left out; the rest are grouped by the
    kernels on either side of the gap, which names where the launches stall (loop iterations, custom calls).
    """
    gaps, kinds, counts = 0.0, collections.Counter(), collections.Counter()
    end, prev = None, None
    for start, stop, name in spans:
        if end is not None and start > end and start - end < 1000:
            key = f"{category(prev)}:{prev[:50]} -> {category(name)}:{name[:50]}"
            gaps += start - end
            kinds[key] += start - end
            counts[key] += 1
        if end is None or stop > end:
            end, prev = stop, name
    return {
        "idle_ms_per_call": round(gaps / 1e3 / calls, 2),
        "idle_top": [
            {"between": k, "ms": round(us / 1e3 / calls, 3), "gaps": counts[k] // calls}
            for k, us in kinds.most_common(top)
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", default="flux_step")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--traced-calls", type=int, default=3)
    ap.add_argument("--no-trace", action="store_true")
    ap.add_argument("--label", default="")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (a CPU check of the script)")
    ap.add_argument("--norm-rope", choices=["pallas", "xla"], help="force the QK norm + rope implementation")
    ap.add_argument(
        "--check-norm-rope",
        action="store_true",
        help="also compile with XLA's norm + rope and compare outputs",
    )
    ap.add_argument(
        "--unroll", type=int, default=1, help="experiment: unroll factor of the scans over layers (0: all)"
    )
    ap.add_argument(
        "--bias-epilogue",
        choices=["all", "none"],
        help="experiment: fuse every bias into its matmul, or keep every scanned layer's bias apart",
    )
    ap.add_argument("--compiler-options", help="experiment: JSON that replaces jdiff's GPU compiler options")
    ap.add_argument("--save-output", help="write the output (float32 .npy) here, to compare variants")
    ap.add_argument("--dump-hlo", help="write the compiled (optimized) HLO text here")
    ap.add_argument(
        "--fp32-reference",
        help="afterwards, rerun the same weights and inputs in float32 (highest matmul precision) and write "
        "that output here (.npy): the yardstick for bf16 variants",
    )
    args = ap.parse_args()

    import jax
    import numpy as np
    from flax import nnx

    from jdiff import bench, compiler_options

    if args.bias_epilogue:
        from jdiff.layers import linear

        linear.BIAS_EPILOGUE = args.bias_epilogue
    if args.compiler_options is not None:
        compiler_options.GPU_OPTIONS = json.loads(args.compiler_options)
    if args.norm_rope:
        from jdiff.kernels import norm_rope

        norm_rope._FORCED.set(args.norm_rope)  # for the whole run (this thread traces everything)
    if args.unroll != 1:
        import functools

        import jdiff.models.flux.transformer as flux_module
        import jdiff.models.wan.transformer as wan_module
        from jdiff.layers import stack

        for module in (flux_module, wan_module):
            module.scan = functools.partial(stack.scan, unroll=args.unroll or True)

    _, config, sz = bench._resolve(args.workload, tiny=args.tiny)
    if bench.WORKLOADS[args.workload].pipeline:
        return profile_pipeline(args, config, sz)
    graphdef, params, apply, inputs = bench._jdiff_setup(args.workload, config, sz)

    @compiler_options.jit
    def fn(params, *xs):
        return apply(nnx.merge(graphdef, params), *xs)

    t0 = time.perf_counter()
    compiled = fn.lower(params, *inputs).compile()
    compile_s = time.perf_counter() - t0
    if args.dump_hlo:
        with open(args.dump_hlo, "w") as f:
            f.write(compiled.as_text())
    for _ in range(2):
        jax.block_until_ready(compiled(params, *inputs))
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, *inputs))
        times.append(time.perf_counter() - t0)
    out = compiled(params, *inputs)
    res = {
        "finite": bool(jax.numpy.isfinite(out).all()),
        "workload": args.workload,
        "label": args.label,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "ms": round(1e3 * float(np.median(times)), 2),
        "compile_s": round(compile_s, 2),
    }
    if args.save_output:
        np.save(args.save_output, np.asarray(out.astype("float32")))
    if args.check_norm_rope:
        from jdiff.kernels import norm_rope

        with norm_rope.forced("xla"):
            ref = compiler_options.jit(lambda p, *xs: apply(nnx.merge(graphdef, p), *xs))(params, *inputs)
        diff = jax.numpy.linalg.norm((out - ref).astype("float32")) / jax.numpy.linalg.norm(
            ref.astype("float32")
        )
        res["rel_err_vs_xla_norm_rope"] = float(diff)
    if not args.no_trace:
        log_dir = os.path.join(args.out, f"trace_{args.workload}{args.label}")
        with jax.profiler.trace(log_dir, create_perfetto_trace=True):
            for _ in range(args.traced_calls):
                jax.block_until_ready(compiled(params, *inputs))
        path = sorted(glob.glob(os.path.join(log_dir, "**", "*trace.json.gz"), recursive=True))[-1]
        res.update(kernel_summary(path, args.traced_calls))
        shutil.copy(path, os.path.join(args.out, f"{args.workload}{args.label}.trace.json.gz"))
    if args.fp32_reference:
        # Last, since it frees the bf16 weights leaf by leaf: FLUX.1's 12B parameters then fit an 80 GB GPU
        # once in float32.
        leaves, tree = jax.tree.flatten(params)
        for i, leaf in enumerate(leaves):
            if jax.numpy.issubdtype(leaf.dtype, jax.numpy.floating) and leaf.dtype != "float32":
                leaves[i] = leaf.astype("float32")
                leaf.delete()
        params = jax.tree.unflatten(tree, leaves)
        inputs = [
            x.astype("float32") if jax.numpy.issubdtype(x.dtype, jax.numpy.floating) else x for x in inputs
        ]
        with jax.default_matmul_precision("highest"):
            ref32 = compiler_options.jit(lambda p, *xs: apply(nnx.merge(graphdef, p), *xs))(params, *inputs)
        np.save(args.fp32_reference, np.asarray(ref32, np.float32))
    print("PROFILE " + json.dumps(res), flush=True)


def profile_pipeline(args, config: dict, sz: dict) -> None:
    """A whole pipeline (`--workload flux_pipeline`, or another end-to-end workload): one traced `generate`,
    kernels per denoising step (everything in the trace divided by the steps: for FLUX.1 text encoding and
    decoding add about 1%)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jdiff import bench
    from jdiff.bench.jdiff_pipeline import random_model_dir
    from jdiff.bench.workloads import PROMPT

    del config  # the model directory is written from the workload's declaration (args.tiny picks the toy one)
    model = random_model_dir(args.workload, args.tiny, jnp.bfloat16)
    pipe = model.family.pipeline(model, dtype=jnp.bfloat16)
    steps = sz["steps"]
    kw = bench.WORKLOADS[args.workload].pipeline.call(sz)

    def call():
        return pipe.generate(PROMPT, height=sz["height"], width=sz["width"], seed=0, output_type="np", **kw)

    call()
    runs = [call() for _ in range(args.repeats)]
    res = {
        "workload": args.workload,
        "label": args.label,
        "steps": steps,
        "ms": round(1e3 * float(np.median([r.timings["total"] for r in runs])), 1),
        "denoise_ms_per_step": round(
            1e3 * float(np.median([r.timings["denoising"] for r in runs])) / steps, 2
        ),
    }
    if not args.no_trace:
        log_dir = os.path.join(args.out, f"trace_{args.workload}{args.label}")
        with jax.profiler.trace(log_dir, create_perfetto_trace=True):
            call()
        path = sorted(glob.glob(os.path.join(log_dir, "**", "*trace.json.gz"), recursive=True))[-1]
        res.update(kernel_summary(path, steps))
        shutil.copy(path, os.path.join(args.out, f"{args.workload}{args.label}.trace.json.gz"))
    print("PROFILE " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
