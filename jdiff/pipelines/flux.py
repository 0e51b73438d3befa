"""The FLUX.1 text-to-image pipeline (dev and schnell), stage by stage as SGLang Diffusion runs it:
validate -> encode text -> timesteps -> latents -> denoise -> decode -> post-process.

Axis letters: B batch, T text tokens, J T5 width, P pooled width, C latent channels, h/w latent height/width,
S = (h/2)(w/2) packed tokens, H/W image height/width.

Every jitted stage takes the weights and all per-request values as arguments: one compile per shape serves
every prompt, seed, guidance scale and resolution-dependent shift. `trace_counts` counts traces per stage.
"""

from __future__ import annotations

import collections
import time
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff import compiler_options
from jdiff import sharding as sh
from jdiff.errors import InputError
from jdiff.layers.rope import rope_cos_sin
from jdiff.models.config import from_dict
from jdiff.parallel.placement import context, gather, put
from jdiff.pipelines.base import (
    IMAGE_SUFFIXES,
    GenerationResult,
    check_outputs,
    check_size,
    check_trained_size,
    finite_nonneg,
    negatives_for,
    noise_from_keys,
    noise_keys,
    positive_int,
    progress_bar,
    prompts_of,
    run_while_preparing,
    save_images,
    seeds_of,
    to_pil,
    warn,
    warn_truncated,
)
from jdiff.pipelines.model_dir import ModelDir
from jdiff.presets import load_preset
from jdiff.sampling.flow_match import FlowMatchEulerConfig, calculate_shift, default_sigmas, schedule
from jdiff.sampling.loop import euler_loop, set_progress_hook

T5_HINT = " or raise max_sequence_length (at most 512)"


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


