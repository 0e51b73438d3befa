"""The Wan video pipelines: Wan2.1 T2V / I2V, Wan2.2 TI2V-5B and A14B (two experts), as diffusers runs them.

Stages: validate -> encode text (UMT5) -> [encode image: CLIP vision, VAE] -> timesteps -> latents ->
denoise -> decode -> post-process (frames, mp4).

Axis letters: B batch, F latent frames, h/w latent height/width, C latent channels, T text tokens,
I image tokens, NF video frames, H/W video height/width.

Layouts: the loop state is channels-last [B, F, h, w, C]; `latents=` and `result.latents` use diffusers'
[B, C, F, h, w]. True CFG runs as one batch of two ([negative; positive]); with two experts
(`boundary_ratio`), the high-noise expert takes the steps whose timestep is >= boundary_ratio * 1000 and the
low-noise expert the rest, chosen by `lax.cond` inside the one scan, each with its own guidance scale.
"""

from __future__ import annotations

import collections
import html
import re
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff import compiler_options
from jdiff import sharding as sh
from jdiff.errors import InputError
from jdiff.models.wan.rope import post_patch_grid, wan_rope_tables
from jdiff.parallel.placement import context, put
from jdiff.pipelines import lora
from jdiff.pipelines.base import video_latents, warn, warn_truncated
from jdiff.pipelines.family import Family
from jdiff.pipelines.model_dir import ModelDir
from jdiff.pipelines.pipeline import Pipeline, Stage
from jdiff.pipelines.request import Request, negatives_for
from jdiff.pipelines.wan_slots import WanSlots
from jdiff.presets import load_preset
from jdiff.sampling.noise import noise_from_keys
from jdiff.sampling.step_cache import CachedModel

# TeaCache's rescaling polynomials for Wan2.1 (np.poly1d order), fitted by its authors on the time embedding:
# ali-vilab/TeaCache, TeaCache4Wan2.1/teacache_generate.py (the default mode, not `use_ret_steps`). Models of
# other widths (Wan2.2 TI2V-5B) take the 14B one, as TeaCache's Wan2.2 port does. diffusers has no TeaCache.
TEACACHE_WAN = {
    "1.3b": (2.39676752e03, -1.31110545e03, 2.01331979e02, -8.29855975e00, 1.37887774e-01),
    "14b": (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404),
    "i2v_480p": (-3.02331670e02, 2.23948934e02, -5.25463970e01, 5.87348440e00, -2.01973289e-01),
    "i2v_720p": (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683),
}

# Rotary tables depend only on the config and the latent shape: computed once per shape, on the host.
_rope_tables = lru_cache(maxsize=16)(wan_rope_tables)


