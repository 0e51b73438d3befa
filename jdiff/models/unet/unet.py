"""diffusers' `UNet2DConditionModel`: the denoiser of Stable Diffusion 1.5, 2.x and SDXL.

Axis letters: B batch, H/W latent height/width (at a level: its resolution), Ci/Co latent channels in/out,
C feature channels, E time-embedding width, T text tokens, J text width (cross_attention_dim), P pooled-text
width (SDXL), K = 6 size/crop numbers (SDXL micro-conditioning).

Channels-last at the API and inside ([B, H, W, C]); pipelines keep their latents channels-last too. Attribute
paths mirror diffusers' state-dict names (`down_blocks.1.attentions.0.transformer_blocks.{i}.attn1.to_q`), the
transformer blocks of each spatial transformer stacked for a scan, so the conversion plan is the default rules
plus the stacked prefixes. Latent sizes need not be multiples of the total downsampling: as in diffusers,
downsamplers round up and upsamplers resize to the matching skip connection's size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from jdiff.layers import Conv, GroupNorm
from jdiff.layers.embeddings import TimestepEmbedding, timestep_embedding
from jdiff.models.unet.blocks import Downsample2D, ResnetBlock2D, Transformer2DModel, Upsample2D
from jdiff.models.unet.config import CROSS_DOWN, CROSS_UP, UNet2DConditionConfig


class DownBlock(nnx.Module):
    """diffusers `CrossAttnDownBlock2D` (with `attentions`) or `DownBlock2D` (`attentions` None): resnets
    (each followed by its transformer), then a stride-2 downsampler on every level but the last. Returns the
    output and the skip connections (one per resnet, plus the downsampled output)."""

    def __init__(self, cfg: UNet2DConditionConfig, i: int, in_channels: int, *, rngs: nnx.Rngs):
        out = cfg.block_out_channels[i]
        temb, groups, eps = cfg.time_embed_dim, cfg.norm_num_groups, cfg.norm_eps
        n = cfg.layers_at(i)
        self.resnets = nnx.List(
            [
                ResnetBlock2D(in_channels if j == 0 else out, out, temb, groups=groups, eps=eps, rngs=rngs)
                for j in range(n)
            ]
        )
        self.attentions = (
            None
            if cfg.down_block_types[i] != CROSS_DOWN
            else nnx.List(
                [
                    Transformer2DModel(
                        out, cfg.heads_at(i), cfg.cross_dim_at(i), num_layers=depth, groups=groups,
                        linear_projection=cfg.use_linear_projection, rngs=rngs,
                    )
                    for depth in cfg.transformer_layers_at(i)
                ]
            )
        )  # fmt: skip
        last = i == cfg.levels - 1
        self.downsamplers = (
            None if last else nnx.List([Downsample2D(out, padding=cfg.downsample_padding, rngs=rngs)])
        )

    def __call__(
        self, x: jax.Array, temb: jax.Array, context: jax.Array
    ) -> tuple[jax.Array, list[jax.Array]]:
        skips = []
        for j, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[j](x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nnx.Module):
    """diffusers `CrossAttnUpBlock2D` / `UpBlock2D`: one more resnet than its down level, each taking the
    running features concatenated with a skip connection (popped last-first), then an upsampler on every
    block but the last."""

    def __init__(self, cfg: UNet2DConditionConfig, i: int, *, rngs: nnx.Rngs):
        rev = tuple(reversed(cfg.block_out_channels))
        level = cfg.levels - 1 - i
        out, prev, skip_in = rev[i], rev[max(i - 1, 0)], rev[min(i + 1, cfg.levels - 1)]
        temb, groups, eps = cfg.time_embed_dim, cfg.norm_num_groups, cfg.norm_eps
        n = cfg.layers_at(level) + 1
        self.resnets = nnx.List(
            [
                ResnetBlock2D(
                    (prev if j == 0 else out) + (skip_in if j == n - 1 else out), out, temb, groups=groups,
                    eps=eps, rngs=rngs,
                )
                for j in range(n)
            ]
        )  # fmt: skip
        self.attentions = (
            None
            if cfg.up_block_types[i] != CROSS_UP
            else nnx.List(
                [
                    Transformer2DModel(
                        out, cfg.heads_at(level), cfg.cross_dim_at(level), num_layers=depth, groups=groups,
                        linear_projection=cfg.use_linear_projection, rngs=rngs,
                    )
                    for depth in cfg.up_transformer_layers_at(i)
                ]
            )
        )  # fmt: skip
        self.upsamplers = None if i == cfg.levels - 1 else nnx.List([Upsample2D(out, rngs=rngs)])

    def __call__(
        self, x: jax.Array, skips: list[jax.Array], temb: jax.Array, context: jax.Array, size
    ) -> jax.Array:
        for j, resnet in enumerate(self.resnets):
            x = resnet(jnp.concatenate([x, skips.pop().astype(x.dtype)], axis=-1), temb)
            if self.attentions is not None:
                x = self.attentions[j](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


class UNetMidBlock2DCrossAttn(nnx.Module):
    """diffusers `UNetMidBlock2DCrossAttn` (one layer): resnet, transformer, resnet at the deepest width."""

    def __init__(self, cfg: UNet2DConditionConfig, *, rngs: nnx.Rngs):
        c, temb, groups, eps = (
            cfg.block_out_channels[-1],
            cfg.time_embed_dim,
            cfg.norm_num_groups,
            cfg.norm_eps,
        )
        scale = cfg.mid_block_scale_factor
        self.resnets = nnx.List(
            [
                ResnetBlock2D(c, c, temb, groups=groups, eps=eps, output_scale=scale, rngs=rngs)
                for _ in range(2)
            ]
        )
        self.attentions = nnx.List(
            [
                Transformer2DModel(
                    c, cfg.heads_at(cfg.levels - 1), cfg.cross_dim_at(cfg.levels - 1),
                    num_layers=cfg.mid_transformer_layers, groups=groups, linear_projection=cfg.use_linear_projection,
                    rngs=rngs,
                )
            ]
        )  # fmt: skip

    def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array) -> jax.Array:
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attentions[0](x, context), temb)


class UNet2DConditionModel(nnx.Module):
    """diffusers `UNet2DConditionModel`: conv_in, time (and SDXL's added) embedding, down blocks, mid block,
    up blocks with skip connections, norm-SiLU-conv_out."""

    def __init__(self, cfg: UNet2DConditionConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        ch = cfg.block_out_channels
        self.conv_in = Conv(
            cfg.in_channels, ch[0], (cfg.conv_in_kernel,) * 2, padding=cfg.conv_in_kernel // 2, rngs=rngs
        )
        self.time_embedding = TimestepEmbedding(ch[0], cfg.time_embed_dim, rngs=rngs)
        self.add_embedding = (
            TimestepEmbedding(cfg.projection_class_embeddings_input_dim, cfg.time_embed_dim, rngs=rngs)
            if cfg.addition_embed_type == "text_time"
            else None
        )
        self.down_blocks = nnx.List(
            [DownBlock(cfg, i, ch[max(i - 1, 0)], rngs=rngs) for i in range(cfg.levels)]
        )
        self.mid_block = UNetMidBlock2DCrossAttn(cfg, rngs=rngs) if cfg.mid_block_type is not None else None
        self.up_blocks = nnx.List([UpBlock(cfg, i, rngs=rngs) for i in range(cfg.levels)])
        self.conv_norm_out = GroupNorm(cfg.norm_num_groups, ch[0], eps=cfg.norm_eps)
        self.conv_out = Conv(
            ch[0], cfg.out_channels, (cfg.conv_out_kernel,) * 2, padding=cfg.conv_out_kernel // 2, rngs=rngs
        )

    def embed_time(
        self,
        timesteps: Float[Array, " b"],
        dtype,
        text_embeds: Float[Array, "b p"] | None = None,
        time_ids: Float[Array, "b k"] | None = None,
    ) -> Float[Array, "b e"]:
        """The embedding every resnet reads: time embedding (+ SDXL's text_time added embedding)."""
        cfg = self.cfg
        t = timestep_embedding(
            timesteps,
            cfg.block_out_channels[0],
            flip_sin_to_cos=cfg.flip_sin_to_cos,
            downscale_freq_shift=cfg.freq_shift,
        )
        emb = self.time_embedding(t.astype(dtype))
        if self.add_embedding is not None:
            if text_embeds is None or time_ids is None:
                raise ValueError(
                    "this UNet (addition_embed_type 'text_time', SDXL) needs text_embeds and time_ids"
                )
            b = text_embeds.shape[0]
            tid = timestep_embedding(
                time_ids.reshape(-1), cfg.addition_time_embed_dim, flip_sin_to_cos=cfg.flip_sin_to_cos,
                downscale_freq_shift=cfg.freq_shift,
            ).reshape(b, -1)  # fmt: skip
            add = jnp.concatenate([text_embeds.astype(jnp.float32), tid], axis=-1).astype(emb.dtype)
            emb = emb + self.add_embedding(add)
        return emb

    def __call__(
        self,
        sample: Float[Array, "b h w ci"],
        timesteps: Float[Array, " b"] | float,
        encoder_hidden_states: Float[Array, "b t j"],
        *,
        text_embeds: Float[Array, "b p"] | None = None,
        time_ids: Float[Array, "b k"] | None = None,
    ) -> Float[Array, "b h w co"]:
        """Predicts noise (or v, or the sample, per the scheduler's prediction_type) for latents at timesteps.

        Args:
            sample: noisy latents [B, H, W, Ci] (channels-last), in the model's dtype.
            timesteps: [B] or a scalar, in the scheduler's values (0..1000, possibly fractional).
            encoder_hidden_states: text embeddings [B, T, J].
            text_embeds: SDXL's pooled text embeddings [B, P] (addition_embed_type "text_time" only).
            time_ids: SDXL's (original size, crop top-left, target size) [B, 6] (idem).

        Returns:
            [B, H, W, Co] in the sample's dtype.
        """
        b = sample.shape[0]
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32), (b,))
        temb = self.embed_time(timesteps, sample.dtype, text_embeds, time_ids)
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, res = block(x, temb, encoder_hidden_states)
            skips.extend(res)
        if self.mid_block is not None:
            x = self.mid_block(x, temb, encoder_hidden_states)
        for block in self.up_blocks:
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            size = tuple(skips[-1].shape[1:3]) if skips else None
            x = block(x, res, temb, encoder_hidden_states, size)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))
