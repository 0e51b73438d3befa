"""LoRA adapters of a pipeline: loading them into slots, and each request's per-output scales.

Every loaded adapter owns a slot of Q columns (Q the rank bucket: the smallest of `RANK_BUCKETS` that holds
every loaded adapter's rank) in the `lora_a` / `lora_b` factors of each `Linear` some adapter touches
(`jdiff.layers.lora`). Slots are filled up to a power of two, so loading or unloading adapters changes only
values as long as the slot count, the rank bucket and the set of adapted layers stay; then no stage
recompiles. A request's adapters and scales are a [B, S x Q] array given to the jitted stages as an argument
(`jit`), so each output of a batch may use its own adapters.

A pipeline opts in with one `Adapters(self, model, {component: key of self._defs})` and by jitting its
encoder and denoiser stages with `jit` instead of `compiler_options.jit`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff import compiler_options
from jdiff.errors import InputError
from jdiff.layers import lora as lora_layers
from jdiff.layers.linear import Linear
from jdiff.parallel.placement import put
from jdiff.weights import lora as lora_files
from jdiff.weights.plan import LAYER, Plan, match

RANK_BUCKETS = (16, 32, 64, 128, 256)

# The request's [B, K] scales while its stages run (host array), or None: read by `jit`'s wrapper.
_REQUEST: contextvars.ContextVar[np.ndarray | None] = contextvars.ContextVar(
    "jdiff_lora_request", default=None
)


@contextlib.contextmanager
def request_scales(scales: np.ndarray | None) -> Iterator[None]:
    token = _REQUEST.set(scales)
    try:
        yield
    finally:
        _REQUEST.reset(token)


class _Jit:
    """A jitted stage taking the current request's adapter scales as a hidden first argument."""

    def __init__(self, fn: Callable, **kwargs: Any):
        def run(scales, *args, **kw):
            with lora_layers.rows(scales):
                return fn(*args, **kw)

        run.__name__ = getattr(fn, "__name__", "stage")
        self._jit = compiler_options.jit(run, **kwargs)

    def __call__(self, *args, **kwargs):
        return self._jit(_REQUEST.get(), *args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._jit.lower(_REQUEST.get(), *args, **kwargs)


def jit(fn: Callable, **kwargs: Any) -> Callable:
    """`compiler_options.jit(fn, **kwargs)` for a stage whose models may hold adapters."""
    return _Jit(fn, **kwargs)


@dataclass(frozen=True)
class _Target:
    key: str  # the pipeline's component key (`pipeline._defs`)
    path: str  # the Linear's path in that module
    layer: int | None  # its layer in a stack, or None
    shape: tuple[int, ...]  # the kernel's shape ([L,] in, out)
    dtype: Any


@dataclass(frozen=True)
class _Adapter:
    name: str
    path: Path
    rank: int
    # (key, linear path) -> [(layer or None, factors)]
    modules: dict[tuple[str, str], list[tuple[int | None, lora_files.ModuleLora]]]


def _module_at(root: nnx.Module, path: str) -> Any:
    node = root
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _torch_modules(plan: Plan, path: str, shape: tuple[int, ...]) -> list[tuple[str, int | None]]:
    """The torch module names (and layers) a jdiff Linear kernel comes from; [] if not a plain transpose."""
    matched = match(plan, path)
    if matched is None:
        return []
    rule, sources, stacked = matched
    if rule.transform != "torch_kernel" or len(sources) != 1 or not sources[0].endswith(".weight"):
        return []
    name = sources[0].removesuffix(".weight")
    names = [name]
    if plan.optional_prefix and name.startswith(plan.optional_prefix):
        names.append(name.removeprefix(plan.optional_prefix))
    if not stacked:
        return [(n, None) for n in names]
    return [(n.replace(LAYER, str(i)), i) for i in range(shape[0]) for n in names]


def _alias(plan: Plan, module: str, kohya: bool) -> str | None:
    """The reference module name of a LoRA module named in another layout (`Plan.lora_aliases`, and for the
    checkpoint's own names `Plan.source_aliases`), or None. Kohya's names match the patterns with `_` for
    `.`."""
    for pattern, repl in plan.lora_aliases:
        m = re.fullmatch(pattern.replace(r"\.", "_") if kohya else pattern, module)
        if m:
            return m.expand(repl)
    for pattern, repl in () if kohya else plan.source_aliases:
        if re.fullmatch(pattern, module + ".weight"):
            return re.sub(pattern, repl, module + ".weight").removesuffix(".weight")
    return None


class Adapters:
    """The LoRA adapters loaded into one pipeline (its `lora` attribute).

    Args:
        pipeline: the pipeline; its `_defs` / `_params` are rebuilt with the adapters' factors.
        model: the model directory, for its components' conversion plans.
        components: model component name (as LoRA files name it: "transformer", "text_encoder", ...) -> the
            key of that module in `pipeline._defs`.
    """

    def __init__(self, pipeline, model, components: dict[str, str]):
        self.pipeline = pipeline
        self.components = {c: k for c, k in components.items() if c in model.components()}
        self._model = model  # its conversion plans are read on the first load
        self._base = {k: (pipeline._defs[k], pipeline._params[k]) for k in self.components.values()}
        self._adapters: dict[str, _Adapter] = {}
        self._index: dict[str, dict[str, _Target]] | None = None
        self.slots, self.rank = 0, 0
        self.fused: dict[str, float] = {}  # adapters folded into the kernels (`fuse`), with their scales

    @property
    def names(self) -> list[str]:
        return list(self._adapters)

    @functools.cached_property
    def _plans(self) -> dict[str, Plan]:
        return {c: self._model.spec(c).plan for c in self.components}

    def info(self) -> list[dict[str, Any]]:
        """Per loaded adapter: name, path, rank and slot."""
        return [
            {"name": a.name, "path": str(a.path), "rank": a.rank, "slot": i}
            for i, a in enumerate(self._adapters.values())
        ]

    # ---- which jdiff layer each torch module is -------------------------------------------------------------

    def _targets(self) -> dict[str, dict[str, _Target]]:
        """component -> {torch module name (and its kohya form) -> target}, for every jdiff `Linear`."""
        if self._index is not None:
            return self._index
        index: dict[str, dict[str, _Target]] = {}
        for comp, key in self.components.items():
            graphdef, state = self._base[key]
            module = nnx.merge(graphdef, state)
            table: dict[str, _Target] = {}
            for p, v in nnx.to_flat_state(state):
                path = ".".join(str(x) for x in p[:-1])
                if p[-1] not in ("kernel", "kernel_fp8") or not isinstance(_module_at(module, path), Linear):
                    continue
                shape, dtype = tuple(v.shape), v.dtype
                if p[-1] == "kernel_fp8":  # stored [.., O, I] (jdiff.layers.quant); adapters in bf16
                    shape, dtype = (*shape[:-2], shape[-1], shape[-2]), self.pipeline.dtype
                for name, layer in _torch_modules(self._plans[comp], path + ".kernel", shape):
                    t = _Target(key, path, layer, shape, dtype)
                    table[name] = t
                    table.setdefault("_" + name.replace(".", "_"), t)
            index[comp] = table
        self._index = index
        return index

    def _resolve(self, name: str, parsed: lora_files.LoraFile) -> _Adapter:
        targets = self._targets()
        denoiser = next((c for c in ("transformer", "unet") if c in targets), None)
        modules: dict[tuple[str, str], list] = {}
        unmatched: list[str] = []
        for (named, module), factors in parsed.modules.items():
            comp = denoiser if named == lora_files.DENOISER else named
            kohya = (named, module) in parsed.underscored
            table = targets.get(comp, {})
            found = table.get("_" + module if kohya else module)
            if found is None and comp in self._plans:
                found = table.get(_alias(self._plans[comp], module, kohya) or "")
            if found is None:
                unmatched.append(f"{comp}: {module}")
                continue
            want = (found.shape[-2], found.shape[-1])
            if (factors.down.shape[1], factors.up.shape[0]) != want:
                raise InputError(
                    f"LoRA {parsed.path}: module {module!r} has in/out sizes {factors.down.shape[1]}/"
                    f"{factors.up.shape[0]}, but the model's layer has {want[0]}/{want[1]}: the adapter was "
                    "trained for another model"
                )
            modules.setdefault((found.key, found.path), []).append((found.layer, factors))
        if unmatched:
            examples = [n for t in targets.values() for n in t if not n.startswith("_")][:3]
            raise InputError(
                f"LoRA {parsed.path}: {len(unmatched)} of {len(parsed.modules)} adapted module(s) fit no layer "
                f"of this {self.pipeline.family} model, e.g. {unmatched[:3]}; its layers are named like "
                f"{examples} (components {sorted(targets)}): the adapter is for another model or layout"
            )
        return _Adapter(name, parsed.path, parsed.max_rank, modules)

    # ---- loading ------------------------------------------------------------------------------------------

    def load(self, path, name: str | None = None) -> str:
        """Loads the LoRA at `path` as `name` (default: the file's or folder's stem); returns the name.

        Raises:
            InputError: a bad file, one that fits no layer of the model, or a name already loaded. Nothing
                changes then.
        """
        if not self.components:
            raise InputError(f"{self.pipeline.family} has no components that take LoRA adapters")
        file = lora_files.find_file(path)
        name = name or (
            file.parent.name if file.stem in ("pytorch_lora_weights", "adapter_model") else file.stem
        )
        if not isinstance(name, str) or not name:
            raise InputError(f"a LoRA name must be a non-empty string, got {name!r}")
        if name in self._adapters:
            raise InputError(f"a LoRA named {name!r} is already loaded; unload it first or pick another name")
        adapter = self._resolve(name, lora_files.read(file))
        self._rebuild({**self._adapters, name: adapter}, self.fused)
        return name

    def unload(self, name: str) -> None:
        if name not in self._adapters:
            raise InputError(f"no LoRA named {name!r} is loaded; loaded: {self.names}")
        if name in self.fused:
            raise InputError(f"LoRA {name!r} is fused into the weights; unfuse_lora() before unloading it")
        self._rebuild({k: v for k, v in self._adapters.items() if k != name}, self.fused)

    def fuse(self, loras: dict[str, float]) -> None:
        """Folds loaded adapters into the kernels, `W + scale A B`, for every request until `unfuse`.

        Fused adapters leave their slots, so they cost nothing per step (the other loaded adapters stay
        selectable per request); their layers' kernels are copied once. Replaces any earlier fusion.

        Raises:
            InputError: a name that is not loaded, or a scale that is not a finite number.
        """
        unknown = sorted(set(loras) - set(self._adapters))
        if unknown:
            raise InputError(f"unknown LoRA adapter(s) {unknown}; loaded: {self.names}")
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in loras.values()
        ):
            raise InputError(f"fuse scales must be finite numbers, got {loras}")
        if getattr(self.pipeline, "quantization", None) is not None:
            raise InputError(
                f"fuse_lora cannot fold adapters into quantization={self.pipeline.quantization!r} kernels; "
                "apply them per request instead (loras={name: scale}), or load the model without quantization"
            )
        self._rebuild(self._adapters, {n: float(v) for n, v in loras.items()})

    def unfuse(self) -> None:
        """Restores the kernels of the base model; fused adapters become selectable per request again."""
        self._rebuild(self._adapters, {})

    def _rebuild(self, adapters: dict[str, _Adapter], fused: dict[str, float]) -> None:
        """Builds every component for `adapters` (`fused` folded into kernels), then swaps it in (all or
        nothing)."""
        base = self._fold([adapters[n] for n in fused], list(fused.values())) if fused else self._base
        slotted = [a for n, a in adapters.items() if n not in fused]
        if not slotted:
            built, slots, rank = base, 0, 0
        else:
            rank = max(a.rank for a in slotted)
            rank = next((q for q in RANK_BUCKETS if q >= rank), rank)
            slots = 1 << math.ceil(math.log2(len(slotted)))
            # Keep the slot count and bucket once grown, so unloading never recompiles.
            slots, rank = max(slots, self.slots), max(rank, self.rank)
            built = self._build(base, self._factors(slotted, rank, slots), put_on=self.pipeline.placement)
        for key, (graphdef, state) in built.items():
            self.pipeline._defs[key], self.pipeline._params[key] = graphdef, state
        self._adapters, self.fused, self.slots, self.rank = adapters, dict(fused), slots, rank

    def _factors(self, adapters: list[_Adapter], rank: int, slots: int, scales=None) -> dict:
        """(key, linear path) -> (lora_a [.., in, S Q], lora_b [.., S Q, out]) in float32, adapter i in slot
        i, its alpha / rank (and `scales[i]`, when given) folded into lora_b."""
        k = slots * rank
        targets = {(t.key, t.path): t for table in self._targets().values() for t in table.values()}
        factors = {}
        for kp in sorted({kp for a in adapters for kp in a.modules}):
            t = targets[kp]
            lead, (d_in, d_out) = t.shape[:-2], t.shape[-2:]
            a = np.zeros((*lead, d_in, k), np.float32)
            b = np.zeros((*lead, k, d_out), np.float32)
            for s, adapter in enumerate(adapters):
                scale = 1.0 if scales is None else scales[s]
                for layer, m in adapter.modules.get(kp, ()):
                    at = () if layer is None else (layer,)
                    cols = slice(s * rank, s * rank + m.rank)
                    a[(*at, slice(None), cols)] = m.down.T
                    b[(*at, cols, slice(None))] = m.up.T * (m.scale * scale)
            factors[kp] = (a, b)
        return factors

    def _build(self, base: dict, factors: dict, *, put_on) -> dict[str, tuple]:
        """`base`'s modules with each adapted Linear given its `lora_a` / `lora_b` (in the kernel's dtype)."""
        out = {}
        for key, (graphdef, state) in base.items():
            module = nnx.merge(graphdef, state)
            for (k2, path), (a, b) in factors.items():
                if k2 == key:
                    linear = _module_at(module, path)
                    dtype = self.pipeline.dtype if linear.is_fp8 else linear.kernel[...].dtype
                    linear.lora_a = lora_layers.LoraParam(put(put_on, jnp.asarray(a, dtype)))
                    linear.lora_b = lora_layers.LoraParam(put(put_on, jnp.asarray(b, dtype)))
            out[key] = nnx.split(module)
        return out

    def _fold(self, adapters: list[_Adapter], scales: list[float]) -> dict[str, tuple]:
        """The base modules with `adapters` at `scales` folded into their kernels (float32 sums)."""
        rank = max(a.rank for a in adapters)
        factors = self._factors(adapters, rank, len(adapters), scales)
        out = {}
        for key, (graphdef, state) in self._base.items():
            module = nnx.merge(graphdef, state)
            for (k2, path), (a, b) in factors.items():
                if k2 == key:
                    # A new Variable: merge may hand back the base state's own, which must stay as it is.
                    linear = _module_at(module, path)
                    linear.kernel = linear.kernel.replace(_fold_kernel(linear.kernel[...], a, b))
            out[key] = nnx.split(module)
        return out

    # ---- requests -----------------------------------------------------------------------------------------

    def scales(self, loras: tuple[dict[str, float], ...] | None, batch: int) -> np.ndarray | None:
        """[B, S x Q] scales for one request's per-output adapters; None when no adapter is loaded.

        Raises:
            InputError: a name that is not loaded.
        """
        asked = {n for d in loras or () for n in d}
        unknown = sorted(asked - set(self._adapters))
        if unknown:
            loaded = f"loaded: {self.names}" if self._adapters else "none is loaded; load one first"
            raise InputError(f"unknown LoRA adapter(s) {unknown}; {loaded}")
        fused = sorted(asked & set(self.fused))
        if fused:
            raise InputError(f"LoRA {fused} is fused into the weights (every request uses it); unfuse first")
        if not self.slots:
            return None
        slot = {n: i for i, n in enumerate(n for n in self._adapters if n not in self.fused)}
        out = np.zeros((batch, self.slots * self.rank), np.float32)
        for row, chosen in enumerate(loras or ()):
            for n, scale in chosen.items():
                out[row, slot[n] * self.rank : (slot[n] + 1) * self.rank] = scale
        return out


@jax.jit
def _fold_kernel(kernel: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """kernel + a @ b, summed in float32, in the kernel's dtype (and, under jit, its sharding's layout)."""
    return (kernel.astype(jnp.float32) + jnp.matmul(a, b)).astype(kernel.dtype)


__all__ = ["RANK_BUCKETS", "Adapters", "jit", "request_scales"]
