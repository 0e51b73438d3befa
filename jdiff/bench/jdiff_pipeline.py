"""jdiff's side of `flux_pipeline`: a real `FluxPipeline` over random weights, timed end to end.

Two worker phases share one persistent compilation cache directory ($JDIFF_CACHE_DIR):
  cold  the cache starts empty: the first `generate` pays for every trace and compile (`first_s`), then the
        median of `repeats` more calls is the steady time (`ms`);
  warm  a second process on the now-filled cache: pipeline construction plus the first `generate`
        (`start_s`, reported by the driver as `warm_start_s`), what a restarted server sees.
Weights are built before any clock starts, so loading is excluded from both. The programs that build the random
weights never enter the cache (they are scaffolding; a user's start loads weights without compiling).

Fields (seconds unless named otherwise): construct_s (FluxPipeline(...), tokenizers included: transformers
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
from typing import ClassVar

import numpy as np

from jdiff.bench.jdiff_engine import _jdiff_random, device_memory, gib, jax_versions
from jdiff.bench.workloads import PROMPT, _resolve

# model_index.json of FLUX.1-dev: component -> (library, class name).
COMPONENTS = {
    "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "text_encoder_2": ("transformers", "T5EncoderModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "tokenizer_2": ("transformers", "T5Tokenizer"),
    "transformer": ("diffusers", "FluxTransformer2DModel"),
    "vae": ("diffusers", "AutoencoderKL"),
}
MODELS = ("transformer", "text_encoder", "text_encoder_2", "vae")
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # XLA compile, or a persistent-cache load
TRACE = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")
CACHE_HITS, CACHE_MISSES = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"


class RandomModelDir:
    """What `FluxPipeline.__init__` asks of a `ModelDir`, answered from configs and random weights.

    Every floating parameter is normal(0, 0.02) in the loader's dtype, built abstractly and filled leaf by leaf
    on the device (`_jdiff_random`), all in `__init__`: `load` then only hands the module over. Tokenizers are
    the embedded tiny model's (`jdiff/assets/tiny-flux`): their ids fit the real CLIP and T5 vocabularies,
    which is all random weights need.
    """

    # No jdiff_preset.json here: the flux-dev preset applies (the bench passes every sampling argument anyway).
    root = Path("<random FLUX.1 weights>")
    index: ClassVar[dict] = {"_class_name": "FluxPipeline", **{n: list(e) for n, e in COMPONENTS.items()}}

    def __init__(self, configs: dict, dtype):
        import jax
        import jax.numpy as jnp

        from jdiff.pipelines.flux import FAMILY
        from jdiff.weights.config import from_dict

        self.dtype = jnp.dtype(dtype)
        self.configs = configs
        self._built = {}
        for name in MODELS:
            spec = FAMILY.spec_for(COMPONENTS[name][1], component=name)
            cfg = from_dict(spec.config_cls, configs[name])
            self._built[name] = (cfg, *_jdiff_random(spec, cfg, self.dtype))
        jax.block_until_ready([params for _, _, params in self._built.values()])

    def components(self) -> dict[str, tuple[str, str]]:
        return dict(COMPONENTS)

    def scheduler_config(self) -> dict:
        return dict(self.configs["scheduler"])

    scheduler_class = COMPONENTS["scheduler"][1]

    def sampler(self):
        """The table row and config, as `ModelDir.sampler` (no scheduler swap here)."""
        from jdiff.sampling.table import sampler_for

        return sampler_for(self.scheduler_class, self.scheduler_config())

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

    def tokenizer(self, name: str):
        from jdiff.api import embedded_model_path
        from jdiff.pipelines.model_dir import ModelDir

        return ModelDir.open(embedded_model_path()).tokenizer(name)


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

    from jdiff.layers.attention import default_implementation
    from jdiff.pipelines.flux import FluxPipeline

    wl, config, sz = _resolve(name, tiny)
    cache_dir = _enable_cache(tiny, warm)
    entries_before = cache_entries(cache_dir)
    if warm != (entries_before > 0):
        state = "empty" if warm else f"holds {entries_before} entries"
        raise SystemExit(f"jdiff bench: the {'warm' if warm else 'cold'} phase found {cache_dir} {state}")
    dev = jax.devices()[0]
    bf16 = jnp.bfloat16
    with _no_cache_writes():
        model = RandomModelDir(config, bf16)
    weights_gib = device_memory(dev, "bytes_in_use")
    events = CompileEvents()

    def generate(pipe):
        kw = dict(
            num_inference_steps=sz["steps"], guidance_scale=sz["guidance"], max_sequence_length=sz["text"]
        )
        return pipe.generate(PROMPT, height=sz["height"], width=sz["width"], seed=0, output_type="np", **kw)

    with events:
        t0 = time.perf_counter()
        pipe = FluxPipeline(model, dtype=bf16)
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
        steady = {k: float(np.median([r.timings[k] for r in runs])) for k in first.timings}
        res.update(
            {
                "device": dev.device_kind,
                "versions": jax_versions(),
                "attention": default_implementation(bf16, config["transformer"]["attention_head_dim"]),
                "cache_entries_after": cache_entries(cache_dir),
                # Everything the first call does beyond a steady one: tracing, lowering, XLA compiles, autotuning.
                "compile_s": round(first_s - float(np.median(times)), 2),
                "stage_first_s": {k: round(v, 3) for k, v in first.timings.items()},
                "stage_ms": {k: round(1e3 * v, 1) for k, v in steady.items()},
                "stage_compile_s": {k: round(first.timings[k] - steady[k], 2) for k in first.timings},
                "trace_counts": dict(pipe.trace_counts),
                "times_ms": [round(1e3 * t, 2) for t in times],
            }
        )
    images = first.images
    res.update(
        {
            "weights_gib": gib(weights_gib),
            "peak_gib": gib(device_memory(dev, "peak_bytes_in_use")),
            "out_shape": list(images.shape),
            "finite": bool(np.isfinite(images).all()),
        }
    )
    return res
