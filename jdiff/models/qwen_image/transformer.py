"""The Qwen-Image transformer (diffusers `QwenImageTransformer2DModel`): 60 dual-stream MMDiT blocks.

Axis letters: B batch, S image tokens (the noise latents' S0, then any conditioning images'), T text tokens,
L = T + S joint tokens, C latent channels per token, J text-encoder width, D model width, N heads, H head dim.

Attribute paths mirror diffusers' state dict, with the block list stacked for a scan over layers
(`transformer_blocks.attn.to_q` <- `transformer_blocks.{i}.attn.to_q`). Each block has an image and a text
stream with their own weights (AdaLN modulation, q/k/v, MLP) attending jointly over [image; text]: image
first, where diffusers puts the text first (attention does not depend on the order of its tokens, and the
rotary tables `jdiff.models.qwen_image.rope` follow the same order), so text padding is trailing.

Unlike FLUX there are no single-stream blocks, no pooled text and no guidance embedding; the text goes
through an RMS norm before its projection; every block's modulation depends on the timestep only, so (as for
FLUX) `modulation` computes it for all of a sampler's steps before its loop and `predict` reads it.

Text padding (several prompts of different lengths in one batch, e.g. true CFG's [negative; positive]) is
trailing, so attention takes it as key lengths (S + each prompt's real tokens): padded text keys are never
attended to, so each prompt's tokens see what an unpadded run sees, and cuDNN runs it as its padding mask at
flash speed (a boolean mask becomes a dense bias: 50 true-CFG steps at 1024^2 took 16.2 s that way on an H200,
12.0 s with key lengths).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from jdiff import sharding as sh
from jdiff.kernels.norm_rope import joint_rms_norm_rope
from jdiff.layers import LayerNorm, Linear, RMSNorm, dot_product_attention
from jdiff.layers.embeddings import TimestepEmbedding, timestep_embedding
from jdiff.layers.rounding import rounded
from jdiff.layers.stack import map_layers, scan, stacked
from jdiff.models.flux.transformer import AdaLayerNormContinuous, FeedForward
from jdiff.models.qwen_image.config import QwenImageConfig

Rope = tuple[Float[Array, "l h"], Float[Array, "l h"]]
_TOKENS = (sh.BATCH, sh.LENGTH, sh.ACT_EMBED)


class QwenModulation(NamedTuple):
    """Every block's AdaLN vectors for one evaluation; leaves carry the timesteps' batch axes after the layer
    axis ([B], or [steps, B] for a sampler's whole schedule)."""

    img: jax.Array  # [Ln, B, 6D]: the image stream's (shift, scale, gate) x (attention, MLP)
    txt: jax.Array  # [Ln, B, 6D]: the text stream's
    img_cond: jax.Array | None  # [Ln, B, 6D] at t = 0 for conditioning-image tokens (zero_cond_t), or None
    out: jax.Array  # [B, 2D]: the final norm's (scale, shift)


def _per_token(v: jax.Array, v_cond: jax.Array | None, noise_tokens: int, tokens: int) -> jax.Array:
    """[B, D] vectors as [B, 1, D], or with `v_cond` [B, S, D]: `v` for the first `noise_tokens`, `v_cond` after."""
    if v_cond is None:
        return v[:, None]
    b, d = v.shape
    return jnp.concatenate(
        [
            jnp.broadcast_to(v[:, None], (b, noise_tokens, d)),
            jnp.broadcast_to(v_cond[:, None], (b, tokens - noise_tokens, d)),
        ],
        axis=1,
    )


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """x * (1 + scale) + shift in float32 (shift/scale [B, 1|S, D]), cast back."""
    y = x.astype(jnp.float32) * (1 + scale.astype(jnp.float32)) + shift.astype(jnp.float32)
    return y.astype(x.dtype)


def _mod(dim: int, rngs: nnx.Rngs) -> nnx.List:
    """diffusers `nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))` (`img_mod.1` / `txt_mod.1`); see `_run_mod`."""
    return nnx.List([None, Linear(dim, 6 * dim, axes=(sh.EMBED, sh.MLP), rngs=rngs)])


def _run_mod(mod: nnx.List, temb: Float[Array, "b d"]) -> Float[Array, "b k"]:
    return mod[1](jax.nn.silu(temb))


class JointAttention(nnx.Module):
    """diffusers `Attention` + `QwenDoubleStreamAttnProcessor2_0`: per-stream q/k/v with per-head RMS QK-norm,
    the joint rope, one attention over [text; image], per-stream output projections."""

    def __init__(self, cfg: QwenImageConfig, *, rngs: nnx.Rngs):
        d, h = cfg.inner_dim, cfg.attention_head_dim
        self.head_dim = h

        def proj(axes=(sh.EMBED, sh.HEADS)):
            return Linear(d, d, axes=axes, rngs=rngs)

        self.to_q, self.to_k, self.to_v = proj(), proj(), proj()
        self.add_q_proj, self.add_k_proj, self.add_v_proj = proj(), proj(), proj()
        self.norm_q, self.norm_k = RMSNorm(h, eps=1e-6), RMSNorm(h, eps=1e-6)
        self.norm_added_q, self.norm_added_k = RMSNorm(h, eps=1e-6), RMSNorm(h, eps=1e-6)
        self.to_out = nnx.List([proj((sh.HEADS, sh.EMBED))])
        self.to_add_out = proj((sh.HEADS, sh.EMBED))

    def _heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], -1, self.head_dim)  # [B, L, N, H]

    def __call__(
        self,
        img: Float[Array, "b s d"],
        txt: Float[Array, "b t d"],
        rope: Rope,
        key_lengths: Int[Array, " b"] | None,
    ) -> tuple[jax.Array, jax.Array]:
        """Returns the projected (image [B, S, D], text [B, T, D]) attention outputs; `key_lengths`: the
        joint keys each row attends to (S + real text tokens), None: no padding."""

        # q/k biases join the fused norm + rope pass (see jdiff.models.flux.transformer.JointAttention).
        def norm_rope(pairs) -> jax.Array:
            parts = [
                (self._heads(proj.matmul(x)), norm.scale[...], norm.eps, proj.bias[...])
                for x, proj, norm in pairs
            ]
            return joint_rms_norm_rope(parts, *rope)  # [B, L, N, H]

        q = norm_rope([(img, self.to_q, self.norm_q), (txt, self.add_q_proj, self.norm_added_q)])
        k = norm_rope([(img, self.to_k, self.norm_k), (txt, self.add_k_proj, self.norm_added_k)])
        v = jnp.concatenate([self._heads(self.to_v(img)), self._heads(self.add_v_proj(txt))], axis=1)
        out = dot_product_attention(q, k, v, key_lengths=key_lengths, context_parallel=True)
        out = out.reshape(*out.shape[:2], -1)  # [B, L, D]
        s = img.shape[1]
        return self.to_out[0](out[:, :s]), self.to_add_out(out[:, s:])


