"""Rotary position embeddings with interleaved (real, imaginary) pairs, as FLUX and diffusers use them.

Axis letters: L sequence, A position axes, N heads, H head dim.

Frequencies are computed on the host in float64 (as diffusers does for FLUX) from the integer position ids,
which depend only on the request's shape; the result enters the jitted step as an argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jdiff.kernels.rope import apply_rope


def rope_cos_sin(ids: np.ndarray, axes_dim: Sequence[int], theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables [L, sum(axes_dim)] for position ids [L, A], each frequency repeated twice."""
    cos_out, sin_out = [], []
    pos = np.asarray(ids, dtype=np.float64)
    for i, dim in enumerate(axes_dim):
        freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
        angles = np.outer(pos[:, i], freqs)
        cos_out.append(np.repeat(np.cos(angles), 2, axis=1))
        sin_out.append(np.repeat(np.sin(angles), 2, axis=1))
    return (
        np.concatenate(cos_out, axis=-1).astype(np.float32),
        np.concatenate(sin_out, axis=-1).astype(np.float32),
    )


__all__ = ["apply_rope", "rope_cos_sin"]
