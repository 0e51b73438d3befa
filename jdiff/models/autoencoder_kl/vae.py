"""diffusers' `AutoencoderKL`: the convolutional image VAE of Stable Diffusion, SDXL and FLUX.1.

Axis letters: B batch, Hi/Wi image height/width, Ci/Co image channels in/out, H/W latent height/width
(Hi / downsample_factor), Z latent channels, C feature channels.

Channels-last at the API and inside ([B, H, W, C]); pipelines transpose from and to NCHW. Attribute paths
mirror diffusers' state-dict names (`encoder.down_blocks.0.resnets.1.conv2`, `quant_conv`, ...), so the
conversion plan is the default rules alone. Activations keep the input dtype; norms compute in float32.
Latent scaling (`scaling_factor`, `shift_factor`) is the pipeline's job, as in diffusers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from jdiff.layers import Conv, GroupNorm
from jdiff.models.autoencoder_kl.blocks import EPS, DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D
from jdiff.models.autoencoder_kl.config import AutoencoderKLConfig

# diffusers' DiagonalGaussianDistribution clamps the log-variance to this range before anything uses it.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class Encoder(nnx.Module):
    """diffusers `Encoder(double_z=True)`: image -> 2Z moments (mean and log-variance, concatenated)."""

    def __init__(self, cfg: AutoencoderKLConfig, *, rngs: nnx.Rngs):
        ch, groups = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = Conv(cfg.in_channels, ch[0], (3, 3), padding=1, rngs=rngs)
        # diffusers starts the running width at ch[0], so the first block's input width is ch[0] too.
        self.down_blocks = nnx.List(
            [
                DownEncoderBlock2D(
                    ch[max(i - 1, 0)],
                    ch[i],
                    groups,
                    num_layers=cfg.layers_per_block,
                    downsample=i < len(ch) - 1,
                    rngs=rngs,
                )
                for i in range(len(ch))
            ]
        )
        self.mid_block = UNetMidBlock2D(ch[-1], groups, add_attention=cfg.mid_block_add_attention, rngs=rngs)
        self.conv_norm_out = GroupNorm(groups, ch[-1], eps=EPS)
        self.conv_out = Conv(ch[-1], 2 * cfg.latent_channels, (3, 3), padding=1, rngs=rngs)

    def __call__(self, x: Float[Array, "b hi wi ci"]) -> Float[Array, "b h w 2*z"]:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        # The final activation is always SiLU in diffusers, whatever `act_fn` says.
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    """diffusers `Decoder(norm_type="group")`: latent -> image, widths reversed, one more resnet a level."""

    def __init__(self, cfg: AutoencoderKLConfig, *, rngs: nnx.Rngs):
        ch, groups = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups
        self.conv_in = Conv(cfg.latent_channels, ch[0], (3, 3), padding=1, rngs=rngs)
        self.mid_block = UNetMidBlock2D(ch[0], groups, add_attention=cfg.mid_block_add_attention, rngs=rngs)
        self.up_blocks = nnx.List(
            [
                UpDecoderBlock2D(
                    ch[max(i - 1, 0)],
                    ch[i],
                    groups,
                    num_layers=cfg.layers_per_block + 1,
                    upsample=i < len(ch) - 1,
                    rngs=rngs,
                )
                for i in range(len(ch))
            ]
        )
        self.conv_norm_out = GroupNorm(groups, ch[-1], eps=EPS)
        self.conv_out = Conv(ch[-1], cfg.out_channels, (3, 3), padding=1, rngs=rngs)

    def __call__(self, z: Float[Array, "b h w z"]) -> Float[Array, "b hi wi co"]:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
    """diffusers `AutoencoderKL`: encoder, decoder and the optional 1x1 quant / post-quant convs.

    FLUX.1 has neither 1x1 conv (`use_quant_conv=False`, `use_post_quant_conv=False`); SD and SDXL have both.
    """

    def __init__(self, cfg: AutoencoderKLConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        z = cfg.latent_channels
        self.encoder = Encoder(cfg, rngs=rngs)
        self.decoder = Decoder(cfg, rngs=rngs)
        self.quant_conv = Conv(2 * z, 2 * z, (1, 1), rngs=rngs) if cfg.use_quant_conv else None
        self.post_quant_conv = Conv(z, z, (1, 1), rngs=rngs) if cfg.use_post_quant_conv else None

    def encode(
        self, x: Float[Array, "b hi wi ci"]
    ) -> tuple[Float[Array, "b h w z"], Float[Array, "b h w z"]]:
        """The moments of the latent distribution (diffusers `encode(x).latent_dist.mean` / `.logvar`).

        Args:
            x: images [B, Hi, Wi, Ci], usually in [-1, 1]; Hi and Wi are best multiples of
                `cfg.downsample_factor` (otherwise each downsampler floors, as diffusers does).

        Returns:
            (mean, logvar), each [B, H, W, Z]; logvar is clamped to [-30, 20] as diffusers does.
            Sample with `mean + exp(logvar / 2) * noise`, or take `mean` for a deterministic latent.
        """
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: Float[Array, "b h w z"]) -> Float[Array, "b hi wi co"]:
        """Decodes (unscaled) latents to images (diffusers `decode(z).sample`).

        Args:
            z: latents [B, H, W, Z] in the VAE's own scale, i.e. after the pipeline undid
                `(z - shift_factor) * scaling_factor`.

        Returns:
            images [B, H * downsample_factor, W * downsample_factor, Co], roughly in [-1, 1] (not clipped).
        """
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)
