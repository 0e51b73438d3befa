"""diffusers `AutoencoderKLWan`, the causal 3D video VAE of Wan2.1 and Wan2.2."""

from jdiff.models.wan_vae.config import WanVAEConfig
from jdiff.models.wan_vae.vae import AutoencoderKLWan

__all__ = ["AutoencoderKLWan", "WanVAEConfig"]
