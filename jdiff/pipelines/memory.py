"""Memory planning: whether a request fits the device, checked before it runs.

An XLA out-of-memory error comes late (after minutes of compiling, or halfway through a video) and as a
traceback. `Pipeline.generate` asks this module instead, twice per new request shape:

1. Before any compile (`check_estimate`), from figures known on the host: the bytes already resident on each
   device (every live device array: weights, embeddings) + the weights an offloaded component will bring in
   for its stage + an activation estimate for the DiT at the request's size (`activation_bytes`). The estimate
   is a floor, not a ceiling (it counts the few [S, D] tensors a block must hold at once and, only where
   attention is not fused, its [B, N, S, S] logits), so it refuses what surely cannot fit, instantly, and
   never something that would run.
2. After compiling a stage and before executing it (`check_compiled`), with XLA's own figure:
   `compiled.memory_analysis()` gives the program's temporary, output and argument bytes per device. The
   stages are compiled per shape anyway (`run_while_preparing` compiles the denoiser ahead of running it), so
   this costs one extra lowering per shape, no extra compile; the price is that a refusal here comes after the
   compile (seconds to a minute), which is why step 1 exists.

Capacity: the smaller of `device.memory_stats()["bytes_limit"]` (GPU/TPU; it reflects
`XLA_PYTHON_CLIENT_MEM_FRACTION`) and `JDIFF_DEVICE_MEMORY` (bytes, or "24GB" / "24GiB"; a cap for smaller
cards emulated on a large one, and the only capacity on CPU, where no check runs without it).

A refusal is one `InputError` line (CLI exit 2, server 400) naming what is needed, what the device has, and
the fixes: `offload="layers"` / `"model"`, a mesh with an `fsdp` axis, a smaller size or batch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np

from jdiff.errors import InputError

ENV = "JDIFF_DEVICE_MEMORY"
# Live [S, D] activations a DiT block holds at its peak, at the least: the residual stream, the normed input,
# q, k, v and the attention output (6), plus the MLP's hidden layer (4 D wide). A floor: XLA's own figure
# (step 2) is typically 2-4x this.
BLOCK_FACTOR = 10
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_IUNITS = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(text: str | int, name: str = ENV) -> int:
    """`"24GB"` -> 24e9, `"24GiB"` -> 24 * 2**30, `"1000"` -> 1000 (k, M, G, T; B optional)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?)[bB]?\s*", str(text))
    if not m or (m.group(3) and not m.group(2)):
        raise InputError(f"{name} must be a size in bytes like 24GB, 24GiB or 24000000000, got {text!r}")
    unit = (_IUNITS if m.group(3) else _UNITS)[m.group(2).lower()]
    return int(float(m.group(1)) * unit)


