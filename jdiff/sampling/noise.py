"""Initial noise: one PRNG stream per seed, drawn inside the jitted denoising stage.

Axis letters: B batch (one seed each).
"""

from __future__ import annotations

import numpy as np


def noise_keys(seeds: list[int]) -> np.ndarray:
    """threefry2x32 key data [B, 2] (uint32) for each seed, built on the host: all 64 bits of the seed.

    (`jax.random.key(s)` keeps only the low 32 bits while x64 is off, so seeds 5 and 2**32 + 5 drew the same
    noise; below 2**32 these keys are `jax.random.key(s)`'s.)
    """
    s = np.asarray(seeds, np.uint64)
    return np.stack(
        [(s >> np.uint64(32)).astype(np.uint32), (s & np.uint64(0xFFFFFFFF)).astype(np.uint32)], 1
    )


def noise_from_keys(keys, shape: tuple[int, ...]):
    """Standard normal noise [B, *shape] in float32, one PRNG stream per key of `noise_keys`.

    Called inside the pipelines' jitted denoising stage: drawing the noise eagerly compiled four small programs
    on every process start (the persistent cache skips programs that compile in under a second).
    """
    # jax is imported here, not at the top: `jdiff.pipelines.base` re-exports this module and stays light.
    import jax
    import jax.numpy as jnp

    def one(k):
        return jax.random.normal(jax.random.wrap_key_data(k, impl="threefry2x32"), shape, jnp.float32)

    return jax.vmap(one)(keys)


def step_noise(keys, i, shape: tuple[int, ...]):
    """Standard normal noise [B, *shape] in float32 for denoising step `i` (traced), from each key of `noise_keys`
    folded with i: a stream per step, apart from the initial noise's, the same for the same seed."""
    import jax
    import jax.numpy as jnp

    def one(k):
        key = jax.random.fold_in(jax.random.wrap_key_data(k, impl="threefry2x32"), i)
        return jax.random.normal(key, shape, jnp.float32)

    return jax.vmap(one)(keys)
