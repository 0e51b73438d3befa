"""Qwen-Image's hooks for step-level continuous batching (`jdiff.pipelines.slots`), a mixin of
`QwenImagePipeline`.

Text-to-image with true CFG on or off: each slot holds one image's packed noise tokens [S0, 4C], its text
embeddings [R, T, J] (R = 2 with true CFG, [negative; prompt], run as the plain loop's one batch of two; else
R = 1), their key mask [R, T] where the plain loop has one (None when no row is padded) and its
true_cfg_scale. Every step runs the transformer once on [S negatives; S prompts] (or the S
prompts) with per-slot timesteps, then guides each slot with its own scale (`QwenImagePipeline.true_cfg`).

T is the request's text length as the plain loop pads it (its longer text's tokens rounded up to
`qwen_image_text.TEXT_BUCKET`), so two requests share a bucket where their size, T, mask and CFG agree (the
runner adds the slot row's shapes to the bucket key): each text bucket compiles its own chunk program, as it
compiles its own plain loop, and fills its own slots. Padding every request to one length would let them all
share slots but change their bytes from the plain loop's.
Edits (input images) keep request-level batching.

Axis letters: S slots, R text rows (1 or 2), T text tokens, J text width, S0 noise tokens, C latent channels.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff.layers.embeddings import pipeline_sigma
from jdiff.models.qwen_image.rope import rope_tables
from jdiff.pipelines import slots
from jdiff.pipelines.flux import pack_latents
from jdiff.pipelines.request import Request


class QwenImageSlots:
    """The slot hooks (see `jdiff.pipelines.slots` for what each returns)."""

    def slot_refusal(self, request: Request) -> str | None:
        if self.edits:
            return "image editing (input images) runs with request-level batching"
        return None

    def slot_bucket(self, request: Request, cond) -> tuple:
        return ("qwen-image", request.height, request.width)

    def _slot_grid(self, request: Request) -> tuple[int, int]:
        return request.height // self.vae_scale_factor, request.width // self.vae_scale_factor

    def slot_schedule(self, request: Request):
        h, w = self._slot_grid(request)
        return slots.flow_schedule(self, request.steps, (h // 2) * (w // 2))

    def slot_inputs(self, request: Request, cond):
        embeds, mask, _, _ = cond  # [R, T, J], [R, T] or None
        noise = slots.noise(request, (self.latent_channels, *self._slot_grid(request)), pack_latents)
        return noise, (embeds, mask, np.float32(request.true_cfg_scale or 1.0))

    def slot_shared(self, request: Request, cond):
        embeds, _, _, grids = cond
        return rope_tables(grids, embeds.shape[1], tuple(self.transformer_config.axes_dims_rope))

    def slot_params(self):
        return self._params["transformer"]

    def slot_model(self, params, rope, cond, x, t, run):
        """The guided velocity for every slot [S, S0, 4C] at per-slot timesteps t [S] (traced)."""
        del run  # every slot's rows are computed (fixed shapes)
        embeds, mask, scale = cond  # [S, R, T, J], [S, R, T] or None, [S]
        model = nnx.merge(self._defs["transformer"], params)
        s0 = x.shape[1]
        xs, ts, (emb, m) = slots.cfg_rows(x.astype(self.dtype), t, (embeds, mask))
        v = model.predict(xs, emb, model.modulation(pipeline_sigma(ts, self.dtype)), rope, m, s0)
        v = v[:, :s0].astype(jnp.float32)
        if embeds.shape[1] == 2:
            neg, pos = jnp.split(v, 2)
            v = self.true_cfg(neg, pos, slots.per_slot(scale, neg))
        return v


__all__ = ["QwenImageSlots"]
