"""The FLUX.1 transformer (diffusers `FluxTransformer2DModel`): double-stream blocks, then single-stream blocks.

Axis letters: B batch, S image tokens, T text tokens, L = T + S joint tokens, C latent channels per token,
J text-encoder width, P pooled-text width, D model width, N heads, H head dim, F MLP width.

Attribute paths mirror diffusers' state dict (`transformer_blocks.attn.to_q` <- `transformer_blocks.{i}.attn.
to_q`), with both block lists stacked for a scan over layers. Text tokens come first in the joint sequence,
as in diffusers; the rotary tables (`rope`) are computed by the caller for the ids [text ids; image ids].

An evaluation is `predict(latents, text, modulation(timestep, pooled, guidance), rope)`: every block's AdaLN
vectors depend on the timestep, the guidance and the pooled text only, so a sampler computes all its steps'
at once, before its loop, and reads each layer's modulation weights once per request rather than once per
step (2.7 ms of each FLUX.1-dev step at 1024^2 on an H100: 6.4 GB of weights read for 57 GEMVs).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from jdiff import sharding as sh
from jdiff.kernels.norm_rope import joint_rms_norm_rope
from jdiff.layers import LayerNorm, Linear, RMSNorm, dot_product_attention
from jdiff.layers.embeddings import TextProjection, TimestepEmbedding, timestep_embedding
from jdiff.layers.rounding import rounded
from jdiff.layers.stack import map_layers, scan, stacked
from jdiff.models.flux.config import FluxConfig

Rope = tuple[Float[Array, "l h"], Float[Array, "l h"]]
_TOKENS = (sh.BATCH, sh.LENGTH, sh.ACT_EMBED)


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """norm(x) * (1 + scale) + shift, in float32 (shift/scale [B, D] broadcast over tokens)."""
    y = x.astype(jnp.float32) * (1 + scale[:, None].astype(jnp.float32)) + shift[:, None].astype(jnp.float32)
    return y.astype(x.dtype)


def _gated(gate: jax.Array, x: jax.Array) -> jax.Array:
    return gate[:, None].astype(x.dtype) * x


def _bias(linear: Linear) -> jax.Array | None:
    return None if linear.bias is None else linear.bias[...]


class FluxModulation(NamedTuple):
    """Every block's AdaLN vectors for one evaluation, [n x D] each (shift, scale, gate...; see the blocks).

    Leaves carry any leading batch axes of the timesteps they come from ([B] for one evaluation, [steps, B]
    for a sampler's whole schedule) after their layer axis.
    """

    double: jax.Array  # [Ld, B, 6D]: the double blocks' image stream
    double_context: jax.Array  # [Ld, B, 6D]: their text stream
    single: jax.Array  # [Ls, B, 3D]
    out: jax.Array  # [B, 2D]: the final norm's (scale, shift)


class AdaLayerNormZero(nnx.Module):
    """SiLU -> linear to `n` modulation vectors of width D, concatenated; the layer norm has no parameters."""

    def __init__(self, dim: int, n: int, *, rngs: nnx.Rngs):
        self.linear = Linear(dim, n * dim, axes=(sh.EMBED, sh.MLP), rngs=rngs)
        self.n = n
        self.norm = LayerNorm(dim, eps=1e-6, elementwise_affine=False)

    def __call__(self, temb: Float[Array, "b d"]) -> Float[Array, "b nd"]:
        return self.linear(jax.nn.silu(temb))


class AdaLayerNormContinuous(nnx.Module):
    """The final norm: SiLU -> linear to (scale, shift) -> modulated parameter-free layer norm.

    Its linear emits (scale, shift) in that order: the original BFL checkpoint stores (shift, scale) and
    diffusers swaps the halves when converting, so a diffusers-format checkpoint needs no swap here.
    """

    def __init__(self, dim: int, *, bias: bool = True, eps: float = 1e-6, rngs: nnx.Rngs):
        self.linear = Linear(dim, 2 * dim, axes=(sh.EMBED, sh.MLP), use_bias=bias, rngs=rngs)
        self.norm = LayerNorm(dim, eps=eps, elementwise_affine=False)

    def modulation(self, temb: jax.Array) -> jax.Array:
        return self.linear(jax.nn.silu(temb))

    def __call__(self, x: jax.Array, modulation: jax.Array) -> jax.Array:
        scale, shift = jnp.split(modulation, 2, axis=-1)
        return _modulate(self.norm(x), shift, scale)


class FeedForward(nnx.Module):
    """diffusers `FeedForward(activation_fn="gelu-approximate")`: `net.0.proj` -> tanh-GELU -> `net.2`."""

    def __init__(self, dim: int, *, gelu_epilogue: bool = True, rngs: nnx.Rngs):
        self.net = nnx.List(
            [
                _GeluProj(dim, 4 * dim, epilogue=gelu_epilogue, rngs=rngs),
                None,
                Linear(4 * dim, dim, axes=(sh.MLP, sh.EMBED), rngs=rngs),
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.net[2](self.net[0](x))


class _GeluProj(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, epilogue: bool, rngs: nnx.Rngs):
        self.proj = Linear(dim, hidden, axes=(sh.EMBED, sh.MLP), bias_epilogue=epilogue, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.gelu(self.proj(x), approximate=True)


class JointAttention(nnx.Module):
    """FLUX attention: q/k/v with per-head RMS QK-norm; the double-stream variant adds the text projections.

    `cfg` needs `inner_dim` and `attention_head_dim` (FLUX.2's config has them too); FLUX.2's double blocks use
    it with `bias=False`.
    """

    def __init__(self, cfg: FluxConfig, *, joint: bool, bias: bool = True, eps: float = 1e-6, rngs: nnx.Rngs):
        d, h = cfg.inner_dim, cfg.attention_head_dim
        self.head_dim = h

        def linear(axes):
            return Linear(d, d, axes=axes, use_bias=bias, rngs=rngs)

        self.to_q = linear((sh.EMBED, sh.HEADS))
        self.to_k = linear((sh.EMBED, sh.HEADS))
        self.to_v = linear((sh.EMBED, sh.HEADS))
        self.norm_q = RMSNorm(h, eps=eps)
        self.norm_k = RMSNorm(h, eps=eps)
        if joint:
            self.add_q_proj = linear((sh.EMBED, sh.HEADS))
            self.add_k_proj = linear((sh.EMBED, sh.HEADS))
            self.add_v_proj = linear((sh.EMBED, sh.HEADS))
            self.norm_added_q = RMSNorm(h, eps=eps)
            self.norm_added_k = RMSNorm(h, eps=eps)
            self.to_out = nnx.List([linear((sh.HEADS, sh.EMBED))])
            self.to_add_out = linear((sh.HEADS, sh.EMBED))

    def _heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], -1, self.head_dim)  # [B, L, N, H]

    def __call__(self, x: Float[Array, "b l d"], rope: Rope, context: jax.Array | None = None) -> jax.Array:
        """Self-attention over `x`, or over [context; x] when `context` (text, [B, T, D]) is given.

        Returns:
            [B, L, D] before any output projection for the single-stream variant; for the double-stream one,
            the projected (image [B, S, D], text [B, T, D]) pair.
        """
        inputs = [x]
        q_mods, k_mods, v_mods = [(self.to_q, self.norm_q)], [(self.to_k, self.norm_k)], [self.to_v]
        if context is not None:  # text first, as the rope tables are laid out
            inputs.insert(0, context)
            q_mods.insert(0, (self.add_q_proj, self.norm_added_q))
            k_mods.insert(0, (self.add_k_proj, self.norm_added_k))
            v_mods.insert(0, self.add_v_proj)

        # The q/k/v matmuls run without their biases, so that on GPU they read a scanned layer's weights in
        # place (jdiff.layers.linear), and no pass of their own adds them. q and k get theirs inside the fused
        # norm + rope pass. With one stream, v's is added to the attention output instead: each softmax row
        # sums to one, so attention(q, k, v + b) = attention(q, k, v) + b, and that add joins the pass after
        # attention. With two streams the bias depends on the key's stream, so it is added before, inside the
        # concatenation of the two streams' v.
        def norm_rope(mods) -> jax.Array:
            """Each stream's bias, RMS norm (its own weights) and the joint rope, one fused pass per stream,
            written straight into the joint sequence."""
            parts = [
                (self._heads(proj.matmul(h)), norm.scale[...], norm.eps, _bias(proj))
                for h, (proj, norm) in zip(inputs, mods, strict=True)
            ]
            return joint_rms_norm_rope(parts, *rope)  # [B, L, N, H]

        q, k = norm_rope(q_mods), norm_rope(k_mods)
        if context is None:
            v = self._heads(self.to_v.matmul(x))
        else:
            v = jnp.concatenate([self._heads(proj(h)) for h, proj in zip(inputs, v_mods, strict=True)], 1)
        out = dot_product_attention(q, k, v, context_parallel=True)
        out = out.reshape(*out.shape[:2], -1)  # [B, L, D]
        if context is None:
            return out if self.to_v.bias is None else out + self.to_v.bias[...].astype(out.dtype)
        t = context.shape[1]
        return self.to_out[0](out[:, t:]), self.to_add_out(out[:, :t])


class DoubleStreamBlock(nnx.Module):
    """diffusers `FluxTransformerBlock`: image and text streams with their own weights, joint attention."""

    def __init__(self, cfg: FluxConfig, *, rngs: nnx.Rngs):
        d = cfg.inner_dim
        self.norm1 = AdaLayerNormZero(d, 6, rngs=rngs)
        self.norm1_context = AdaLayerNormZero(d, 6, rngs=rngs)
        self.attn = JointAttention(cfg, joint=True, rngs=rngs)
        self.norm2 = LayerNorm(d, eps=1e-6, elementwise_affine=False)
        self.ff = FeedForward(d, rngs=rngs)
        self.norm2_context = LayerNorm(d, eps=1e-6, elementwise_affine=False)
        # The text stream's 512 tokens: a separate bias + GELU pass over its small output costs less than
        # copying the 75 MB weight out of the stack for cuBLAS's fused epilogue (jdiff.layers.linear).
        self.ff_context = FeedForward(d, gelu_epilogue=False, rngs=rngs)

    def __call__(self, carry, modulation: tuple[jax.Array, jax.Array], rope: Rope):
        """`modulation`: this block's (norm1, norm1_context) vectors, from `modulation(temb)`."""
        img, txt = carry  # [B, S, D], [B, T, D]
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = jnp.split(modulation[0], 6, axis=-1)
        c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = jnp.split(modulation[1], 6, axis=-1)
        img_attn, txt_attn = self.attn(
            _modulate(self.norm1.norm(img), shift, scale),
            rope,
            context=_modulate(self.norm1_context.norm(txt), c_shift, c_scale),
        )
        img = img + _gated(gate, img_attn)
        img = img + _gated(gate_mlp, self.ff(_modulate(self.norm2(img), shift_mlp, scale_mlp)))
        txt = txt + _gated(c_gate, txt_attn)
        txt = txt + _gated(
            c_gate_mlp, self.ff_context(_modulate(self.norm2_context(txt), c_shift_mlp, c_scale_mlp))
        )
        # Both streams stay split along their sequence over `context` (no-op without a mesh): the text is
        # sharded with its own stream, never duplicated on every context shard.
        return sh.constrain(img, _TOKENS), sh.constrain(txt, _TOKENS)

    def modulation(self, temb: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.norm1(temb), self.norm1_context(temb)


class SingleStreamBlock(nnx.Module):
    """diffusers `FluxSingleTransformerBlock`: one stream over [text; image], attention and MLP in parallel."""

    def __init__(self, cfg: FluxConfig, *, rngs: nnx.Rngs):
        d = cfg.inner_dim
        self.norm = AdaLayerNormZero(d, 3, rngs=rngs)
        self.proj_mlp = Linear(d, 4 * d, axes=(sh.EMBED, sh.MLP), rngs=rngs)
        self.attn = JointAttention(cfg, joint=False, rngs=rngs)
        self.proj_out = Linear(5 * d, d, axes=(sh.MLP, sh.EMBED), rngs=rngs)

    def __call__(self, x: Float[Array, "b l d"], modulation: jax.Array, rope: Rope) -> Float[Array, "b l d"]:
        """`modulation`: this block's vectors, from `modulation(temb)`."""
        shift, scale, gate = jnp.split(modulation, 3, axis=-1)
        h = _modulate(self.norm.norm(x), shift, scale)
        mlp = jax.nn.gelu(self.proj_mlp(h), approximate=True)
        out = self.proj_out(jnp.concatenate([self.attn(h, rope), mlp], axis=-1))
        return sh.constrain(x + _gated(gate, out), _TOKENS)

    def modulation(self, temb: jax.Array) -> jax.Array:
        return self.norm(temb)


class TimeTextEmbed(nnx.Module):
    """diffusers `CombinedTimestep[Guidance]TextProjEmbeddings`: timestep (+ guidance) + pooled text."""

    def __init__(self, cfg: FluxConfig, *, rngs: nnx.Rngs):
        d = cfg.inner_dim
        self.timestep_embedder = TimestepEmbedding(256, d, rngs=rngs)
        self.guidance_embedder = TimestepEmbedding(256, d, rngs=rngs) if cfg.guidance_embeds else None
        self.text_embedder = TextProjection(cfg.pooled_projection_dim, d, act="silu", rngs=rngs)

    def __call__(self, timestep: jax.Array, guidance: jax.Array | None, pooled: jax.Array) -> jax.Array:
        def embed(mlp, t):
            return mlp(timestep_embedding(t, 256).astype(pooled.dtype))

        temb = embed(self.timestep_embedder, timestep)
        if self.guidance_embedder is not None:
            temb = temb + embed(self.guidance_embedder, guidance)
        return temb + self.text_embedder(pooled)


class FluxTransformer2DModel(nnx.Module):
    """The FLUX.1 denoiser: packed latent tokens + text embeddings -> velocity for each latent token."""

    def __init__(self, cfg: FluxConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        d = cfg.inner_dim
        self.time_text_embed = TimeTextEmbed(cfg, rngs=rngs)
        self.context_embedder = Linear(cfg.joint_attention_dim, d, axes=(None, sh.EMBED), rngs=rngs)
        self.x_embedder = Linear(cfg.in_channels, d, axes=(None, sh.EMBED), rngs=rngs)
        self.transformer_blocks = stacked(lambda r: DoubleStreamBlock(cfg, rngs=r), cfg.num_layers, rngs)
        self.single_transformer_blocks = stacked(
            lambda r: SingleStreamBlock(cfg, rngs=r), cfg.num_single_layers, rngs
        )
        self.norm_out = AdaLayerNormContinuous(d, rngs=rngs)
        self.proj_out = Linear(d, cfg.output_channels, axes=(sh.EMBED, None), rngs=rngs)

    def __call__(
        self,
        hidden_states: Float[Array, "b s c"],
        encoder_hidden_states: Float[Array, "b t j"],
        pooled_projections: Float[Array, "b p"],
        timestep: Float[Array, " b"],
        rope: Rope,
        guidance: Float[Array, " b"] | None = None,
    ) -> Float[Array, "b s c"]:
        """One denoiser evaluation: `predict` with this timestep's `modulation`.

        Args:
            hidden_states: packed latent tokens.
            encoder_hidden_states: T5 token embeddings.
            pooled_projections: CLIP pooled embedding.
            timestep: sigma in [0, 1] (scaled by 1000 inside, as diffusers does).
            rope: (cos, sin) tables [L, H] for the ids [text ids; image ids].
            guidance: distilled guidance scale (FLUX.1-dev); ignored when the config has no guidance embedding.

        Returns:
            The predicted velocity per latent token.
        """
        modulation = self.modulation(timestep, pooled_projections, guidance)
        return self.predict(hidden_states, encoder_hidden_states, modulation, rope)

    def modulation(
        self,
        timestep: Float[Array, " b"],
        pooled_projections: Float[Array, "b p"],
        guidance: Float[Array, " b"] | None = None,
    ) -> FluxModulation:
        """Every block's AdaLN vectors for these timesteps (arguments as in `__call__`), in the weights' dtype.

        Rows are independent: a sampler passes all its steps' timesteps at once (the pooled text and guidance
        repeated to match) and reads the modulation weights once.
        """
        dtype = self.x_embedder.kernel[...].dtype

        def scaled(t):  # diffusers' `t.to(hidden_states.dtype) * 1000`, rounded as it rounds
            return rounded(rounded(t, dtype) * 1000, dtype)

        if self.time_text_embed.guidance_embedder is not None and guidance is None:
            raise ValueError("this FLUX transformer has a guidance embedding: pass `guidance`")
        temb = self.time_text_embed(
            scaled(timestep),
            None if guidance is None else scaled(guidance),
            pooled_projections.astype(dtype),
        )
        double, double_context = map_layers(self.transformer_blocks, lambda b: b.modulation(temb))
        single = map_layers(self.single_transformer_blocks, lambda b: b.modulation(temb))
        return FluxModulation(double, double_context, single, self.norm_out.modulation(temb))

    def predict(
        self,
        hidden_states: Float[Array, "b s c"],
        encoder_hidden_states: Float[Array, "b t j"],
        modulation: FluxModulation,
        rope: Rope,
    ) -> Float[Array, "b s c"]:
        """The velocity per latent token, given the evaluation's `modulation` (see `__call__`)."""
        img, txt = self.embed(hidden_states, encoder_hidden_states)
        m = modulation
        img, txt = scan(self.transformer_blocks, (img, txt), rope, per_layer=(m.double, m.double_context))
        return self.output(self._single(img, txt, m, rope)[0], m)

    # ---- the parts step caching runs apart (jdiff.sampling.step_cache) --------------------------------------

    def embed(
        self, hidden_states: Float[Array, "b s c"], encoder_hidden_states: Float[Array, "b t j"]
    ) -> tuple[Float[Array, "b s d"], Float[Array, "b t d"]]:
        """(image, text) tokens entering the first double block."""
        x = self.x_embedder(hidden_states)
        return x, self.context_embedder(encoder_hidden_states.astype(x.dtype))

    def first_block(self, h: tuple[jax.Array, jax.Array], modulation: FluxModulation, rope: Rope):
        """The first double block: (image, text) -> (image, text)."""
        m = modulation
        return scan(
            self.transformer_blocks, h, rope, per_layer=(m.double, m.double_context), layers=slice(0, 1)
        )

    def rest_blocks(self, h: tuple[jax.Array, jax.Array], modulation: FluxModulation, rope: Rope):
        """Every block after the first (the other double blocks, then the single blocks): (image, text) in and
        out, the joint sequence split again into its streams."""
        m = modulation
        h = scan(
            self.transformer_blocks, h, rope, per_layer=(m.double, m.double_context), layers=slice(1, None)
        )
        img, txt = self._single(*h, m, rope)
        return img, txt

    def first_modulated(
        self, img: Float[Array, "b s d"], modulation: FluxModulation
    ) -> Float[Array, "b s d"]:
        """The first double block's modulated image input (TeaCache's signal: its `norm1(hidden_states, temb)`)."""
        shift, scale = jnp.split(modulation.double[0], 6, axis=-1)[:2]
        return _modulate(self.transformer_blocks.norm1.norm(img), shift, scale)

    def output(self, img: Float[Array, "b s d"], modulation: FluxModulation) -> Float[Array, "b s c"]:
        """The final modulated norm and projection of the image tokens."""
        return self.proj_out(self.norm_out(img, modulation.out))

    def _single(self, img, txt, m: FluxModulation, rope: Rope):
        t = txt.shape[1]
        joint = scan(
            self.single_transformer_blocks, jnp.concatenate([txt, img], axis=1), rope, per_layer=m.single
        )
        return joint[:, t:], joint[:, :t]
