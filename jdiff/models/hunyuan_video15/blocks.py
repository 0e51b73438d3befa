"""HunyuanVideo-1.5 blocks: the text token refiner, the glyph and image projections, the dual-stream block.

Axis letters: B batch, S video tokens, T condition tokens (image + glyph + text), L = S + T, J text-encoder
width, D model width (= N x H), N heads, H head dim, F FFN width.

Attribute paths mirror diffusers' `transformer_hunyuan_video15.py` (`context_embedder.token_refiner.
refiner_blocks.{i}.attn.to_q`, `transformer_blocks.{i}.attn.add_q_proj`, `norm1.linear`, ...).

Masking: diffusers masks with mask_i & mask_j (padded queries see nothing, padded keys are seen by nobody).
Only the key half reaches the video tokens and the real text tokens: a padded query's output stays in its own
row, and that row is never attended to. So here only keys are masked: the joint attention takes the real
condition tokens first (the transformer gathers them there, as diffusers does) and the padding as key
lengths (cuDNN's padding mask at flash speed; on the sequence-parallel path a key mask); the padded rows'
(finite) values are never read.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from jdiff import sharding as sh
from jdiff.kernels.norm_rope import joint_rms_norm_rope
from jdiff.layers import LayerNorm, Linear, RMSNorm, dot_product_attention
from jdiff.layers.embeddings import TextProjection, TimestepEmbedding, timestep_embedding
from jdiff.layers.stack import scan, stacked
from jdiff.models.flux.transformer import AdaLayerNormZero, _gated, _modulate
from jdiff.models.hunyuan_video15.config import HunyuanVideo15Config
from jdiff.models.wan.blocks import FeedForward

Rope = tuple[Float[Array, "l h"], Float[Array, "l h"]]
_TOKENS = (sh.BATCH, sh.LENGTH, sh.ACT_EMBED)


def _heads(x: jax.Array, head_dim: int) -> jax.Array:
    return x.reshape(*x.shape[:-1], -1, head_dim)  # [B, L, N, H]


class _SiluProj(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.proj = Linear(dim, hidden, axes=(sh.EMBED, sh.MLP), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.silu(self.proj(x))


class SiluFeedForward(nnx.Module):
    """diffusers `FeedForward(activation_fn="linear-silu")`: `net.0.proj` -> SiLU -> `net.2`."""

    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.net = nnx.List([_SiluProj(dim, hidden, rngs=rngs), None, Linear(hidden, dim, rngs=rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.net[2](self.net[0](x))


class SelfAttention(nnx.Module):
    """diffusers `Attention` with the default processor: q/k/v with biases, no QK norm, `to_out.0`."""

    def __init__(self, dim: int, head_dim: int, *, rngs: nnx.Rngs):
        self.head_dim = head_dim
        self.to_q = Linear(dim, dim, axes=(sh.EMBED, sh.HEADS), rngs=rngs)
        self.to_k = Linear(dim, dim, axes=(sh.EMBED, sh.HEADS), rngs=rngs)
        self.to_v = Linear(dim, dim, axes=(sh.EMBED, sh.HEADS), rngs=rngs)
        self.to_out = nnx.List([Linear(dim, dim, axes=(sh.HEADS, sh.EMBED), rngs=rngs)])

    def __call__(self, x: Float[Array, "b t d"], mask: Bool[Array, "b t"]) -> Float[Array, "b t d"]:
        q, k, v = (_heads(p(x), self.head_dim) for p in (self.to_q, self.to_k, self.to_v))
        out = dot_product_attention(q, k, v, key_mask=mask)
        return self.to_out[0](out.reshape(*out.shape[:2], -1))


class RefinerBlock(nnx.Module):
    """diffusers `HunyuanVideo15IndividualTokenRefinerBlock`: gated self-attention and SiLU MLP over the text."""

    def __init__(self, cfg: HunyuanVideo15Config, *, rngs: nnx.Rngs):
        d = cfg.inner_dim
        self.norm1 = LayerNorm(d, eps=1e-6)
        self.attn = SelfAttention(d, cfg.attention_head_dim, rngs=rngs)
        self.norm2 = LayerNorm(d, eps=1e-6)
        self.ff = SiluFeedForward(d, cfg.mlp_dim, rngs=rngs)
        self.norm_out = AdaLayerNormZero(d, 2, rngs=rngs)  # its `linear` only: (gate_msa, gate_mlp)

    def __call__(self, x: Float[Array, "b t d"], temb: Float[Array, "b d"], mask: Bool[Array, "b t"]):
        gate_msa, gate_mlp = jnp.split(self.norm_out(temb), 2, axis=-1)
        x = x + _gated(gate_msa, self.attn(self.norm1(x), mask))
        return x + _gated(gate_mlp, self.ff(self.norm2(x)))


class _Refiner(nnx.Module):
    def __init__(self, cfg: HunyuanVideo15Config, *, rngs: nnx.Rngs):
        self.refiner_blocks = stacked(lambda r: RefinerBlock(cfg, rngs=r), cfg.num_refiner_layers, rngs)


class _TimeTextEmbed(nnx.Module):
    """diffusers `CombinedTimestepTextProjEmbeddings`: timestep MLP + pooled-text MLP."""

    def __init__(self, cfg: HunyuanVideo15Config, *, rngs: nnx.Rngs):
        self.timestep_embedder = TimestepEmbedding(256, cfg.inner_dim, rngs=rngs)
        self.text_embedder = TextProjection(cfg.text_embed_dim, cfg.inner_dim, act="silu", rngs=rngs)

    def __call__(self, timestep: Float[Array, " b"], pooled: Float[Array, "b j"]) -> Float[Array, "b d"]:
        freq = timestep_embedding(timestep, 256).astype(pooled.dtype)
        return self.timestep_embedder(freq) + self.text_embedder(pooled)


class TokenRefiner(nnx.Module):
    """diffusers `HunyuanVideo15TokenRefiner`: the Qwen2.5-VL features, refined under the timestep and their
    masked mean."""

    def __init__(self, cfg: HunyuanVideo15Config, *, rngs: nnx.Rngs):
        self.time_text_embed = _TimeTextEmbed(cfg, rngs=rngs)
        self.proj_in = Linear(cfg.text_embed_dim, cfg.inner_dim, axes=(None, sh.EMBED), rngs=rngs)
        self.token_refiner = _Refiner(cfg, rngs=rngs)

    def __call__(
        self, x: Float[Array, "b t j"], timestep: Float[Array, " b"], mask: Bool[Array, "b t"]
    ) -> Float[Array, "b t d"]:
        m = mask.astype(jnp.float32)[..., None]
        pooled = (x.astype(jnp.float32) * m).sum(1) / m.sum(1)  # [B, J]
        temb = self.time_text_embed(timestep, pooled.astype(x.dtype))
        return scan(self.token_refiner.refiner_blocks, self.proj_in(x), temb, mask)


class ByT5TextProjection(nnx.Module):
    """diffusers `HunyuanVideo15ByT5TextProjection`: LayerNorm -> (linear, GELU) x 2 -> linear, glyph features."""

    def __init__(self, in_features: int, hidden: int, out_features: int, *, rngs: nnx.Rngs):
        self.norm = LayerNorm(in_features, eps=1e-5)
        self.linear_1 = Linear(in_features, hidden, axes=(None, sh.MLP), rngs=rngs)
        self.linear_2 = Linear(hidden, hidden, axes=(sh.MLP, sh.MLP), rngs=rngs)
        self.linear_3 = Linear(hidden, out_features, axes=(sh.MLP, sh.EMBED), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.gelu(self.linear_1(self.norm(x)), approximate=False)
        return self.linear_3(jax.nn.gelu(self.linear_2(h), approximate=False))


class ImageProjection(nnx.Module):
    """diffusers `HunyuanVideo15ImageProjection`: LayerNorm -> linear -> GELU -> linear -> LayerNorm (SigLIP
    image features of the first frame, image-to-video)."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        self.norm_in = LayerNorm(in_features, eps=1e-5)
        self.linear_1 = Linear(in_features, in_features, axes=(None, sh.MLP), rngs=rngs)
        self.linear_2 = Linear(in_features, out_features, axes=(sh.MLP, sh.EMBED), rngs=rngs)
        self.norm_out = LayerNorm(out_features, eps=1e-5)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.gelu(self.linear_1(self.norm_in(x)), approximate=False)
        return self.norm_out(self.linear_2(h))