def prompt_clean(text: str) -> str:
    """diffusers' Wan `prompt_clean`: ftfy's text repair when installed (as diffusers), HTML entities,
    whitespace."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text)).strip()).strip()


class WanPipeline(WanSlots, Pipeline):
    """Wan text-to-video and image-to-video from a diffusers-format directory (or a jdiff checkpoint)."""

    family = "Wan"
    is_video = True
    refusals = {  # noqa: RUF012
        "true_cfg_scale": "true_cfg_scale is FLUX's; Wan runs classifier-free guidance with guidance_scale",
        "guidance_scale_2": "guidance_scale_2 needs a two-expert model (Wan2.2 A14B: boundary_ratio and transformer_2)",
        "image": "this Wan model is text-to-video only and takes no conditioning image",
    }

    def __init__(self, model: ModelDir, *, dtype, placement=None):
        self.dtype = jnp.dtype(dtype)
        self.placement = placement
        self.model_index = model.index
        self.i2v = model.pipeline_class == "WanImageToVideoPipeline"
        self.expand_timesteps = bool(model.index.get("expand_timesteps") or False)
        self.boundary_ratio = model.index.get("boundary_ratio")
        accepts = {"negative_prompt", "num_frames", "guidance_scale", "max_sequence_length", "fps"}
        if self.i2v or self.expand_timesteps:
            accepts.add("image")  # the server's edits / image-to-video routes follow
        if self.boundary_ratio is not None:
            accepts.add("guidance_scale_2")
        self.accepts = frozenset(accepts)
        components = model.components()
        self.sampler, self.scheduler = model.sampler(flow=True, model="Wan")

        experts = [n for n in ("transformer", "transformer_2") if n in components]
        if not experts:
            raise InputError(f"{model.root} has no transformer")
        if self.boundary_ratio is not None and len(experts) != 2:
            raise InputError(
                f"{model.root}: boundary_ratio is set but there is no transformer_2 (two experts)"
            )
        self._defs, self._params = {}, {}
        configs = {}
        for name in experts:
            configs[name], module = model.load(name, dtype=dtype, placement=placement)
            self._defs[name], self._params[name] = nnx.split(module)
        self.transformer_config = configs[experts[0]]
        if len(experts) == 2 and configs["transformer_2"].in_channels != self.transformer_config.in_channels:
            raise InputError(
                "transformer and transformer_2 take different latent channels; they do not belong together"
            )
        self.vae_config, vae = model.load("vae", dtype=dtype, placement=placement)
        _, t5 = model.load("text_encoder", dtype=dtype, placement=placement)
        self.tokenizer = model.tokenizer("tokenizer")
        for name, module in (("vae", vae), ("t5", t5)):
            self._defs[name], self._params[name] = nnx.split(module)
        self.image_encoder = None
        if self.i2v and self.transformer_config.image_dim is not None:
            _, image_encoder = model.load(
                "image_encoder", dtype=jnp.float32 if self.dtype == jnp.float32 else dtype
            )
            self._defs["image_encoder"], self._params["image_encoder"] = nnx.split(image_encoder)
            self.image_processor = model.image_processor_config()
            self.image_encoder = image_encoder
        vc = self.vae_config
        self.z_dim = vc.z_dim
        self.temporal = vc.scale_factor_temporal or 4
        self.spatial = vc.scale_factor_spatial or 8
        self.size_multiple = self.spatial * self.transformer_config.patch_size[1]  # height/width divide by it
        self.latent_mean = np.asarray(vc.latents_mean, np.float32)
        self.latent_std = np.asarray(vc.latents_std, np.float32)
        self.preset = load_preset(FAMILY.preset(model.index, self.transformer_config), model.root)
        # One expert: the step caches, with TeaCache's published thresholds for a ~2x speed-up (TeaCache4Wan2.1
        # README); first_block at ParaAttention's usual 0.1. Neither is measured on Wan here (docs/step_cache.md).
        big = self.transformer_config.inner_dim > 1536
        self.step_caches = {} if len(experts) == 2 else {"first_block": 0.1, "teacache": 0.2 if big else 0.08}
        if len(experts) == 2:
            why = "step caching does not run with two experts (Wan2.2 A14B) yet; leave step_cache out"
            self.refusals = {**self.refusals, "step_cache": why, "step_cache_threshold": why}
        self.trace_counts: collections.Counter[str] = collections.Counter()
        self.lora = lora.Adapters(self, model, {"transformer": "transformer", "text_encoder": "t5"})
        self._encode_text = lora.jit(self._encode_text_fn)
        self._denoise = lora.jit(
            self._denoise_fn, static_argnames=("cfg", "mode", "noise_shape", "step_cache")
        )
        self._decode = compiler_options.jit(self._decode_fn)
        self._encode_video = compiler_options.jit(self._encode_video_fn)
        self._encode_image = compiler_options.jit(self._encode_image_fn)

    # ---- jitted stages ------------------------------------------------------------------------------------

    def _encode_text_fn(self, params, ids, mask):
        self.trace_counts["encode"] += 1
        embeds = nnx.merge(self._defs["t5"], params)(ids, mask)
        # diffusers trims each prompt's embeddings to its length and pads with zeros.
        return (embeds * mask[..., None].astype(embeds.dtype)).astype(self.dtype)

    def _encode_image_fn(self, params, pixel_values):
        self.trace_counts["encode_image"] += 1
        return nnx.merge(self._defs["image_encoder"], params)(pixel_values)

    def _encode_video_fn(self, params, video):
        mean, _ = nnx.merge(self._defs["vae"], params).encode(video.astype(self.dtype))
        return (mean.astype(jnp.float32) - self.latent_mean) / self.latent_std

    def _decode_fn(self, params, latents):
        self.trace_counts["decode"] += 1
        latents = sh.constrain(latents, (sh.BATCH, None, None, None, None))  # as FLUX: batch-split only
        z = latents * self.latent_std + self.latent_mean
        video = nnx.merge(self._defs["vae"], params).decode(z.astype(self.dtype)).astype(jnp.float32)
        return jnp.clip(video * 0.5 + 0.5, 0, 1)

    def _denoise_fn(
        self,
        params,
        params_2,
        init,
        embeds,
        image_embeds,
        condition,
        cos,
        sin,
        schedule,
        guidance,
        progress,
        cache_params=None,
        *,
        cfg,
        mode,
        noise_shape,
        step_cache=None,
    ):
        """The sampling loop. mode: "t2v", "i2v" (condition concatenated on channels) or "ti2v" (frame 0 of
        the latents replaced by the image latent, per-token timesteps zero there). `init` is the starting
        latents [B, F, h, w, C], or with a `noise_shape` the seeds' noise keys (the noise is drawn here).
        With a `step_cache` mode (one expert only) and its `cache_params`, returns (latents, step-cache statistics)."""
        self.trace_counts["denoise"] += 1
        latents = init if noise_shape is None else noise_from_keys(init, noise_shape)
        latents = sh.constrain(latents, (sh.BATCH,) + (None,) * 4)
        experts = [nnx.merge(self._defs["transformer"], params)]
        if params_2 is not None:
            experts.append(nnx.merge(self._defs["transformer_2"], params_2))
        boundary = None if self.boundary_ratio is None else self.boundary_ratio * self._num_train_timesteps()
        b = latents.shape[0]

        def model_input(x):
            return self.model_input(x, condition, mode)

        def model_timestep(t):
            return self.model_timesteps(jnp.full((b,), t, jnp.float32), latents.shape[1:4], mode)

        def inputs(x, t):
            """The model's batch at step input x: (latents, timesteps, image tokens), doubled for CFG."""
            xin = model_input(x).astype(self.dtype)
            tt = model_timestep(t)
            if not cfg:
                return xin, tt, image_embeds
            img = None if image_embeds is None else jnp.concatenate([image_embeds, image_embeds])
            return jnp.concatenate([xin, xin]), jnp.concatenate([tt, tt]), img

        def guide(v, scale):
            v = v.astype(jnp.float32)
            if cfg:
                neg, pos = jnp.split(v, 2)
                v = neg + scale * (pos - neg)
            return v

        def run_expert(model, x, t, scale):
            xin, tt, img = inputs(x, t)
            return guide(model(xin, tt, embeds, (cos, sin), img), scale)

        def velocity(x, t):
            if len(experts) == 1:
                return run_expert(experts[0], x, t, guidance[0])
            return jax.lax.cond(
                t >= boundary,
                lambda: run_expert(experts[0], x, t, guidance[0]),
                lambda: run_expert(experts[1], x, t, guidance[1]),
            )

        parts = None
        if step_cache is not None:
            model, rope = experts[0], (cos, sin)

            def embed(x, t, _):
                xin, tt, img = inputs(x, t)
                return model.embed(xin, tt, embeds, img)

            parts = CachedModel(
                embed=embed,
                first=lambda h, c: model.run_blocks(h, c, rope, layers=slice(0, 1)),
                rest=lambda h, c: model.run_blocks(h, c, rope, layers=slice(1, None)),
                final=lambda h, c: guide(model.output(h, c), guidance[0]),
                probe=lambda h: h,
                modulated=lambda h, c: c.temb,  # TeaCache4Wan2.1 reads the time embedding `e`
                groups=2 if cfg else 1,
            )
        out = self.run_sampler(
            lambda x, t, _: velocity(x, t),
            latents,
            schedule,
            progress=progress,
            cache=(step_cache, cache_params, parts),
        )
        if step_cache is not None:
            return (model_input(out[0]) if mode == "ti2v" else out[0]), out[1]
        return model_input(out) if mode == "ti2v" else out

    def _num_train_timesteps(self) -> int:
        return self.scheduler.num_train_timesteps

    # ---- request handling ---------------------------------------------------------------------------------

    def encode_prompts(self, prompts: list[str], max_len: int) -> jax.Array:
        ids, mask = self.tokenizer([prompt_clean(p) for p in prompts], max_len)
        with context(self.placement):
            return self._encode_text(self._params["t5"], put(self.placement, ids), put(self.placement, mask))

    def _image_condition(self, pil, batch, height, width, frames, lat_frames):
        """(condition, image_embeds) for image-to-video; condition is channels-last."""
        from PIL import Image

        from jdiff.models.clip.vision_encoder import preprocess_images

        resized = pil.resize((width, height), resample=Image.LANCZOS)
        pixels = np.asarray(resized, np.float32) / 127.5 - 1.0  # [H, W, 3] in [-1, 1]
        if self.expand_timesteps:
            video = pixels[None, None]  # [1, 1, H, W, 3]
        else:
            video = np.concatenate(
                [pixels[None, None], np.zeros((1, frames - 1, height, width, 3), np.float32)], 1
            )
        with context(self.placement):
            latent = self._encode_video(self._params["vae"], put(self.placement, video))  # [1, F', h, w, C]
        latent = jnp.repeat(latent, batch, axis=0)
        image_embeds = None
        if self.image_encoder is not None:
            pp = self.image_processor
            pixel_values = preprocess_images(
                pil, size=pp["size"], crop_size=pp["crop_size"], mean=pp["mean"], std=pp["std"]
            )
            with context(self.placement):
                tokens = self._encode_image(self._params["image_encoder"], put(self.placement, pixel_values))
            image_embeds = jnp.repeat(tokens, batch, axis=0).astype(self.dtype)
        if self.expand_timesteps:
            return latent, image_embeds
        h, w = latent.shape[2:4]
        mask = jnp.zeros((batch, lat_frames, h, w, self.temporal), jnp.float32).at[:, 0].set(1.0)
        return jnp.concatenate([mask, latent], axis=-1), image_embeds

    def check(self, request: Request) -> None:
        super().check(request)
        frames = request.num_frames
        if (frames - 1) % self.temporal:
            lo = (frames - 1) // self.temporal * self.temporal + 1
            raise InputError(
                f"num_frames {frames} must be {self.temporal}k+1 for the Wan VAE; use {lo} or {lo + self.temporal}"
            )
        if self.i2v and request.images is None:
            raise InputError("this is an image-to-video model: pass image= (CLI: --image PATH)")
        if request.negative_prompts is not None and request.guidance_scale <= 1.0:
            warn(request.warnings, "negative_prompt is ignored: Wan uses it only with guidance_scale > 1")
        post_patch_grid(self.transformer_config, *self._latent_grid(request))  # validates the patch divides

    def teacache_coefficients(self, request: Request) -> tuple[float, ...]:
        big = self.transformer_config.inner_dim > 1536
        if big and self.transformer_config.image_dim is not None:  # Wan2.1 I2V 14B, by resolution
            return TEACACHE_WAN["i2v_720p" if request.height * request.width >= 1280 * 720 else "i2v_480p"]
        return TEACACHE_WAN["14b" if big else "1.3b"]

    def _rope(self, request: Request) -> tuple[np.ndarray, np.ndarray]:
        """The rotary tables (cos, sin) of the request's latent grid (cached per grid)."""
        return _rope_tables(self.transformer_config, *self._latent_grid(request))

    def _latent_grid(self, request: Request) -> tuple[int, int, int]:
        """(latent frames, latent height, latent width)."""
        f = (request.num_frames - 1) // self.temporal + 1
        return f, request.height // self.spatial, request.width // self.spatial

    def _guidance(self, request: Request) -> tuple[float, float]:
        """(guidance_scale, guidance_scale_2): the second follows the first when only the first is given."""
        g = request.guidance_scale
        if "guidance_scale_2" in request.given:
            return g, request.guidance_scale_2
        if "guidance_scale" in request.given:
            return g, g
        return g, self.preset.get("guidance_scale_2", g)

    def encode(self, request: Request):
        """(text embeddings, channels-last image condition or None, image embeddings or None, mode)."""
        cfg = request.guidance_scale > 1.0  # as diffusers: classifier-free guidance only above 1
        negatives = request.negative_prompts
        if negatives is None:
            negatives = tuple(negatives_for(self.preset.get("negative_prompt", ""), list(request.prompts)))
        distinct = (list(negatives) if cfg else []) + list(request.prompts)
        max_len = request.max_sequence_length or 512
        cleaned = [prompt_clean(t) for t in distinct]
        warn_truncated(
            request.warnings, self.tokenizer, cleaned, max_len, "UMT5", " or raise max_sequence_length"
        )
        # One encoder call, [negatives; prompts] with each text repeated per output (host-side, as in FLUX).
        texts = [t for t in distinct for _ in range(request.num_outputs_per_prompt)]
        embeds = self.encode_prompts(texts, max_len)
        if request.images is None:
            return embeds, None, None, "t2v"
        f, _, _ = self._latent_grid(request)
        condition, image_embeds = self._image_condition(
            request.images[0], request.batch, request.height, request.width, request.num_frames, f
        )
        return embeds, condition, image_embeds, "ti2v" if self.expand_timesteps else "i2v"

    def denoise_stage(self, request: Request, cond, progress) -> Stage:
        embeds, condition, image_embeds, mode = cond
        f, h, w = self._latent_grid(request)
        init, noise_shape = self._initial_latents(
            request.latents, list(request.seeds), request.batch, f, h, w
        )
        init = put(self.placement, init, None if noise_shape else (sh.BATCH,) + (None,) * 4)
        schedule = self.sampler.schedule(self.scheduler, request.steps)
        cos, sin = self._rope(request)
        args = (
            self._params["transformer"],
            self._params.get("transformer_2"),
            init,
            embeds,
            image_embeds,
            condition,
            cos,
            sin,
            schedule,
            np.asarray(self._guidance(request), np.float32),
            progress,
        )
        cache_mode, cache_params = self.step_cache(request)
        args += (cache_params,)
        kwargs = dict(
            cfg=request.guidance_scale > 1.0, mode=mode, noise_shape=noise_shape, step_cache=cache_mode
        )
        return Stage(self._denoise, args, kwargs, key=(init.shape, embeds.shape, request.steps))

    def decode_stage(self, request: Request) -> Stage:
        return Stage(self._decode, (self._params["vae"],))

    def latents_out(self, final: np.ndarray) -> np.ndarray:
        return final.transpose(0, 4, 1, 2, 3)  # channels-last -> diffusers' [B, C, F, H, W]

    def _initial_latents(self, latents, seeds, batch, f, h, w):
        return video_latents(latents, seeds, batch, self.z_dim, f, h, w, "Wan")


def _preset(index: dict, transformer) -> str:
    """Which preset a Wan directory gets: by its pipeline class, experts and size."""
    if index.get("expand_timesteps"):
        return "wan2.2-ti2v-5b"
    i2v = index.get("_class_name") == "WanImageToVideoPipeline"
    if index.get("boundary_ratio") is not None:
        return "wan2.2-i2v-a14b" if i2v else "wan2.2-t2v-a14b"
    if i2v:
        return "wan2.1-i2v-14b"
    return "wan2.1-t2v-1.3b" if transformer.inner_dim <= 1536 else "wan2.1-t2v-14b"


FAMILY = Family(
    name="wan",
    pipeline_classes=("WanPipeline", "WanImageToVideoPipeline"),
    pipeline=WanPipeline,
    components={
        "WanTransformer3DModel": "jdiff.models.wan.plan",
        "AutoencoderKLWan": "jdiff.models.wan_vae.plan",
        "UMT5EncoderModel": "jdiff.models.t5.umt5_plan",
        "CLIPVisionModel": "jdiff.models.clip.vision_plan",
    },
    preset=_preset,
)

__all__ = ["FAMILY", "WanPipeline", "prompt_clean"]
