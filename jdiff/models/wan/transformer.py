"""The Wan video DiT (diffusers `WanTransformer3DModel`): Wan2.1 T2V / I2V, Wan2.2 TI2V-5B and A14B.

Axis letters: B batch, F H W latent frames / height / width, C latent channels, L = F'H'W' tokens after
patching (frames outermost), T text tokens, J text-encoder width, I image tokens, E image-encoder width,
D model width, S 1 or L (timesteps per sample), K freq_dim, P = pt*ph*pw*C patch features.

Attribute paths mirror diffusers' state dict, with `blocks` stacked for a scan over layers. Deviations
from diffusers, none numerical:
  * latents are channels-last [B, F, H, W, C] in and out;
  * the rotary tables come in as an argument (`wan_rope_tables`, once per request);
  * the CLIP image tokens of I2V come in separately from the text: diffusers concatenates them in front of
    the text and splits them off again assuming exactly 512 text tokens; here any text length works.
  * the Conv3d patch embedding (kernel = stride = patch) runs as a reshape and a matmul.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from jdiff import sharding as sh
from jdiff.errors import InputError
from jdiff.layers import Conv, LayerNorm, Linear
from jdiff.layers.embeddings import TextProjection, TimestepEmbedding, timestep_embedding
from jdiff.layers.stack import scan, stacked
from jdiff.models.wan.blocks import FeedForward, Rope, WanTransformerBlock, table_param
from jdiff.models.wan.config import WanTransformerConfig
from jdiff.models.wan.rope import post_patch_grid


class WanContext(NamedTuple):
    """What every block reads besides the video tokens, for one evaluation."""

    temb: jax.Array  # [B, S, D], the time embedding (TeaCache's signal for Wan)
    temb_proj: jax.Array  # [B, S, 6, D]
    context: jax.Array  # [B, T, D]
    image: jax.Array | None  # [B, I, D]
    grid: tuple[int, int, int]  # (F', H', W') after patching


class WanImageEmbedding(nnx.Module):
    """diffusers `WanImageEmbedding`: LayerNorm -> GELU MLP -> LayerNorm over the CLIP image tokens.

    With `pos_embed_seq_len` (Wan2.1 FLF2V) the tokens of each consecutive pair of batch rows (first and
    last frame) are joined into one row of 2I tokens and get a learned position embedding, as in diffusers.
    """

    def __init__(self, cfg: WanTransformerConfig, *, rngs: nnx.Rngs):
        e, d = cfg.image_dim, cfg.inner_dim
        self.norm1 = LayerNorm(e, eps=1e-5)
        self.ff = FeedForward(e, e, d, approximate=False, rngs=rngs)
        self.norm2 = LayerNorm(d, eps=1e-5)
        self.pos_embed = (
            nnx.Param(
                jnp.zeros((1, cfg.pos_embed_seq_len, e), jnp.float32),
                out_sharding=(None, None, sh.NORM),
                eager_sharding=False,
            )
            if cfg.pos_embed_seq_len is not None
            else None
        )

    def __call__(self, x: Float[Array, "b i e"]) -> Float[Array, "b i d"]:
        if self.pos_embed is not None:
            x = x.reshape(-1, 2 * x.shape[1], x.shape[2]) + self.pos_embed[...].astype(x.dtype)
        return self.norm2(self.ff(self.norm1(x)))


class WanTimeTextImageEmbedding(nnx.Module):
    """diffusers `WanTimeTextImageEmbedding`: timestep MLP (+ the 6-way modulation projection), text MLP,
    optional image embedder."""

    def __init__(self, cfg: WanTransformerConfig, *, rngs: nnx.Rngs):
        d = cfg.inner_dim
        self.freq_dim = cfg.freq_dim
        self.time_embedder = TimestepEmbedding(cfg.freq_dim, d, rngs=rngs)
        self.time_proj = Linear(d, 6 * d, axes=(sh.EMBED, sh.MLP), rngs=rngs)
        self.text_embedder = TextProjection(cfg.text_dim, d, act="gelu_tanh", rngs=rngs)
        self.image_embedder = WanImageEmbedding(cfg, rngs=rngs) if cfg.image_dim is not None else None

    def time(self, timestep: Float[Array, "b s"], dtype) -> tuple[jax.Array, jax.Array]:
        """(temb [B, S, D], modulation [B, S, 6, D]) in `dtype`.

        The sinusoid and the time MLP run in float32 (diffusers keeps `time_embedder` in float32), then temb
        drops to the activation dtype before the SiLU and the modulation projection, as in diffusers.
        """
        b, s = timestep.shape
        freq = timestep_embedding(timestep.reshape(-1), self.freq_dim).reshape(b, s, -1)  # [B, S, K]
        mlp_dtype = self.time_embedder.linear_1.kernel.dtype
        temb = self.time_embedder(freq.astype(mlp_dtype)).astype(dtype)
        proj = self.time_proj(jax.nn.silu(temb))
        return temb, proj.reshape(b, s, 6, -1)


class WanTransformer3DModel(nnx.Module):
    """The Wan denoiser: video latents + text (+ CLIP image) embeddings -> flow-matching velocity."""

    def __init__(self, cfg: WanTransformerConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        d = cfg.inner_dim
        self.patch_embedding = Conv(cfg.in_channels, d, cfg.patch_size, strides=cfg.patch_size, rngs=rngs)
        self.condition_embedder = WanTimeTextImageEmbedding(cfg, rngs=rngs)
        self.blocks = stacked(lambda r: WanTransformerBlock(cfg, rngs=r), cfg.num_layers, rngs)
        self.norm_out = LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.proj_out = Linear(
            d, cfg.output_channels * math.prod(cfg.patch_size), axes=(sh.EMBED, None), rngs=rngs
        )
        self.scale_shift_table = table_param(rngs, (1, 2, d))

    def _patchify(self, x: Float[Array, "b f h w c"]) -> Float[Array, "b l d"]:
        """Conv3d with kernel = stride = patch as a matmul over the (pt, ph, pw, C) patch features."""
        (b, f, h, w, c), (pt, ph, pw) = x.shape, self.config.patch_size
        x = x.reshape(b, f // pt, pt, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
        x = x.reshape(b, -1, pt * ph * pw * c)  # [B, L, P]
        kernel = self.patch_embedding.kernel[...]  # [pt, ph, pw, C, D]
        kernel = kernel.reshape(-1, kernel.shape[-1]).astype(x.dtype)
        return x @ kernel + self.patch_embedding.bias[...].astype(x.dtype)

    def _unpatchify(self, x: Float[Array, "b l p"], grid: tuple[int, int, int]) -> Float[Array, "b f h w c"]:
        (f, h, w), (pt, ph, pw) = grid, self.config.patch_size
        x = x.reshape(x.shape[0], f, h, w, pt, ph, pw, -1).transpose(0, 1, 4, 2, 5, 3, 6, 7)
        return x.reshape(x.shape[0], f * pt, h * ph, w * pw, -1)

    def __call__(
        self,
        hidden_states: Float[Array, "b f h w c"],
        timestep: Float[Array, " b"] | Float[Array, "b l"],
        encoder_hidden_states: Float[Array, "b t j"],
        rope: Rope,
        encoder_hidden_states_image: Float[Array, "b i e"] | None = None,
    ) -> Float[Array, "b f h w c"]:
        """One denoiser evaluation.

        Args:
            hidden_states: latents, channels-last (I2V: noise latents and the image condition concatenated
                on channels, `in_channels` in all).
            timestep: the scheduler's timestep in [0, 1000] per sample [B], or per token [B, L] (Wan2.2
                TI2V `expand_timesteps`, tokens in (F', H', W') order).
            encoder_hidden_states: UMT5 token embeddings.
            rope: (cos, sin) tables [L, H] from `wan_rope_tables(cfg, F, H, W)`.
            encoder_hidden_states_image: CLIP image tokens (I2V configs only; FLF2V: [2B, I, E], first and
                last frame of each sample in consecutive rows).

        Returns:
            The predicted velocity [B, F, H, W, out_channels], in the parameters' dtype.

        Raises:
            InputError: image tokens missing for an I2V config or given to one without an image branch; a
                latent the patch size does not divide; a per-token timestep of the wrong length.
        """
        x, ctx = self.embed(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image)
        return self.output(self.run_blocks(x, ctx, rope), ctx)

    # ---- the parts step caching runs apart (jdiff.sampling.step_cache) --------------------------------------

    def embed(
        self,
        hidden_states: Float[Array, "b f h w c"],
        timestep: Float[Array, " b"] | Float[Array, "b l"],
        encoder_hidden_states: Float[Array, "b t j"],
        encoder_hidden_states_image: Float[Array, "b i e"] | None = None,
    ) -> tuple[Float[Array, "b l d"], WanContext]:
        """The video tokens entering the first block, and what every block reads besides them (arguments and
        errors as `__call__`)."""
        cfg = self.config
        has_image = self.condition_embedder.image_embedder is not None
        if has_image != (encoder_hidden_states_image is not None):
            raise InputError(
                "this Wan transformer "
                + (
                    "has an image branch (I2V): pass encoder_hidden_states_image"
                    if has_image
                    else "has no image branch (image_dim is null): do not pass encoder_hidden_states_image"
                )
            )
        b, f, h, w, _ = hidden_states.shape
        grid = post_patch_grid(cfg, f, h, w)
        dtype = self.patch_embedding.kernel.dtype
        x = self._patchify(hidden_states.astype(dtype))  # [B, L, D]
        x = sh.constrain(x, (sh.BATCH, sh.LENGTH, sh.ACT_EMBED))

        t = timestep.astype(jnp.float32).reshape(b, -1)  # [B, S]
        if t.shape[1] not in (1, x.shape[1]):
            raise InputError(
                f"Wan timestep must be [B] or [B, L] with L = {x.shape[1]} tokens, got {timestep.shape}"
            )
        temb, temb_proj = self.condition_embedder.time(t, dtype)  # [B, S, D], [B, S, 6, D]
        context = self.condition_embedder.text_embedder(encoder_hidden_states.astype(dtype))  # [B, T, D]
        image = None
        if has_image:
            image = self.condition_embedder.image_embedder(encoder_hidden_states_image.astype(dtype))
        return x, WanContext(temb, temb_proj, context, image, grid)

    def run_blocks(self, x: Float[Array, "b l d"], ctx: WanContext, rope: Rope, layers: slice | None = None):
        """The transformer blocks (those in `layers`: all by default) over the video tokens."""
        return scan(self.blocks, x, ctx.context, ctx.image, ctx.temb_proj, rope, layers=layers)

    def output(self, x: Float[Array, "b l d"], ctx: WanContext) -> Float[Array, "b f h w c"]:
        """The final modulated norm, projection and unpatchifying."""
        dtype = x.dtype
        # [1, 1, 2, D] + [B, S, 1, D] in float32, as diffusers' final modulation.
        mod = self.scale_shift_table[...][None] + ctx.temb.astype(jnp.float32)[:, :, None]
        shift, scale = mod[:, :, 0], mod[:, :, 1]
        x = (self.norm_out(x.astype(jnp.float32)) * (1 + scale) + shift).astype(dtype)
        return self._unpatchify(self.proj_out(x), ctx.grid)