class JointAttention(nnx.Module):
    """The dual-stream attention: video q/k/v (RMS QK-norm per head, rope) and condition q/k/v (RMS QK-norm)
    attend jointly over [video; condition]."""

    def __init__(self, cfg: HunyuanVideo15Config, *, rngs: nnx.Rngs):
        d, h = cfg.inner_dim, cfg.attention_head_dim
        self.head_dim = h

        def linear(axes):
            return Linear(d, d, axes=axes, rngs=rngs)

        self.to_q, self.to_k, self.to_v = (linear((sh.EMBED, sh.HEADS)) for _ in range(3))
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (linear((sh.EMBED, sh.HEADS)) for _ in range(3))
        self.norm_q, self.norm_k = RMSNorm(h, eps=1e-6), RMSNorm(h, eps=1e-6)
        self.norm_added_q, self.norm_added_k = RMSNorm(h, eps=1e-6), RMSNorm(h, eps=1e-6)
        self.to_out = nnx.List([linear((sh.HEADS, sh.EMBED))])
        self.to_add_out = linear((sh.HEADS, sh.EMBED))

    def __call__(
        self,
        x: Float[Array, "b s d"],
        context: Float[Array, "b t d"],
        rope: Rope,
        key_lengths: Int[Array, " b"],
    ) -> tuple[Float[Array, "b s d"], Float[Array, "b t d"]]:
        """`rope`: tables [L, H] over the joint sequence (identity rows for the condition tokens);
        `key_lengths`: S + each sample's real condition tokens, which come first."""

        # As in FLUX (jdiff.models.flux.transformer): the q/k biases join the fused norm + rope pass, which
        # writes both streams straight into the joint sequence.
        def norm_rope(pairs) -> jax.Array:
            parts = [
                (_heads(proj.matmul(h), self.head_dim), norm.scale[...], norm.eps, proj.bias[...])
                for h, (proj, norm) in zip((x, context), pairs, strict=True)
            ]
            return joint_rms_norm_rope(parts, *rope)  # [B, L, N, H]

        q = norm_rope(((self.to_q, self.norm_q), (self.add_q_proj, self.norm_added_q)))
        k = norm_rope(((self.to_k, self.norm_k), (self.add_k_proj, self.norm_added_k)))
        v = jnp.concatenate(
            [_heads(self.to_v(x), self.head_dim), _heads(self.add_v_proj(context), self.head_dim)], 1
        )
        out = dot_product_attention(q, k, v, key_lengths=key_lengths, context_parallel=True)
        out = out.reshape(*out.shape[:2], -1)  # [B, L, D]
        s = x.shape[1]
        return self.to_out[0](out[:, :s]), self.to_add_out(out[:, s:])


