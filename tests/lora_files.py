"""Tiny random LoRA files for tests, named as diffusers / PEFT or kohya save them."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def linears(module: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    return {n: m for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)}


def write(
    path: Path,
    modules: dict[str, torch.nn.Linear],
    names: list[str],
    *,
    prefix: str = "transformer.",
    rank: int = 3,
    alpha: float | None = None,
    kohya: bool = False,
    seed: int = 0,
    std: float = 0.3,
) -> Path:
    """A LoRA over `names` (torch module names of `modules`) with random factors; ranks vary per module
    (`rank`, `rank` + 1, ...) so padding to the rank bucket is exercised."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, n in enumerate(names):
        m, r = modules[n], rank + i % 2
        down = torch.randn(r, m.in_features, generator=g) * std
        up = torch.randn(m.out_features, r, generator=g) * std
        if kohya:
            key = prefix + n.replace(".", "_")
            sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = down, up
        else:
            key = prefix + n
            sd[f"{key}.lora_A.weight"], sd[f"{key}.lora_B.weight"] = down, up
        if alpha is not None:
            sd[f"{key}.alpha"] = torch.tensor(float(alpha))
    save_file(sd, str(path))
    return path
