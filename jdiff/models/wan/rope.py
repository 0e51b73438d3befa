"""Wan's 3-D rotary tables, computed once per request on the host (diffusers `WanRotaryPosEmbed`).

Axis letters: L latent tokens (F' x H' x W' after patching, frames outermost), H head dim.

The head dim is split into (frames, height, width) parts of (H - 4*(H//6), 2*(H//6), 2*(H//6)); each part
rotates by its token's integer position along that axis, with frequencies 1 / 10000^(2i/part) computed in
float64 (as diffusers does) and each frequency repeated for its (real, imaginary) pair.
"""

from __future__ import annotations

import numpy as np

from jdiff.errors import InputError
from jdiff.layers.rope import rope_cos_sin
from jdiff.models.wan.config import WanTransformerConfig

THETA = 10000.0


def post_patch_grid(cfg: WanTransformerConfig, frames: int, height: int, width: int) -> tuple[int, int, int]:
    """The token grid (F', H', W') of a latent of (frames, height, width), checking it patches evenly.

    Raises:
        InputError: a latent size that the patch size does not divide.
    """
    sizes = (frames, height, width)
    if any(s < 1 or s % p for s, p in zip(sizes, cfg.patch_size, strict=True)):
        raise InputError(
            f"Wan latent (frames, height, width) = {sizes} must be positive multiples of the patch size "
            f"{tuple(cfg.patch_size)}; pick a video size the VAE stride times the patch size divides"
        )
    return tuple(s // p for s, p in zip(sizes, cfg.patch_size, strict=True))


def wan_rope_tables(
    cfg: WanTransformerConfig, frames: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables [L, H] (float32) for a latent of (frames, height, width) (before patching).

    Args:
        cfg: the transformer config (head dim, patch size, rope_max_seq_len).
        frames, height, width: the latent's sizes, as passed to the model; divided by the patch size here.

    Returns:
        (cos, sin), each [F' * H' * W', attention_head_dim], rows in the model's token order.

    Raises:
        InputError: sizes that do not patch evenly, or a grid axis longer than rope_max_seq_len (diffusers
            precomputes that many positions).
    """
    grid = post_patch_grid(cfg, frames, height, width)
    if max(grid) > cfg.rope_max_seq_len:
        raise InputError(
            f"Wan post-patch grid {grid} exceeds rope_max_seq_len {cfg.rope_max_seq_len}; use a shorter or "
            "smaller video"
        )
    ids = np.stack(np.meshgrid(*(np.arange(n) for n in grid), indexing="ij"), axis=-1).reshape(-1, 3)
    return rope_cos_sin(ids, cfg.rope_dims, THETA)
