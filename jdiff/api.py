"""The Python API: `DiffGenerator.from_pretrained(...).generate(...)`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jdiff.errors import InputError
from jdiff.pipelines.base import GenerationResult

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def default_dtype() -> str:
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def embedded_model_path() -> Path:
    """The small model shipped inside the package (the default when no path is given)."""
    return Path(__file__).parent / "assets" / "tiny-flux"


def _placement(mesh, sequence_parallel: str):
    """The pipeline's Placement, or None for one device.

    `mesh=None` means all devices on accelerators and in multi-host runs (every device of every process, on
    the `fsdp` axis: it always fits; pass a mesh with `context` for speed when one copy of the model fits a
    device) and one device on a single CPU host (several CPU "devices" there are test fixtures).
    """
    from jdiff.parallel.mesh import make_mesh
    from jdiff.parallel.placement import Placement

    if mesh in (None, "", {}):
        single_host_cpu = jax.default_backend() == "cpu" and jax.process_count() == 1
        if single_host_cpu or jax.device_count() == 1:
            return None
        mesh = None
    built = make_mesh(mesh) if not isinstance(mesh, jax.sharding.Mesh) else mesh
    if built.devices.size == 1:
        return None
    return Placement(built, sequence_parallel=sequence_parallel)


class DiffGenerator:
    """A loaded model, ready to generate. Create it with `from_pretrained`."""

    def __init__(self, pipeline, *, model_path: Path, dtype: str):
        self.pipeline = pipeline
        self.model_path = model_path
        self.dtype = dtype

    @classmethod
    def from_pretrained(
        cls,
        model_path: str | os.PathLike | None = None,
        *,
        dtype: str | None = None,
        mesh: Any = None,
        sequence_parallel: str = "ulysses",
        scheduler: str | None = None,
        scheduler_config: dict[str, Any] | None = None,
        offload: str | None = None,
        quantization: str | None = None,
    ) -> DiffGenerator:
        """Loads a diffusers-format directory, a `jdiff convert` output, or (None) the embedded default model.

        Args:
            model_path: the directory holding model_index.json; None for the embedded default model.
            dtype: "float32" or "bfloat16"; default bfloat16 on GPU/TPU, float32 on CPU.
            mesh: device mesh spec, e.g. "data=2,fsdp=1,context=4,tensor=1"; None = one device.
            sequence_parallel: "ulysses" or "ring", how attention runs over the `context` mesh axis.
            scheduler: a diffusers scheduler class name to sample with instead of the directory's (e.g.
                "DPMSolverMultistepScheduler"); None keeps the directory's.
            scheduler_config: scheduler config keys set on top of the directory's scheduler_config.json (e.g.
                {"use_karras_sigmas": True}), as `X.from_config(pipe.scheduler.config, **scheduler_config)`.
            offload: None (all weights on the device), "model" (each component in host memory, brought onto the
                device for its stage) or "layers" (as "model", and the DiT's layers streamed in one by one
                inside the denoising loop); see docs/memory.md.
            quantization: None (the weights' dtype) or "fp8": the DiT's block linears in float8 e4m3 with
                per-output-channel weight scales and per-token activation scales, quantized once here from the
                checkpoint's weights (`jdiff.layers.quant`); modulation, norms, embedders and the final layer
                stay as they are. DiT families only.

        Raises:
            InputError: a missing or malformed directory, unsupported model, bad dtype, mesh, offload or
                quantization (or fp8 for a family without it), or a scheduler jdiff does not run (the message
                lists those it does) or a config value it refuses.
        """
        from jdiff import compilation_cache

        compilation_cache.enable()
        dtype = dtype or default_dtype()
        if dtype not in DTYPES:
            raise InputError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if sequence_parallel not in ("ulysses", "ring"):
            raise InputError(f"sequence_parallel must be 'ulysses' or 'ring', got {sequence_parallel!r}")
        from jdiff.pipelines import offload as offloading

        offloading.check_mode(offload)
        from jdiff.pipelines import quantize

        quantize.check_mode(quantization)
        placement = _placement(mesh, sequence_parallel)
        if model_path is None:
            model_path = embedded_model_path()
            if not model_path.is_dir():
                raise InputError("this jdiff build has no embedded default model; pass a model directory")
        from jdiff import registry

        model = registry.open_model(model_path)
        quantize.check_model(model, quantization)  # before the weights load
        if scheduler is not None or scheduler_config is not None:
            model.swap_scheduler(scheduler, scheduler_config)
        model.host_memory = offload is not None
        pipeline = model.family.pipeline(model, dtype=DTYPES[dtype], placement=placement)
        quantize.apply(pipeline, model, quantization)
        offloading.apply(pipeline, offload)
        return cls(pipeline, model_path=model.root, dtype=dtype)

    def generate(self, prompt, **kwargs) -> GenerationResult:
        """Generates from `prompt` (str or list[str]); keyword arguments as the README lists them.

        Unset sampling arguments (size, steps, guidance) come from the model family's preset.
        `loras={"name": scale}` applies loaded LoRA adapters (several at once; none by default).
        `step_cache="first_block" | "teacache"` (with `step_cache_threshold=`, default the model's) skips
        the transformer's remaining blocks on steps whose input changed little (docs/step_cache.md); the
        steps skipped are in `result.timings`.
        """
        return self.pipeline.generate(prompt, **kwargs)

    def load_lora(self, path: str | os.PathLike, name: str | None = None) -> str:
        """Loads a LoRA adapter (a safetensors file, or a folder holding one; diffusers / PEFT or kohya
        names) for requests to use by `name` (default: the file's stem); returns the name.

        Raises:
            InputError: a missing or malformed file, one that fits no layer of this model (nothing is
                changed then), a name already loaded, or a family without LoRA support.
        """
        adapters = self._adapters()
        return adapters.load(path, name)

    def unload_lora(self, name: str) -> None:
        """Removes a loaded adapter. Raises InputError when no adapter has that name."""
        self._adapters().unload(name)

    def fuse_lora(self, loras: dict[str, float]) -> None:
        """Folds loaded adapters into the weights at these scales (`W + scale A B`) for every request: no
        per-step cost, for serving one fixed adapter set. Requests may still choose the other loaded
        adapters; naming a fused one is an error until `unfuse_lora()`. Replaces an earlier fusion."""
        if self.pipeline.offload is not None:
            raise InputError(
                f"fuse_lora needs the weights on the device and this model runs with offload="
                f"{self.pipeline.offload!r}; apply the adapters per request instead (loras={{name: scale}})"
            )
        self._adapters().fuse(loras)

    def unfuse_lora(self) -> None:
        """Restores the base weights; the fused adapters become selectable per request again."""
        self._adapters().unfuse()

    @property
    def loras(self) -> list[str]:
        """The names of the loaded LoRA adapters."""
        return [] if self.pipeline.lora is None else self.pipeline.lora.names

    def _adapters(self):
        if self.pipeline.lora is None:
            raise InputError(f"{self.pipeline.family} does not take LoRA adapters yet")
        return self.pipeline.lora
