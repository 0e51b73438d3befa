"""Step-level continuous batching for a pipeline: buckets of slots, requests joining and leaving between chunks.

`SlotRunner` is the host side of `jdiff.sampling.slots`: requests of one *bucket* (the family's key: output
size, text length, ...; everything that fixes the shapes) share a fixed set of S slots whatever their step
counts; `add` encodes a request's prompt and prepares its slot row, `advance` writes waiting requests into free
slots, runs one chunk of k steps on every bucket with work, and hands back the requests that finished with
their decoded outputs (dispatched, not waited for: the caller reads them while the next chunk runs). A
cancelled request (`cancel`) leaves its slot at the next chunk boundary. The runner has no scheduling thread
and no clock of its own; the server's scheduler (`jdiff.server.continuous`) drives it. Its `DeviceClock`
(`slot_clock`) stamps each request's stages on the device's timeline (`Job.timings`) without waiting.

A family takes part by giving its pipeline these hooks (see `flux.py`, `wan_slots.py`, `qwen_image_slots.py`):

    slot_refusal(request) -> str | None    # a family's own reason a request cannot run in slots, or None
    slot_bucket(request, cond) -> tuple    # what fixes the shapes besides the slot row's own (the runner
                                           # adds those: text lengths, CFG rows, ...); equal keys share slots
    slot_schedule(request) -> Schedule     # the sampler's schedule for it (host, numpy)
    slot_inputs(request, cond) -> (noise, cond_row)   # its initial noise [*X] and conditioning (no batch axis)
    slot_shared(request, cond) -> pytree   # the bucket's constants (e.g. RoPE tables)
    slot_model(params, shared, cond, x, t, run)   # traced: the model output for all slots [S, *X] at
                                           # timesteps t [S]; run [S]: the slots that advance
    slot_params() -> pytree                # the denoiser's weights (an argument of the chunk program)
    slot_output(cond, x) -> x              # optional, traced: one slot's final sample from its last state

plus `sampler`, `scheduler` and the usual `encode` / `decode_stage`. Requests run with batch 1 each (a request
for n outputs is n requests): text encoding, the slot row and decoding then have one shape whatever the load,
so a request's bytes never depend on what else runs (`jdiff.sampling.slots` says what else makes that hold).
The helpers below hold what the families' hooks share: the plain loop's noise (`noise`), the flow schedule of
FLUX.1, Qwen-Image and Z-Image (`flow_schedule`), and CFG's batch of [negatives; prompts] over the slots
(`cfg_rows`, `per_slot`, `guided`).

Who takes part: FLUX.1 (without true CFG), Qwen-Image text-to-image (true CFG on or off), Z-Image, FLUX.2 and
FLUX.2-klein text-to-image, Wan text-to-video and image-to-video (Wan2.1 I2V, Wan2.2 TI2V-5B with or without
an image) with one expert or two (Wan2.2 A14B: `wan_slots.py`). Everything else (edits, reference images,
other families, the cases `refusal` lists) keeps request-level batching, with its reason.

Costs: idle slots compute (a bucket of S slots costs S rows per step, busy or not); a request that ends inside
a chunk waits for the chunk's end (at most k - 1 steps of its slot wasted); decoding runs at batch 1; every
bucket compiles its own chunk program (warm-up compiles the sizes it is given; Qwen-Image's buckets follow
each prompt's token count, so each new count compiles one, as its plain loop does); with two experts (Wan2.2
A14B), a step where the slots straddle the boundary runs both experts. With `serial`, the model runs
slot by slot at batch 1 and idle slots are skipped: no idle cost and no batching gain, the better choice
where one image already keeps the accelerator busy (e.g. FLUX.1 at 1024x1024 on an H200: about 590 TFLOP/s
at batch 1), since a lone request then runs at its batch-1 speed instead of S times slower.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import compiler_options
from jdiff.pipelines.request import Request
from jdiff.pipelines.slot_clock import DeviceClock, Span
from jdiff.sampling import slots as slot_ops
from jdiff.sampling.flow_match import calculate_shift, default_sigmas
from jdiff.sampling.noise import noise_from_keys, noise_keys

# ---- what the families' hooks share ---------------------------------------------------------------------------


def noise(request: Request, shape: tuple[int, ...], layout=None) -> jax.Array:
    """The request's initial noise [*X] as its plain loop draws it: `noise_from_keys` of its first seed at
    `shape`, then `layout` (a module-level function of the batched noise, e.g. FLUX's packing), or None."""
    return _noise(noise_keys(list(request.seeds[:1])), tuple(shape), layout)[0]


@partial(jax.jit, static_argnums=(1, 2))
def _noise(keys, shape: tuple[int, ...], layout) -> jax.Array:
    x = noise_from_keys(keys, shape)
    return x if layout is None else layout(x)


def flow_schedule(pipeline, steps: int, image_tokens: int):
    """FLUX.1's, Qwen-Image's and Z-Image's schedule (plain loop and slots): the default sigmas, shifted by the
    resolution-dependent mu of `image_tokens` (diffusers' `calculate_shift`, used where the scheduler shifts
    dynamically)."""
    sc = pipeline.scheduler
    mu = calculate_shift(
        image_tokens, sc.base_image_seq_len, sc.max_image_seq_len, sc.base_shift, sc.max_shift
    )
    return pipeline.sampler.schedule(sc, steps, mu=mu, sigmas=default_sigmas(steps))


def cfg_rows(x: jax.Array, t: jax.Array, texts: Any) -> tuple[jax.Array, jax.Array, Any]:
    """The model batch for every slot's R text rows, ordered as the plain loop's CFG batch: all slots' first
    rows (negatives where R = 2), then all their second (prompts).

    Args:
        x: [S, ...] the slots' model inputs; t: [S, ...] their timesteps.
        texts: the slots' text conditioning, leaves [S, R, ...] (None leaves stay None).

    Returns:
        (x [R S, ...], t [R S, ...], texts with leaves [R S, ...]); `jnp.split(out, R)` gives back each row's.
    """
    r = jax.tree.leaves(texts)[0].shape[1]
    rows = jax.tree.map(lambda a: a.swapaxes(0, 1).reshape(-1, *a.shape[2:]), texts)
    return jnp.concatenate([x] * r), jnp.concatenate([t] * r), rows


def per_slot(a: jax.Array, like: jax.Array) -> jax.Array:
    """Per-slot values [S] shaped to broadcast against `like` [S, ...] (e.g. each slot's guidance scale)."""
    return a.reshape(-1, *(1,) * (like.ndim - 1))


def guided(v: jax.Array, scale: jax.Array) -> jax.Array:
    """CFG per slot over the model's output for `cfg_rows`' batch of two rows per slot [2S, ...]: neg + s (pos -
    neg), with each slot's scale s [S] (Wan's and FLUX.2-klein's form, as their plain loops compute it)."""
    neg, pos = jnp.split(v, 2)
    return neg + per_slot(scale, neg) * (pos - neg)


def _signature(row) -> tuple:
    """What fixes a slot row's compiled programs: its tree structure and every leaf's shape and dtype."""
    leaves, tree = jax.tree.flatten(row)
    return (tree, *((np.shape(a), str(a.dtype)) for a in leaves))


def refusal(pipeline, request: Request) -> str | None:
    """Why `request` cannot run in `pipeline`'s slots, or None."""
    if not hasattr(pipeline, "slot_model"):
        return f"{pipeline.family} has no step-level batching yet"
    why = slot_ops.supports(pipeline.sampler)
    if why is not None:
        return f"{pipeline.family} with this scheduler cannot: {why}"
    if request.batch != 1:
        return "slots take one output per request (the runner splits larger ones)"
    for why, refused in (
        ("step caching", request.step_cache is not None),
        ("given latents", request.latents is not None),
        ("loaded LoRA adapters", pipeline.lora is not None and bool(pipeline.lora.names)),
        ("a model sharded over several devices", pipeline.placement is not None),
        (f"offload={pipeline.offload!r}", pipeline.offload is not None),  # its stages bring the weights in
    ):
        if refused:
            return f"{why} runs with request-level batching"
    return pipeline.slot_refusal(request)


@dataclasses.dataclass(eq=False)
class Job:
    """One output's request in the runner. `done` counts the steps its slot has run (the host's view)."""

    request: Request
    tag: Any
    bucket: tuple
    row: slot_ops.Slots | None
    shared: Any
    steps: int
    slot: int | None = None
    done: int = 0
    cancelled: bool = False
    busy: int = 0  # slots of its bucket in use during its last chunk
    # The device's timeline (`slot_clock`): its encoding, its first and last chunks, its decoding.
    encoding: Span | None = None
    first: Span | None = None
    last: Span | None = None
    decoding: Span | None = None

    def timings(self, wait: float = 1.0) -> dict[str, float]:
        """Seconds per stage on the device's timeline, as far as measured: text_encoding (its slot row too),
        slot_wait (from then to its first chunk: a free slot, the chunk boundary), denoising (its first chunk's
        start to its last chunk's end) and decoding. Call once its output is read (its spans end soon after)."""
        spans = (self.encoding, self.first, self.last, self.decoding)
        if any(s is None or not s.wait(wait) for s in spans):
            return {}
        enc, first, last, dec = spans
        return {
            "text_encoding": enc.end - enc.start,
            "slot_wait": max(0.0, first.start - enc.end),
            "denoising": last.end - first.start,
            "decoding": dec.end - dec.start,
        }


class _Programs:
    """The jitted functions of one pipeline's slot runner, shared by its buckets (one compile per shape)."""

    def __init__(self, pipeline, chunk_steps: int, serial: bool):
        sampler, cfg = pipeline.sampler, pipeline.scheduler
        donate = jax.default_backend() != "cpu"  # CPU ignores donation, with a warning per call

        def chunk(params, shared, slots):
            def model_fn(x, t, cond, run):
                return pipeline.slot_model(params, shared, cond, x, t, run)

            slots = slot_ops.run_chunk(sampler, cfg, model_fn, slots, chunk_steps, serial)
            return slots, slots.step.sum()  # a marker that is not donated to the next chunk

        def make(x, schedule, steps, keys, cond):
            return slot_ops.slot(sampler, cfg, x, schedule, steps, keys, cond)

        jit = compiler_options.jit
        self.chunk = jit(chunk, donate_argnums=(2,) if donate else ())
        self.make = jit(make)
        self.insert = jit(slot_ops.insert, donate_argnums=(0,) if donate else ())
        self.release = jit(slot_ops.release, donate_argnums=(0,) if donate else ())
        output = getattr(pipeline, "slot_output", None)

        def take(slots, x, i):
            one = x[i]
            if output is not None:
                one = output(jax.tree.map(lambda a: a[i], slots.cond), one)
            return one[None]

        self.take = jit(take)
        self.empty = jit(slot_ops.empty, static_argnums=(1,))


class _Bucket:
    def __init__(self, programs: _Programs, first: Job, size: int):
        self.programs = programs
        self.shared = jax.device_put(first.shared)  # once, not with every chunk
        self.slots = programs.empty(first.row, size)
        self.jobs: list[Job | None] = [None] * size
        self.waiting: collections.deque[Job] = collections.deque()

    @property
    def busy(self) -> int:
        return sum(j is not None for j in self.jobs)


class SlotRunner:
    """Continuous batching over one pipeline (see the module docstring).

    Args:
        pipeline: a family's pipeline with the slot hooks.
        slots: S, the slots per bucket (every chunk computes all of them).
        chunk_steps: k, the steps per chunk: requests join and leave every k steps.
        max_steps: the most steps a request may take (its schedule is padded to this many).
        serial: run the model one slot at a time at batch 1, skipping idle slots (`slots.run_chunk`): no
            cost for idle slots, no batching gain; for models compute-bound at batch 1.
    """

    def __init__(
        self, pipeline, *, slots: int = 4, chunk_steps: int = 4, max_steps: int = 64, serial: bool = False
    ):
        if slots < 1 or chunk_steps < 1 or max_steps < 1:
            raise ValueError(
                f"slots, chunk_steps and max_steps must be >= 1, got {slots}, {chunk_steps}, {max_steps}"
            )
        self.pipeline = pipeline
        self.size, self.chunk_steps, self.max_steps = slots, chunk_steps, max_steps
        self._programs = _Programs(pipeline, chunk_steps, serial)
        self.buckets: dict[tuple, _Bucket] = {}
        self._markers: list = []  # one per bucket that ran in the last chunk
        self.hold = False  # True: no request takes a free slot (the running ones go on)
        self.clock = DeviceClock()
        self.chunks = 0  # chunks run so far, over all buckets

    def refusal(self, request: Request) -> str | None:
        """Why `request` cannot run here (None: it can); such requests keep request-level batching."""
        if request.steps > self.max_steps:
            return f"{request.steps} steps exceed the slots' max_steps {self.max_steps}"
        return refusal(self.pipeline, request)

    def add(self, request: Request, tag: Any = None) -> Job:
        """Encodes `request` (batch 1, `refusal` None) and queues it for its bucket's next free slot."""
        p = self.pipeline
        t0 = time.perf_counter()
        cond = p.encode(request)
        x, cond_row = p.slot_inputs(request, cond)
        schedule = slot_ops.pad_schedule(p.slot_schedule(request), self.max_steps)
        keys = noise_keys([request.seeds[0]])[0]
        row = self._programs.make(x, schedule, np.int32(request.steps), keys, cond_row)
        bucket = (*p.slot_bucket(request, cond), _signature(row))
        job = Job(request, tag, bucket, row, p.slot_shared(request, cond), request.steps)
        job.encoding = self.clock.span(row, t0)
        bucket = self.buckets.get(job.bucket)
        if bucket is None:
            bucket = self.buckets[job.bucket] = _Bucket(self._programs, job, self.size)
        bucket.waiting.append(job)
        return job

    def reset(self) -> None:
        """Forgets every bucket and the requests in it (after a failed chunk, whose state may be lost)."""
        self.buckets.clear()
        self._markers = []

    def cancel(self, job: Job) -> None:
        """Stops `job`: off the waiting list now, or out of its slot at the next chunk boundary."""
        job.cancelled = True

    @property
    def busy(self) -> int:
        """Slots holding a request now."""
        return sum(b.busy for b in self.buckets.values())

    @property
    def capacity(self) -> int:
        """Slots over all buckets made so far."""
        return self.size * len(self.buckets)

    @property
    def pending(self) -> int:
        """Requests waiting for a slot."""
        return sum(len(b.waiting) for b in self.buckets.values())

    def running(self) -> list[Job]:
        return [j for b in self.buckets.values() for j in b.jobs if j is not None]

    def preview(self, job: Job) -> jax.Array:
        """A running job's current prediction (`Slots.pred`), decoded [1, ...]: dispatched, not waited for."""
        bucket = self.buckets[job.bucket]
        latents = self._programs.take(bucket.slots, bucket.slots.pred, np.int32(job.slot))
        stage = self.pipeline.decode_stage(job.request)
        decoded = stage.fn(*stage.args, latents, **stage.kwargs)
        self.clock.span(decoded)  # on the timeline, so the next piece's start is right
        return decoded

    def advance(self) -> list[tuple[Job, jax.Array, jax.Array | None]]:
        """One chunk on every bucket with work: frees cancelled slots, fills free slots, runs k steps.

        Returns:
            (job, latents [1, *X], decoded output or None for output_type "latent") for each request that
            finished in this chunk; arrays are dispatched, not waited for (the previous chunk is: at most one
            chunk runs ahead of the host).
        """
        finished, markers = [], []
        for bucket in self.buckets.values():
            prog = self._programs
            for s, job in enumerate(bucket.jobs):
                if job is not None and job.cancelled:
                    bucket.slots = prog.release(bucket.slots, np.int32(s))
                    bucket.jobs[s] = None
            bucket.waiting = collections.deque(j for j in bucket.waiting if not j.cancelled)
            for s in range(self.size):
                if bucket.jobs[s] is None and bucket.waiting and not self.hold:
                    job = bucket.waiting.popleft()
                    bucket.slots = prog.insert(bucket.slots, np.int32(s), job.row)
                    job.row, job.slot, bucket.jobs[s] = None, s, job
            if not bucket.busy:
                continue
            bucket.slots, marker = prog.chunk(self.pipeline.slot_params(), bucket.shared, bucket.slots)
            markers.append(marker)
            span = self.clock.span(marker)
            self.chunks += 1
            busy = bucket.busy
            for s, job in enumerate(bucket.jobs):
                if job is None:
                    continue
                job.done = min(job.steps, job.done + self.chunk_steps)
                job.busy = busy
                job.first, job.last = job.first or span, span
                if job.done == job.steps:
                    t0 = time.perf_counter()
                    latents = prog.take(bucket.slots, bucket.slots.x, np.int32(s))
                    bucket.jobs[s] = None
                    decoded = None
                    if job.request.output_type != "latent":
                        stage = self.pipeline.decode_stage(job.request)
                        decoded = stage.fn(*stage.args, latents, **stage.kwargs)
                    job.decoding = self.clock.span((latents, decoded), t0)
                    finished.append((job, latents, decoded))
        # The host's bookkeeping needs nothing from the device, so it could run many chunks ahead; a request
        # joining or leaving would then wait for all of them. One chunk ahead keeps the device busy.
        jax.block_until_ready(self._markers)
        self._markers = markers
        return finished


__all__ = ["Job", "SlotRunner", "cfg_rows", "flow_schedule", "guided", "noise", "per_slot", "refusal"]
