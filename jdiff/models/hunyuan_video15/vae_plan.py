"""Conversion plan for diffusers `AutoencoderKLHunyuanVideo15`.

The jdiff module mirrors diffusers' module tree, so the default rules map the convs (Conv3d `weight` ->
channels-last `kernel`); the RMS norms' `gamma` loads in its reference shape, as in the Wan VAE's plan.
"""

from jdiff.models.hunyuan_video15.config import HunyuanVideo15VAEConfig
from jdiff.models.hunyuan_video15.vae import AutoencoderKLHunyuanVideo15
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan, Rule

PLAN = Plan(rules=(Rule(r"(.+)\.gamma", r"\1.gamma"),))

SPEC = ComponentSpec(
    "AutoencoderKLHunyuanVideo15", HunyuanVideo15VAEConfig, AutoencoderKLHunyuanVideo15, PLAN
)
