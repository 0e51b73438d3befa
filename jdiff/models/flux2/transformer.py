"""The FLUX.2 transformer (diffusers `Flux2Transformer2DModel`): double-stream blocks, then single-stream blocks.

Axis letters: B batch, S image tokens (the generated image's, then any reference images'), T text tokens,
L = T + S, C latent channels per token, J text width (stacked encoder layers), D model width, N heads,
H head dim, F MLP width.

FLUX.1's structure (jdiff.models.flux) without biases, with SwiGLU MLPs, one set of AdaLN vectors per stream
shared by every block (computed once from the timestep and guidance, not per block), the single blocks' q/k/v
and MLP input fused in one projection (`attn.to_qkv_mlp_proj`), and 4-axis rotary ids (t, h, w, l). The
double blocks' attention is FLUX.1's `JointAttention` without biases.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from jdiff import sharding as sh
from jdiff.kernels.norm_rope import rms_norm_rope
from jdiff.layers import LayerNorm, Linear, RMSNorm, dot_product_attention
from jdiff.layers.embeddings import TimestepEmbedding, timestep_embedding
from jdiff.layers.rounding import rounded
from jdiff.layers.stack import scan, stacked
from jdiff.models.flux.transformer import AdaLayerNormContinuous, JointAttention, _gated, _modulate
from jdiff.models.flux2.config import Flux2Config

Rope = tuple[Float[Array, "l h"], Float[Array, "l h"]]
_TOKENS = (sh.BATCH, sh.LENGTH, sh.ACT_EMBED)


class Flux2Modulation(NamedTuple):
    """The AdaLN vectors of one evaluation, shared by all blocks of a kind; leaves may carry leading step axes
    before the batch (a sampler's whole schedule)."""

    double: jax.Array  # [B, 6D]: double blocks, image stream
    double_context: jax.Array  # [B, 6D]: double blocks, text stream
    single: jax.Array  # [B, 3D]
    out: jax.Array  # [B, 2D]: the final norm's (scale, shift)


class Modulation(nnx.Module):
    """diffusers `Flux2Modulation`: SiLU -> bias-free linear to 3 x `sets` vectors of width D."""

    def __init__(self, dim: int, sets: int, *, rngs: nnx.Rngs):
        self.linear = Linear(dim, 3 * sets * dim, axes=(sh.EMBED, sh.MLP), use_bias=False, rngs=rngs)

    def __call__(self, temb: Float[Array, "b d"]) -> jax.Array:
        return self.linear(jax.nn.silu(temb))


def _swiglu(x: jax.Array) -> jax.Array:
    a, b = jnp.split(x, 2, axis=-1)
    return jax.nn.silu(a) * b


class FeedForward(nnx.Module):
    """diffusers `Flux2FeedForward`: linear_in to 2F, SiLU(first half) * second half, linear_out; no biases."""

    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.linear_in = Linear(dim, 2 * hidden, axes=(sh.EMBED, sh.MLP), use_bias=False, rngs=rngs)
        self.linear_out = Linear(hidden, dim, axes=(sh.MLP, sh.EMBED), use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_out(_swiglu(self.linear_in(x)))


class Flux2TransformerBlock(nnx.Module):
    """diffusers `Flux2TransformerBlock`: image and text streams, joint attention, shared modulation."""

    def __init__(self, cfg: Flux2Config, *, rngs: nnx.Rngs):
        d, eps = cfg.inner_dim, cfg.eps
        self.norm1 = LayerNorm(d, eps=eps, elementwise_affine=False)
        self.norm1_context = LayerNorm(d, eps=eps, elementwise_affine=False)
        self.attn = JointAttention(cfg, joint=True, bias=False, eps=eps, rngs=rngs)
        self.norm2 = LayerNorm(d, eps=eps, elementwise_affine=False)
        self.ff = FeedForward(d, cfg.mlp_hidden_dim, rngs=rngs)
        self.norm2_context = LayerNorm(d, eps=eps, elementwise_affine=False)
        self.ff_context = FeedForward(d, cfg.mlp_hidden_dim, rngs=rngs)

    def __call__(self, carry, mod_img: jax.Array, mod_txt: jax.Array, rope: Rope):
        img, txt = carry  # [B, S, D], [B, T, D]
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod_img, 6, axis=-1)
        c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = jnp.split(mod_txt, 6, axis=-1)
        img_attn, txt_attn = self.attn(
            _modulate(self.norm1(img), shift, scale),
            rope,
            context=_modulate(self.norm1_context(txt), c_shift, c_scale),
        )
        img = img + _gated(gate, img_attn)
        img = img + _gated(gate_mlp, self.ff(_modulate(self.norm2(img), shift_mlp, scale_mlp)))
        txt = txt + _gated(c_gate, txt_attn)
        txt = txt + _gated(
            c_gate_mlp, self.ff_context(_modulate(self.norm2_context(txt), c_shift_mlp, c_scale_mlp))
        )
        return sh.constrain(img, _TOKENS), sh.constrain(txt, _TOKENS)


class ParallelSelfAttention(nnx.Module):
    """diffusers `Flux2ParallelSelfAttention`: one projection to [q; k; v; MLP in], attention and SwiGLU MLP in
    parallel, one projection of [attention; MLP] out."""

    def __init__(self, cfg: Flux2Config, *, rngs: nnx.Rngs):
        d, f, h = cfg.inner_dim, cfg.mlp_hidden_dim, cfg.attention_head_dim
        self.head_dim, self.inner_dim = h, d
        self.to_qkv_mlp_proj = Linear(d, 3 * d + 2 * f, axes=(sh.EMBED, sh.MLP), use_bias=False, rngs=rngs)
        self.norm_q = RMSNorm(h, eps=cfg.eps)
        self.norm_k = RMSNorm(h, eps=cfg.eps)
        self.to_out = Linear(d + f, d, axes=(sh.MLP, sh.EMBED), use_bias=False, rngs=rngs)

    def __call__(self, x: Float[Array, "b l d"], rope: Rope) -> Float[Array, "b l d"]:
        d = self.inner_dim
        y = self.to_qkv_mlp_proj(x)
        q, k, v = (y[..., i * d : (i + 1) * d].reshape(*x.shape[:2], -1, self.head_dim) for i in range(3))
        q = rms_norm_rope(q, self.norm_q.scale[...], *rope, eps=self.norm_q.eps)
        k = rms_norm_rope(k, self.norm_k.scale[...], *rope, eps=self.norm_k.eps)
        out = dot_product_attention(q, k, v, context_parallel=True)
        out = out.reshape(*out.shape[:2], -1)
        return self.to_out(jnp.concatenate([out, _swiglu(y[..., 3 * d :])], axis=-1))


class Flux2SingleTransformerBlock(nnx.Module):
    """diffusers `Flux2SingleTransformerBlock` over the joint [text; image] sequence."""

    def __init__(self, cfg: Flux2Config, *, rngs: nnx.Rngs):
        self.norm = LayerNorm(cfg.inner_dim, eps=cfg.eps, elementwise_affine=False)
        self.attn = ParallelSelfAttention(cfg, rngs=rngs)

    def __call__(self, x: Float[Array, "b l d"], modulation: jax.Array, rope: Rope) -> Float[Array, "b l d"]:
        shift, scale, gate = jnp.split(modulation, 3, axis=-1)
        out = self.attn(_modulate(self.norm(x), shift, scale), rope)
        return sh.constrain(x + _gated(gate, out), _TOKENS)


class TimestepGuidanceEmbed(nnx.Module):
    """diffusers `Flux2TimestepGuidanceEmbeddings`: bias-free timestep (+ guidance) embeddings, summed."""

    def __init__(self, cfg: Flux2Config, *, rngs: nnx.Rngs):
        c, d = cfg.timestep_guidance_channels, cfg.inner_dim
        self.channels = c
        self.timestep_embedder = TimestepEmbedding(c, d, use_bias=False, rngs=rngs)
        self.guidance_embedder = (
            TimestepEmbedding(c, d, use_bias=False, rngs=rngs) if cfg.guidance_embeds else None
        )

    def __call__(self, timestep: jax.Array, guidance: jax.Array | None) -> jax.Array:
        dtype = self.timestep_embedder.linear_1.kernel[...].dtype

        def embed(mlp, t):
            return mlp(timestep_embedding(t, self.channels).astype(dtype))

        temb = embed(self.timestep_embedder, timestep)
        if guidance is not None and self.guidance_embedder is not None:
            temb = temb + embed(self.guidance_embedder, guidance)
        return temb


class Flux2Transformer2DModel(nnx.Module):
    """The FLUX.2 denoiser: packed latent tokens (+ reference tokens) and text features -> velocity per token."""

    def __init__(self, cfg: Flux2Config, *, rngs: nnx.Rngs):
        cfg.validate()
        self.config = cfg
        d = cfg.inner_dim
        self.time_guidance_embed = TimestepGuidanceEmbed(cfg, rngs=rngs)
        self.double_stream_modulation_img = Modulation(d, 2, rngs=rngs)
        self.double_stream_modulation_txt = Modulation(d, 2, rngs=rngs)
        self.single_stream_modulation = Modulation(d, 1, rngs=rngs)
        self.x_embedder = Linear(cfg.in_channels, d, axes=(None, sh.EMBED), use_bias=False, rngs=rngs)
        self.context_embedder = Linear(
            cfg.joint_attention_dim, d, axes=(None, sh.EMBED), use_bias=False, rngs=rngs
        )
        self.transformer_blocks = stacked(lambda r: Flux2TransformerBlock(cfg, rngs=r), cfg.num_layers, rngs)
        self.single_transformer_blocks = stacked(
            lambda r: Flux2SingleTransformerBlock(cfg, rngs=r), cfg.num_single_layers, rngs
        )
        self.norm_out = AdaLayerNormContinuous(d, bias=False, eps=cfg.eps, rngs=rngs)
        self.proj_out = Linear(d, cfg.output_channels, axes=(sh.EMBED, None), use_bias=False, rngs=rngs)

    def __call__(
        self,
        hidden_states: Float[Array, "b s c"],
        encoder_hidden_states: Float[Array, "b t j"],
        timestep: Float[Array, " b"],
        rope: Rope,
        guidance: Float[Array, " b"] | None = None,
    ) -> Float[Array, "b s c"]:
        """One evaluation (diffusers' forward without its KV-cache modes).

        Args:
            hidden_states: packed latent tokens, then any reference images' tokens.
            encoder_hidden_states: the stacked text-encoder layers.
            timestep: sigma in [0, 1] (scaled by 1000 inside, as diffusers does).
            rope: (cos, sin) tables [L, H] for the ids [text ids; image ids] (`jdiff.layers.rope.rope_cos_sin`
                with `rope_theta`).
            guidance: distilled guidance scale (FLUX.2-dev); ignored without a guidance embedding (klein).

        Returns:
            The velocity for every token of `hidden_states` (the caller keeps the generated image's).
        """
        return self.predict(hidden_states, encoder_hidden_states, self.modulation(timestep, guidance), rope)

    def modulation(
        self, timestep: Float[Array, " b"], guidance: Float[Array, " b"] | None = None
    ) -> Flux2Modulation:
        """The AdaLN vectors for these timesteps (rows independent: a sampler passes all steps at once)."""
        if self.time_guidance_embed.guidance_embedder is not None and guidance is None:
            raise ValueError("this FLUX.2 transformer has a guidance embedding: pass `guidance`")
        dtype = self.time_guidance_embed.timestep_embedder.linear_1.kernel[...].dtype

        def scaled(t):  # diffusers' `t.to(hidden_states.dtype) * 1000`, rounded as it rounds
            return rounded(rounded(t, dtype) * 1000, dtype)

        temb = self.time_guidance_embed(scaled(timestep), None if guidance is None else scaled(guidance))
        return Flux2Modulation(
            self.double_stream_modulation_img(temb),
            self.double_stream_modulation_txt(temb),
            self.single_stream_modulation(temb),
            self.norm_out.modulation(temb),
        )

    def predict(
        self,
        hidden_states: Float[Array, "b s c"],
        encoder_hidden_states: Float[Array, "b t j"],
        modulation: Flux2Modulation,
        rope: Rope,
    ) -> Float[Array, "b s c"]:
        """The velocity per token, given the evaluation's `modulation` (see `__call__`)."""
        h = self.embed(hidden_states, encoder_hidden_states)
        return self.output(self.rest_blocks(h, modulation, rope, first=0)[0], modulation)

    # ---- the parts step caching runs apart (jdiff.sampling.step_cache) --------------------------------------

    def embed(
        self, hidden_states: jax.Array, encoder_hidden_states: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """(image, text) tokens entering the first double block."""
        x = self.x_embedder(hidden_states)
        return x, self.context_embedder(encoder_hidden_states.astype(x.dtype))

    def first_block(self, h: tuple[jax.Array, jax.Array], modulation: Flux2Modulation, rope: Rope):
        """The first double block: (image, text) -> (image, text)."""
        m = modulation
        return scan(self.transformer_blocks, h, m.double, m.double_context, rope, layers=slice(0, 1))

    def rest_blocks(self, h: tuple[jax.Array, jax.Array], modulation: Flux2Modulation, rope: Rope, first=1):
        """The double blocks from `first` on (0 in a plain evaluation), then the single blocks: (image, text) in
        and out."""
        m = modulation
        layers = None if first == 0 else slice(first, None)  # all: the plain scan over the stack
        img, txt = scan(self.transformer_blocks, h, m.double, m.double_context, rope, layers=layers)
        t = txt.shape[1]
        joint = scan(self.single_transformer_blocks, jnp.concatenate([txt, img], axis=1), m.single, rope)
        return joint[:, t:], joint[:, :t]

    def output(self, img: jax.Array, modulation: Flux2Modulation) -> jax.Array:
        """The final modulated norm and projection of the image tokens."""
        return self.proj_out(self.norm_out(img, modulation.out))
