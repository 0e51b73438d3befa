"""Wan's hooks for step-level continuous batching (`jdiff.pipelines.slots`), a mixin of `WanPipeline`.

Text-to-video with one expert (Wan2.1 T2V, Wan2.2 TI2V-5B without an image): each slot holds one video's
latents [F, h, w, C], its [negative; prompt] text embeddings and its guidance scale; a bucket is (latent
frames, latent height, latent width, text length, CFG on or off). Every step runs the transformer once on
[S negatives; S prompts] with per-slot timesteps (per token on Wan2.2's TI2V model) and guides each slot with
its own scale. Image-to-video, two-expert (A14B) models, step caching, given latents and loaded LoRA adapters
keep request-level batching. Wan's default solver, UniPC, reads the request's own step count from the padded
schedule (`slots.pad_schedule`).

Axis letters: S slots, F latent frames, h/w latent height/width, C latent channels, L text tokens, D text width.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff.pipelines import slots
from jdiff.pipelines.request import Request


class WanSlots:
    """The slot hooks (see `jdiff.pipelines.slots` for what each returns)."""

    def slot_refusal(self, request: Request) -> str | None:
        for why, refused in (
            ("a conditioning image", self.i2v or request.images is not None),
            ("a two-expert model", "transformer_2" in self._params),
        ):
            if refused:
                return f"{why} runs with request-level batching"
        return None

    def slot_bucket(self, request: Request, cond) -> tuple:
        return ("wan", *self._latent_grid(request))

    def slot_schedule(self, request: Request):
        return self.sampler.schedule(self.scheduler, request.steps)

    def slot_inputs(self, request: Request, cond):
        embeds = cond[0]  # [1 or 2, L, D]: [negative; prompt] with CFG
        noise = slots.noise(request, (*self._latent_grid(request), self.z_dim))
        return noise, (embeds, np.float32(request.guidance_scale))

    def slot_shared(self, request: Request, cond):
        return self._rope(request)

    def slot_params(self):
        return self._params["transformer"]

    def slot_model(self, params, rope, cond, x, t, run):
        """The guided velocity for every slot [S, F, h, w, C] at per-slot timesteps t [S] (traced)."""
        embeds, scale = cond  # [S, 1 or 2, L, D], [S]
        model = nnx.merge(self._defs["transformer"], params)
        s, cfg = x.shape[0], embeds.shape[1] == 2
        tt = t
        if self.expand_timesteps:  # one timestep per token, as the plain loop without an image
            p = self.transformer_config.patch_size
            tokens = int(np.prod([len(range(0, n, q)) for n, q in zip(x.shape[1:4], p, strict=True)]))
            tt = jnp.broadcast_to(t[:, None], (s, tokens))
        xin = x.astype(self.dtype)
        emb = embeds[:, -1]
        if cfg:
            xin, tt, emb = (
                jnp.concatenate([xin, xin]),
                jnp.concatenate([tt, tt]),
                embeds.swapaxes(0, 1).reshape(2 * s, *embeds.shape[2:]),
            )
        v = model(xin, tt, emb, rope, None).astype(jnp.float32)
        if cfg:
            neg, pos = jnp.split(v, 2)
            v = neg + scale.reshape(-1, *(1,) * (v.ndim - 1)) * (pos - neg)
        return v


__all__ = ["WanSlots"]
