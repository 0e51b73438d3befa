"""jdiff's side of the end-to-end workloads (`jdiff.bench.pipeline_workloads`): the family's real pipeline
(from jdiff.registry) over random weights, timed end to end.

Two worker phases share one persistent compilation cache directory ($JDIFF_CACHE_DIR):
  cold  the cache starts empty: the first `generate` pays for every trace and compile (`first_s`), then the
        median of `repeats` more calls is the steady time (`ms`);
  warm  a second process on the now-filled cache: pipeline construction plus the first `generate`
        (`start_s`, reported by the driver as `warm_start_s`), what a restarted server sees.
Weights are built before any clock starts, so loading is excluded from both. The programs that build the random
weights never enter the cache (they are scaffolding; a user's start loads weights without compiling).

Fields (seconds unless named otherwise): construct_s (the pipeline's constructor, tokenizers included: transformers
reads them in the cold phase, inside the clock; the warm phase rebuilds them from the cache), first_s (first
generate), start_s (the two), compile_s (first_s minus the steady median: tracing, lowering, XLA compiles,
autotuning, cache writes), xla_compile_s / trace_s (jax's own compile and trace+lowering durations during
construction and the first call), cache_hits / cache_misses (persistent-cache lookups in that window),
cache_entries_before / _after (executables in the cache directory), stage_first_s / stage_ms /
stage_compile_s (the pipeline's per-stage timings: first call, steady median, difference), trace_counts
(traces per jitted stage over all calls: 1 each means no recompiles), times_ms (steady calls), weights_gib /
peak_gib (device memory after building the weights / peak `peak_bytes_in_use`; None on CPU).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from jdiff.bench.configs import PROMPT
from jdiff.bench.jdiff_engine import _jdiff_random, device_memory, gib, jax_versions
from jdiff.bench.model_dir import write_in_subprocess
from jdiff.bench.workloads import _resolve
from jdiff.pipelines.model_dir import ModelDir

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # XLA compile, or a persistent-cache load
TRACE = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")
CACHE_HITS, CACHE_MISSES = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"


class RandomModelDir(ModelDir):
    """A workload's model directory (`jdiff.bench.model_dir`: configs, scheduler, tokenizers) whose models are
    random: what a pipeline asks of a `ModelDir`, answered as for a released directory but `load`.

    Every floating parameter is normal(0, 0.02) in the loader's dtype, built abstractly and filled leaf by leaf
    on the device (`_jdiff_random`), all in `__init__`: `load` then only hands the module over. Batch-norm
    running statistics (FLUX.2's VAE) are mean 0 and variance 1 instead, as a freshly built reference module's
    buffers are (diffusers' side keeps them): a random variance can be negative.
    """

    def __init__(self, root: Path, dtype, models: tuple[str, ...]):
        import jax
        import jax.numpy as jnp

        from jdiff.registry import family_for
        from jdiff.weights.config import read_json

        super().__init__(root, read_json(root / "model_index.json"))
        self.family = family_for(self.pipeline_class, root)
        self.dtype = jnp.dtype(dtype)
        self._built = {}
        for name in models:
            spec = self.spec(name)
            cfg = spec.read_config(self.folder(name))
            graphdef, params = _jdiff_random(spec, cfg, self.dtype)
            self._built[name] = (cfg, graphdef, _reference_buffers(params))
        jax.block_until_ready([params for _, _, params in self._built.values()])

    def load(self, name: str, *, dtype, placement=None):
        """(config, module) of component `name`, built in `__init__` (one device, the dtype built with)."""
        import jax.numpy as jnp
        from flax import nnx

        if placement is not None or jnp.dtype(dtype) != self.dtype:
            raise ValueError(
                f"random weights are built for one device in {self.dtype}; got {dtype}, {placement}"
            )
        cfg, graphdef, params = self._built[name]
        return cfg, nnx.merge(graphdef, params)


def random_model_dir(name: str, tiny: bool, dtype) -> RandomModelDir:
    """Workload `name`'s directory (its toy config under `tiny`), written to a temporary folder by a child
    process (`jdiff.bench.model_dir`: this one does not import transformers), models random."""
    from jdiff.bench.workloads import WORKLOADS

    return RandomModelDir(write_in_subprocess(name, tiny), dtype, WORKLOADS[name].pipeline.models)


def _reference_buffers(params):
    """`params` with batch-norm running means 0 and variances 1 (a fresh reference module's buffers)."""
    import jax.numpy as jnp
    from flax import nnx

    flat = []
    for path, v in nnx.to_flat_state(params):
        leaf = str(path[-1])
        if leaf in ("running_mean", "running_var"):
            fill = jnp.zeros_like if leaf == "running_mean" else jnp.ones_like
            v = v.replace(fill(v[...]))
        flat.append((path, v))
    return nnx.from_flat_state(flat)


class CompileEvents:
    """Sums jax's compile durations and counts its persistent-cache events while inside `with`."""

    def __init__(self):
        import jax

        self.seconds: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self._active = False
        jax.monitoring.register_event_duration_secs_listener(self._duration)
        jax.monitoring.register_event_listener(self._event)

    def _duration(self, event: str, duration: float, **_) -> None:
        if self._active:
            self.seconds[event] += duration

    def _event(self, event: str, **_) -> None:
        if self._active:
            self.counts[event] += 1

    def __enter__(self) -> CompileEvents:
        self.seconds.clear()
        self.counts.clear()
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        self._active = False

    def summary(self) -> dict:
        return {
            "xla_compile_s": round(self.seconds[BACKEND_COMPILE], 2),
            "trace_s": round(sum(self.seconds[e] for e in TRACE), 2),
            "cache_hits": self.counts[CACHE_HITS],
            "cache_misses": self.counts[CACHE_MISSES],
        }


def cache_entries(path: Path) -> int:
    """Executables in jax's persistent cache directory (one `<key>-cache` file each)."""
    return sum(1 for p in path.glob("*-cache") if p.is_file()) if path.is_dir() else 0


def _enable_cache(tiny: bool, warm: bool) -> Path:
    """Turns on jdiff's persistent cache at $JDIFF_CACHE_DIR (a fresh temp dir for a cold run without one)."""
    import jax

    from jdiff import compilation_cache

    if not os.environ.get("JDIFF_CACHE_DIR"):
        if warm:
            raise SystemExit(
                "jdiff bench: the warm phase needs JDIFF_CACHE_DIR, the cache the cold phase filled"
            )
        os.environ["JDIFF_CACHE_DIR"] = tempfile.mkdtemp(prefix="jdiff-bench-cache-")
    want = Path(os.environ["JDIFF_CACHE_DIR"])
    got = compilation_cache.enable()
    if got is None or Path(got) != want:
        raise SystemExit(
            f"jdiff bench: jax's compilation cache is {got}, not JDIFF_CACHE_DIR={want}; unset it"
        )
    if tiny:  # toy programs compile in well under jdiff's 1 s threshold: cache them all, or nothing is cached
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return want


@contextlib.contextmanager
def _no_cache_writes():
    import jax

    key = "jax_persistent_cache_min_compile_time_secs"
    old = getattr(jax.config, key)
    jax.config.update(key, 1e9)
    try:
        yield
    finally:
        jax.config.update(key, old)


def run_jdiff_pipeline(name: str, tiny: bool, warm: bool) -> dict:
    import jax
    import jax.numpy as jnp

    from jdiff.bench.jdiff_engine import _attention_head_dim
    from jdiff.layers.attention import default_implementation
    from jdiff.pipelines import quantize

    wl, config, sz = _resolve(name, tiny)
    spec = wl.pipeline
    cache_dir = _enable_cache(tiny, warm)
    entries_before = cache_entries(cache_dir)
    if warm != (entries_before > 0):
        state = "empty" if warm else f"holds {entries_before} entries"
        raise SystemExit(f"jdiff bench: the {'warm' if warm else 'cold'} phase found {cache_dir} {state}")
    dev = jax.devices()[0]
    bf16 = jnp.bfloat16
    with _no_cache_writes():
        model = random_model_dir(name, tiny, bf16)
    weights_gib = device_memory(dev, "bytes_in_use")
    events = CompileEvents()
    call = dict(height=sz["height"], width=sz["width"], seed=0, output_type="np", **spec.call(sz))
    if spec.step_cache:
        call.update(step_cache=spec.step_cache[0], step_cache_threshold=spec.step_cache[1])

    def generate(pipe):
        return pipe.generate(PROMPT, **call)

    with events:
        t0 = time.perf_counter()
        pipe = model.family.pipeline(model, dtype=bf16)
        quantize.apply(pipe, model, spec.quantization)
        construct_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        first = generate(pipe)
        first_s = time.perf_counter() - t0
    res = {
        "phase": "warm" if warm else "cold",
        "cache_dir": str(cache_dir),
        "cache_entries_before": entries_before,
        "construct_s": round(construct_s, 3),
        "first_s": round(first_s, 3),
        "start_s": round(construct_s + first_s, 3),
        **events.summary(),
    }
    if not warm:
        for _ in range(wl.warmup):
            generate(pipe)
        runs, times = [], []
        for _ in range(wl.repeats):
            t0 = time.perf_counter()
            runs.append(generate(pipe))
            times.append(time.perf_counter() - t0)
        stages = [k for k in first.timings if not k.startswith("steps_")]  # the rest: step-cache counts
        steady = {k: float(np.median([r.timings[k] for r in runs])) for k in stages}
        head_dim = _attention_head_dim(spec.step, config[spec.denoiser])
        res.update(
            {
                "device": dev.device_kind,
                "versions": jax_versions(),
                "attention": default_implementation(bf16, head_dim),
                "cache_entries_after": cache_entries(cache_dir),
                # Everything the first call does beyond a steady one: tracing, lowering, XLA compiles, autotuning.
                "compile_s": round(first_s - float(np.median(times)), 2),
                "stage_first_s": {k: round(first.timings[k], 3) for k in stages},
                "stage_ms": {k: round(1e3 * v, 1) for k, v in steady.items()},
                "stage_compile_s": {k: round(first.timings[k] - steady[k], 2) for k in stages},
                "step_cache": {k: v for k, v in first.timings.items() if k.startswith("steps_")} or None,
                "trace_counts": dict(pipe.trace_counts),
                "times_ms": [round(1e3 * t, 2) for t in times],
                "warnings": first.warnings,
            }
        )
    images = first.frames if first.frames is not None else first.images  # a video pipeline's frames
    res.update(
        {
            "weights_gib": gib(weights_gib),
            "peak_gib": gib(device_memory(dev, "peak_bytes_in_use")),
            "out_shape": list(images.shape),
            "finite": bool(np.isfinite(images).all()),
        }
    )
    return res
