"""The one parity harness of the model tests.

Parity: a PyTorch reference (diffusers / transformers) at a tiny random config is saved with `save_pretrained`
and read back by jdiff's real loader, so a wrong key, transpose or stacking fails the comparison; outputs are
compared in float32 by relative error. Real sizes: a header-only safetensors file with the reference's exact
layout (built on torch's meta device, no memory) must be covered key for key, and a removed or stray key must
be named by the loader's error.

    ref = parity.randomized(TorchFlux(**parity.kwargs(FluxConfig.tiny(num_attention_heads=3))))
    cfg, model = parity.load(ref, SPEC, tmp_path)
    parity.assert_close(model(...), ref(...).sample)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

from jdiff.errors import ConversionError
from jdiff.weights.config import to_dict
from jdiff.weights.loading import check, load_component, param_shapes
from jdiff.weights.safetensors import open_weights
from tests.utils import meta_state_shapes, rel_err, write_sparse_safetensors


def kwargs(cfg, **extra) -> dict[str, Any]:
    """A jdiff config (e.g. a named preset) as the reference constructor's keyword arguments: jdiff config
    fields are reference config.json keys."""
    return {**to_dict(cfg), **extra}


def randomized(ref, std: float = 0.05, seed: int = 0, *, norms_near_one: bool = False):
    """`ref` in eval mode with every parameter drawn from normal(0, std).

    Nothing stays at an init that would hide a wrong mapping (zero biases, unit norm weights, zero-initialised
    output layers). 0.05 keeps deep random nets' activations O(1); larger scales amplify the ~1e-5 float32
    differences of sinusoidal embeddings between XLA and torch. `norms_near_one` adds 1 to the scales of every
    `*Norm` module (GroupNorm, LayerNorm, RMSNorm), for nets whose attention logits must stay O(1) so that a
    wrong softmax scale shows.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * std)
        if norms_near_one:
            for m in ref.modules():
                if type(m).__name__.endswith("Norm") and getattr(m, "weight", None) is not None:
                    m.weight += 1.0
    return ref.eval()


def load(ref, spec, folder: str | Path, *, dtype=jnp.float32, prefix: str = "", **options):
    """`ref.save_pretrained(folder)`, then jdiff's loader on that folder: (config, module).

    `prefix` is put before every saved key, the layout of released checkpoints that carry one (FLUX.1's CLIP
    `text_model.`, Wan's image encoder `vision_model.`); the tensors stay the ones `save_pretrained` wrote.
    """
    ref.save_pretrained(folder)
    if prefix:
        from safetensors.numpy import load_file, save_file

        for path in Path(folder).glob("*.safetensors"):
            save_file({prefix + k: v for k, v in load_file(path).items()}, path)
    return load_component(spec, folder, dtype=dtype, **options)


def assert_close(got, want, tol: float = 1e-5, what: str = "output") -> float:
    """Relative L2 error of `got` against `want` (torch tensors or arrays), at most `tol`; returns it."""
    err = rel_err(_numpy(got), _numpy(want))
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.0e}"
    return err


def _numpy(x) -> np.ndarray:
    """Arrays of either framework as numpy (bfloat16 widened: rel_err measures in float64)."""
    if hasattr(x, "detach"):
        return x.detach().float().numpy()
    return np.asarray(jnp.asarray(x, jnp.float32)) if x.dtype == jnp.bfloat16 else np.asarray(x)


def real_layout(build: Callable[[], Any], *, prefix: str = "", skip: tuple[str, ...] = ()) -> dict:
    """key -> (shape, dtype code) of the reference built by `build()` on the meta device: the layout a
    released checkpoint carries (`prefix` on every key, `skip` keys left out, e.g. tied weights)."""
    return {prefix + k: v for k, v in meta_state_shapes(build).items() if k not in skip}


def check_coverage(
    spec,
    cfg,
    tensors: dict,
    folder: str | Path,
    *,
    component: str,
    filename: str = "diffusion_pytorch_model.safetensors",
    missing: str,
    unexpected: tuple[str, tuple[int, ...]],
) -> dict[str, tuple[int, ...]]:
    """Real-size key coverage from headers only.

    `tensors` (a `real_layout`) is written as a header-only file: every jdiff parameter must come from exactly
    one source key. Then `missing` is removed and `unexpected` (key, shape) added: the loader's one error must
    name both. Returns jdiff's parameter shapes for the caller's shape assertions.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shapes = param_shapes(spec.abstract(cfg)[1])
    write_sparse_safetensors(folder / filename, tensors)
    assignments = check(spec, cfg, open_weights(folder), component=component)
    assert len(assignments) == len(shapes), f"{len(assignments)} assignments for {len(shapes)} parameters"

    assert missing in tensors, f"{missing!r} is not a key of the reference layout"
    broken = {k: v for k, v in tensors.items() if k != missing}
    broken[unexpected[0]] = (unexpected[1], "BF16")
    (folder / filename).unlink()
    write_sparse_safetensors(folder / filename, broken)
    with pytest.raises(ConversionError) as e:
        check(spec, cfg, open_weights(folder), component=component)
    msg = str(e.value)
    assert f"missing source key {missing!r}" in msg and f"unexpected source key {unexpected[0]!r}" in msg, msg
    assert len(e.value.problems) == 2, msg
    return shapes


def n_params(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(int(np.prod(s)) for s in shapes.values())
