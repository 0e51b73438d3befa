"""Attention on one device (or one shard): the backend chosen by platform, dtype and head size.

Axis letters: B batch, T query length, S key length, N heads, H head dim.

Backends:
  * "cudnn": fused flash attention through `jax.nn.dot_product_attention` on NVIDIA GPUs, for bfloat16 and
    float16 (cuDNN has no float32 kernel). At video lengths it is the only usable path: XLA's attention
    materialises the [B, N, T, S] logits.
  * "xla": the reference path everywhere else (CPU, float32 on GPU), softmax statistics in float32.
  * "splash": the Pallas splash-attention kernel on TPU (block sizes `SPLASH_BLOCK`), the default there.
    Requested on another platform it runs in Pallas interpret mode: slow, for testing only.

`jdiff.layers.attention` (which the models call) and `jdiff.parallel.attention` (the per-shard work of
sequence-parallel attention) both run their local attention here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

# Splash block sizes (query, key/value): multiples of 128 on TPU; 512 suits v4/v5 at the lengths DiTs use.
SPLASH_BLOCK = (512, 512)


# cuDNN's fused attention takes head dims that are multiples of 8 up to 128 on every NVIDIA generation (256 on
# Hopper); the DiTs here use 128. The VAEs' single-head mid-block attention (512 channels in FLUX's, up to
# 1024 in Wan's) is wider and runs on XLA, whose [L, L] logits stay small at VAE resolutions.
CUDNN_MAX_HEAD_DIM = 128


def default_implementation(dtype, head_dim: int = 128) -> str:
    platform = jax.default_backend()
    cudnn_shape = head_dim <= CUDNN_MAX_HEAD_DIM and head_dim % 8 == 0
    if platform in ("gpu", "cuda") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and cudnn_shape:
        return "cudnn"
    if platform == "tpu":
        return "splash"
    return "xla"


def local_attention(
    q: Float[Array, "b t n h"],
    k: Float[Array, "b s n h"],
    v: Float[Array, "b s n h"],
    *,
    bias: Float[Array, "b n t s"] | None = None,
    mask: Bool[Array, "b n t s"] | None = None,
    key_lengths: Int[Array, " b"] | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    implementation: str | None = None,
) -> Float[Array, "b t n h"]:
    """Softmax(q k^T * scale + bias, masked) v on this device, with torch SDPA's defaults (scale = 1/sqrt(H)).

    Args:
        q, k, v: [B, T|S, N, H] (sequence before heads, as `jax.nn.dot_product_attention` wants).
        bias: additive logits bias, broadcastable to [B, N, T, S] (T5's relative position bias).
        mask: True where attention is allowed, broadcastable to [B, N, T, S].
        key_lengths: int32 [B]: each row attends to its first key_lengths[b] keys only (trailing padding).
            cuDNN runs it as its padding mask at full flash speed, where a `mask` becomes a dense bias.
        is_causal: causal masking (CLIP text).
        scale: logits scale; None means 1/sqrt(H).
        implementation: "cudnn", "xla" or "splash"; None picks by platform, dtype and head size.

    Returns:
        [B, T, N, H] in the dtype of q.
    """
    impl = implementation or default_implementation(q.dtype, q.shape[-1])
    if impl == "cudnn" and bias is not None:
        # cuDNN takes a bias, but only in the activation dtype; T5's bias is small and runs once per prompt.
        impl = "xla"
    if impl == "splash" and (bias is not None or mask is not None or key_lengths is not None or is_causal):
        impl = "xla"  # the encoders' masked / biased attention is short; splash serves the DiTs
    if key_lengths is not None and impl == "xla":
        keys = (jnp.arange(k.shape[1])[None, :] < key_lengths[:, None])[:, None, None, :]  # [B, 1, 1, S]
        mask = keys if mask is None else mask & keys
        key_lengths = None
    if impl == "xla":
        return _xla_attention(q, k, v, bias=bias, mask=mask, is_causal=is_causal, scale=scale)
    if impl == "splash":
        return _splash_attention(q, k, v, scale=scale)
    if mask is not None:
        mask = cudnn_mask(mask, q.shape[1])
    if key_lengths is not None:
        key_lengths = key_lengths.astype(jnp.int32)
    return jax.nn.dot_product_attention(
        q,
        k,
        v,
        bias=bias,
        mask=mask,
        is_causal=is_causal,
        scale=scale,
        key_value_seq_lengths=key_lengths,
        implementation=impl,
    )


def cudnn_mask(mask: Bool[Array, "b n t s"], t: int) -> Bool[Array, "b n t s"]:
    """`mask` with its query axis spelled out to `t`: cuDNN takes a mask (as a bias) only with both sequence
    lengths in full, where XLA broadcasts a key-only [B, 1, 1, S] mask (the DiTs' text padding)."""
    if mask.ndim == 4 and mask.shape[-2] == 1 and t != 1:
        return jnp.broadcast_to(mask, (*mask.shape[:2], t, mask.shape[-1]))
    return mask


def _xla_attention(q, k, v, *, bias, mask, is_causal, scale):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if is_causal:
        t, s = logits.shape[-2:]
        mask = jnp.tril(jnp.ones((t, s), bool)) if mask is None else mask & jnp.tril(jnp.ones((t, s), bool))
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bnts,bsnh->btnh", probs, v)


def _splash_attention(q, k, v, *, scale, block: tuple[int, int] | None = None):
    """Splash attention over [B, T, N, H]: sequences padded to the block sizes, padding masked by segment ids."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    bq, bkv = block or SPLASH_BLOCK
    _, t, n, h = q.shape
    s = k.shape[1]
    bq, bkv = min(bq, _round_up(t, 128)), min(bkv, _round_up(s, 128))
    tp, sp = _round_up(t, bq), _round_up(s, bkv)
    scale = h**-0.5 if scale is None else scale
    qp = jnp.pad(q * jnp.asarray(scale, q.dtype), ((0, 0), (0, tp - t), (0, 0), (0, 0)))
    kp = jnp.pad(k, ((0, 0), (0, sp - s), (0, 0), (0, 0)))
    vp = jnp.pad(v, ((0, 0), (0, sp - s), (0, 0), (0, 0)))
    sizes = sk.BlockSizes(
        block_q=bq,
        block_kv=bkv,
        block_kv_compute=bkv,
        block_q_dkv=bq,
        block_kv_dkv=bkv,
        block_kv_dkv_compute=bkv,
        block_q_dq=bq,
        block_kv_dq=bkv,
    )
    kernel = sk.make_splash_mha(
        sm.MultiHeadMask([sm.FullMask((tp, sp)) for _ in range(n)]),
        block_sizes=sizes,
        head_shards=1,
        q_seq_shards=1,
        interpret=jax.default_backend() != "tpu",
    )
    # Padded keys sit in segment 1, real tokens in segment 0: real queries never see padding.
    segments = sk.SegmentIds(
        q=(jnp.arange(tp) >= t).astype(jnp.int32), kv=(jnp.arange(sp) >= s).astype(jnp.int32)
    )
    out = jax.vmap(lambda a, b_, c: kernel(a, b_, c, segment_ids=segments))(
        qp.transpose(0, 2, 1, 3), kp.transpose(0, 2, 1, 3), vp.transpose(0, 2, 1, 3)
    )  # [B, N, Tp, H]
    return out.transpose(0, 2, 1, 3)[:, :t].astype(q.dtype)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m
