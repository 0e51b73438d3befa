"""The skeleton every family's pipeline fills in: one `generate` for all of them.

    generate = parse the request -> check (family) -> encode (family) -> denoise -> decode -> save

`Pipeline.generate` owns the order, the timings, the progress bar, the overlap of decoder preparation with the
denoising loop, gathering results from every process, output types and saving. A family implements a few
hooks and declares what it takes:

    class MyPipeline(Pipeline):
        family = "My model"                 # for messages
        is_video = False
        accepts = frozenset({"negative_prompt", "guidance_scale"})   # optional request fields it takes

        def __init__(self, model, *, dtype, placement=None): ...   # load; set self.preset, self.size_multiple
        def check(self, request): ...                              # family-specific rules (optional)
        def encode(self, request): ...                             # -> conditioning (device arrays)
        def denoise_stage(self, request, cond) -> Stage: ...       # the jitted sampling loop and its inputs
        def decode_stage(self, request) -> Stage: ...              # the jitted decoder (its latents arg last)

Fields a family does not declare are refused with one message naming them (`jdiff.pipelines.request`).
A family whose `denoise_stage` can run a step cache lists the modes and their default thresholds in
`step_caches` (its loop then returns (latents, statistics): `sample(..., cache=self.step_cache(request))`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jax
import numpy as np

from jdiff.errors import InputError
from jdiff.kernels.attention import default_implementation
from jdiff.parallel.placement import context, gather
from jdiff.pipelines import lora as lora_adapters
from jdiff.pipelines import memory
from jdiff.pipelines import request as requests
from jdiff.pipelines.base import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    GenerationResult,
    check_outputs,
    check_trained_size,
    run_while_preparing,
    save_images,
    save_video,
    to_pil,
)
from jdiff.pipelines.request import Request
from jdiff.sampling import progress as progress_registry
from jdiff.sampling import step_cache
from jdiff.sampling.loop import sample


@dataclass(frozen=True)
class Stage:
    """A jitted stage and how to call it.

    Attributes:
        fn: the jitted function.
        args: positional arguments (for a decoder: all but the latents, which `generate` appends).
        kwargs: static keyword arguments.
        key: what identifies its compiled program besides the arguments' shapes (decoder preparation runs
            once per key).
    """

    fn: Callable
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    key: tuple = ()


class Pipeline:
    """Base of every family's pipeline (see the module docstring for the hooks)."""

    family: ClassVar[str] = "this model"
    is_video: ClassVar[bool] = False
    accepts: frozenset[str] = frozenset()
    max_images: ClassVar[int] = 1  # how many images `image=` takes, where `accepts` has "image"
    # field -> the message refusing it, where the family can say why (e.g. "needs a two-expert model").
    refusals: dict[str, str] = {}  # noqa: RUF012 - read-only by convention, overridden per family

    # Set by the family's __init__.
    preset: dict[str, Any]
    size_multiple: int
    placement: Any = None
    lora: Any = None  # a `jdiff.pipelines.lora.Adapters` where the family takes LoRA adapters
    quantization: str | None = None  # "fp8" once `jdiff.pipelines.quantize.apply` ran
    offload: str | None = None  # None, "model" or "layers" (`jdiff.pipelines.offload.apply` sets it)
    # Step-cache mode -> its default threshold (`jdiff.sampling.step_cache`), for families whose loop runs one.
    step_caches: ClassVar[dict[str, float]] = {}

    @property
    def accepts_image(self) -> bool:
        """Whether requests may carry a conditioning image (the server's edit and image-to-video routes)."""
        return "image" in self.accepts

    # ---- hooks --------------------------------------------------------------------------------------------

    def check(self, request: Request) -> None:
        """Family-specific checks beyond the generic ones (raise InputError). Default: sizes divide."""
        for name, v in (("height", request.height), ("width", request.width)):
            if v % self.size_multiple:
                lo, hi = (
                    v // self.size_multiple * self.size_multiple,
                    (v // self.size_multiple + 1) * self.size_multiple,
                )
                raise InputError(
                    f"{name} {v} is not divisible by {self.size_multiple}, as {self.family} needs; "
                    f"use {lo or hi} or {hi}"
                )

    def encode(self, request: Request) -> Any:
        raise NotImplementedError

    def denoise_stage(self, request: Request, cond: Any, progress) -> Stage:
        """The jitted sampling loop for `request`; `progress` (an int32 token, or None) goes to its `sample`."""
        raise NotImplementedError

    def decode_stage(self, request: Request) -> Stage:
        raise NotImplementedError

    def teacache_coefficients(self, request: Request) -> tuple[float, ...]:
        """TeaCache's rescaling polynomial for this model (np.poly1d order); default: none (identity)."""
        del request
        return step_cache.IDENTITY

    def step_cache(self, request: Request) -> tuple[str | None, step_cache.CacheParams | None]:
        """(mode, traced settings) of the request's step cache for the denoising stage, or (None, None)."""
        mode = request.step_cache
        if mode is None:
            return None, None
        threshold = request.step_cache_threshold
        threshold = self.step_caches[mode] if threshold is None else threshold
        coefficients = self.teacache_coefficients(request) if mode == "teacache" else step_cache.IDENTITY
        return mode, step_cache.params(threshold, coefficients)

    def run_sampler(
        self, velocity, latents, schedule, *, per_step=None, progress=None, cache=(None, None, None)
    ):
        """`sampling.loop.sample` with this pipeline's solver, inside the denoising stage's trace.

        `cache` is (mode, settings, parts) from `step_cache(request)` plus the family's `CachedModel` (None
        when mode is None): with a mode, the loop runs the step cache and returns (latents, statistics).
        """
        mode, settings, parts = cache
        return sample(
            self.sampler,
            self.scheduler,
            velocity,
            latents,
            schedule,
            per_step=per_step,
            progress=progress,
            cache=None if mode is None else step_cache.StepCache(mode, parts, settings),
        )

    def latents_out(self, final: np.ndarray) -> np.ndarray:
        """The final latents in diffusers' pipeline layout (default: as the loop keeps them)."""
        return final

    def activation_estimate(self, request: Request) -> int | None:
        """A floor on the denoiser's activation bytes per device for `request` (memory planning, step 1);
        None where the family gives no estimate. Default: a DiT whose config has `num_attention_heads` and
        `attention_head_dim`, with (H / size_multiple)(W / size_multiple) tokens per latent frame and, for
        video, (num_frames - 1) / 4 + 1 latent frames (`memory.activation_bytes`)."""
        tc = getattr(self, "transformer_config", None)
        heads, head_dim = getattr(tc, "num_attention_heads", None), getattr(tc, "attention_head_dim", None)
        if not isinstance(heads, int) or not isinstance(head_dim, int):
            return None
        per_sequence = (request.height // self.size_multiple) * (request.width // self.size_multiple)
        if self.is_video:
            per_sequence *= (request.num_frames - 1) // 4 + 1
        dtype = np.dtype(getattr(self, "dtype", np.float32))
        fused = default_implementation(dtype, head_dim) != "xla"
        return memory.activation_bytes(
            per_sequence,
            heads * head_dim,
            dtype.itemsize,
            sequences=request.batch,
            heads=heads,
            fused_attention=fused,
        )

    # ---- the one generate ---------------------------------------------------------------------------------

    def parse(self, prompt, **fields) -> Request:
        """The request for `generate(prompt, **fields)`, checked generically and by the family."""
        caches = frozenset({"step_cache", "step_cache_threshold"} if self.step_caches else ())
        request = requests.parse(
            prompt,
            fields,
            accepts=self.accepts | caches,
            preset=self.preset,
            family=self.family,
            reasons=self.refusals,
            max_images=self.max_images,
        )
        # The output's suffix, directory and writer (mp4: ffmpeg) before any model runs.
        suffixes = VIDEO_SUFFIXES if self.is_video else IMAGE_SUFFIXES
        check_outputs(
            request.output_type, request.output_path, suffixes, "frames" if self.is_video else "images"
        )
        if request.step_cache is not None and request.step_cache not in self.step_caches:
            raise InputError(
                f"{self.family} has no {request.step_cache!r} step cache; it runs {sorted(self.step_caches)}"
            )
        self.check(request)
        self.lora_scales(request)  # unknown adapter names fail here, before any work
        check_trained_size(request.warnings, request.height, request.width, self.preset)
        return request

    def lora_scales(self, request: Request) -> np.ndarray | None:
        """The request's [B, K] adapter scales for the jitted stages (None: no adapter is loaded)."""
        if self.lora is None:
            if request.loras is not None and any(request.loras):
                raise InputError(f"{self.family} does not take LoRA adapters yet; leave loras out")
            return None
        return self.lora.scales(request.loras, request.batch)

    def generate(self, prompt, **fields) -> GenerationResult:
        """Generates from `prompt` (str or list[str]); keyword arguments as the README documents them."""
        t_start = time.perf_counter()
        request = self.parse(prompt, **fields)
        with lora_adapters.request_scales(self.lora_scales(request)):
            return self._generate(request, t_start)

    def _generate(self, request: Request, t_start: float) -> GenerationResult:
        timings: dict[str, float] = {}
        planning = memory.enabled()
        if planning:
            self._check_estimate(request)

        t0 = time.perf_counter()
        cond = self.encode(request)
        jax.block_until_ready(cond)
        timings["text_encoding"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        with contextlib.ExitStack() as stack:
            token = None
            if request.progress:
                bar = stack.enter_context(progress_bar(request.steps))
                token = np.int32(stack.enter_context(progress_registry.track(bar)))
            denoise = self.denoise_stage(request, cond, token)
            decode = None if request.output_type == "latent" else self.decode_stage(request)
            with context(self.placement):
                if planning:
                    self._check_stage(denoise, denoise.args, ("denoise", *denoise.key), request)
                final = run_while_preparing(
                    denoise.fn,
                    denoise.args,
                    denoise.kwargs,
                    following=None if decode is None else decode.fn,
                    following_args=lambda spec: (*decode.args, spec),
                    following_kwargs={} if decode is None else decode.kwargs,
                    done=self._decoders,
                    key=(
                        *denoise.key,
                        token is not None,
                        *denoise.kwargs.values(),
                        *(() if decode is None else decode.key),
                    ),
                )
                final = jax.block_until_ready(final)
            del denoise, cond  # offloaded weights leave the device before decoding
        timings["denoising"] = time.perf_counter() - t0
        if isinstance(final, tuple):  # a step cache ran: (latents, statistics), `sampling.loop.sample`
            final, stats = final
            skipped = int(np.asarray(stats["skipped"].addressable_data(0)))  # a replicated scalar
            timings["steps_skipped"] = skipped
            timings["steps_computed"] = request.steps - skipped
            timings["steps_cached_per_output"] = float(np.mean(gather(stats["reused"])))

        result = GenerationResult(
            latents=self.latents_out(gather(final)),
            timings=timings,
            seeds=list(request.seeds),
            warnings=request.warnings,
        )
        if decode is not None:
            t0 = time.perf_counter()
            with context(self.placement):
                if planning:
                    self._check_stage(decode, (*decode.args, final), ("decode", *decode.key), request)
                decoded = gather(decode.fn(*decode.args, final, **decode.kwargs))
            timings["decoding"] = time.perf_counter() - t0
            self._deliver(result, decoded, request)
        timings["total"] = time.perf_counter() - t_start
        return result

    def _deliver(self, result: GenerationResult, decoded: np.ndarray, request: Request) -> None:
        """Output types and saving (process 0 alone writes in a multi-process run)."""
        if self.is_video:
            result.frames = decoded if request.output_type == "np" else [to_pil(f) for f in decoded]
        else:
            result.images = decoded if request.output_type == "np" else to_pil(decoded)
        if request.output_path is not None and jax.process_index() == 0:
            if self.is_video:
                result.paths = save_video(decoded, request.output_path, fps=request.fps or 16)
            else:
                result.paths = save_images(decoded, request.output_path)

    def _what(self, request: Request) -> str:
        frames = f"x{request.num_frames} frames" if self.is_video else ""
        return f"{request.width}x{request.height}{frames}, batch {request.batch}"

    def _check_estimate(self, request: Request) -> None:
        """Memory planning step 1 (`jdiff.pipelines.memory`): before any compile."""
        params = self.__dict__.get("_params")
        incoming = params.incoming() if hasattr(params, "incoming") else {}
        activations = self.activation_estimate(request) or 0
        memory.check_estimate(incoming, activations, self.offload, f"the denoiser at {self._what(request)}")

    def _check_stage(self, stage: Stage, args: tuple, key: tuple, request: Request) -> None:
        """Memory planning step 2: XLA's figure for a stage's program, once per program, before it runs."""
        checked = self.__dict__.setdefault("_memory_checked", set())
        leaves, tree = jax.tree.flatten(args)
        key = (
            *key,
            tree,
            *((np.shape(x), str(getattr(x, "dtype", ""))) for x in leaves),
            *stage.kwargs.values(),
        )
        if key in checked:
            return
        compiled = stage.fn.lower(*args, **stage.kwargs).compile()
        what = f"{'decoding' if key[0] == 'decode' else 'denoising'} at {self._what(request)}"
        memory.check_compiled(compiled, args, self.offload, what)
        checked.add(key)

    @property
    def _decoders(self) -> set:
        """The decoder programs prepared so far (one per key; `run_while_preparing`)."""
        if "_decoder_keys" not in self.__dict__:
            self._decoder_keys: set = set()
        return self._decoder_keys


@contextlib.contextmanager
def progress_bar(steps: int):
    """A tqdm bar over the denoising steps, as a hook taking each finished step's index; labelled
    "compiling" until the first step completes (process 0 draws it in multi-process runs).

    The first step's wait includes compiling (or loading) the denoising program: counted as a step, it made
    the first estimate of the time left read minutes. When the first step completes the bar is relabelled
    "denoising" and its clock restarts with that step counted as done before the start, so the rate and the
    time left come from the steps alone.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc="compiling", unit="step", leave=False, disable=jax.process_index() != 0)
    done = [0]

    def hook(i: int) -> None:
        if done[0] == 0:  # the first step is done, so is the compilation
            bar.set_description("denoising", refresh=False)
            bar.reset(total=steps)
            bar.initial = bar.n = bar.last_print_n = done[0] = 1
            bar.refresh()
        if i + 1 > done[0]:
            bar.update(i + 1 - done[0])
            done[0] = i + 1

    hook.bar = bar  # for tests
    try:
        yield hook
    finally:
        bar.close()
