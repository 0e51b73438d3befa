"""diffusers `AutoencoderKL`, the image VAE of Stable Diffusion, SDXL and FLUX.1."""

from jdiff.models.autoencoder_kl.config import AutoencoderKLConfig
from jdiff.models.autoencoder_kl.vae import AutoencoderKL

__all__ = ["AutoencoderKL", "AutoencoderKLConfig"]