class QwenImageTransformerBlock(nnx.Module):
    """diffusers `QwenImageTransformerBlock`: modulated image and text streams, joint attention, two MLPs."""

    def __init__(self, cfg: QwenImageConfig, *, rngs: nnx.Rngs):
        d = cfg.inner_dim
        self.img_mod = _mod(d, rngs)
        self.img_norm1 = LayerNorm(d, eps=1e-6, elementwise_affine=False)
        self.attn = JointAttention(cfg, rngs=rngs)
        self.img_norm2 = LayerNorm(d, eps=1e-6, elementwise_affine=False)
        self.img_mlp = FeedForward(d, rngs=rngs)
        self.txt_mod = _mod(d, rngs)
        self.txt_norm1 = LayerNorm(d, eps=1e-6, elementwise_affine=False)
        self.txt_norm2 = LayerNorm(d, eps=1e-6, elementwise_affine=False)
        self.txt_mlp = FeedForward(d, gelu_epilogue=False, rngs=rngs)

    def __call__(self, carry, modulation, rope: Rope, key_lengths, noise_tokens: int):
        """`modulation`: this block's (img, txt, img_cond or None) vectors; `noise_tokens`: the leading image
        tokens that `img` modulates when `img_cond` is given (the rest take `img_cond`)."""
        img, txt = carry  # [B, S, D], [B, T, D]
        m_img, m_txt, m_cond = modulation
        s = img.shape[1]
        img_vecs = [
            _per_token(a, None if m_cond is None else c, noise_tokens, s)
            for a, c in zip(
                jnp.split(m_img, 6, axis=-1),
                jnp.split(m_img if m_cond is None else m_cond, 6, axis=-1),
                strict=True,
            )
        ]
        shift1, scale1, gate1, shift2, scale2, gate2 = img_vecs
        c_shift1, c_scale1, c_gate1, c_shift2, c_scale2, c_gate2 = (
            v[:, None] for v in jnp.split(m_txt, 6, -1)
        )

        img_attn, txt_attn = self.attn(
            _modulate(self.img_norm1(img), shift1, scale1),
            _modulate(self.txt_norm1(txt), c_shift1, c_scale1),
            rope,
            key_lengths,
        )
        img = img + gate1.astype(img.dtype) * img_attn
        txt = txt + c_gate1.astype(txt.dtype) * txt_attn
        img = img + gate2.astype(img.dtype) * self.img_mlp(_modulate(self.img_norm2(img), shift2, scale2))
        txt = txt + c_gate2.astype(txt.dtype) * self.txt_mlp(
            _modulate(self.txt_norm2(txt), c_shift2, c_scale2)
        )
        return sh.constrain(img, _TOKENS), sh.constrain(txt, _TOKENS)


