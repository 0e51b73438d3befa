"""Keeping weights in host memory: `from_pretrained(..., offload="model" | "layers")`.

Every component is loaded straight into host memory (`memory_kind="pinned_host"` shardings of the shardings it
would have on the device: `ModelDir.load` with `memory_kind`), never whole on the device, and the pipeline's
`_params` becomes an `Offloaded` mapping that brings a component onto the device each time a stage takes it:

* "model": the whole component (text encoders, DiT, VAE) is copied onto the device for its stage; the device
  copy lives as long as the stage's arguments (the text encoders' until encoding returns, the DiT's until the
  denoising loop is done: `Pipeline._generate` drops it before decoding) and is then freed.
* "layers": the same, except the denoiser's stacked (scanned) layer weights, which stay in host memory and
  enter the jitted loop as host-memory arguments; `jdiff.layers.stack.scan` streams them one layer at a time,
  fetching layer i+1 while layer i runs. Device memory then holds two layers of the DiT, not all of them.
  Where the device has room, the leading layers of every stack stay on it for good (`stack.Split`: the same
  fraction of each stack, `resident_fraction`), so a pass streams only the rest: FLUX.1-dev on a 24 GB card
  keeps about a third of its blocks resident instead of sending all 23.5 GB of them over PCIe every step.
  The room is the device's capacity (`memory.capacity`) less a quarter for activations and less the most that
  any one stage brings in (the largest text encoder, or the DiT's other weights and two streamed layers);
  `JDIFF_OFFLOAD_RESIDENT` (bytes, e.g. "8GB"; "0" streams every layer) sets it instead.

Families need no code for this: they read `self._params[name]` when they build a stage's arguments, as they
do without offload. A component kept elsewhere (none now) is left resident on the device (`apply` puts it
back there).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, MutableMapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from jdiff.errors import InputError
from jdiff.layers.stack import Split
from jdiff.pipelines import memory
from jdiff.sharding import LAYERS

MODES = ("model", "layers")
HOST = "pinned_host"
# The components whose stacked layers "layers" streams: the denoisers.
DENOISERS = frozenset({"transformer", "transformer_2", "unet"})
RESIDENT_ENV = "JDIFF_OFFLOAD_RESIDENT"
# The share of the device's capacity "layers" leaves to activations when it keeps leading layers resident.
ACTIVATION_SHARE = 0.25


def check_mode(offload: str | None) -> None:
    if offload not in (None, *MODES):
        raise InputError(
            f"offload must be one of {list(MODES)} (or None: all weights on the device), got {offload!r}"
        )


def host_sharding(sharding: jax.sharding.Sharding | None) -> jax.sharding.Sharding:
    """`sharding` (default: the first device) in host memory."""
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return sharding.with_memory_kind(HOST)


def host_shardings(state: nnx.State, shardings: dict[str, Any] | None) -> dict[str, Any]:
    """Parameter path -> host-memory sharding for every parameter of `state` (for loading into host memory)."""
    from jdiff.sharding import path_str

    shardings = shardings or {}
    return {path_str(p): host_sharding(shardings.get(path_str(p))) for p, _ in nnx.to_flat_state(state)}


def _stacked(var: Any) -> bool:
    names = var.get_metadata().get("out_sharding") if isinstance(var, nnx.Variable) else None
    return bool(names) and names[0] == LAYERS


def _on_host(x: Any) -> bool:
    return isinstance(x, jax.Array) and x.sharding.memory_kind == HOST


def _host_aval(x: Any) -> Any:
    """`x` with the host memory space in its abstract value too. jax 0.10 leaves it out of arrays assembled
    from per-device pieces (`make_array_from_callback`, checkpoint restores), and jit then compiles for
    device operands; a copy through unpinned host memory sets it."""
    if not _on_host(x) or jax.typeof(x).memory_space == jax.memory.Space.Host:
        return x
    return jax.device_put(jax.device_put(x, x.sharding.with_memory_kind("unpinned_host")), x.sharding)


class Offloaded(MutableMapping):
    """component name -> parameters (`nnx.State`), kept in host memory; reading an entry returns a copy on the
    device (for "layers", a denoiser's stacked layers stay in host memory in it).

    Entries set later (LoRA adapters rebuild a component's state around the same host arrays) are kept as
    given: their host leaves are brought in on reading, device leaves are passed through. Reading copies:
    iterate over the names (`for k in params`), not `items()`, to pick some components.
    """

    def __init__(self, params: dict[str, nnx.State], mode: str, resident: float = 0.0):
        check_mode(mode)
        self.mode = mode
        self._host = {name: jax.tree.map(_host_aval, state) for name, state in params.items()}
        # "layers": the fraction of each denoiser stack's leading layers kept on the device, and their copies
        # ((component, path) -> (the host stack they come from, its first k layers on the device)).
        self.resident = resident if mode == "layers" else 0.0
        self._heads: dict[tuple, tuple[jax.Array, jax.Array]] = {}
        for name in self._host:  # copied now, so that memory planning sees them resident from the start
            for p, v, _ in self._moves(name):
                self._stacked_value(name, p, v)

    def _moves(self, name: str) -> list[tuple[tuple, Any, bool]]:
        """(path, variable, brought in) for every parameter of component `name`."""
        keep = self.mode == "layers" and name in DENOISERS
        return [
            (p, v, _on_host(v.get_value()) and not (keep and _stacked(v)))
            for p, v in nnx.to_flat_state(self._host[name])
        ]

    def __getitem__(self, name: str) -> nnx.State:
        moves = self._moves(name)
        host = [v.get_value() for _, v, move in moves if move]
        device = jax.device_put(host, [x.sharding.with_memory_kind("device") for x in host])
        it = iter(device)
        flat = [(p, v.replace(next(it) if move else self._stacked_value(name, p, v))) for p, v, move in moves]
        return nnx.from_flat_state(flat)

    def _stacked_value(self, name: str, path: tuple, var: Any) -> Any:
        """What a stage gets for a parameter left in host memory: itself, or for a denoiser's stacked weight
        with resident leading layers a `Split` of their device copy (made once) and the host stack."""
        x = var.get_value()
        if not (self.resident and name in DENOISERS and _on_host(x) and _stacked(var)):
            return x
        k = int(self.resident * x.shape[0])
        if k == 0:
            return x
        src, head = self._heads.get((name, path), (None, None))
        if src is not x:  # first use, or a new host stack under this path (a LoRA rebuild)
            full = k == x.shape[0]
            head = jax.device_put(x, x.sharding.with_memory_kind("device")) if full else _leading(x, k)
            self._heads[(name, path)] = (x, head)
        return head if head.shape[0] == x.shape[0] else Split(head, x)

    def host(self, name: str) -> nnx.State:
        """The stored (host-memory) state, without a transfer."""
        return self._host[name]

    def incoming(self, names: tuple[str, ...] | None = None) -> dict[jax.Device, int]:
        """Bytes per device the denoisers' stage brings in (memory planning): what `__getitem__` copies."""
        names = names or tuple(n for n in self._host if n in DENOISERS)
        out: dict[jax.Device, int] = {}
        for name in names:
            arrays = [v.get_value() for _, v, move in self._moves(name) if move]
            for d, n in _bytes(arrays).items():
                out[d] = out.get(d, 0) + n
        return out

    def __setitem__(self, name: str, state: nnx.State) -> None:
        self._host[name] = jax.tree.map(_host_aval, state)
        self._drop_heads(name, {id(v.get_value()) for _, v in nnx.to_flat_state(self._host[name])})

    def __delitem__(self, name: str) -> None:
        del self._host[name]
        self._drop_heads(name, set())

    def _drop_heads(self, name: str, live: set[int]) -> None:
        """Frees the resident layers of `name`'s host stacks that are no longer among `live` (by id)."""
        self._heads = {k: v for k, v in self._heads.items() if k[0] != name or id(v[0]) in live}

    def __iter__(self) -> Iterator[str]:
        return iter(self._host)

    def __len__(self) -> int:
        return len(self._host)


def _bytes(arrays: list) -> dict[jax.Device, int]:
    """Bytes per device `arrays` take once on the device (their shardings' shards)."""
    out: dict[jax.Device, int] = {}
    for x in arrays:
        per = int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
        for d in x.sharding.addressable_devices:
            out[d] = out.get(d, 0) + per
    return out


def apply(pipeline: Any, mode: str | None) -> None:
    """Makes a pipeline built from host-memory weights (`ModelDir.memory_kind`) run with `mode`.

    Its `_params` becomes `Offloaded`; any other host-memory state it holds (a component the family keeps
    outside `_params`) is moved to the device, so it runs as without offload.
    """
    check_mode(mode)
    pipeline.offload = mode
    if mode is None:
        return
    params = pipeline.__dict__.get("_params")
    if not isinstance(params, dict):
        raise InputError(f"{pipeline.family} does not support offload yet; leave offload unset")
    pipeline._params = Offloaded(params, mode, resident_fraction(params) if mode == "layers" else 0.0)
    for holder in vars(pipeline).values():
        state = getattr(holder, "_params", None)
        if holder is not pipeline and isinstance(state, nnx.State):
            holder._params = jax.tree.map(
                lambda x: jax.device_put(x, x.sharding.with_memory_kind("device")) if _on_host(x) else x,
                state,
            )


@functools.partial(jax.jit, static_argnums=1)
def _leading(x: jax.Array, k: int) -> jax.Array:
    """The first `k` layers of a host-memory stack, copied onto the device (sliced on the host side, as the
    streamed scan fetches its layers)."""
    return jax.device_put(jax.lax.slice_in_dim(x, 0, k), jax.memory.Space.Device)


def resident_fraction(params: dict[str, nnx.State]) -> float:
    """The fraction of the denoisers' stacked layers "layers" keeps on the device (module docstring): the room
    left (`JDIFF_OFFLOAD_RESIDENT`, else capacity - activations - the largest stage's incoming weights) over
    the stacked bytes, 0 where the capacity is unknown (CPU without `JDIFF_DEVICE_MEMORY`)."""
    stacked, layer, other, largest = 0, 0, 0, 0
    for name, state in params.items():
        flat = [(v, v.get_value()) for _, v in nnx.to_flat_state(state)]
        size = _peak([x for _, x in flat])
        if name not in DENOISERS:
            largest = max(largest, size)
            continue
        rows = [x for v, x in flat if _stacked(v)]
        stacked += _peak(rows)
        layer += sum(_peak([x]) // x.shape[0] for x in rows)
        other += size - _peak(rows)
    if stacked == 0:
        return 0.0
    if os.environ.get(RESIDENT_ENV):
        room = memory.parse_bytes(os.environ[RESIDENT_ENV], RESIDENT_ENV)
    else:
        cap = memory.capacity(jax.local_devices()[0])
        if cap is None:
            return 0.0
        room = int(cap * (1 - ACTIVATION_SHARE)) - max(largest, other + 2 * layer)
    return min(1.0, max(0.0, room / stacked))


def _peak(arrays: list) -> int:
    """The most bytes `arrays` take on any one device once there."""
    return max(_bytes(arrays).values(), default=0)
