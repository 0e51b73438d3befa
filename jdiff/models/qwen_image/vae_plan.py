"""Conversion plan for diffusers `AutoencoderKLQwenImage`: the Wan VAE's plan (same state-dict layout)."""

from jdiff.models.qwen_image.vae import AutoencoderKLQwenImage, QwenImageVAEConfig
from jdiff.models.wan_vae.plan import PLAN
from jdiff.weights.loading import ComponentSpec

SPEC = ComponentSpec("AutoencoderKLQwenImage", QwenImageVAEConfig, AutoencoderKLQwenImage, PLAN)
