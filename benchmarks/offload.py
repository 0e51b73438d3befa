"""Offload on a real model: step time and peak device memory, resident vs `offload=`, under a memory cap.

Usage (one H200, 141 GB; a 24 GB card emulated with the allocator's fraction, 24 / 141 = 0.17):

    python benchmarks/offload.py /models/FLUX.1-dev                                 # resident reference
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.17 python benchmarks/offload.py /models/FLUX.1-dev --offload layers
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.17 python benchmarks/offload.py /models/FLUX.1-dev   # refused, exit 2
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.17 python benchmarks/offload.py /models/Wan2.1-T2V-14B-Diffusers \
        --offload layers --size 832x480 --frames 81 --steps 50

Runs two generations with the same shape (the first compiles) and prints one JSON line: load seconds, the
second run's denoising seconds and seconds per step, peak device bytes (`memory_stats()["peak_bytes_in_use"]`)
and the device's limit. A refusal by memory planning prints its message and exits 2 (what `jdiff generate`
does), instead of an XLA out-of-memory error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--offload", choices=["model", "layers"], default=None)
    p.add_argument("--size", default=None, help="WxH (default: the preset's)")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--prompt", default="a photo of a red fox in the snow, detailed fur")
    a = p.parse_args()

    import jdiff
    from jdiff.errors import InputError

    kw = dict(seed=0, output_type="np", progress=False)
    if a.size:
        w, h = map(int, a.size.split("x"))
        kw.update(width=w, height=h)
    if a.frames:
        kw["num_frames"] = a.frames
    if a.steps:
        kw["num_inference_steps"] = a.steps
    t0 = time.perf_counter()
    gen = jdiff.DiffGenerator.from_pretrained(a.model, offload=a.offload)
    load_s = time.perf_counter() - t0
    try:
        first = gen.generate(a.prompt, **kw)
        second = gen.generate(a.prompt, **kw)
    except InputError as e:
        print(f"refused: {e}", file=sys.stderr)
        return 2
    stats = jax.devices()[0].memory_stats() or {}
    steps = a.steps or gen.pipeline.preset["num_inference_steps"]
    out = {
        "model": a.model,
        "offload": a.offload,
        "load_s": round(load_s, 2),
        "first_total_s": round(first.timings["total"], 2),
        "denoising_s": round(second.timings["denoising"], 3),
        "step_s": round(second.timings["denoising"] / steps, 4),
        "peak_gib": round(stats.get("peak_bytes_in_use", 0) / 2**30, 2),
        "limit_gib": round(stats.get("bytes_limit", 0) / 2**30, 2),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
