"""Quantizing a loaded pipeline's denoiser: `from_pretrained(..., quantization="fp8")`.

Once, after loading and before any stage is traced: every `jdiff.layers.Linear` of the denoiser(s) whose
module path matches its component's `ComponentSpec.fp8` patterns is turned into an fp8 linear
(`Linear.quantize_fp8`, the recipe in `jdiff.layers.quant`), from whatever float dtype the checkpoint gave.
The rest of the model (modulation, norms, embedders, final layer, text encoders, VAE) is untouched. Kernels
are quantized one at a time on the device (host-memory ones are copied in and the results put back), and
each bf16 kernel is dropped as soon as it is replaced, so the peak is the model plus one kernel.
"""

from __future__ import annotations

import re
from typing import Any

import jax
from flax import nnx

from jdiff.errors import InputError
from jdiff.layers import quant
from jdiff.layers.linear import Linear
from jdiff.weights.loading import HOST_KINDS

MODES = quant.MODES
# The pipeline components (`Pipeline._defs` keys, model_index.json component names) that are denoisers.
DENOISERS = ("transformer", "transformer_2")


def check_mode(quantization: str | None) -> None:
    if quantization is not None and quantization not in MODES:
        raise InputError(
            f"quantization must be one of {list(MODES)} (or None: the weights' own dtype), got {quantization!r}"
        )


def _refuse(quantization: str, family: str) -> InputError:
    return InputError(
        f"quantization={quantization!r} is for DiT families (FLUX.1, FLUX.2, Wan, Qwen-Image, Z-Image, "
        f"HunyuanVideo-1.5); {family} has no fp8 mode: leave quantization out"
    )


def check_model(model: Any, quantization: str | None) -> None:
    """Refuses fp8 for a model directory whose family has no fp8 linears, before anything is loaded."""
    check_mode(quantization)
    if quantization is None:
        return
    if not any(k in model.components() and model.spec(k).fp8 for k in DENOISERS):
        raise _refuse(quantization, model.family.name)


def _path(path) -> str:
    return ".".join(str(p) for p in path)


def fp8_linears(module: nnx.Module, patterns: tuple[str, ...]) -> list[tuple[str, Linear]]:
    """(path, Linear) for every `Linear` of `module` whose dotted path fullmatches one of `patterns`."""
    rules = [re.compile(p) for p in patterns]
    return [
        (_path(p), node)
        for p, node in nnx.iter_graph(module)
        if isinstance(node, Linear) and any(r.fullmatch(_path(p)) for r in rules)
    ]


def _quantize(linear: Linear, placement) -> None:
    """`linear.quantize_fp8()` on the device; the results laid out by their logical names on the placement's
    mesh (as the loader lays out parameters), in the memory the kernel was in (device or host)."""
    kernel = linear.kernel[...]
    memory = getattr(getattr(kernel, "sharding", None), "memory_kind", None)
    if memory in HOST_KINDS:
        linear.kernel = linear.kernel.replace(
            jax.device_put(kernel, kernel.sharding.with_memory_kind("device"))
        )
    linear.quantize_fp8()
    for name in ("kernel_fp8", "kernel_scale"):
        var = getattr(linear, name)
        value = var[...]
        if placement is not None:
            value = placement.put(value, var.get_metadata()["out_sharding"])
        if memory in HOST_KINDS:
            value = jax.device_put(value, value.sharding.with_memory_kind(memory))
        setattr(linear, name, var.replace(value))


def apply(pipeline: Any, model: Any, quantization: str | None) -> list[str]:
    """Quantizes `pipeline`'s denoiser(s) in place; returns the quantized linears' paths ("key:path").

    Args:
        pipeline: a freshly built `Pipeline` (nothing traced yet); its `_defs` / `_params` (and its LoRA
            adapters' base weights) are replaced.
        model: its `ModelDir`, for the components' specs.
        quantization: None (nothing is done) or "fp8".

    Raises:
        InputError: a bad mode, or a family without an fp8 mode (no DiT linears declared).
    """
    check_mode(quantization)
    if quantization is None:
        return []
    keys = [k for k in DENOISERS if k in pipeline._defs and model.spec(k).fp8]
    if not keys:
        raise _refuse(quantization, pipeline.family)
    done = []
    lora = getattr(pipeline, "lora", None)
    for key in keys:
        # Drop every other reference to the unquantized weights first, so each is freed once replaced.
        params = pipeline._params.pop(key)
        if lora is not None:
            lora._base.pop(key, None)
        module = nnx.merge(pipeline._defs[key], params)
        del params
        for path, linear in fp8_linears(module, model.spec(key).fp8):
            _quantize(linear, getattr(pipeline, "placement", None))
            done.append(f"{key}:{path}")
        pipeline._defs[key], pipeline._params[key] = nnx.split(module)
        if lora is not None and key in lora.components.values():
            lora._base[key] = (pipeline._defs[key], pipeline._params[key])
    pipeline.quantization = quantization
    return done


__all__ = ["DENOISERS", "MODES", "apply", "check_mode", "check_model", "fp8_linears"]
