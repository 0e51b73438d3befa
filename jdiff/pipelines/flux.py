"""The FLUX.1 text-to-image pipeline (dev and schnell), stage by stage as SGLang Diffusion runs it:
validate -> encode text -> timesteps -> latents -> denoise -> decode -> post-process.

Axis letters: B batch, T text tokens, J T5 width, P pooled width, C latent channels, h/w latent height/width,
S = (h/2)(w/2) packed tokens, H/W image height/width.

Every jitted stage takes the weights and all per-request values as arguments: one compile per shape serves
every prompt, seed, guidance scale and resolution-dependent shift. `trace_counts` counts traces per stage.
"""

from __future__ import annotations

import collections
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff import compiler_options
from jdiff import sharding as sh
from jdiff.errors import InputError
from jdiff.layers.embeddings import pipeline_sigma
from jdiff.layers.rope import rope_cos_sin
from jdiff.parallel.placement import context, put
from jdiff.pipelines import lora, slots
from jdiff.pipelines.base import warn, warn_truncated
from jdiff.pipelines.family import Family
from jdiff.pipelines.model_dir import ModelDir
from jdiff.pipelines.pipeline import Pipeline, Stage
from jdiff.pipelines.request import Request
from jdiff.presets import load_preset
from jdiff.sampling.loop import steps_first
from jdiff.sampling.noise import noise_from_keys, noise_keys
from jdiff.sampling.step_cache import CachedModel

# TeaCache's rescaling polynomial for FLUX.1 (np.poly1d order), fitted by its authors on FLUX.1-dev:
# ali-vilab/TeaCache, TeaCache4FLUX/teacache_flux.py. diffusers 0.42.1 has no TeaCache hook.
TEACACHE_FLUX = (4.98651651e02, -2.83781631e02, 5.58554382e01, -3.82021401e00, 2.64230861e-01)


