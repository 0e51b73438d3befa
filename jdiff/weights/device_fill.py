"""Filling a module on one device at transfer speed: source bytes in, transforms on the device.

`loading.fill` builds every parameter on the host (numpy stacks the layers of a scanned block, transposes
torch kernels and casts, one tensor at a time) and then copies it over: one core does strided copies of the
whole model before the device sees a byte. Here each source tensor goes to the device as the file holds it
(its memory-mapped bytes, in its own dtype, e.g. bfloat16), and one jitted function per parameter kind does
what numpy did (transpose, stack over layers, cast), on the device. Several parameters are in flight at once
(a thread pool: transfers and compiles run without the GIL), under a byte budget that bounds the device
memory the transfers take beyond the finished parameters; the host holds nothing but the page cache.

The result is bit-identical to `loading.fill` (the same transposes, the same round-to-nearest-even casts);
tests/weights/test_device_fill.py checks it. Transforms without a device version here (none today) are built
on the host as before, per parameter. For a module on one device (no sharding; or a sharding on one device,
e.g. its host memory for offload: built on the device, then moved) and for one sharded over this process's
devices (each device gets its source slices, transformed there); multi-process (multi-host) and sharded
host-memory loads keep `loading.fill`'s per-device callbacks.

Settings: JDIFF_FAST_LOAD (1 / 0: on / off; default on except on CPU), JDIFF_LOAD_THREADS (parameters in
flight, default 8), JDIFF_LOAD_INFLIGHT_GB (the byte budget, default an eighth of the device's memory).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff.sharding import path_str
from jdiff.weights.plan import Assignment, materialize, torch_kernel_perm

# Device versions of `plan.TRANSFORMS` (same semantics, jnp instead of numpy).
DEVICE_TRANSFORMS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": lambda x: x,
    "torch_kernel": lambda x: jnp.transpose(x, torch_kernel_perm(x.ndim)),
}
THREADS = 8  # parameters in flight at once (JDIFF_LOAD_THREADS)
HOST_KINDS = ("pinned_host", "unpinned_host")
GIB = 1 << 30


def handles(shardings: Mapping[str, jax.sharding.Sharding] | None) -> bool:
    """Whether `fill_on_device` builds parameters with `shardings` (path -> sharding): each whole on the
    default device (or its host memory), or laid out over several devices of this process (`sharded`)."""
    device = jax.local_devices()[0]
    return all(
        (isinstance(s, jax.sharding.SingleDeviceSharding) and s.device_set == {device}) or sharded(s)
        for s in (shardings or {}).values()
    )


def enabled() -> bool:
    """JDIFF_FAST_LOAD=1 / 0 turns the device fill on / off; unset, it is on for accelerators. On a CPU the
    "device" is the host itself: there is no transfer to overlap, and compiling a program per parameter
    kind costs more than the numpy copies it saves on the small models CPUs run (the test suite's)."""
    env = os.environ.get("JDIFF_FAST_LOAD", "")
    return env != "0" if env else jax.default_backend() != "cpu"


def _assemble_fn(parts, *, transform: str, stacked: bool, dtype):
    """parts[layer][source] (device arrays in the source layout and dtype) -> the parameter."""
    tf = DEVICE_TRANSFORMS[transform]
    out = [tf(*p) for p in parts]
    x = jnp.stack(out) if stacked else out[0]
    return x.astype(dtype)


_assemble = jax.jit(_assemble_fn, static_argnames=("transform", "stacked", "dtype"))


def _cache_every_program():
    """The persistent compilation cache (when on) keeps this thread's programs however fast they compiled.

    jdiff caches programs that took over a second (jdiff.compilation_cache); each assembling program takes
    tens of milliseconds on a GPU, and a model has ~50 of them (FLUX.1-dev: 48), compiled again at every
    start otherwise. The setting is thread-local: only the loader's workers see it.
    """
    try:
        from jax._src import config as jax_config

        return jax_config.persistent_cache_min_compile_time_secs(0.0)
    except (ImportError, AttributeError, TypeError):  # another jax: compile as before
        return contextlib.nullcontext()


def _put_sharded(x: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """`x` (memory-mapped) laid out as `sharding`: each device gets only its slice's bytes."""
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def sharded(target: jax.sharding.Sharding | None) -> bool:
    """A sharding over several devices of this process, in device memory: built from per-device source
    slices by `_assemble_to`."""
    return (
        isinstance(target, jax.sharding.NamedSharding)
        and target.is_fully_addressable
        and len(target.device_set) > 1
        and target.memory_kind not in HOST_KINDS
    )


def _source_sharding(target: jax.sharding.NamedSharding, a: Assignment) -> jax.sharding.NamedSharding | None:
    """The sharding of one layer's source tensor under which `a.transform` yields `target`'s shards in place
    (the target's partition spec carried back through the transform); None for a transform without one."""
    spec = (*target.spec, *(None,) * (len(a.shape) - len(target.spec)))
    inner = spec[1:] if a.stacked else spec
    if a.transform == "identity":
        src = list(inner)
    elif a.transform == "torch_kernel":
        src = [None] * len(inner)
        for j, k in enumerate(torch_kernel_perm(len(inner))):  # target axis j is source axis k
            src[k] = inner[j]
    else:
        return None
    return jax.sharding.NamedSharding(
        target.mesh, jax.sharding.PartitionSpec(*src), memory_kind=target.memory_kind
    )


@functools.lru_cache(maxsize=256)
def _assemble_to(target: jax.sharding.Sharding, transform: str, stacked: bool, dtype) -> Callable:
    """`_assemble` compiled once for all devices, its output laid out as `target`: each device transforms
    its own source slices (no communication when the sources carry `_source_sharding`)."""
    fn = functools.partial(_assemble_fn, transform=transform, stacked=stacked, dtype=dtype)
    return jax.jit(fn, out_shardings=target)


class _Budget:
    """Bytes in flight: `take(n)` waits until n more fit under the limit (a request over the limit waits
    until nothing else is in flight, then goes alone)."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self.cv = threading.Condition()

    def take(self, n: int) -> int:
        n = min(n, self.limit)
        with self.cv:
            self.cv.wait_for(lambda: self.used + n <= self.limit)
            self.used += n
        return n

    def give(self, n: int) -> None:
        with self.cv:
            self.used -= n
            self.cv.notify_all()


def default_budget(device: jax.Device) -> int:
    """JDIFF_LOAD_INFLIGHT_GB, else an eighth of the device's memory within [1, 16] GiB (1 GiB on CPU)."""
    env = os.environ.get("JDIFF_LOAD_INFLIGHT_GB")
    if env:
        return max(1, int(float(env) * GIB))
    try:
        limit = (device.memory_stats() or {}).get("bytes_limit", 0)
    except Exception:  # backends without memory stats
        limit = 0
    return int(min(16 * GIB, max(GIB, limit // 8)))


def fill_on_device(
    graphdef: nnx.GraphDef,
    abstract_state: nnx.State,
    assignments: Mapping[str, Assignment],
    read: Callable[[str], np.ndarray],
    *,
    dtype_of: Callable[[str], Any],
    sharding_of: Callable[[str], jax.sharding.Sharding | None] = lambda _: None,
    threads: int | None = None,
    budget: int | None = None,
) -> nnx.Module:
    """Merges `graphdef` with parameters built on the default device from `read(key)` (memory-mapped source
    tensors) by `assignments` (target path -> Assignment); uncommitted arrays, as `jnp.asarray` makes.

    A parameter with a sharding on one device (`sharding_of(path)`, e.g. its host memory for offload) is
    built on the default device and then moved there; the budget counts it until it has left. One laid out
    over several devices (`sharded`) is put there as source slices, each device reading only its own (the
    target's partition spec carried back through the transform), and transformed in place.
    """
    flat = list(nnx.to_flat_state(abstract_state))
    names = [path_str(p) for p, _ in flat]
    # `jax.default_device(...)` is thread-local: the workers re-enter the caller's.
    default = jax.config.jax_default_device
    budget_ = _Budget(budget or default_budget(default or jax.local_devices()[0]))

    def nbytes(name: str) -> int:
        a = assignments[name]
        src = sum(read(k).nbytes for keys in a.sources for k in keys)
        return src + int(np.prod(a.shape, dtype=np.int64)) * np.dtype(dtype_of(name)).itemsize

    def build(name: str) -> jax.Array:
        with _cache_every_program(), jax.default_device(default) if default else contextlib.nullcontext():
            return _build(name)

    def _build(name: str) -> jax.Array:
        a, dtype, target = assignments[name], np.dtype(dtype_of(name)), sharding_of(name)
        size = nbytes(name)
        held = budget_.take(size)
        # Offload (a host-memory target) promises a bounded device footprint: a parameter over the budget
        # is built on the host, as `loading.fill` does.
        on_host = target is not None and target.memory_kind in HOST_KINDS and size > budget_.limit
        try:
            if a.stacked and not a.sources:  # an empty stack: nothing to read
                out = jnp.zeros(a.shape, dtype)
            elif sharded(target) and (src := _source_sharding(target, a)) is not None:
                parts = tuple(tuple(_put_sharded(read(k), src) for k in keys) for keys in a.sources)
                out = _assemble_to(target, a.transform, a.stacked, dtype)(parts)
            elif a.transform not in DEVICE_TRANSFORMS or on_host:
                out = np.asarray(materialize(a, read)).astype(dtype, copy=False)
                out = jax.device_put(out, target) if target is not None else jnp.asarray(out)
            elif not a.stacked and a.transform == "identity" and read(a.sources[0][0]).dtype == dtype:
                out = jax.device_put(read(a.sources[0][0]), may_alias=False)  # a copy: never the file
            else:
                parts = tuple(tuple(jax.device_put(read(k)) for k in keys) for keys in a.sources)
                out = _assemble(parts, transform=a.transform, stacked=a.stacked, dtype=dtype)
            if target is not None and out.sharding != target:
                out = jax.device_put(out, target)
            out.block_until_ready()  # the budget counts bytes until the device holds them
            return out
        finally:
            budget_.give(held)

    # Largest first, so the pool's tail is small tensors.
    order = sorted(names, key=nbytes, reverse=True)
    threads = threads or int(os.environ.get("JDIFF_LOAD_THREADS", THREADS))
    pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="jdiff-load")
    try:
        futures = {name: pool.submit(build, name) for name in order}
        values = {name: futures[name].result() for name in order}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    out = [(p, v.replace(values[n])) for (p, v), n in zip(flat, names, strict=True)]
    return nnx.merge(graphdef, nnx.from_flat_state(out))
