"""The T5 encoder (transformers `T5EncoderModel`: FLUX.1's T5-v1.1-XXL text encoder, and original T5) and
the UMT5 encoder (transformers `UMT5EncoderModel`: Wan's UMT5-XXL text encoder), which share this code.

Axis letters: B batch, L sequence (queries), S sequence (keys, = L), D model dim, N heads, H head dim (d_kv),
F feed-forward dim, K relative-position buckets.

Attribute paths mirror the transformers state dict (`shared`, `encoder.block.*.layer.0.SelfAttention.q`,
`encoder.final_layer_norm`, ...), with the blocks stacked on a leading layer axis for a scan over layers.
The relative position bias differs between the two:
  * T5 stores one table in block 0 and shares its output with every layer; it lives beside the stack as
    `encoder.relative_attention_bias`.
  * UMT5 gives every layer its own table; it stays where transformers has it,
    `encoder.block.layer.0.SelfAttention.relative_attention_bias`, stacked with the rest of the block.
Everything else (RMS norms, no 1/sqrt(H) logit scale, the gated feed-forward) is the same.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from jdiff import sharding as sh
from jdiff.layers import Linear, RMSNorm, dot_product_attention
from jdiff.layers.embed import Embed
from jdiff.layers.stack import scan, stacked
from jdiff.models.t5.config import T5Config, UMT5Config

# transformers' ACT2FN entries used by T5 checkpoints; "gelu_new" is the tanh approximation (T5 v1.1, FLUX).
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": partial(jax.nn.gelu, approximate=False),
    "gelu_new": partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": partial(jax.nn.gelu, approximate=True),
    "silu": jax.nn.silu,
}


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional relative-position buckets [L, S], exactly transformers' `_relative_position_bucket`.

    Computed on the host in float32 with the reference's operation order: the log-spaced buckets are
    truncated, so a one-ulp difference at a bucket edge would move a whole offset to another bucket; a host
    table is the same on every backend. It depends only on the request's shape.
    """
    rel = np.arange(length)[None, :] - np.arange(length)[:, None]  # key position - query position
    half = num_buckets // 2
    buckets = (rel > 0).astype(np.int64) * half
    rel = np.abs(rel)
    max_exact = half // 2
    # Offsets below max_exact get a bucket each (np.maximum only keeps log() finite where they are unused);
    # the rest share log-spaced buckets up to max_distance, beyond which all share the last one.
    scaled = np.log(np.maximum(rel, max_exact).astype(np.float32) / np.float32(max_exact))
    scaled = scaled / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
    large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
    return (buckets + np.where(rel < max_exact, rel, large)).astype(np.int32)


def position_bias(table: Embed, buckets: jax.Array) -> jax.Array:
    """The additive logits bias [1, N, L, S] of a [K, N] bucket table for bucket ids [L, S]."""
    return table(buckets).transpose(2, 0, 1)[None]


class T5Attention(nnx.Module):
    """Self-attention without the 1/sqrt(H) logit scale (T5 folds it into the initialisation).

    With `cfg.per_layer_relative_attention_bias` (UMT5) it holds its own [K, N] relative position bias table.
    """

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.num_heads = cfg.num_heads
        self.relative_attention_bias = (
            # [K, N]: small, so replicated.
            Embed(cfg.relative_attention_num_buckets, cfg.num_heads, axes=(None, None), rngs=rngs)
            if cfg.per_layer_relative_attention_bias
            else None
        )
        self.q = Linear(cfg.d_model, cfg.inner_dim, axes=(sh.EMBED, sh.HEADS), use_bias=False, rngs=rngs)
        self.k = Linear(cfg.d_model, cfg.inner_dim, axes=(sh.EMBED, sh.HEADS), use_bias=False, rngs=rngs)
        self.v = Linear(cfg.d_model, cfg.inner_dim, axes=(sh.EMBED, sh.HEADS), use_bias=False, rngs=rngs)
        self.o = Linear(cfg.inner_dim, cfg.d_model, axes=(sh.HEADS, sh.EMBED), use_bias=False, rngs=rngs)

    def __call__(
        self, x: jax.Array, bias: jax.Array | None, buckets: jax.Array, mask: jax.Array | None
    ) -> jax.Array:
        """`bias` [1, N, L, S] is the shared bias (T5); a layer with its own table (UMT5) looks up `buckets`."""
        b, length, _ = x.shape
        if self.relative_attention_bias is not None:
            bias = position_bias(self.relative_attention_bias, buckets)
        # [B, L, N, H] each
        q, k, v = (p(x).reshape(b, length, self.num_heads, -1) for p in (self.q, self.k, self.v))
        out = dot_product_attention(q, k, v, bias=bias, mask=mask, scale=1.0)
        return self.o(out.reshape(b, length, -1))