def pack_latents(latents: jax.Array) -> jax.Array:
    """[B, C, h, w] -> [B, S, 4C]: 2x2 patches as tokens, channel-major within a token (diffusers' order)."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents_nhwc(latents: jax.Array, h: int, w: int) -> jax.Array:
    """[B, S, 4C] -> [B, h, w, C] (channels-last, what the VAE takes)."""
    b, _, c4 = latents.shape
    x = latents.reshape(b, h // 2, w // 2, c4 // 4, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h, w, c4 // 4)


@lru_cache(maxsize=16)
def _rope_tables(text_len: int, h2: int, w2: int, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    img = np.zeros((h2, w2, 3), np.float64)
    img[..., 1] = np.arange(h2)[:, None]
    img[..., 2] = np.arange(w2)[None, :]
    ids = np.concatenate([np.zeros((text_len, 3)), img.reshape(-1, 3)])
    return rope_cos_sin(ids, axes, 10000.0)


class FluxPipeline(Pipeline):
    """FLUX.1 text-to-image from a diffusers-format directory or a converted jdiff checkpoint."""

    family = "FLUX.1"
    is_video = False
    accepts = frozenset({"negative_prompt", "guidance_scale", "true_cfg_scale", "max_sequence_length"})
    # Default thresholds, measured on the embedded model (docs/benchmarks.md, "Step caching quality").
    step_caches = {"first_block": 0.12, "teacache": 0.6}  # noqa: RUF012
    refusals = {  # noqa: RUF012
        "num_frames": "FLUX.1 makes images: num_frames must be omitted (or 1)",
        "image": "FLUX.1 text-to-image takes no conditioning image; use an image-edit model",
        "guidance_scale_2": "guidance_scale_2 is for two-expert models (Wan2.2 A14B); FLUX.1 has one transformer",
    }

    def __init__(self, model: ModelDir, *, dtype, placement=None):
        self.dtype = jnp.dtype(dtype)
        self.placement = placement
        self.sampler, self.scheduler = model.sampler(flow=True, model="FLUX")
        self.transformer_config, transformer = model.load("transformer", dtype=dtype, placement=placement)
        _, clip = model.load("text_encoder", dtype=dtype, placement=placement)
        _, t5 = model.load("text_encoder_2", dtype=dtype, placement=placement)
        self.vae_config, vae = model.load("vae", dtype=dtype, placement=placement)
        self.tokenizer = model.tokenizer("tokenizer")
        self.tokenizer_2 = model.tokenizer("tokenizer_2")
        tc, vc = self.transformer_config, self.vae_config
        if tc.in_channels != 4 * vc.latent_channels:
            raise InputError(
                f"transformer in_channels {tc.in_channels} != 4 x VAE latent_channels {vc.latent_channels}; "
                "the transformer and VAE come from different models"
            )
        self.vae_scale_factor = 2 ** (len(vc.block_out_channels) - 1)
        self.preset = load_preset(
            FAMILY.preset(model.index, tc),
            model.root,
            sample_size=vc.sample_size,  # a small custom model's own size, not 1024x1024
            multiple=2 * self.vae_scale_factor,
        )
        self.size_multiple = 2 * self.vae_scale_factor  # VAE factor x 2x2 patches
        self.latent_channels = vc.latent_channels
        self.trace_counts: collections.Counter[str] = collections.Counter()

        self._defs, self._params = {}, {}
        for name, module in (("transformer", transformer), ("clip", clip), ("t5", t5), ("vae", vae)):
            self._defs[name], self._params[name] = nnx.split(module)
        self.lora = lora.Adapters(self, model, {"transformer": "transformer", "text_encoder": "clip"})
        self._encode = lora.jit(self._encode_fn)
        self._denoise = lora.jit(self._denoise_fn, static_argnames=("cfg", "noise_shape", "step_cache"))
        self._decode = compiler_options.jit(self._decode_fn, static_argnames=("h", "w"))

    # ---- jitted stages ------------------------------------------------------------------------------------

    def _encode_fn(self, clip_params, t5_params, clip_ids, t5_ids):
        self.trace_counts["encode"] += 1
        _, pooled = nnx.merge(self._defs["clip"], clip_params)(clip_ids)
        # diffusers' FluxPipeline runs T5 without an attention mask: padding tokens are attended to.
        embeds = nnx.merge(self._defs["t5"], t5_params)(t5_ids)
        return embeds.astype(self.dtype), pooled.astype(self.dtype)

    def _denoise_fn(
        self,
        params,
        init,
        embeds,
        pooled,
        cos,
        sin,
        schedule,
        guidance,
        cfg_scale,
        progress,
        cache_params=None,
        *,
        cfg,
        noise_shape,
        step_cache=None,
    ):
        """Runs the whole sampling loop. With `cfg`, embeds/pooled hold [negative; positive] (true CFG).

        `init` is the packed starting latents, or with a `noise_shape` (C, h, w) the seeds' noise keys: the
        noise is drawn and packed here, so a request compiles nothing outside the three stages. `progress` is
        a progress token (or None: no callback compiled in). With a `step_cache` mode and its `cache_params`,
        returns (latents, step-cache statistics).
        """
        self.trace_counts["denoise"] += 1
        model = nnx.merge(self._defs["transformer"], params)
        latents = init if noise_shape is None else pack_latents(noise_from_keys(init, noise_shape))
        latents = sh.constrain(latents, (sh.BATCH, None, None))

        # Every step's AdaLN vectors at once, before the loop: one pass over the modulation weights per request
        # instead of one per step. Rows are step-major: [n * Bm] for the model's batch Bm.
        timesteps = schedule.timesteps
        n, bm = timesteps.shape[0], embeds.shape[0]
        g = None if guidance is None else jnp.concatenate([guidance, guidance]) if cfg else guidance
        modulation = model.modulation(
            jnp.repeat(pipeline_sigma(timesteps, self.dtype), bm),
            jnp.tile(pooled, (n, 1)),
            None if g is None else jnp.tile(g, n),
        )
        per_step = jax.tree.map(lambda m: steps_first(m, n), modulation)

        def batch(x):
            return (jnp.concatenate([x, x]) if cfg else x).astype(self.dtype)

        def guide(v):
            v = v.astype(jnp.float32)
            if cfg:
                neg, pos = jnp.split(v, 2)
                v = neg + cfg_scale * (pos - neg)
            return v

        def velocity(x, t, mod):
            return guide(model.predict(batch(x), embeds, mod, (cos, sin)))

        parts = None
        if step_cache is not None:
            rope = (cos, sin)
            parts = CachedModel(
                embed=lambda x, t, mod: (model.embed(batch(x), embeds), mod),
                first=lambda h, mod: model.first_block(h, mod, rope),
                rest=lambda h, mod: model.rest_blocks(h, mod, rope),
                final=lambda h, mod: guide(model.output(h[0], mod)),
                probe=lambda h: h[0],  # the image stream, as diffusers' hook compares
                modulated=lambda h, mod: model.first_modulated(h[0], mod),
                groups=2 if cfg else 1,
            )
        return self.run_sampler(
            velocity,
            latents,
            schedule,
            per_step=per_step,
            progress=progress,
            cache=(step_cache, cache_params, parts),
        )

    def _decode_fn(self, vae_params, latents, h: int, w: int):
        self.trace_counts["decode"] += 1
        vae = nnx.merge(self._defs["vae"], vae_params)
        # The loop may leave tokens sharded over `context`; the VAE gets latents split by batch only (with the
        # token axis still sharded through the unpacking reshapes, XLA's partitioner gave wrong images).
        latents = sh.constrain(latents, (sh.BATCH, None, None))
        z = sh.constrain(unpack_latents_nhwc(latents, h, w), (sh.BATCH, None, None, None))
        shift = self.vae_config.shift_factor or 0.0
        z = z / self.vae_config.scaling_factor + shift
        image = vae.decode(z.astype(self.dtype)).astype(jnp.float32)
        return jnp.clip(image * 0.5 + 0.5, 0, 1)

    # ---- the hooks of Pipeline.generate ------------------------------------------------------------------

    def encode_prompts(self, prompts: list[str], max_sequence_length: int) -> tuple[jax.Array, jax.Array]:
        clip_ids, _ = self.tokenizer(prompts, self.tokenizer.model_max_length)
        t5_ids, _ = self.tokenizer_2(prompts, max_sequence_length)
        with context(self.placement):
            return self._encode(
                self._params["clip"],
                self._params["t5"],
                put(self.placement, clip_ids),
                put(self.placement, t5_ids),
            )

    def check(self, request: Request) -> None:
        super().check(request)
        if request.max_sequence_length > 512:
            raise InputError(f"max_sequence_length {request.max_sequence_length} exceeds T5's 512 tokens")
        # What a request gives and FLUX ignores: said, not silently dropped.
        given, w = request.given, request.warnings
        unguided = not self.transformer_config.guidance_embeds
        if (
            unguided
            and "guidance_scale" in given
            and request.guidance_scale != self.preset.get("guidance_scale")
        ):
            warn(
                w,
                f"guidance_scale {request.guidance_scale:g} is ignored: this model has no guidance embedding "
                "(as FLUX.1-schnell); true CFG (a negative prompt with true_cfg_scale > 1) is what guides it",
            )
        true_cfg = request.true_cfg_scale or 1.0
        if request.negative_prompts is not None and true_cfg <= 1:
            warn(
                w, "negative_prompt is ignored: FLUX uses it only with true_cfg_scale > 1 (--true-cfg-scale)"
            )
        if request.negative_prompts is None and true_cfg > 1:
            warn(w, "true_cfg_scale is ignored without a negative_prompt (true CFG needs one)")

    def teacache_coefficients(self, request: Request) -> tuple[float, ...]:
        del request
        return TEACACHE_FLUX

    def _true_cfg(self, request: Request) -> bool:
        return request.negative_prompts is not None and (request.true_cfg_scale or 1.0) > 1

    def encode(self, request: Request) -> tuple[jax.Array, jax.Array]:
        # One encoder call for the whole batch, [negatives; prompts] with each text repeated per output: host-side
        # repeats and concatenations, where device-side ones would compile small programs on every start.
        cfg = self._true_cfg(request)
        distinct = (list(request.negative_prompts) if cfg else []) + list(request.prompts)
        w, max_len = request.warnings, request.max_sequence_length
        warn_truncated(w, self.tokenizer, distinct, self.tokenizer.model_max_length, "CLIP")
        warn_truncated(
            w, self.tokenizer_2, distinct, max_len, "T5", " or raise max_sequence_length (at most 512)"
        )
        return self.encode_prompts(request.texts(negatives=cfg), max_len)

    def denoise_stage(self, request: Request, cond, progress) -> Stage:
        embeds, pooled = cond
        h, w = request.height // self.vae_scale_factor, request.width // self.vae_scale_factor
        init, noise_shape = self._initial_latents(request.latents, list(request.seeds), request.batch, h, w)
        init = put(self.placement, init, None if noise_shape else (sh.BATCH, None, None))
        schedule = self.slot_schedule(request)
        cos, sin = _rope_tables(
            embeds.shape[1], h // 2, w // 2, tuple(self.transformer_config.axes_dims_rope)
        )
        guided = self.transformer_config.guidance_embeds
        g = np.full((request.batch,), request.guidance_scale, np.float32) if guided else None
        true_cfg = np.float32(request.true_cfg_scale or 1.0)
        mode, cache_params = self.step_cache(request)
        args = (self._params["transformer"], init, embeds, pooled, cos, sin, schedule, g, true_cfg, progress)
        args += (cache_params,)
        kwargs = dict(cfg=self._true_cfg(request), noise_shape=noise_shape, step_cache=mode)
        return Stage(self._denoise, args, kwargs, key=(init.shape, embeds.shape, request.steps, h, w))

    # ---- step-level continuous batching (`jdiff.pipelines.slots`) ------------------------------------------

    def slot_refusal(self, request: Request) -> str | None:
        if self._true_cfg(request):
            return "true CFG (a negative prompt with true_cfg_scale > 1) runs with request-level batching"
        return None

    def slot_bucket(self, request: Request, cond) -> tuple:
        return ("flux", request.height, request.width)

    def slot_schedule(self, request: Request):
        h, w = request.height // self.vae_scale_factor, request.width // self.vae_scale_factor
        return slots.flow_schedule(self, request.steps, (h // 2) * (w // 2))

    def slot_inputs(self, request: Request, cond):
        embeds, pooled = cond
        h, w = request.height // self.vae_scale_factor, request.width // self.vae_scale_factor
        noise = slots.noise(request, (self.latent_channels, h, w), pack_latents)
        g = np.float32(request.guidance_scale) if self.transformer_config.guidance_embeds else None
        return noise, (embeds[0], pooled[0], g)

    def slot_shared(self, request: Request, cond):
        h, w = request.height // self.vae_scale_factor, request.width // self.vae_scale_factor
        return _rope_tables(
            request.max_sequence_length, h // 2, w // 2, tuple(self.transformer_config.axes_dims_rope)
        )

    def slot_params(self):
        return self._params["transformer"]

    def slot_model(self, params, rope, cond, x, t, run):
        """The velocity for every slot [S, S_tok, 4C] at per-slot timesteps t [S] (traced)."""
        del run  # every slot's row is computed (fixed shapes)
        embeds, pooled, g = cond
        model = nnx.merge(self._defs["transformer"], params)
        modulation = model.modulation(pipeline_sigma(t, self.dtype), pooled, g)
        return model.predict(x.astype(self.dtype), embeds, modulation, rope).astype(jnp.float32)

    def decode_stage(self, request: Request) -> Stage:
        h, w = request.height // self.vae_scale_factor, request.width // self.vae_scale_factor
        return Stage(self._decode, (self._params["vae"],), dict(h=h, w=w), key=(h, w))

    def _initial_latents(self, latents, seeds: list[int], batch: int, h: int, w: int):
        """(init, noise_shape) for `_denoise_fn`: the seeds' noise keys and (C, h, w), or the caller's
        latents packed on the host and None."""
        c = self.latent_channels
        if latents is None:
            return noise_keys(seeds), (c, h, w)
        arr = np.asarray(latents, dtype=np.float32)
        packed_shape, unpacked_shape = (batch, (h // 2) * (w // 2), 4 * c), (batch, c, h, w)
        if arr.shape not in (packed_shape, unpacked_shape):
            raise InputError(
                f"latents have shape {arr.shape}; for {batch} output(s) at this size FLUX expects the packed "
                f"{packed_shape} (diffusers' layout) or the unpacked {unpacked_shape}"
            )
        return (pack_latents(arr) if arr.shape == unpacked_shape else arr), None


FAMILY = Family(
    name="flux",
    pipeline_classes=("FluxPipeline",),
    pipeline=FluxPipeline,
    components={
        "FluxTransformer2DModel": "jdiff.models.flux.plan",
        "CLIPTextModel": "jdiff.models.clip.plan",
        "T5EncoderModel": "jdiff.models.t5.plan",
        "AutoencoderKL": "jdiff.models.autoencoder_kl.plan",
    },
    # dev has a guidance embedding (guidance-distilled); schnell does not.
    preset=lambda index, transformer: "flux-dev" if transformer.guidance_embeds else "flux-schnell",
)

__all__ = ["FAMILY", "FluxPipeline", "pack_latents", "unpack_latents_nhwc"]
