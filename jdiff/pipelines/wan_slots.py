"""Wan's hooks for step-level continuous batching (`jdiff.pipelines.slots`), a mixin of `WanPipeline`.

Every Wan model and mode runs in slots: text-to-video, image-to-video (Wan2.1 I2V: the image condition, mask
and latents, concatenated on channels, and CLIP image tokens; Wan2.2 TI2V-5B: the image latent in frame 0 with
per-token timesteps zero there), with one expert or two (Wan2.2 A14B). Each slot holds one video's latents
[F, h, w, C], its text embeddings [R, L, D] (R = 2 with CFG: [negative; prompt]), its guidance scales (the
high- and the low-noise expert's) and, with an image, its condition and image tokens; a bucket is the latent
grid plus the slot row's shapes (text length, CFG on or off, image or not). Every step runs the transformer
once on [S negatives; S prompts] with per-slot timesteps and guides each slot with its own scale. Wan's
default solver, UniPC, reads the request's own step count from the padded schedule (`slots.pad_schedule`).

Two experts: as the plain loop, a slot at timestep t >= boundary_ratio * 1000 takes the high-noise expert
(`transformer`, guidance_scale) and the others the low-noise one (`transformer_2`, guidance_scale_2). Each
expert runs on all S slots' rows inside its own `lax.cond`, taken when some advancing slot needs it, and each
slot keeps its own expert's output: a step where every advancing slot is on one side of the boundary runs
one expert, as the plain loop; a step where the slots straddle it runs both, on all S rows each (twice the
transformer's cost for that step; at most while one request crosses the boundary as another is on the other
side). A slot's bytes do not depend on which branches ran: each expert's call is the same computation in
either case. With `serial` (batch-1 calls slot by slot), each slot runs its own expert only.

Axis letters: S slots, R text rows, F latent frames, h/w latent height/width, C latent channels, L text
tokens, D text width, I image tokens, E image width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff.pipelines import slots
from jdiff.pipelines.request import Request


class WanSlots:
    """The slot hooks (see `jdiff.pipelines.slots` for what each returns), and the model inputs the plain loop
    builds the same way (`model_input`, `model_timesteps`)."""

    # ---- what the plain loop and the slots share ------------------------------------------------------------

    def model_input(self, x: jax.Array, condition: jax.Array | None, mode: str) -> jax.Array:
        """The transformer's latents for samples x [B, F, h, w, C]: x, with the image condition concatenated on
        channels ("i2v") or put in frame 0 ("ti2v": Wan2.2 TI2V keeps the image latent there)."""
        if mode == "i2v":
            return jnp.concatenate([x, condition], axis=-1)
        if mode == "ti2v":
            keep = _keep(x.shape[1:4])
            return (1 - keep) * condition + keep * x
        return x

    def model_timesteps(self, t: jax.Array, grid: tuple[int, int, int], mode: str) -> jax.Array:
        """Per-sample timesteps t [B] as the transformer takes them: [B], or with `expand_timesteps` (Wan2.2
        TI2V) one per token [B, L], zero on the kept image frame ("ti2v")."""
        if not self.expand_timesteps:
            return t
        p = self.transformer_config.patch_size
        base = _keep(grid)[0, ..., 0] if mode == "ti2v" else jnp.ones(grid, jnp.float32)
        per_token = base[:: p[0], :: p[1], :: p[2]]
        return per_token.reshape(1, -1) * t[:, None]

    # ---- the slot hooks ---------------------------------------------------------------------------------------

    def slot_refusal(self, request: Request) -> str | None:
        return None

    def slot_bucket(self, request: Request, cond) -> tuple:
        return ("wan", *self._latent_grid(request))

    def slot_schedule(self, request: Request):
        return self.sampler.schedule(self.scheduler, request.steps)

    def slot_inputs(self, request: Request, cond):
        embeds, condition, image_embeds, _ = cond  # [R, L, D], [1, F, h, w, C'] or None, [1, I, E] or None
        noise = slots.noise(request, (*self._latent_grid(request), self.z_dim))
        scales = np.asarray(self._guidance(request), np.float32)  # [2]: each expert's guidance scale
        image = [None if a is None else a[0] for a in (condition, image_embeds)]
        return noise, (embeds, scales, *image)

    def slot_shared(self, request: Request, cond):
        return self._rope(request)

    def slot_params(self):
        return {name: self._params[name] for name in ("transformer", "transformer_2") if name in self._params}

    def _slot_mode(self, condition) -> str:
        return "t2v" if condition is None else "ti2v" if self.expand_timesteps else "i2v"

    def slot_output(self, cond, x):
        """One slot's final latents: with the TI2V image, its latent in frame 0 (as the plain loop ends)."""
        condition = cond[2]
        mode = self._slot_mode(condition)
        return self.model_input(x[None], condition[None], mode)[0] if mode == "ti2v" else x

    def slot_model(self, params, rope, cond, x, t, run):
        """The guided velocity for every slot [S, F, h, w, C] at per-slot timesteps t [S] (traced)."""
        embeds, scales, condition, image = (
            cond  # [S, R, L, D], [S, 2], [S, F, h, w, C'] or None, [S, I, E] or None
        )
        mode = self._slot_mode(condition)
        r = embeds.shape[1]
        xin = self.model_input(x, condition, mode).astype(self.dtype)
        xs, ts, emb = slots.cfg_rows(xin, self.model_timesteps(t, x.shape[1:4], mode), embeds)
        img = None if image is None else jnp.concatenate([image] * r)

        def expert(name, scale):
            v = nnx.merge(self._defs[name], params[name])(xs, ts, emb, rope, img).astype(jnp.float32)
            return slots.guided(v, scale) if r == 2 else v

        if "transformer_2" not in params:
            return expert("transformer", scales[:, 0])
        high = t >= self.boundary_ratio * self._num_train_timesteps()
        zeros = jnp.zeros(x.shape, jnp.float32)
        v_high = jax.lax.cond(jnp.any(high & run), lambda: expert("transformer", scales[:, 0]), lambda: zeros)
        v_low = jax.lax.cond(
            jnp.any(~high & run), lambda: expert("transformer_2", scales[:, 1]), lambda: zeros
        )
        return jnp.where(slots.per_slot(high, x), v_high, v_low)


def _keep(grid: tuple[int, int, int]) -> jax.Array:
    """[1, F, h, w, 1]: 0 on the first latent frame (TI2V's image), 1 elsewhere."""
    return jnp.ones(grid, jnp.float32).at[0].set(0.0)[None, :, :, :, None]


__all__ = ["WanSlots"]