class FluxPipeline:
    """FLUX.1 text-to-image from a diffusers-format directory or a converted jdiff checkpoint."""

    family = "flux"
    is_video = False

    def __init__(self, model: ModelDir, *, dtype, placement=None):
        self.dtype = jnp.dtype(dtype)
        self.placement = placement
        sched_cls = model.components().get("scheduler", ("", ""))[1]
        if sched_cls != "FlowMatchEulerDiscreteScheduler":
            raise InputError(f"FLUX needs a FlowMatchEulerDiscreteScheduler, {model.root} has {sched_cls!r}")
        self.scheduler = from_dict(FlowMatchEulerConfig, model.scheduler_config())
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
            "flux-dev" if tc.guidance_embeds else "flux-schnell",
            model.root,
            sample_size=vc.sample_size,  # a small custom model's own size, not 1024x1024
            multiple=2 * self.vae_scale_factor,
        )
        self.latent_channels = vc.latent_channels
        self.trace_counts: collections.Counter[str] = collections.Counter()
        self._decoders: set = set()  # decoder programs prepared (`run_while_preparing`)

        self._defs, self._params = {}, {}
        for name, module in (("transformer", transformer), ("clip", clip), ("t5", t5), ("vae", vae)):
            self._defs[name], self._params[name] = nnx.split(module)
        self._encode = compiler_options.jit(self._encode_fn)
        self._denoise = compiler_options.jit(
            self._denoise_fn, static_argnames=("progress", "cfg", "noise_shape")
        )
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
        sigmas,
        timesteps,
        guidance,
        cfg_scale,
        *,
        progress,
        cfg,
        noise_shape,
    ):
        """Runs the whole sampling loop. With `cfg`, embeds/pooled hold [negative; positive] (true CFG).

        `init` is the packed starting latents, or with a `noise_shape` (C, h, w) the seeds' noise keys: the
        noise is drawn and packed here, so a request compiles nothing outside the three stages.
        """
        self.trace_counts["denoise"] += 1
        model = nnx.merge(self._defs["transformer"], params)
        latents = init if noise_shape is None else pack_latents(noise_from_keys(init, noise_shape))
        latents = sh.constrain(latents, (sh.BATCH, None, None))

        # Every step's AdaLN vectors at once, before the loop: one pass over the modulation weights per request
        # instead of one per step. Rows are step-major: [n * Bm] for the model's batch Bm.
        n, bm = timesteps.shape[0], embeds.shape[0]
        g = None if guidance is None else jnp.concatenate([guidance, guidance]) if cfg else guidance
        modulation = model.modulation(
            jnp.repeat(timesteps / 1000, bm),
            jnp.tile(pooled, (n, 1)),
            None if g is None else jnp.tile(g, n),
        )
        per_step = jax.tree.map(lambda m: _steps_first(m, n), modulation)

        def velocity(x, t, mod):
            xb = jnp.concatenate([x, x]) if cfg else x
            v = model.predict(xb.astype(self.dtype), embeds, mod, (cos, sin)).astype(jnp.float32)
            if cfg:
                neg, pos = jnp.split(v, 2)
                v = neg + cfg_scale * (pos - neg)
            return v

        return euler_loop(velocity, latents, sigmas, timesteps, per_step=per_step, progress=progress)

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

    # ---- request handling ---------------------------------------------------------------------------------

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

    def generate(
        self,
        prompt,
        *,
        negative_prompt=None,
        height=None,
        width=None,
        num_frames=None,
        num_inference_steps=None,
        guidance_scale=None,
        guidance_scale_2=None,
        true_cfg_scale=None,
        max_sequence_length=None,
        seed=0,
        latents=None,
        image=None,
        num_outputs_per_prompt=1,
        output_type="pil",
        output_path=None,
        progress=False,
    ) -> GenerationResult:
        t_start = time.perf_counter()
        p = self.preset
        prompts = prompts_of(prompt)
        warned: list[str] = []  # result.warnings (`base.warn`)
        if num_frames not in (None, 1):
            raise InputError("FLUX.1 makes images: num_frames must be omitted (or 1)")
        if image is not None:
            raise InputError("FLUX.1 text-to-image takes no conditioning image; use an image-edit model")
        if guidance_scale_2 is not None:
            raise InputError(
                "guidance_scale_2 is for two-expert models (Wan2.2 A14B); FLUX.1 has one transformer"
            )
        height = p["height"] if height is None else height
        width = p["width"] if width is None else width
        check_size(height, width, 2 * self.vae_scale_factor, "FLUX.1 (VAE factor x 2x2 patches)")
        check_trained_size(warned, height, width, p)
        steps = positive_int(
            p["num_inference_steps"] if num_inference_steps is None else num_inference_steps,
            "num_inference_steps",
        )
        guidance = finite_nonneg(
            p["guidance_scale"] if guidance_scale is None else guidance_scale, "guidance_scale"
        )
        true_cfg = finite_nonneg(1.0 if true_cfg_scale is None else true_cfg_scale, "true_cfg_scale")
        max_len = positive_int(
            p["max_sequence_length"] if max_sequence_length is None else max_sequence_length,
            "max_sequence_length",
        )
        if max_len > 512:
            raise InputError(f"max_sequence_length {max_len} exceeds T5's 512 tokens")
        n_per = positive_int(num_outputs_per_prompt, "num_outputs_per_prompt")
        check_outputs(output_type, output_path, IMAGE_SUFFIXES, "images")
        cfg = negative_prompt is not None and true_cfg > 1
        negatives = negatives_for(negative_prompt, prompts) if cfg else None
        self._warn_ignored(
            warned,
            None if guidance_scale is None else guidance,
            None if true_cfg_scale is None else true_cfg,
            negative_prompt,
        )

        timings = {}
        t0 = time.perf_counter()
        # One encoder call for the whole batch, [negatives; prompts] with each text repeated per output: host-side
        # repeats and concatenations, where device-side ones would compile small programs on every start.
        texts = [t for t in (negatives or []) + prompts for _ in range(n_per)]
        warn_truncated(
            warned, self.tokenizer, (negatives or []) + prompts, self.tokenizer.model_max_length, "CLIP"
        )
        warn_truncated(warned, self.tokenizer_2, (negatives or []) + prompts, max_len, "T5", T5_HINT)
        embeds, pooled = self.encode_prompts(texts, max_len)
        jax.block_until_ready((embeds, pooled))
        timings["text_encoding"] = time.perf_counter() - t0

        batch = len(prompts) * n_per
        seeds = seeds_of(seed, batch)
        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
        seq_len = (h // 2) * (w // 2)
        init, noise_shape = self._initial_latents(latents, seeds, batch, h, w)
        init = put(self.placement, init, None if noise_shape else (sh.BATCH, None, None))
        sc = self.scheduler
        mu = calculate_shift(
            seq_len, sc.base_image_seq_len, sc.max_image_seq_len, sc.base_shift, sc.max_shift
        )
        sigmas, timesteps = schedule(sc, default_sigmas(steps), mu=mu)
        cos, sin = _rope_tables(
            embeds.shape[1], h // 2, w // 2, tuple(self.transformer_config.axes_dims_rope)
        )
        g = np.full((batch,), guidance, np.float32) if self.transformer_config.guidance_embeds else None

        t0 = time.perf_counter()
        bar = progress_bar(steps) if progress else None
        try:
            with context(self.placement):
                args = (
                    self._params["transformer"],
                    init,
                    embeds,
                    pooled,
                    cos,
                    sin,
                    sigmas,
                    timesteps,
                    g,
                    np.float32(true_cfg),
                )
                kwargs = dict(progress=bar is not None, cfg=cfg, noise_shape=noise_shape)
                final = run_while_preparing(
                    self._denoise,
                    args,
                    kwargs,
                    following=None if output_type == "latent" else self._decode,
                    following_args=lambda spec: (self._params["vae"], spec, h, w),
                    done=self._decoders,
                    key=(init.shape, embeds.shape, steps, h, w, *kwargs.values()),
                )
                final = jax.block_until_ready(final)
        finally:
            if bar is not None:
                set_progress_hook(None)
                bar.close()
        timings["denoising"] = time.perf_counter() - t0

        result = GenerationResult(latents=gather(final), timings=timings, seeds=seeds, warnings=warned)
        if output_type != "latent":
            t0 = time.perf_counter()
            with context(self.placement):
                images = gather(self._decode(self._params["vae"], final, h, w))
            timings["decoding"] = time.perf_counter() - t0
            result.images = images if output_type == "np" else to_pil(images)
            if output_path is not None and jax.process_index() == 0:  # one writer in multi-host runs
                result.paths = save_images(images, output_path)
        timings["total"] = time.perf_counter() - t_start
        return result

    def _warn_ignored(self, warned, guidance, true_cfg, negative_prompt) -> None:
        """Warnings for what a request gives and FLUX ignores (`guidance`, `true_cfg`: None when not given)."""
        if not self.transformer_config.guidance_embeds and guidance not in (
            None,
            self.preset["guidance_scale"],
        ):
            warn(
                warned,
                f"guidance_scale {guidance:g} is ignored: this model has no guidance embedding (as FLUX.1-schnell); "
                "true CFG (a negative prompt with true_cfg_scale > 1) is what guides it",
            )
        if negative_prompt is not None and (true_cfg or 1.0) <= 1:
            warn(
                warned,
                "negative_prompt is ignored: FLUX uses it only with true_cfg_scale > 1 (--true-cfg-scale)",
            )
        if negative_prompt is None and (true_cfg or 1.0) > 1:
            warn(warned, "true_cfg_scale is ignored without a negative_prompt (true CFG needs one)")

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
        if not np.isfinite(arr).all():
            raise InputError("latents contain NaN or infinite values")
        return (pack_latents(arr) if arr.shape == unpacked_shape else arr), None


def _steps_first(m: jax.Array, n: int) -> jax.Array:
    """A modulation leaf computed for step-major rows, [*layers, n * Bm, K] -> [n, *layers, Bm, K]."""
    m = m.reshape(*m.shape[:-2], n, -1, m.shape[-1])
    return jnp.moveaxis(m, -3, 0)


__all__ = ["FluxPipeline", "pack_latents", "unpack_latents_nhwc"]
