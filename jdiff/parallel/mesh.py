"""Device meshes: four named axes, parsed from "data=2,context=4" style specs.

Mesh axes, always all four and in this order (size 1 where unused), so rule tables and shard_map specs can
name any of them on any mesh:
  * data:    batch parallelism (independent images / CFG halves on different devices), params replicated.
  * fsdp:    parameters sharded (gathered layer by layer); batch also sharded here when it divides.
  * context: sequence parallelism: tokens split across devices, attention through `jdiff.parallel.attention`.
  * tensor:  heads / MLP width split across devices (Megatron-style), activations replicated between blocks.

Axis types: every axis is `AxisType.Auto`. jax >= 0.10 defaults `jax.make_mesh` to `Explicit` axes, where
shardings become part of array types and every op whose output sharding is ambiguous (reshapes of sharded
dims, einsums contracting a sharded dim) needs an explicit `out_sharding`. jdiff modules are plain array math
that never names mesh axes: layouts are pinned at a few points (parameter shardings, `jdiff.sharding.
constrain` on activations, `shard_map` around attention) and the compiler's propagation fills in the rest,
which is exactly the `Auto` model. `Manual` axes only exist inside `shard_map`.

Default mesh (`make_mesh(None)`): every device on `fsdp`. It is the one layout that is correct and fits in
memory for every model and batch size: parameters are split N ways, the batch is split when it divides N and
computed redundantly otherwise. It is not the fastest for one image: ask for `context=N` (sequence
parallelism, parameters replicated) when a replica of the model fits on one device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from jdiff.errors import InputError

AXES: tuple[str, ...] = ("data", "fsdp", "context", "tensor")
DEFAULT_AXIS = "fsdp"

_EXAMPLE = "e.g. 'data=2,context=4' (axes: data, fsdp, context, tensor; omitted axes are 1)"


def parse_mesh(spec: str | Mapping[str, int]) -> dict[str, int]:
    """Parses a mesh spec into {axis: size} for all four axes, in mesh order.

    Args:
        spec: "data=2,fsdp=1,context=4,tensor=1" (whitespace allowed, any subset of the axes, any order), or
            a mapping from axis name to size. Omitted axes have size 1.

    Returns:
        {"data": d, "fsdp": f, "context": c, "tensor": t}.

    Raises:
        InputError: an unknown or repeated axis, a size that is not a positive integer, a malformed entry.
    """
    if isinstance(spec, str):
        items = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                if spec.strip():
                    raise InputError(f"mesh spec {spec!r} has an empty entry; write {_EXAMPLE}")
                continue
            name, eq, size = (s.strip() for s in part.partition("="))
            if not eq or not name or not size:
                raise InputError(f"mesh spec entry {part!r} is not 'axis=size'; write {_EXAMPLE}")
            try:
                value = int(size)
            except ValueError:
                raise InputError(
                    f"mesh axis {name!r} has size {size!r}, which is not an integer; write {_EXAMPLE}"
                ) from None
            items.append((name, value))
    elif isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        raise InputError(
            f"mesh spec must be a string or a mapping, got {type(spec).__name__}; write {_EXAMPLE}"
        )

    sizes = dict.fromkeys(AXES, 1)
    seen = set()
    for name, value in items:
        if name not in sizes:
            raise InputError(f"mesh spec names unknown axis {name!r}; use only {', '.join(AXES)}")
        if name in seen:
            raise InputError(f"mesh spec gives axis {name!r} twice; give each axis at most once")
        seen.add(name)
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise InputError(
                f"mesh axis {name!r} has size {value!r}, which is not an integer; write {_EXAMPLE}"
            )
        if value < 1:
            raise InputError(f"mesh axis {name!r} has size {value}; sizes must be positive integers")
        sizes[name] = int(value)
    return sizes


def format_mesh(sizes: Mapping[str, int]) -> str:
    """The spec string `parse_mesh` reads back, axes in mesh order (sizes of 1 included)."""
    return ",".join(f"{a}={sizes.get(a, 1)}" for a in AXES)


def make_mesh(
    spec: str | Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A mesh with axes ("data", "fsdp", "context", "tensor"), all of type `AxisType.Auto`.

    Args:
        spec: see `parse_mesh`; None puts every device on `fsdp` (see the module docstring for why).
        devices: the devices to lay out; None means `jax.devices()` (every device of every process, which on
            one host is all local devices). With None, `jax.make_mesh` orders devices for the topology.

    Returns:
        The mesh; its `shape` maps each axis name to its size.

    Raises:
        InputError: a bad spec (see `parse_mesh`), or sizes whose product is not the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = parse_mesh({DEFAULT_AXIS: n} if spec is None else spec)
    total = int(np.prod(list(sizes.values())))
    if total != n:
        raise InputError(
            f"mesh {format_mesh(sizes)} needs {total} devices but {n} are available; choose sizes whose "
            f"product is {n} (e.g. 'fsdp={n}' or 'context={n}')"
        )
    shape = tuple(sizes[a] for a in AXES)
    return _build(shape, devices)


def _build(shape: tuple[int, ...], devices: list) -> Mesh:
    axis_type = getattr(jax.sharding, "AxisType", None)
    types = None if axis_type is None else (axis_type.Auto,) * len(AXES)
    if types is not None and hasattr(jax, "make_mesh"):
        try:
            return jax.make_mesh(shape, AXES, axis_types=types, devices=devices)
        except TypeError:  # a jax whose make_mesh takes no `devices` / `axis_types` keyword
            pass
    grid = np.asarray(devices, dtype=object).reshape(shape)
    if types is not None:
        return Mesh(grid, AXES, axis_types=types)
    return Mesh(grid, AXES)  # jax before axis types: every axis behaves as Auto