class T5LayerSelfAttention(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.SelfAttention = T5Attention(cfg, rngs=rngs)
        self.layer_norm = RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon)

    def __call__(
        self, x: jax.Array, bias: jax.Array | None, buckets: jax.Array, mask: jax.Array | None
    ) -> jax.Array:
        return x + self.SelfAttention(self.layer_norm(x), bias, buckets, mask)


class T5DenseActDense(nnx.Module):
    """The feed-forward: wo(act(wi x)), or wo(act(wi_0 x) * wi_1 x) when gated (T5 v1.1)."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.act = cfg.dense_act_fn  # a name: static, hashable graph data
        self.gated = cfg.is_gated_act
        ff_in = partial(Linear, cfg.d_model, cfg.d_ff, axes=(sh.EMBED, sh.MLP), use_bias=False, rngs=rngs)
        if self.gated:
            self.wi_0, self.wi_1 = ff_in(), ff_in()
        else:
            self.wi = ff_in()
        self.wo = Linear(cfg.d_ff, cfg.d_model, axes=(sh.MLP, sh.EMBED), use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.act]
        h = act(self.wi_0(x)) * self.wi_1(x) if self.gated else act(self.wi(x))  # [B, L, F]
        # wo may be kept in float32 (the plan's keep_fp32, after transformers' `_keep_in_fp32_modules`, there
        # because T5 v1.1's wo outputs overflow float16): run it in its own dtype as transformers does, and
        # hand back the activation dtype so the residual stream keeps one dtype through the scan.
        return self.wo(h.astype(self.wo.kernel.dtype)).astype(x.dtype)


class T5LayerFF(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.DenseReluDense = T5DenseActDense(cfg, rngs=rngs)
        self.layer_norm = RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.layer = nnx.List([T5LayerSelfAttention(cfg, rngs=rngs), T5LayerFF(cfg, rngs=rngs)])

    def __call__(
        self, x: jax.Array, bias: jax.Array | None, buckets: jax.Array, mask: jax.Array | None
    ) -> jax.Array:
        x = self.layer[1](self.layer[0](x, bias, buckets, mask))
        return sh.constrain(x, (sh.BATCH, sh.LENGTH, sh.ACT_EMBED))


class T5Stack(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.num_buckets = cfg.relative_attention_num_buckets
        self.max_distance = cfg.relative_attention_max_distance
        self.relative_attention_bias = (
            None  # one table per layer, inside the stacked blocks
            if cfg.per_layer_relative_attention_bias
            # [K, N]: small, so replicated.
            else Embed(self.num_buckets, cfg.num_heads, axes=(None, None), rngs=rngs)
        )
        self.block = stacked(lambda r: T5Block(cfg, rngs=r), cfg.num_layers, rngs)
        self.final_layer_norm = RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon)

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        buckets = jnp.asarray(relative_position_buckets(x.shape[1], self.num_buckets, self.max_distance))
        bias = None  # [1, N, L, S]
        if self.relative_attention_bias is not None:
            # Computed once and shared by every layer, as transformers reuses block 0's bias.
            bias = position_bias(self.relative_attention_bias, buckets)
        return self.final_layer_norm(scan(self.block, x, bias, buckets, mask))


class T5EncoderModel(nnx.Module):
    """transformers `T5EncoderModel`: token ids -> last hidden state."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.shared = Embed(cfg.vocab_size, cfg.d_model, axes=(sh.VOCAB, sh.EMBED), std=1.0, rngs=rngs)
        self.encoder = T5Stack(cfg, rngs=rngs)

    def __call__(
        self,
        input_ids: Int[Array, "b l"],
        attention_mask: Int[Array, "b l"] | Bool[Array, "b l"] | None = None,
    ) -> Float[Array, "b l d"]:
        """Encodes token ids.

        Args:
            input_ids: [B, L] token ids.
            attention_mask: [B, L], nonzero for real tokens and zero for padding; None attends everywhere.
                Padded keys are masked out; padded queries are still computed (as transformers does), so the
                whole output matches the reference.

        Returns:
            [B, L, D] last hidden state, after the final norm, in the embedding's dtype.
        """
        x = sh.constrain(self.shared(input_ids), (sh.BATCH, sh.LENGTH, sh.ACT_EMBED))  # [B, L, D]
        mask = None if attention_mask is None else attention_mask.astype(bool)[:, None, None, :]  # [B,1,1,S]
        return self.encoder(x, mask)


class UMT5EncoderModel(T5EncoderModel):
    """transformers `UMT5EncoderModel` (Wan's text encoder): T5's encoder with a relative position bias table
    in every layer. Built from a `UMT5Config`; same call as `T5EncoderModel`."""

    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
        if not cfg.per_layer_relative_attention_bias:
            raise TypeError(f"UMT5EncoderModel needs a UMT5Config, got {type(cfg).__name__}")
        super().__init__(cfg, rngs=rngs)