def fmt(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**29 else f"{n / 2**20:.1f} MiB"


def capacity(device: jax.Device) -> int | None:
    """The bytes a device may hold: the smaller of its allocator's limit and `JDIFF_DEVICE_MEMORY`; None when
    neither is known (CPU without a cap)."""
    caps = []
    if os.environ.get(ENV):
        caps.append(parse_bytes(os.environ[ENV]))
    stats = _stats(device)
    if stats and stats.get("bytes_limit"):
        caps.append(int(stats["bytes_limit"]))
    return min(caps) if caps else None


def _stats(device: jax.Device) -> dict | None:
    try:
        return device.memory_stats()
    except Exception:  # backends without allocator statistics
        return None


def on_device(x: Any) -> bool:
    """Whether `x` is a jax array in device memory (not a host memory kind, not numpy)."""
    return isinstance(x, jax.Array) and x.sharding.memory_kind in (None, "device")


def device_bytes(arrays: Iterable[Any]) -> dict[jax.Device, int]:
    """Bytes per device that the device-memory jax arrays among `arrays` occupy (each array counted once)."""
    out: dict[jax.Device, int] = {}
    seen: set[int] = set()
    for x in arrays:
        if not on_device(x) or id(x) in seen or x.is_deleted():
            continue
        seen.add(id(x))
        per_shard = int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
        for d in x.sharding.addressable_devices:
            out[d] = out.get(d, 0) + per_shard
    return out


def resident() -> dict[jax.Device, int]:
    """Bytes in use per local device now: the allocator's figure where it has one, else every live array."""
    stats = {d: _stats(d) or {} for d in jax.local_devices()}
    if all("bytes_in_use" in s for s in stats.values()):
        return {d: int(s["bytes_in_use"]) for d, s in stats.items()}
    live = device_bytes(jax.live_arrays())
    return {d: int(s["bytes_in_use"]) if "bytes_in_use" in s else live.get(d, 0) for d, s in stats.items()}


def activation_bytes(
    tokens: int,
    width: int,
    itemsize: int,
    *,
    sequences: int = 1,
    heads: int = 0,
    fused_attention: bool = True,
) -> int:
    """A floor on a DiT block's live activations for `sequences` sequences of `tokens` tokens of `width`
    features: `BLOCK_FACTOR` [B, S, D] tensors, plus float32 [B, N, S, S] logits where attention is not fused."""
    logits = 0 if fused_attention else sequences * heads * tokens * tokens * 4
    return BLOCK_FACTOR * sequences * tokens * width * itemsize + logits


def fixes(offload: str | None) -> str:
    first = {
        None: 'offload="layers" (CLI --offload layers; or "model")',
        "model": 'offload="layers" (CLI --offload layers)',
        # "layers" keeps leading layers resident where it estimated room at load (jdiff.pipelines.offload)
        "layers": "fewer resident layers (JDIFF_OFFLOAD_RESIDENT=0 streams them all)",
    }[offload]
    rest = "a mesh with an fsdp axis over several devices (--mesh fsdp=N), or a smaller size or batch"
    return f"use {first}, {rest}"


def refuse(need: int, have: int, device, what: str, offload: str | None) -> None:
    raise InputError(
        f"this request needs about {fmt(need)} of memory on {device} ({what}) but it has {fmt(have)}; "
        f"{fixes(offload)}"
    )


def check_estimate(incoming: dict[jax.Device, int], activations: int, offload: str | None, what: str) -> None:
    """Step 1: refuses when resident + `incoming` (weights an offloaded stage brings in, per device) +
    `activations` exceed some device's capacity."""
    now = resident()
    for d, used in now.items():
        cap = capacity(d)
        if cap is None:
            continue
        need = used + incoming.get(d, 0) + activations
        if need > cap:
            refuse(
                need,
                cap,
                d,
                f"{fmt(used)} resident + {fmt(incoming.get(d, 0))} of weights brought in + at least "
                f"{fmt(activations)} of activations for {what}",
                offload,
            )


def fits(activations: int, incoming: dict[jax.Device, int] | None = None) -> bool:
    """Whether resident + `incoming` + `activations` bytes fit every local device whose capacity is known
    (True where none is): for choices such as decoding in tiles, where `check_estimate` would refuse."""
    incoming = incoming or {}
    for d, used in resident().items():
        cap = capacity(d)
        if cap is not None and used + incoming.get(d, 0) + activations > cap:
            return False
    return True


def program_bytes(compiled) -> int:
    """A compiled program's device bytes beyond its (already resident) arguments: temporaries + outputs
    that do not alias an argument."""
    ma = compiled.memory_analysis()
    if isinstance(ma, (list, tuple)):
        ma = ma[0] if ma else None
    if ma is None:
        return 0
    return int(ma.temp_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes)


def check_compiled(compiled, args: Any, offload: str | None, what: str) -> None:
    """Step 2: refuses when resident + the host arguments still to be transferred + the program's own bytes
    exceed some device's capacity."""
    now = resident()
    host_args = sum(
        int(np.asarray(x).nbytes) for x in jax.tree.leaves(args) if isinstance(x, np.ndarray | np.generic)
    )
    extra = program_bytes(compiled) + host_args
    for d, used in now.items():
        cap = capacity(d)
        if cap is not None and used + extra > cap:
            refuse(
                used + extra,
                cap,
                d,
                f"{fmt(used)} resident + {fmt(extra)} that XLA plans for {what}",
                offload,
            )


def enabled() -> bool:
    """Whether any local device has a known capacity (else the checks are skipped, costing nothing).

    Multi-process runs skip the checks: every process runs the same program, and a refusal decided from one
    process's figures alone would leave the others waiting in it.
    """
    if jax.process_count() > 1:
        return False
    return any(capacity(d) is not None for d in jax.local_devices())
