"""Where a warm start's time goes: the FLUX.1 pipeline's warm phase (`jdiff bench`) under cProfile.

Usage: python benchmarks/warm_start_profile.py [--tiny] [--trace] [--out DIR]
A first process fills a fresh persistent cache (the bench's cold phase); this one then runs the warm phase
under cProfile, printing jax's compile events in order (with the time since the first generate began) and
the functions with the most cumulative time, and writing the raw stats to DIR/warm_start.prof; with --trace,
a jax.profiler trace of the warm phase instead (DIR/warm_start.trace.json.gz, host and device timelines).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--top", type=int, default=45)
    ap.add_argument(
        "--trace", action="store_true", help="a jax.profiler trace (host and device) instead of cProfile"
    )
    args = ap.parse_args()
    os.environ["JDIFF_CACHE_DIR"] = tempfile.mkdtemp(prefix="jdiff-warm-profile-")
    cold = [sys.executable, "-m", "jdiff.bench", "--engine", "jdiff", "--workload", "flux_pipeline"]
    subprocess.run(cold + (["--tiny"] if args.tiny else []), check=True, capture_output=True)

    import jax

    from jdiff.bench import jdiff_pipeline

    t_start = [None]
    log = []

    def on_duration(event: str, duration: float, **_) -> None:
        if t_start[0] is not None:
            log.append((time.perf_counter() - t_start[0], event.rsplit("/", 1)[-1], duration))

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    from jdiff.pipelines import flux

    generate = flux.FluxPipeline.generate

    def timed_generate(self, *a, **kw):
        t_start[0] = time.perf_counter()
        if not args.trace:
            return generate(self, *a, **kw)
        # Only the first call, not the weights' construction: the host trace has a limited event buffer.
        with jax.profiler.trace(os.path.join(args.out, "warm_trace"), create_perfetto_trace=True):
            return generate(self, *a, **kw)

    flux.FluxPipeline.generate = timed_generate
    prof = cProfile.Profile()
    if args.trace:
        res = jdiff_pipeline.run_jdiff_pipeline("flux_pipeline", args.tiny, True)
    else:
        prof.enable()
        res = jdiff_pipeline.run_jdiff_pipeline("flux_pipeline", args.tiny, True)
        prof.disable()
    print({k: res[k] for k in ("construct_s", "first_s", "xla_compile_s", "trace_s")})
    for at, event, dur in log:
        print(f"  at {at:7.3f} s  {event:<40} {dur:7.3f} s")
    if args.trace:
        import glob
        import shutil

        path = sorted(glob.glob(os.path.join(args.out, "warm_trace", "**", "*trace.json.gz"), recursive=True))
        shutil.copy(path[-1], os.path.join(args.out, "warm_start.trace.json.gz"))
        return
    prof.dump_stats(os.path.join(args.out, "warm_start.prof"))
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(args.top)
    print(s.getvalue())


if __name__ == "__main__":
    main()
