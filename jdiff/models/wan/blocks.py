"""Wan transformer blocks: RMS-QK-normed self-attention with 3-D rope, cross-attention, tanh-GELU FFN.

Axis letters: B batch, L latent tokens, T text tokens, I image tokens, D model width (= N x H), N heads,
H head dim, F FFN width, S 1 or L (one timestep per sample, or one per token for Wan2.2 TI2V).

Attribute paths mirror diffusers' `WanTransformerBlock` (`attn1.to_q`, `attn2.add_k_proj`, `ffn.net.0.proj`,
`scale_shift_table`, ...). The AdaLN modulation, the norms and the gated residual adds run in float32 as in
diffusers (`FP32LayerNorm`, `temb.float()`); everything else runs in the parameters' dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from jdiff import sharding as sh
from jdiff.kernels.norm_rope import rms_norm_rope
from jdiff.layers import LayerNorm, Linear, RMSNorm, dot_product_attention
from jdiff.models.wan.config import WanTransformerConfig

Rope = tuple[Float[Array, "l h"], Float[Array, "l h"]]


def table_param(rngs: nnx.Rngs, shape: tuple[int, ...]) -> nnx.Param:
    """A modulation table initialised as diffusers does (randn / sqrt(D)); replicated (it is tiny)."""
    value = jax.random.normal(rngs.params(), shape, jnp.float32) / shape[-1] ** 0.5
    return nnx.Param(value, out_sharding=(None,) * (len(shape) - 1) + (sh.NORM,), eager_sharding=False)


class _GeluProj(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, approximate: bool, rngs: nnx.Rngs):
        self.proj = Linear(dim, hidden, axes=(sh.EMBED, sh.MLP), bias_epilogue=True, rngs=rngs)
        self.approximate = approximate

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nnx.Module):
    """diffusers `FeedForward` with a GELU input projection: `net.0.proj` -> GELU -> `net.2`."""

    def __init__(self, dim: int, hidden: int, dim_out: int, *, approximate: bool, rngs: nnx.Rngs):
        self.net = nnx.List(
            [
                _GeluProj(dim, hidden, approximate=approximate, rngs=rngs),
                None,  # dropout
                Linear(hidden, dim_out, axes=(sh.MLP, sh.EMBED), rngs=rngs),
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.net[2](self.net[0](x))


class WanAttention(nnx.Module):
    """diffusers `WanAttention`: q/k/v, RMS norm of q and k over all heads, optional image k/v (I2V)."""

    def __init__(self, cfg: WanTransformerConfig, *, image_kv: bool, rngs: nnx.Rngs):
        d = cfg.inner_dim
        self.head_dim = cfg.attention_head_dim
        self.to_q = Linear(d, d, axes=(sh.EMBED, sh.HEADS), bias_epilogue=True, rngs=rngs)
        self.to_k = Linear(d, d, axes=(sh.EMBED, sh.HEADS), bias_epilogue=True, rngs=rngs)
        self.to_v = Linear(d, d, axes=(sh.EMBED, sh.HEADS), bias_epilogue=True, rngs=rngs)
        self.to_out = nnx.List([Linear(d, d, axes=(sh.HEADS, sh.EMBED), rngs=rngs)])
        self.norm_q = RMSNorm(d, eps=cfg.eps)
        self.norm_k = RMSNorm(d, eps=cfg.eps)
        if image_kv:
            self.add_k_proj = Linear(cfg.added_kv_proj_dim, d, axes=(sh.EMBED, sh.HEADS), rngs=rngs)
            self.add_v_proj = Linear(cfg.added_kv_proj_dim, d, axes=(sh.EMBED, sh.HEADS), rngs=rngs)
            self.norm_added_k = RMSNorm(d, eps=cfg.eps)

    def _heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], -1, self.head_dim)  # [B, *, N, H]

    def __call__(
        self,
        x: Float[Array, "b l d"],
        *,
        rope: Rope | None = None,
        context: Float[Array, "b t d"] | None = None,
        image: Float[Array, "b i d"] | None = None,
    ) -> Float[Array, "b l d"]:
        """Self-attention with rope (context None), or cross-attention to text (+ image) without rope.

        The query attends to the text and the image tokens separately and the two outputs are summed (not one
        softmax over both), as diffusers and the original Wan do.
        """
        kv_in = x if context is None else context
        if rope is not None:  # self-attention: norm (over all heads) and rope in one fused pass each
            q, k = (
                rms_norm_rope(self._heads(proj(x)), norm.scale[...], *rope, eps=norm.eps, across_heads=True)
                for proj, norm in ((self.to_q, self.norm_q), (self.to_k, self.norm_k))
            )  # [B, L, N, H]
        else:
            q = self._heads(self.norm_q(self.to_q(x)))
            k = self._heads(self.norm_k(self.to_k(kv_in)))
        v = self._heads(self.to_v(kv_in))
        out = dot_product_attention(
            q, k, v, context_parallel=context is None, cross_context=context is not None
        )
        if image is not None:
            k_img = self._heads(self.norm_added_k(self.add_k_proj(image)))
            v_img = self._heads(self.add_v_proj(image))
            out = out + dot_product_attention(q, k_img, v_img, cross_context=True)
        return self.to_out[0](out.reshape(*out.shape[:2], -1))


class WanTransformerBlock(nnx.Module):
    """diffusers `WanTransformerBlock`: modulated self-attention, cross-attention, modulated FFN."""

    def __init__(self, cfg: WanTransformerConfig, *, rngs: nnx.Rngs):
        d = cfg.inner_dim
        self.norm1 = LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.attn1 = WanAttention(cfg, image_kv=False, rngs=rngs)
        self.attn2 = WanAttention(cfg, image_kv=cfg.added_kv_proj_dim is not None, rngs=rngs)
        self.norm2 = LayerNorm(d, eps=cfg.eps) if cfg.cross_attn_norm else None
        self.ffn = FeedForward(d, cfg.ffn_dim, d, approximate=True, rngs=rngs)
        self.norm3 = LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.scale_shift_table = table_param(rngs, (1, 6, d))

    def __call__(
        self,
        x: Float[Array, "b l d"],
        context: Float[Array, "b t d"],
        image: Float[Array, "b i d"] | None,
        temb_proj: Float[Array, "b s 6 d"],
        rope: Rope,
    ) -> Float[Array, "b l d"]:
        dtype = x.dtype
        # [1, 1, 6, D] + [B, S, 6, D] in float32; each vector [B, S, D] broadcasts over the L tokens.
        mod = self.scale_shift_table[...][None] + temb_proj.astype(jnp.float32)
        shift, scale, gate, c_shift, c_scale, c_gate = (mod[:, :, i] for i in range(6))

        def modulate(norm: LayerNorm, h: jax.Array, sh_: jax.Array, sc: jax.Array) -> jax.Array:
            return (norm(h.astype(jnp.float32)) * (1 + sc) + sh_).astype(dtype)

        attn = self.attn1(modulate(self.norm1, x, shift, scale), rope=rope)
        x = (x.astype(jnp.float32) + attn * gate).astype(dtype)
        h = x if self.norm2 is None else self.norm2(x.astype(jnp.float32)).astype(dtype)
        x = x + self.attn2(h, context=context, image=image)
        ff = self.ffn(modulate(self.norm3, x, c_shift, c_scale))
        x = (x.astype(jnp.float32) + ff.astype(jnp.float32) * c_gate).astype(dtype)
        return sh.constrain(x, (sh.BATCH, sh.LENGTH, sh.ACT_EMBED))
