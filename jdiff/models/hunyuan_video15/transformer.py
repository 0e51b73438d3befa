"""The HunyuanVideo-1.5 video DiT (diffusers `HunyuanVideo15Transformer3DModel`), 480p / 720p, T2V and I2V.

Axis letters: B batch, F H W latent frames / height / width, C latent channels, S = F'H'W' video tokens after
patching (frames outermost), T1 text (Qwen2.5-VL) tokens, J1 their width, T2 glyph (byT5) tokens, J2 their
width, I image (SigLIP) tokens, E their width, T = I + T2 + T1 condition tokens, L = S + T, D model width,
H head dim, P = C*pt*ph*pw patch features.

Attribute paths mirror diffusers' state dict, with `transformer_blocks` and the refiner's `refiner_blocks`
stacked for a scan over layers. Deviations from diffusers, none numerical for the video tokens:
  * latents are channels-last [B, F, H, W, C] in and out;
  * the rotary tables come in as an argument (`rope_tables`, once per request);
  * as diffusers, each sample's valid condition tokens ([image; glyph; text] order) are gathered to the
    front, but the padding stays (static shapes) and reaches attention as key lengths, cuDNN's padding
    mask; the condition tokens carry no rope, so only the padded rows (never read) differ.
  * text-to-video: `image_embeds=None` leaves the image tokens out entirely (diffusers feeds 729 zero tokens
    and masks them all out, which is the same). Zero image features mask the image tokens as in diffusers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float

from jdiff import sharding as sh
from jdiff.errors import InputError
from jdiff.layers import Conv, Linear
from jdiff.layers.embed import Embed
from jdiff.layers.embeddings import TimestepEmbedding, timestep_embedding
from jdiff.layers.rope import rope_cos_sin
from jdiff.layers.stack import map_layers, scan, stacked
from jdiff.models.flux.transformer import AdaLayerNormContinuous
from jdiff.models.hunyuan_video15.blocks import (
    ByT5TextProjection,
    ImageProjection,
    Rope,
    TokenRefiner,
    TransformerBlock,
)
from jdiff.models.hunyuan_video15.config import HunyuanVideo15Config


def post_patch_grid(cfg: HunyuanVideo15Config, frames: int, height: int, width: int) -> tuple[int, int, int]:
    """The token grid (F', H', W') of a latent of (frames, height, width), checking it patches evenly.

    Raises:
        InputError: a latent size that the patch size does not divide.
    """
    sizes = (frames, height, width)
    if any(s < 1 or s % p for s, p in zip(sizes, cfg.patch, strict=True)):
        raise InputError(
            f"HunyuanVideo-1.5 latent (frames, height, width) = {sizes} must be positive multiples of the patch "
            f"size {cfg.patch}; pick a video size the VAE stride times the patch size divides"
        )
    return tuple(s // p for s, p in zip(sizes, cfg.patch, strict=True))


def rope_tables(
    cfg: HunyuanVideo15Config, frames: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables [S, H] (float32) for a latent of (frames, height, width), before patching.

    diffusers' `HunyuanVideo15RotaryPosEmbed`: the head dim splits into `rope_axes_dim` (frames, height,
    width) parts, each rotating by its token's integer grid position with base `rope_theta` (256).
    """
    grid = post_patch_grid(cfg, frames, height, width)
    ids = np.stack(np.meshgrid(*(np.arange(n) for n in grid), indexing="ij"), axis=-1).reshape(-1, 3)
    return rope_cos_sin(ids, cfg.rope_axes_dim, cfg.rope_theta)


class _PatchEmbed(nnx.Module):
    def __init__(self, cfg: HunyuanVideo15Config, *, rngs: nnx.Rngs):
        self.proj = Conv(cfg.in_channels, cfg.inner_dim, cfg.patch, strides=cfg.patch, rngs=rngs)


class TimeEmbedding(nnx.Module):
    """diffusers `HunyuanVideo15TimeEmbedding`: timestep MLP, plus a second one for MeanFlow's `timestep_r`."""

    def __init__(self, cfg: HunyuanVideo15Config, *, rngs: nnx.Rngs):
        self.timestep_embedder = TimestepEmbedding(256, cfg.inner_dim, rngs=rngs)
        self.timestep_embedder_r = (
            TimestepEmbedding(256, cfg.inner_dim, rngs=rngs) if cfg.use_meanflow else None
        )

    def __call__(self, timestep: jax.Array, timestep_r: jax.Array | None, dtype) -> Float[Array, "b d"]:
        temb = self.timestep_embedder(timestep_embedding(timestep, 256).astype(dtype))
        if timestep_r is not None:
            temb = temb + self.timestep_embedder_r(timestep_embedding(timestep_r, 256).astype(dtype))
        return temb


class HunyuanVideo15Transformer3DModel(nnx.Module):
    """The HunyuanVideo-1.5 denoiser: latents (+ I2V condition) and text / glyph / image features -> velocity."""

    def __init__(self, cfg: HunyuanVideo15Config, *, rngs: nnx.Rngs):
        self.config = cfg
        d = cfg.inner_dim
        self.x_embedder = _PatchEmbed(cfg, rngs=rngs)
        self.image_embedder = ImageProjection(cfg.image_embed_dim, d, rngs=rngs)
        self.context_embedder = TokenRefiner(cfg, rngs=rngs)
        self.context_embedder_2 = ByT5TextProjection(cfg.text_embed_2_dim, 2048, d, rngs=rngs)
        self.time_embed = TimeEmbedding(cfg, rngs=rngs)
        self.cond_type_embed = Embed(3, d, axes=(None, sh.EMBED), rngs=rngs)
        self.transformer_blocks = stacked(lambda r: TransformerBlock(cfg, rngs=r), cfg.num_layers, rngs)
        self.norm_out = AdaLayerNormContinuous(d, rngs=rngs)
        self.proj_out = Linear(
            d, cfg.output_channels * int(np.prod(cfg.patch)), axes=(sh.EMBED, None), rngs=rngs
        )

    def _patchify(self, x: Float[Array, "b f h w c"]) -> Float[Array, "b s d"]:
        """Conv3d with kernel = stride = patch as a matmul over the (pt, ph, pw, C) patch features."""
        (b, f, h, w, c), (pt, ph, pw) = x.shape, self.config.patch
        x = x.reshape(b, f // pt, pt, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
        x = x.reshape(b, -1, pt * ph * pw * c)
        proj = self.x_embedder.proj
        kernel = proj.kernel[...]  # [pt, ph, pw, C, D]
        return x @ kernel.reshape(-1, kernel.shape[-1]).astype(x.dtype) + proj.bias[...].astype(x.dtype)

    def _unpatchify(self, x: Float[Array, "b s p"], grid: tuple[int, int, int]) -> Float[Array, "b f h w c"]:
        """diffusers lays each token's outputs out as (C, pt, ph, pw), channels outermost."""
        (f, h, w), (pt, ph, pw) = grid, self.config.patch
        x = x.reshape(x.shape[0], f, h, w, -1, pt, ph, pw).transpose(0, 1, 5, 2, 6, 3, 7, 4)
        return x.reshape(x.shape[0], f * pt, h * ph, w * pw, -1)

    def __call__(
        self,
        hidden_states: Float[Array, "b f h w c"],
        timestep: Float[Array, " b"],
        encoder_hidden_states: Float[Array, "b t1 j1"],
        encoder_attention_mask: Bool[Array, "b t1"],
        encoder_hidden_states_2: Float[Array, "b t2 j2"],
        encoder_attention_mask_2: Bool[Array, "b t2"],
        rope: Rope,
        image_embeds: Float[Array, "b i e"] | None = None,
        timestep_r: Float[Array, " b"] | None = None,
    ) -> Float[Array, "b f h w c"]:
        """One denoiser evaluation.

        Args:
            hidden_states: channels-last latents with the I2V condition concatenated on channels (noise
                latents, condition latents, condition mask: `in_channels` in all; zeros for T2V).
            timestep: the scheduler's timestep in [0, 1000] per sample.
            encoder_hidden_states, encoder_attention_mask: Qwen2.5-VL features of the prompt and their mask
                (True / 1 for real tokens).
            encoder_hidden_states_2, encoder_attention_mask_2: byT5 features of the quoted (glyph) text and
                their mask.
            rope: (cos, sin) tables [S, H] from `rope_tables(cfg, F, H, W)`.
            image_embeds: SigLIP features of the first frame (I2V); None for T2V.
            timestep_r: MeanFlow's second timestep (configs with `use_meanflow` only).

        Returns:
            The predicted velocity [B, F, H, W, out_channels], in the parameters' dtype.

        Raises:
            InputError: a latent the patch size does not divide, rope tables of the wrong length, or
                `timestep_r` for a model without MeanFlow.
        """
        cfg = self.config
        b, f, h, w, _ = hidden_states.shape
        grid = post_patch_grid(cfg, f, h, w)
        if rope[0].shape[0] != int(np.prod(grid)):
            raise InputError(
                f"HunyuanVideo-1.5 rope tables cover {rope[0].shape[0]} tokens, the latent has {np.prod(grid)}: "
                "build them with rope_tables(cfg, frames, height, width) of this latent"
            )
        if timestep_r is not None and not cfg.use_meanflow:
            raise InputError(
                "this HunyuanVideo-1.5 transformer has no MeanFlow embedder: pass timestep_r=None"
            )
        dtype = self.x_embedder.proj.kernel.dtype
        t = timestep.astype(jnp.float32).reshape(b)
        temb = self.time_embed(
            t, None if timestep_r is None else timestep_r.astype(jnp.float32).reshape(b), dtype
        )

        x = sh.constrain(self._patchify(hidden_states.astype(dtype)), (sh.BATCH, sh.LENGTH, sh.ACT_EMBED))
        context, mask = self._condition(
            t,
            encoder_hidden_states.astype(dtype),
            encoder_attention_mask.astype(bool),
            encoder_hidden_states_2.astype(dtype),
            encoder_attention_mask_2.astype(bool),
            None if image_embeds is None else image_embeds.astype(dtype),
        )

        # The condition tokens take no rope: identity rows after the video's.
        cos, sin = (jnp.asarray(a, jnp.float32) for a in rope)
        tc = context.shape[1]
        rope = (
            jnp.concatenate([cos, jnp.ones((tc, cos.shape[1]), jnp.float32)]),
            jnp.concatenate([sin, jnp.zeros((tc, sin.shape[1]), jnp.float32)]),
        )
        # Each sample's real condition tokens first, in order (as diffusers gathers them): the padding trails,
        # and attention takes it as key lengths (a key mask would reach cuDNN as a dense [B, 1, L, L] bias).
        # The condition tokens have no rope and every per-token op commutes with the gather.
        order = jnp.argsort(~mask, axis=1, stable=True)
        context = sh.constrain(
            jnp.take_along_axis(context, order[..., None], axis=1), (sh.BATCH, sh.LENGTH, sh.ACT_EMBED)
        )
        key_lengths = x.shape[1] + mask.sum(axis=1, dtype=jnp.int32)  # [B]
        mods = map_layers(self.transformer_blocks, lambda blk: blk.modulation(temb))
        x, _ = scan(self.transformer_blocks, (x, context), rope, key_lengths, per_layer=mods)

        x = self.norm_out(x, self.norm_out.modulation(temb))
        return self._unpatchify(self.proj_out(x), grid)

    def _condition(self, t, text, text_mask, glyph, glyph_mask, image) -> tuple[jax.Array, jax.Array]:
        """The condition tokens [B, T, D] = [image; glyph; text] and their key mask [B, T]."""
        cond = self.cond_type_embed.embedding[...].astype(text.dtype)  # [3, D]: text, glyph, image
        text = self.context_embedder(text, t, text_mask) + cond[0]
        glyph = self.context_embedder_2(glyph) + cond[1]
        # Padded tokens are zeroed as in diffusers; they are masked out as keys, this only keeps them finite.
        tokens = [jnp.where(glyph_mask[..., None], glyph, 0), jnp.where(text_mask[..., None], text, 0)]
        masks = [glyph_mask, text_mask]
        if image is not None:
            # diffusers: all-zero image features (over the whole batch) mean text-to-video, image masked out.
            is_i2v = jnp.any(image != 0)
            tokens.insert(0, self.image_embedder(image) + cond[2])
            masks.insert(0, jnp.broadcast_to(is_i2v, image.shape[:2]))
        context = jnp.concatenate(tokens, axis=1)
        return sh.constrain(context, (sh.BATCH, sh.LENGTH, sh.ACT_EMBED)), jnp.concatenate(masks, axis=1)
