"""Qwen-Image's 3-axis rotary tables (diffusers `QwenEmbedRope`), computed on the host per request shape.

Axis letters: L joint tokens (S image tokens, then T text), H head dim: jdiff puts the text after the images
(diffusers before them; attention is the same either way), so text padding is trailing.

The head dim splits into (frame, height, width) parts (`axes_dims_rope`). Image i of a request (i = 0 the
latents being denoised, then each conditioning image of the edit pipelines, in order) gets frame position i,
and height/width positions centred on zero: rows -(h - h//2) .. h//2 - 1, columns likewise (the
`scale_rope=True` layout of every released checkpoint). Text token j gets position m + j on all three axes,
m = the largest h//2 or w//2 over all images, so text never collides with an image position.

Frequencies and angles are float32 as diffusers computes them (its table is a float32 complex product), so a
long sequence's large positions round as the reference's do.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from jdiff.errors import InputError

THETA = 10000
# diffusers precomputes 4096 positions per axis; beyond them its table runs out.
MAX_POSITION = 4096


def positions(image_grids: Sequence[tuple[int, int, int]], text_len: int) -> np.ndarray:
    """Integer positions [S + T, 3] of the joint sequence [image 0; image 1; ...; text].

    Args:
        image_grids: (frames, height, width) token grid of each image, in sequence order.
        text_len: text tokens T.

    Raises:
        InputError: positions past the reference's 4096 precomputed ones.
    """
    parts, top = [], 0
    for idx, (f, h, w) in enumerate(image_grids):
        grid = np.zeros((f, h, w, 3), np.int64)
        grid[..., 0] = (idx + np.arange(f))[:, None, None]
        grid[..., 1] = (np.arange(h) - (h - h // 2))[None, :, None]
        grid[..., 2] = (np.arange(w) - (w - w // 2))[None, None, :]
        parts.append(grid.reshape(-1, 3))
        top = max(top, h // 2, w // 2)
    if top + text_len > MAX_POSITION or len(image_grids) > MAX_POSITION:
        raise InputError(
            f"Qwen-Image rotary positions reach {top + text_len} (image grids {list(image_grids)}, {text_len} "
            f"text tokens); the reference has {MAX_POSITION}: use smaller images or a shorter prompt"
        )
    text = np.repeat((top + np.arange(text_len))[:, None], 3, axis=1)
    return np.concatenate([*parts, text])


@lru_cache(maxsize=32)
def rope_tables(
    image_grids: tuple[tuple[int, int, int], ...], text_len: int, axes_dims: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [S + T, H] (float32) for the joint sequence, each frequency repeated for its pair."""
    pos = positions(image_grids, text_len).astype(np.float32)
    cos, sin = [], []
    for axis, dim in enumerate(axes_dims):
        exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
        freqs = (np.float32(1.0) / np.power(np.float32(THETA), exponent)).astype(np.float32)
        angles = pos[:, axis : axis + 1] * freqs[None, :]  # float32, as torch.outer
        cos.append(np.repeat(np.cos(angles), 2, axis=1))
        sin.append(np.repeat(np.sin(angles), 2, axis=1))
    return np.concatenate(cos, 1).astype(np.float32), np.concatenate(sin, 1).astype(np.float32)