class TransformerBlock(nnx.Module):
    """diffusers `HunyuanVideo15TransformerBlock`: video and condition streams, each with its own AdaLN-Zero
    modulation and tanh-GELU FFN, one joint attention."""

    def __init__(self, cfg: HunyuanVideo15Config, *, rngs: nnx.Rngs):
        d = cfg.inner_dim
        self.norm1 = AdaLayerNormZero(d, 6, rngs=rngs)
        self.norm1_context = AdaLayerNormZero(d, 6, rngs=rngs)
        self.attn = JointAttention(cfg, rngs=rngs)
        self.norm2 = LayerNorm(d, eps=1e-6, elementwise_affine=False)
        self.ff = FeedForward(d, cfg.mlp_dim, d, approximate=True, rngs=rngs)
        self.norm2_context = LayerNorm(d, eps=1e-6, elementwise_affine=False)
        self.ff_context = FeedForward(d, cfg.mlp_dim, d, approximate=True, rngs=rngs)

    def modulation(self, temb: Float[Array, "b d"]) -> tuple[jax.Array, jax.Array]:
        """(video, condition) AdaLN vectors [B, 6D] each: they depend on the timestep only."""
        return self.norm1(temb), self.norm1_context(temb)

    def __call__(
        self, carry, modulation: tuple[jax.Array, jax.Array], rope: Rope, key_lengths: Int[Array, " b"]
    ):
        x, ctx = carry  # [B, S, D], [B, T, D]
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = jnp.split(modulation[0], 6, axis=-1)
        c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = jnp.split(modulation[1], 6, axis=-1)
        x_attn, ctx_attn = self.attn(
            _modulate(self.norm1.norm(x), shift, scale),
            _modulate(self.norm1_context.norm(ctx), c_shift, c_scale),
            rope,
            key_lengths,
        )
        x = x + _gated(gate, x_attn)
        ctx = ctx + _gated(c_gate, ctx_attn)
        x = x + _gated(gate_mlp, self.ff(_modulate(self.norm2(x), shift_mlp, scale_mlp)))
        ctx = ctx + _gated(
            c_gate_mlp, self.ff_context(_modulate(self.norm2_context(ctx), c_shift_mlp, c_scale_mlp))
        )
        return sh.constrain(x, _TOKENS), sh.constrain(ctx, _TOKENS)
