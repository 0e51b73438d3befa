"""Conversion plan for diffusers `AutoencoderKLFlux2`: AutoencoderKL's default rules, plus the batch norm's
running statistics (buffers, not parameters, in torch) kept in float32; its step counter is not used."""

from jdiff.models.flux2.vae import AutoencoderKLFlux2
from jdiff.models.flux2.vae_config import AutoencoderKLFlux2Config
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan, Rule

PLAN = Plan(
    rules=(Rule(r"bn\.(running_mean|running_var)", r"bn.\1"),),
    ignore=(r"bn\.num_batches_tracked",),
    keep_fp32=(r"bn\..+",),
)

SPEC = ComponentSpec("AutoencoderKLFlux2", AutoencoderKLFlux2Config, AutoencoderKLFlux2, PLAN)
