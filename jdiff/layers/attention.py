"""Scaled dot-product attention as the models call it: local, or sequence-parallel over the `context` mesh axis.

Axis letters: B batch, T query length, S key length, N heads, H head dim.

The local backends (cuDNN, XLA, splash) live in `jdiff.kernels.attention`; the sequence-parallel schemes
(Ulysses, ring, cross-attention over context shards) in `jdiff.parallel.attention`. This module chooses
between them from the ambient placement (`jdiff.sharding.ambient`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jdiff.kernels.attention import (
    CUDNN_MAX_HEAD_DIM,
    SPLASH_BLOCK,
    default_implementation,
    local_attention,
)
from jdiff.parallel import attention as sp
from jdiff.parallel import rules


def dot_product_attention(
    q: Float[Array, "b t n h"],
    k: Float[Array, "b s n h"],
    v: Float[Array, "b s n h"],
    *,
    bias: Float[Array, "b n t s"] | None = None,
    mask: Bool[Array, "b n t s"] | None = None,
    key_mask: Bool[Array, "b s"] | None = None,
    key_lengths: Int[Array, " b"] | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    implementation: str | None = None,
    context_parallel: bool = False,
    cross_context: bool = False,
) -> Float[Array, "b t n h"]:
    """Softmax(q k^T * scale + bias, masked) v, with torch SDPA's defaults (scale = 1/sqrt(H)), sequence-parallel
    under an ambient mesh with a `context` axis when the caller marks it so.

    Args:
        q, k, v: [B, T|S, N, H] (sequence before heads, as `jax.nn.dot_product_attention` wants).
        bias: additive logits bias, broadcastable to [B, N, T, S] (T5's relative position bias).
        mask: True where attention is allowed, broadcastable to [B, N, T, S].
        key_mask: True for the keys that may be attended to (text padding masked out); unlike `mask` it
            keeps a `context_parallel` call sequence-parallel (the schemes take a key padding mask).
        key_lengths: int32 [B]: only the first key_lengths[b] keys may be attended to (trailing padding);
            on one device cuDNN runs it as its padding mask at flash speed (a mask becomes a dense bias).
        is_causal: causal masking (CLIP text).
        scale: logits scale; None means 1/sqrt(H).
        implementation: "cudnn" or "xla"; None picks by platform and dtype.
        context_parallel: this is a DiT's long self-attention: under an active mesh whose `context` axis is
            larger than 1 it runs sequence-parallel (Ulysses or ring, as the active rules say).
        cross_context: this is a DiT's cross-attention from its long sequence to short text/image keys: under
            such a mesh each context shard attends its query rows to all keys
            (`jdiff.parallel.attention.cross_context_attention`).

    Returns:
        [B, T, N, H] in the dtype of q.
    """
    if (context_parallel or cross_context) and bias is None and mask is None and not is_causal:
        active = rules.current()
        if key_lengths is not None and active is not None and sp._context_size(active[0]) > 1:
            key_mask = _lengths_mask(key_lengths, k.shape[1], key_mask)  # the schemes take a key mask
            key_lengths = None
        if active is not None and sp._context_size(active[0]) > 1 and cross_context and key_mask is None:
            mesh, active_rules = active
            return sp.cross_context_attention(
                q, k, v, mesh=mesh, scale=scale, implementation=implementation, rules=active_rules
            )
        if active is not None and sp._context_size(active[0]) > 1:
            mesh, active_rules = active
            return sp.context_attention(
                q,
                k,
                v,
                mesh=mesh,
                mode=rules.sequence_parallel_mode(),
                mask=key_mask,
                scale=scale,
                implementation=implementation,
                rules=active_rules,
            )
    if key_mask is not None:
        keys = key_mask.astype(bool)[:, None, None, :]  # [B, 1, 1, S]
        mask = keys if mask is None else mask & keys
    return local_attention(
        q,
        k,
        v,
        bias=bias,
        mask=mask,
        key_lengths=key_lengths,
        is_causal=is_causal,
        scale=scale,
        implementation=implementation,
    )


def _lengths_mask(key_lengths: jax.Array, s: int, key_mask: jax.Array | None) -> jax.Array:
    keys = jnp.arange(s)[None, :] < key_lengths[:, None]  # [B, S]
    return keys if key_mask is None else keys & key_mask.astype(bool)


__all__ = ["CUDNN_MAX_HEAD_DIM", "SPLASH_BLOCK", "default_implementation", "dot_product_attention"]