class _TimeEmbed(nnx.Module):
    """diffusers `QwenTimestepProjEmbeddings` (without the Layered model's additional condition)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.timestep_embedder = TimestepEmbedding(256, dim, rngs=rngs)

    def __call__(self, sigma: Float[Array, " b"], dtype) -> Float[Array, "b d"]:
        # diffusers rounds sigma to the model's dtype (`timestep.to(hidden_states.dtype)`), then its
        # `Timesteps(scale=1000)` takes sin/cos of (sigma * freq) * 1000 in float32.
        return self.timestep_embedder(
            timestep_embedding(rounded(sigma, dtype), 256, scale=1000.0).astype(dtype)
        )


class QwenImageTransformer2DModel(nnx.Module):
    """The Qwen-Image denoiser: packed latent tokens (+ conditioning image tokens) and Qwen2.5-VL hidden
    states -> velocity for every image token."""

    def __init__(self, cfg: QwenImageConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        d = cfg.inner_dim
        self.time_text_embed = _TimeEmbed(d, rngs=rngs)
        self.txt_norm = RMSNorm(cfg.joint_attention_dim, eps=1e-6)
        self.img_in = Linear(cfg.in_channels, d, axes=(None, sh.EMBED), rngs=rngs)
        self.txt_in = Linear(cfg.joint_attention_dim, d, axes=(None, sh.EMBED), rngs=rngs)
        self.transformer_blocks = stacked(
            lambda r: QwenImageTransformerBlock(cfg, rngs=r), cfg.num_layers, rngs
        )
        self.norm_out = AdaLayerNormContinuous(d, rngs=rngs)
        self.proj_out = Linear(d, cfg.output_channels, axes=(sh.EMBED, None), rngs=rngs)

    def __call__(
        self,
        hidden_states: Float[Array, "b s c"],
        encoder_hidden_states: Float[Array, "b t j"],
        timestep: Float[Array, " b"],
        rope: Rope,
        encoder_hidden_states_mask: Bool[Array, "b t"] | None = None,
        noise_tokens: int | None = None,
    ) -> Float[Array, "b s c"]:
        """One denoiser evaluation: `predict` with this timestep's `modulation`.

        Args:
            hidden_states: packed latent tokens [noise latents; conditioning images' latents].
            encoder_hidden_states: Qwen2.5-VL last hidden states (template tokens dropped).
            timestep: sigma in [0, 1] (diffusers passes t / 1000; scaled by 1000 inside, as diffusers does).
            rope: (cos, sin) [S + T, H] from `jdiff.models.qwen_image.rope.rope_tables`.
            encoder_hidden_states_mask: True for real text tokens, which come first (trailing padding, as
                the pipelines pad); None: no padding.
            noise_tokens: how many leading image tokens are the noise latents (only read with zero_cond_t;
                None: all of them).

        Returns:
            The predicted velocity for every image token (callers keep the noise latents' S0 rows).
        """
        return self.predict(
            hidden_states,
            encoder_hidden_states,
            self.modulation(timestep),
            rope,
            encoder_hidden_states_mask,
            noise_tokens,
        )

    def modulation(self, timestep: Float[Array, " b"]) -> QwenModulation:
        """Every block's AdaLN vectors for these sigmas, in the weights' dtype; rows are independent."""
        dtype = self.img_in.kernel[...].dtype
        temb = self.time_text_embed(timestep.astype(jnp.float32), dtype)
        img, txt = map_layers(
            self.transformer_blocks, lambda b: (_run_mod(b.img_mod, temb), _run_mod(b.txt_mod, temb))
        )
        img_cond = None
        if self.config.zero_cond_t:
            temb0 = self.time_text_embed(jnp.zeros_like(timestep, jnp.float32), dtype)
            img_cond = map_layers(self.transformer_blocks, lambda b: _run_mod(b.img_mod, temb0))
        return QwenModulation(img, txt, img_cond, self.norm_out.modulation(temb))

    def predict(
        self,
        hidden_states: Float[Array, "b s c"],
        encoder_hidden_states: Float[Array, "b t j"],
        modulation: QwenModulation,
        rope: Rope,
        encoder_hidden_states_mask: Bool[Array, "b t"] | None = None,
        noise_tokens: int | None = None,
    ) -> Float[Array, "b s c"]:
        """The velocity per image token, given the evaluation's `modulation` (see `__call__`)."""
        h, key_lengths = self.embed(hidden_states, encoder_hidden_states, encoder_hidden_states_mask)
        img, _ = self.run_blocks(h, modulation, rope, key_lengths, noise_tokens)
        return self.output(img, modulation)

    # ---- the parts step caching runs apart (jdiff.sampling.step_cache) --------------------------------------

    def embed(self, hidden_states, encoder_hidden_states, encoder_hidden_states_mask=None):
        """((image, text) tokens entering the first block, the attention's key lengths or None); arguments as
        `predict`."""
        x = self.img_in(hidden_states)
        txt = self.txt_in(self.txt_norm(encoder_hidden_states.astype(x.dtype)))
        key_lengths = None
        if encoder_hidden_states_mask is not None:
            # [B]: the image tokens and each prompt's real text (trailing padding; module docstring)
            key_lengths = x.shape[1] + encoder_hidden_states_mask.astype(jnp.int32).sum(-1)
        return (x, txt), key_lengths

    def run_blocks(
        self, h, modulation: QwenModulation, rope: Rope, key_lengths, noise_tokens=None, layers=None
    ):
        """The blocks in `layers` (default all): (image, text) in and out."""
        m, n = modulation, h[0].shape[1] if noise_tokens is None else noise_tokens
        return scan(
            self.transformer_blocks,
            h,
            rope,
            key_lengths,
            n,
            per_layer=(m.img, m.txt, m.img_cond),
            layers=layers,
        )

    def output(self, img: jax.Array, modulation: QwenModulation) -> jax.Array:
        """The final modulated norm and projection of the image tokens."""
        return self.proj_out(self.norm_out(img, modulation.out))
