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


def assert_same_deltas(torch_model: torch.nn.Module, gen, component: str, loras: dict[str, float]) -> int:
    """Every adapted torch linear's LoRA weight delta (PEFT, after diffusers' `load_lora_weights` +
    `set_adapters`) equals the one jdiff applies to the layer it maps that module to, and jdiff adapts no
    other layer. A direct check of the name mapping, which outputs alone may hide (a tiny model's q
    projections barely move them). Returns how many modules were compared."""
    import numpy as np
    from peft.tuners.lora import LoraLayer

    adapters = gen.pipeline.lora
    table = adapters._targets()[component]
    scales = adapters.scales((loras,), 1)[0]
    params = gen.pipeline._params[table[next(iter(table))].key]
    seen = set()
    for name, module in torch_model.named_modules():
        if not isinstance(module, LoraLayer) or not any(a in module.lora_A for a in loras):
            continue
        want = sum(module.get_delta_weight(a).detach().numpy() for a in loras if a in module.lora_A).T
        t = table[name]
        node = params
        for part in t.path.split("."):
            node = node[int(part) if part.isdigit() else part]
        a, b = np.asarray(node["lora_a"][...]), np.asarray(node["lora_b"][...])
        if t.layer is not None:
            a, b = a[t.layer], b[t.layer]
        got = a @ (scales[:, None] * b)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
        seen.add((t.path, t.layer))
    # Nothing else adapted: every other (layer of a) jdiff layer with factors contributes zero.
    for t in {t for t in table.values()}:
        if (t.path, t.layer) in seen:
            continue
        node = params
        for part in t.path.split("."):
            node = node[int(part) if part.isdigit() else part]
        if "lora_a" in node:
            a, b = np.asarray(node["lora_a"][...]), np.asarray(node["lora_b"][...])
            if t.layer is not None:
                a, b = a[t.layer], b[t.layer]
            assert not np.any(a @ (scales[:, None] * b)), (t.path, t.layer)
    return len(seen)
