"""Reading LoRA files: diffusers / PEFT and kohya names, into per-module low-rank factors.

A file names each adapted torch module of a pipeline component, in one of these layouts:

    diffusers / PEFT  `transformer.<module>.lora_A.weight` [r, in], `.lora_B.weight` [out, r]
                      (also `unet.`, `text_encoder.`, `text_encoder_2.`, `diffusion_model.`, PEFT's
                      `base_model.model.`, or no prefix: the denoiser), optional `<module>.alpha`
    kohya             `lora_unet_<module with _ for .>.lora_down.weight` [r, in], `.lora_up.weight`
                      [out, r], `.alpha` (`lora_te_` / `lora_te1_` / `lora_te2_` for text encoders)

The scale of a module is alpha / r when the file gives alpha, else 1 (as diffusers loads such files). Which
jdiff layer a module is, the loaded model's conversion plan decides (`jdiff.pipelines.lora`). Kohya names
are kept with their underscores (`underscored`): only the model's module names can tell `a_b.c` from `a.b_c`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jdiff.errors import InputError
from jdiff.weights.safetensors import SafetensorsFile

DENOISER = "denoiser"  # the transformer or UNet, whichever the pipeline has

# Component prefixes of diffusers / PEFT keys, and of kohya's.
_PREFIXES = (
    ("transformer.", DENOISER),
    ("unet.", DENOISER),
    ("diffusion_model.", DENOISER),
    ("model.diffusion_model.", DENOISER),
    ("text_encoder.", "text_encoder"),
    ("text_encoder_2.", "text_encoder_2"),
)
_KOHYA = (
    ("lora_unet_", DENOISER),
    ("lora_transformer_", DENOISER),
    ("lora_te1_", "text_encoder"),
    ("lora_te2_", "text_encoder_2"),
    ("lora_te_", "text_encoder"),
)
# (down, up) suffixes of the two factors.
_FACTORS = (
    (".lora_A.weight", ".lora_B.weight"),
    (".lora_down.weight", ".lora_up.weight"),
    (".lora.down.weight", ".lora.up.weight"),
)


@dataclass(frozen=True)
class ModuleLora:
    """One adapted linear module: `down` [r, in], `up` [out, r] (float32) and its scale alpha / r (or 1)."""

    down: np.ndarray
    up: np.ndarray
    scale: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass(frozen=True)
class LoraFile:
    """A parsed file: (component, module name) -> factors; `underscored` when names are kohya's."""

    path: Path
    modules: dict[tuple[str, str], ModuleLora]
    underscored: frozenset[tuple[str, str]]

    @property
    def max_rank(self) -> int:
        return max(m.rank for m in self.modules.values())


def find_file(path: str | os.PathLike) -> Path:
    """The safetensors file of a LoRA: `path` itself, or the one LoRA file in a folder."""
    p = Path(path)
    if p.is_dir():
        names = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors")
        for name in names:
            if (p / name).is_file():
                return p / name
        files = sorted(p.glob("*.safetensors"))
        if len(files) != 1:
            raise InputError(
                f"LoRA folder {p} holds {len(files)} .safetensors files and none named {' or '.join(names)}; "
                "pass the file itself"
            )
        return files[0]
    if not p.is_file():
        raise InputError(f"LoRA file {p} does not exist")
    if p.suffix != ".safetensors":
        raise InputError(
            f"LoRA file {p} is not a .safetensors file; convert it (PyTorch pickles are not read)"
        )
    return p


def _split(key: str) -> tuple[str, str, bool] | None:
    """(component, module, underscored) of a module name with its prefix, or None if none fits."""
    key = key.removeprefix("base_model.model.")
    for prefix, component in _KOHYA:
        if key.startswith(prefix):
            return component, key[len(prefix) :], True
    for prefix, component in _PREFIXES:
        if key.startswith(prefix):
            return component, key[len(prefix) :], False
    return DENOISER, key, False


def _peft_alpha(file: Path) -> float | None:
    """PEFT's `lora_alpha` from an `adapter_config.json` beside the file (None without one)."""
    cfg = file.parent / "adapter_config.json"
    if not cfg.is_file():
        return None
    try:
        return float(json.loads(cfg.read_text())["lora_alpha"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise InputError(f"{cfg} has no numeric lora_alpha; fix or remove it") from None


def read(path: str | os.PathLike) -> LoraFile:
    """Parses a LoRA file (or a folder holding one) into per-module factors.

    Raises:
        InputError: no such file, a corrupt file, keys that are not LoRA factors, unpaired factors, or
            factors whose shapes do not chain.
    """
    file = find_file(path)
    st = SafetensorsFile(file)
    keys = set(st.keys())
    if not keys:
        raise InputError(f"{file} holds no tensors; it is not a LoRA file")
    default_alpha = _peft_alpha(file)
    modules: dict[tuple[str, str], ModuleLora] = {}
    underscored: set[tuple[str, str]] = set()
    used: set[str] = set()
    problems: list[str] = []
    for key in sorted(keys):
        for down_sfx, up_sfx in _FACTORS:
            if not key.endswith(down_sfx):
                continue
            name = key[: -len(down_sfx)]
            up_key = name + up_sfx
            if up_key not in keys:
                problems.append(f"{key!r} has no matching {up_key!r}")
                break
            down = np.asarray(st.read(key), np.float32)
            up = np.asarray(st.read(up_key), np.float32)
            if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
                problems.append(
                    f"{name!r}: factors of shapes {down.shape} and {up.shape} are not [r, in] and [out, r] "
                    "(convolution LoRAs are not supported)"
                )
                break
            alpha_key = next((k for k in (name + ".alpha",) if k in keys), None)
            alpha = float(np.asarray(st.read(alpha_key)).reshape(())) if alpha_key else default_alpha
            used.update({key, up_key} | ({alpha_key} if alpha_key else set()))
            component, module, kohya = _split(name)
            module = re.sub(r"\.default$", "", module)
            modules[(component, module)] = ModuleLora(down, up, 1.0 if alpha is None else alpha / len(down))
            if kohya:
                underscored.add((component, module))
            break
    stray = sorted(keys - used)
    if stray and not problems:
        problems.append(
            f"{len(stray)} key(s) are not LoRA factors, e.g. {stray[:3]}; expected `<module>.lora_A.weight` / "
            "`.lora_B.weight` (diffusers, PEFT) or `.lora_down.weight` / `.lora_up.weight` / `.alpha` (kohya)"
        )
    if problems:
        raise InputError(f"{file}: not a LoRA file jdiff reads: {'; '.join(problems[:5])}")
    return LoraFile(file, modules, frozenset(underscored))


__all__ = ["DENOISER", "LoraFile", "ModuleLora", "find_file", "read"]
