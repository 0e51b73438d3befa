"""Conversion plan for diffusers `AutoencoderKLWan` (the Wan2.1 and Wan2.2 video VAEs).

The jdiff module mirrors diffusers' module tree (`nnx.List` where diffusers has a `ModuleList` or an
`nn.Sequential`, `None` for their parameter-free entries), so the default rules map the convs: Conv3d / Conv2d
`weight` -> `kernel` permuted to channels-last, `bias` -> `bias`. The one extra rule is for `WanRMS_norm`,
whose parameter is named `gamma` and kept in its reference shape ([C, 1, 1, 1], or [C, 1, 1] in the
attention blocks), so it loads unchanged.

Reference quirk not handled here: the original Wan checkpoints (`Wan2.1_VAE.pth`, `Wan2.2_VAE.pth`) use
other names (`encoder.downsamples.*`, `middle.*`, `head.*`, `conv1` / `conv2` for the quant convs);
diffusers' single-file loader renames them. Use the diffusers-format `vae/` folder.
"""

from __future__ import annotations

from jdiff.models.wan_vae.config import WanVAEConfig
from jdiff.models.wan_vae.vae import AutoencoderKLWan
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan, Rule

PLAN = Plan(rules=(Rule(r"(.+)\.gamma", r"\1.gamma"),))

SPEC = ComponentSpec("AutoencoderKLWan", WanVAEConfig, AutoencoderKLWan, PLAN)
