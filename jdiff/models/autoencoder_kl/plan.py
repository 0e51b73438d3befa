"""Conversion plan for diffusers `AutoencoderKL` (the SD / SDXL / FLUX.1 VAE).

The jdiff module mirrors the diffusers module tree (`nnx.List` where diffusers has a `ModuleList`, `None`
where it has a param-less or absent module), so the default rules map every parameter: conv and linear
`weight` -> `kernel` (transposed / permuted to channels-last), GroupNorm `weight` -> `scale`, `bias` ->
`bias`.

Reference quirk not handled here: diffusers-format VAEs saved before diffusers 0.14 name the mid-block
attention `query` / `key` / `value` / `proj_attn` instead of `to_q` / `to_k` / `to_v` / `to_out.0` (diffusers
renames them on load). Such files fail with the missing and unexpected keys listed; re-save them with a
current diffusers (`AutoencoderKL.from_pretrained(...).save_pretrained(...)`).
"""

from __future__ import annotations

from jdiff.models.autoencoder_kl.config import AutoencoderKLConfig
from jdiff.models.autoencoder_kl.vae import AutoencoderKL
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan

PLAN = Plan()

SPEC = ComponentSpec("AutoencoderKL", AutoencoderKLConfig, AutoencoderKL, PLAN)
