"""Building models abstractly and filling them tensor by tensor from reference safetensors.

A model is never materialised whole with random weights: `nnx.eval_shape` gives the parameter tree's shapes
and metadata, the plan resolves every parameter against the safetensors headers (all problems at once), and
each tensor is then read from its memory map, transformed in numpy, cast to its target dtype and placed on
device (with the target sharding when one is given). On one device without a sharding, `device_fill` does
the same with the transforms on the device, several tensors at once.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff.sharding import path_str
from jdiff.weights import device_fill
from jdiff.weights.config import from_dict, read_json
from jdiff.weights.plan import Assignment, Plan, materialize, materialize_slice, resolve
from jdiff.weights.safetensors import WeightSet, open_weights

HOST_KINDS = ("pinned_host", "unpinned_host")


@dataclass(frozen=True)
class ComponentSpec:
    """What jdiff needs to know about one reference model class (e.g. diffusers' `AutoencoderKL`).

    `fp8` names the `jdiff.layers.Linear`s that `quantization="fp8"` quantizes (`jdiff.pipelines.quantize`):
    regular expressions fullmatched against a Linear's dotted module path (stacked blocks have no layer index).
    Empty: the model has no fp8 mode. A DiT lists its blocks' attention and MLP linears and leaves out what the
    reference keeps in high precision: AdaLN modulation, embedders, the final layer.
    """

    class_name: str
    config_cls: type
    module_cls: type
    plan: Plan
    fp8: tuple[str, ...] = ()

    def read_config(self, folder: str | Path):
        return from_dict(self.config_cls, read_json(Path(folder) / "config.json"))

    def abstract(self, cfg) -> tuple[nnx.GraphDef, nnx.State]:
        model = nnx.eval_shape(lambda: self.module_cls(cfg, rngs=nnx.Rngs(0)))
        return nnx.split(model)


def param_shapes(state: nnx.State) -> dict[str, tuple[int, ...]]:
    return {path_str(p): tuple(v.shape) for p, v in nnx.to_flat_state(state)}


def source_shapes(weights: WeightSet) -> dict[str, tuple[int, ...]]:
    return {k: weights.info(k).shape for k in weights.keys()}


def check(spec: ComponentSpec, cfg, weights: WeightSet, *, component: str) -> list[Assignment]:
    """Resolves the plan against the weights' headers only; raises ConversionError listing every problem."""
    try:
        shapes = _abstract_shapes(spec.module_cls, cfg)
    except TypeError:  # a config with an unhashable field: not cached
        shapes = param_shapes(spec.abstract(cfg)[1])
    return resolve(spec.plan, shapes, source_shapes(weights), component=component)


@functools.lru_cache(maxsize=16)
def _abstract_shapes(module_cls: type, cfg) -> Mapping[str, tuple[int, ...]]:
    """The parameter shapes of `module_cls(cfg)`, traced once per config: a dry run checks each component
    twice, and tracing a real-size model takes seconds (5 s for the SDXL UNet)."""
    model = nnx.eval_shape(lambda: module_cls(cfg, rngs=nnx.Rngs(0)))
    return types.MappingProxyType(param_shapes(nnx.split(model)[1]))  # shared: read-only


def fill(
    graphdef: nnx.GraphDef,
    abstract_state: nnx.State,
    values: Callable[[str], np.ndarray],
    *,
    dtype_of: Callable[[str], Any],
    sharding_of: Callable[[str], jax.sharding.Sharding | None] = lambda _: None,
    slices: Callable[[str, tuple], np.ndarray] | None = None,
) -> nnx.Module:
    """Merges `graphdef` with a state whose leaves come from `values(path)`, cast and placed one by one.

    With a sharding for a path and `slices(path, index)`, the array is assembled with
    `jax.make_array_from_callback`: each of this process's devices gets `slices(path, its index)`, so a host
    reads only what its own devices hold (multi-host loading of models larger than one host's memory).
    """
    flat = []
    for path, var in nnx.to_flat_state(abstract_state):
        name = path_str(path)
        dtype = dtype_of(name)
        target = sharding_of(name)
        # jax 0.10 gives arrays assembled from callbacks a device aval even in a host memory kind (offload):
        # those are placed whole, with `device_put`, which keeps the memory kind in the aval.
        if target is not None and slices is not None and target.memory_kind not in HOST_KINDS:
            arr = jax.make_array_from_callback(
                tuple(var.shape),
                target,
                lambda index, n=name, d=dtype: slices(n, index).astype(d, copy=False),
            )
        else:
            host = np.asarray(values(name)).astype(dtype, copy=False)
            arr = jax.device_put(host, target) if target is not None else jnp.asarray(host)
        flat.append((path, var.replace(arr)))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def load_component(
    spec: ComponentSpec,
    folder: str | Path,
    *,
    dtype: Any = jnp.float32,
    component: str | None = None,
    cfg=None,
    shardings: Mapping[str, jax.sharding.Sharding] | None = None,
    abstract: tuple[nnx.GraphDef, nnx.State] | None = None,
) -> tuple[Any, nnx.Module]:
    """Loads a reference component folder (config.json + safetensors) into a jdiff module.

    Args:
        spec: the component's spec (config class, module class, conversion plan).
        folder: the component folder, e.g. `<model>/transformer`.
        dtype: parameter dtype policy; the plan's `keep_fp32` paths stay float32.
        component: a name for error messages (defaults to the folder name).
        cfg: an already-read config (defaults to reading `folder/config.json`).
        shardings: parameter path -> target sharding; each process then reads only its devices' slices.
            None (or all on the default device): filled by `device_fill` (transforms on the device).
        abstract: `spec.abstract(cfg)` when the caller has it already.

    Returns:
        (config, module).

    Raises:
        InputError: missing or corrupt files; ConversionError listing every key problem.
    """
    folder = Path(folder)
    cfg = spec.read_config(folder) if cfg is None else cfg
    weights = open_weights(folder)
    graphdef, state = spec.abstract(cfg) if abstract is None else abstract
    assignments = resolve(
        spec.plan, param_shapes(state), source_shapes(weights), component=component or folder.name
    )
    by_target: Mapping[str, Assignment] = {a.target: a for a in assignments}
    dtype_of = functools.partial(spec.plan.target_dtype, dtype=dtype)
    if device_fill.handles(shardings) and device_fill.enabled():
        # One process: source bytes to the devices, transforms there (jdiff.weights.device_fill).
        module = device_fill.fill_on_device(
            graphdef, state, by_target, weights.read, dtype_of=dtype_of, sharding_of=(shardings or {}).get
        )
        return cfg, module
    module = fill(
        graphdef,
        state,
        lambda name: materialize(by_target[name], weights.read),
        dtype_of=dtype_of,
        sharding_of=(shardings or {}).get,
        slices=lambda name, index: materialize_slice(by_target[name], weights.read, index),
    )
    return cfg, module
