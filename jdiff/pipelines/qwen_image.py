"""Qwen-Image text-to-image (`QwenImagePipeline`) and image editing (`QwenImageEditPipeline`, one image;
`QwenImageEditPlusPipeline`, several images of any sizes), stage by stage as diffusers runs them:
validate -> encode prompts (and images) with Qwen2.5-VL -> [VAE-encode the images] -> timesteps -> latents
-> denoise -> decode.

Axis letters: B outputs, Bm model batch (2B with true CFG: [negatives; prompts]), L encoder tokens, T text
tokens after the template's, J encoder width, C latent channels, h/w latent height/width, S0 = (h/2)(w/2)
noise tokens, Sc conditioning-image tokens, H/W image height/width.

Text: each prompt goes through diffusers' chat template; Qwen2.5-VL's last hidden states are kept for the
real tokens only, minus the template's first `drop_idx` tokens (34 for text-to-image, 64 for edits), padded
to the longest prompt's count rounded up to a multiple of `qwen_image_text.TEXT_BUCKET` (one compiled program
per bucket, not per prompt length) with a key mask (`jdiff.models.qwen_image.transformer`). diffusers
encodes negatives and prompts in two calls and runs the transformer twice; here both run as one batch, padded
together: the mask makes each prompt see exactly what it sees alone.

True CFG (negative prompt given and true_cfg_scale > 1, as in diffusers): v = neg + s (pos - neg), then
rescaled per token to the norm of pos.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff import compiler_options
from jdiff import sharding as sh
from jdiff.errors import InputError
from jdiff.layers.embeddings import pipeline_sigma
from jdiff.models.qwen_image.rope import rope_tables
from jdiff.parallel.placement import context, put
from jdiff.pipelines import lora
from jdiff.pipelines.base import warn, warn_truncated
from jdiff.pipelines.family import Family
from jdiff.pipelines.flux import pack_latents, unpack_latents_nhwc
from jdiff.pipelines.model_dir import ModelDir
from jdiff.pipelines.pipeline import Pipeline, Stage
from jdiff.pipelines.qwen_image_slots import QwenImageSlots
from jdiff.pipelines.qwen_image_text import QwenVLText
from jdiff.pipelines.request import Request
from jdiff.presets import load_preset
from jdiff.sampling.loop import steps_first
from jdiff.sampling.noise import noise_from_keys, noise_keys
from jdiff.sampling.step_cache import CachedModel


def calculate_dimensions(target_area: int, ratio: float) -> tuple[int, int]:
    """diffusers' (width, height) of about `target_area` pixels at aspect `ratio` (W / H), multiples of 32."""
    width = math.sqrt(target_area * ratio)
    height = width / ratio
    return round(width / 32) * 32, round(height / 32) * 32


def resize(image, width: int, height: int):
    """diffusers `VaeImageProcessor.resize` of a PIL image: Lanczos (PIL returns a copy at the same size)."""
    from PIL import Image

    return image.resize((width, height), resample=Image.LANCZOS)


def to_vae_input(image, width: int, height: int) -> np.ndarray:
    """A PIL image resized as diffusers' `preprocess` does, in [-1, 1]: [1, 1, H, W, 3] (one-frame video)."""
    pixels = np.asarray(resize(image, width, height).convert("RGB"), np.float32) / 255.0
    return (pixels * 2.0 - 1.0)[None, None]


class QwenImagePipeline(QwenImageSlots, Pipeline):
    """Qwen-Image text-to-image; `QwenImagePipeline(model, ...)` on an edit directory gives its edit class."""

    family = "Qwen-Image"
    is_video = False
    accepts = frozenset({"negative_prompt", "true_cfg_scale", "guidance_scale", "max_sequence_length"})
    # First-block caching at FLUX.1's default, not measured on Qwen-Image (no TeaCache polynomial is published).
    step_caches = {"first_block": 0.12}  # noqa: RUF012
    refusals = {  # noqa: RUF012
        "num_frames": "Qwen-Image makes images: num_frames must be omitted (or 1)",
        "image": "Qwen-Image text-to-image takes no input image; use a Qwen-Image-Edit model",
        "guidance_scale_2": "guidance_scale_2 is for two-expert models (Wan2.2 A14B); Qwen-Image has one",
    }
    preset_name = "qwen-image"
    edits = False
    plus = False

    def __new__(cls, model: ModelDir, **_):
        if cls is QwenImagePipeline:
            cls = {
                "QwenImageEditPipeline": QwenImageEditPipeline,
                "QwenImageEditPlusPipeline": QwenImageEditPlusPipeline,
            }.get(model.pipeline_class, QwenImagePipeline)
        return super().__new__(cls)

    def __init__(self, model: ModelDir, *, dtype, placement=None):
        self.dtype = jnp.dtype(dtype)
        self.placement = placement
        self.sampler, self.scheduler = model.sampler(flow=True, model="Qwen-Image")
        self.transformer_config, transformer = model.load("transformer", dtype=dtype, placement=placement)
        self.vae_config, vae = model.load("vae", dtype=dtype, placement=placement)
        self.text = QwenVLText(model, dtype=dtype, placement=placement, edits=self.edits, plus=self.plus)
        tc, vc = self.transformer_config, self.vae_config
        if tc.in_channels != 4 * vc.z_dim or (tc.out_channels or tc.in_channels) != vc.z_dim:
            raise InputError(
                f"transformer in_channels {tc.in_channels} / out_channels {tc.out_channels} do not match 4 x / 1 x "
                f"the VAE's z_dim {vc.z_dim}; the transformer and VAE come from different models"
            )
        self.vae_scale_factor = vc.spatial_factor
        self.size_multiple = 2 * self.vae_scale_factor  # VAE factor x 2x2 patches
        self.preset = load_preset(self.preset_name, model.root, multiple=self.size_multiple)
        self.latent_channels = vc.z_dim
        self.trace_counts: collections.Counter[str] = collections.Counter()
        self._defs, self._params = {}, {}
        for name, module in (("transformer", transformer), ("vae", vae)):
            self._defs[name], self._params[name] = nnx.split(module)
        self._params["text_encoder"] = self.text.params
        del self.text.params  # one owner: offload swaps the pipeline's `_params`
        self.lora = lora.Adapters(self, model, {"transformer": "transformer"})
        self._denoise = lora.jit(
            self._denoise_fn, static_argnames=("cfg", "noise_shape", "grids", "noise_tokens", "step_cache")
        )
        self._decode = compiler_options.jit(self._decode_fn, static_argnames=("h", "w"))
        self._encode_image = compiler_options.jit(self._encode_image_fn)

    # ---- jitted stages ------------------------------------------------------------------------------------

    def _denoise_fn(
        self, params, init, embeds, mask, image_latents, cos, sin, schedule, cfg_scale, progress,
        cache_params=None, *, cfg, noise_shape, grids, noise_tokens, step_cache=None,
    ):  # fmt: skip
        """The whole sampling loop. `embeds`/`mask` hold [negatives; prompts] with `cfg`; `image_latents`
        [Bm, Sc, 4C] the conditioning images' packed latents (edits) or None; `init` the packed starting
        latents, or with a `noise_shape` (C, h, w) the seeds' noise keys. With a `step_cache` mode and its
        `cache_params`, returns (latents, step-cache statistics)."""
        self.trace_counts["denoise"] += 1
        del grids  # in the compile key only: the rope tables' shapes do not tell the layouts apart
        model = nnx.merge(self._defs["transformer"], params)
        latents = init if noise_shape is None else pack_latents(noise_from_keys(init, noise_shape))
        latents = sh.constrain(latents, (sh.BATCH, None, None))
        timesteps = schedule.timesteps
        n, bm = timesteps.shape[0], embeds.shape[0]
        # Every step's modulation vectors at once, before the loop (see the FLUX pipeline).
        modulation = model.modulation(jnp.repeat(pipeline_sigma(timesteps, self.dtype), bm))
        per_step = jax.tree.map(lambda m: steps_first(m, n), modulation)

        def tokens(x):
            xb = jnp.concatenate([x, x]) if cfg else x
            if image_latents is not None:
                xb = jnp.concatenate([xb, image_latents.astype(xb.dtype)], axis=1)
            return xb.astype(self.dtype)

        def velocity(x, t, mod):
            return guide(model.predict(tokens(x), embeds, mod, (cos, sin), mask, noise_tokens))

        def guide(v):
            v = v[:, :noise_tokens].astype(jnp.float32)
            return self.true_cfg(*jnp.split(v, 2), cfg_scale) if cfg else v

        parts = None
        if step_cache is not None:
            rope = (cos, sin)

            def embed(x, t, mod):
                h, m = model.embed(tokens(x), embeds, mask)
                return h, (mod, m)

            parts = CachedModel(
                embed=embed,
                first=lambda h, c: model.run_blocks(h, c[0], rope, c[1], noise_tokens, layers=slice(0, 1)),
                rest=lambda h, c: model.run_blocks(h, c[0], rope, c[1], noise_tokens, layers=slice(1, None)),
                final=lambda h, c: guide(model.output(h[0], c[0])),
                probe=lambda h: h[0],
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

    @staticmethod
    def true_cfg(neg: jax.Array, pos: jax.Array, scale) -> jax.Array:
        """True CFG's velocity from the [negative] and [prompt] halves: neg + s (pos - neg), rescaled per token
        to the norm of pos (float32; `scale` a scalar or per-row values that broadcast)."""
        comb = neg + scale * (pos - neg)
        return comb * (
            jnp.linalg.norm(pos, axis=-1, keepdims=True) / jnp.linalg.norm(comb, axis=-1, keepdims=True)
        )

    def _decode_fn(self, vae_params, latents, h: int, w: int):
        self.trace_counts["decode"] += 1
        vae = nnx.merge(self._defs["vae"], vae_params)
        latents = sh.constrain(latents, (sh.BATCH, None, None))
        z = unpack_latents_nhwc(latents, h, w)  # [B, h, w, C]
        vc = self.vae_config
        z = z * jnp.asarray(vc.latents_std, jnp.float32) + jnp.asarray(vc.latents_mean, jnp.float32)
        image = vae.decode(z[:, None].astype(self.dtype))[:, 0].astype(jnp.float32)  # [B, H, W, 3]
        return jnp.clip(image * 0.5 + 0.5, 0, 1)

    def _encode_image_fn(self, vae_params, pixels):
        """[1, 1, H, W, 3] in [-1, 1] -> normalised packed latents [1, S, 4C] (diffusers' mode, not a sample)."""
        self.trace_counts["encode_image"] += 1
        mean, _ = nnx.merge(self._defs["vae"], vae_params).encode(pixels.astype(self.dtype))
        vc = self.vae_config
        z = (mean[:, 0].astype(jnp.float32) - jnp.asarray(vc.latents_mean, jnp.float32)) / jnp.asarray(
            vc.latents_std, jnp.float32
        )
        return pack_latents(jnp.moveaxis(z, -1, 1))  # [1, C, h, w] -> [1, S, 4C]

    # ---- the hooks of Pipeline.generate ------------------------------------------------------------------

    def check(self, request: Request) -> None:
        super().check(request)
        w = request.warnings
        if request.max_sequence_length is not None and request.max_sequence_length > 1024:
            raise InputError(f"max_sequence_length {request.max_sequence_length} exceeds Qwen-Image's 1024")
        if "guidance_scale" in request.given:
            warn(
                w,
                f"guidance_scale {request.guidance_scale:g} is ignored: Qwen-Image is not guidance-distilled; "
                "true CFG (a negative prompt with true_cfg_scale > 1) is what guides it",
            )
        true_cfg = request.true_cfg_scale or 1.0
        if request.negative_prompts is not None and true_cfg <= 1:
            warn(w, "negative_prompt is ignored: Qwen-Image uses it only with true_cfg_scale > 1")
        if request.negative_prompts is None and "true_cfg_scale" in request.given and true_cfg > 1:
            warn(w, "true_cfg_scale is ignored without a negative_prompt (true CFG needs one)")

    def _true_cfg(self, request: Request) -> bool:
        return request.negative_prompts is not None and (request.true_cfg_scale or 1.0) > 1

    def encode(self, request: Request):
        """(embeds [Bm, T, J], key mask [Bm, T] or None, conditioning latents [Bm, Sc, 4C] or None, grids)."""
        cfg = self._true_cfg(request)
        texts = request.texts(negatives=cfg)
        if not self.edits:
            warn_truncated(
                request.warnings, self.text.tokenizer, [self.text.template.format(t) for t in set(texts)],
                1024 + self.text.drop_idx, "Qwen2.5-VL",
            )  # fmt: skip
        vl_images, vae_images = self._images(request)
        embeds, mask = self.text.encode(
            self._params["text_encoder"], texts, vl_images, request.max_sequence_length
        )
        grids = ((1, request.height // self.size_multiple, request.width // self.size_multiple),)
        image_latents = None
        if vae_images:
            with context(self.placement):
                parts = [self._encode_image(self._params["vae"], put(self.placement, x)) for x in vae_images]
            image_latents = jnp.repeat(jnp.concatenate(parts, axis=1), embeds.shape[0], axis=0)
            grids += tuple(
                (1, x.shape[2] // self.size_multiple, x.shape[3] // self.size_multiple) for x in vae_images
            )
        return embeds, mask, image_latents, grids

    def _images(self, request: Request) -> tuple[list, list[np.ndarray]]:
        """(images for Qwen2.5-VL, VAE inputs [1, 1, H, W, 3]); none for text-to-image."""
        return [], []

    def denoise_stage(self, request: Request, cond, progress) -> Stage:
        embeds, mask, image_latents, grids = cond
        h, w = request.height // self.vae_scale_factor, request.width // self.vae_scale_factor
        init, noise_shape = self._initial_latents(request.latents, list(request.seeds), request.batch, h, w)
        init = put(self.placement, init, None if noise_shape else (sh.BATCH, None, None))
        s0 = (h // 2) * (w // 2)
        schedule = self.slot_schedule(request)
        cos, sin = rope_tables(grids, embeds.shape[1], tuple(self.transformer_config.axes_dims_rope))
        true_cfg = np.float32(request.true_cfg_scale or 1.0)
        args = (
            self._params["transformer"],
            init,
            embeds,
            mask,
            image_latents,
            cos,
            sin,
            schedule,
            true_cfg,
            progress,
        )
        mode, cache_params = self.step_cache(request)
        args += (cache_params,)
        kwargs = dict(cfg=self._true_cfg(request), noise_shape=noise_shape, grids=grids, noise_tokens=s0)
        kwargs["step_cache"] = mode
        key = (init.shape, embeds.shape, mask is None, request.steps, h, w)
        return Stage(self._denoise, args, kwargs, key=key)

    def decode_stage(self, request: Request) -> Stage:
        h, w = request.height // self.vae_scale_factor, request.width // self.vae_scale_factor
        return Stage(self._decode, (self._params["vae"],), dict(h=h, w=w), key=(h, w))

    def _initial_latents(self, latents, seeds: list[int], batch: int, h: int, w: int):
        """(init, noise_shape): the seeds' noise keys and (C, h, w), or the caller's latents packed."""
        c = self.latent_channels
        if latents is None:
            return noise_keys(seeds), (c, h, w)
        arr = np.asarray(latents, dtype=np.float32)
        packed, frames, plain = (batch, (h // 2) * (w // 2), 4 * c), (batch, 1, c, h, w), (batch, c, h, w)
        if arr.shape == frames:
            arr = arr[:, 0]
        if arr.shape not in (packed, plain):
            raise InputError(
                f"latents have shape {arr.shape}; for {batch} output(s) at this size Qwen-Image expects the "
                f"packed {packed} (diffusers' layout), {frames} or {plain}"
            )
        return (np.asarray(pack_latents(arr)) if arr.shape == plain else arr), None


class QwenImageEditPipeline(QwenImagePipeline):
    """Qwen-Image-Edit: one input image, seen by Qwen2.5-VL and, VAE-encoded, by the transformer. The output
    size defaults to about `vae_image_area` pixels at the input's aspect, as diffusers picks it."""

    family = "Qwen-Image-Edit"
    accepts = QwenImagePipeline.accepts | {"image"}
    refusals = {k: v for k, v in QwenImagePipeline.refusals.items() if k != "image"}  # noqa: RUF012
    preset_name = "qwen-image-edit"
    edits = True
    max_images = 1
    size_from_image = True  # without a size, the output follows the (last) input image (the server reads it)

    def parse(self, prompt, **fields) -> Request:
        if fields.get("image") is None:
            raise InputError(
                f"{self.family} edits an image: pass image= (CLI --image PATH, server image=@FILE)"
            )
        request = super().parse(prompt, **fields)
        last = request.images[-1]
        width, height = calculate_dimensions(self.preset["vae_image_area"], last.width / last.height)
        m = self.size_multiple
        return dataclasses.replace(
            request,
            height=request.height if "height" in request.given else height // m * m,
            width=request.width if "width" in request.given else width // m * m,
        )

    def _images(self, request: Request):
        img = request.images[0]
        width, height = calculate_dimensions(self.preset["vae_image_area"], img.width / img.height)
        return [resize(img, width, height)], [to_vae_input(img, width, height)]


class QwenImageEditPlusPipeline(QwenImageEditPipeline):
    """Qwen-Image-Edit-2509 / 2511: up to `max_images` input images of any sizes, each seen by Qwen2.5-VL at
    about `condition_image_area` pixels and by the transformer at about `vae_image_area`."""

    family = "Qwen-Image-Edit-Plus"
    preset_name = "qwen-image-edit-plus"
    plus = True
    max_images = 3  # the 2509 / 2511 releases' 1 to 3 input images

    def _images(self, request: Request):
        vl, vae = [], []
        for img in request.images:
            cw, ch = calculate_dimensions(self.preset["condition_image_area"], img.width / img.height)
            vw, vh = calculate_dimensions(self.preset["vae_image_area"], img.width / img.height)
            vl.append(resize(img, cw, ch))
            vae.append(to_vae_input(img, vw, vh))
        return vl, vae


FAMILY = Family(
    name="qwen_image",
    pipeline_classes=("QwenImagePipeline", "QwenImageEditPipeline", "QwenImageEditPlusPipeline"),
    pipeline=QwenImagePipeline,
    components={
        "QwenImageTransformer2DModel": "jdiff.models.qwen_image.plan",
        "AutoencoderKLQwenImage": "jdiff.models.qwen_image.vae_plan",
        "Qwen2_5_VLForConditionalGeneration": "jdiff.models.qwen2_5_vl.plan",
    },
    preset=lambda index, transformer: {
        "QwenImageEditPipeline": "qwen-image-edit",
        "QwenImageEditPlusPipeline": "qwen-image-edit-plus",
    }.get(index.get("_class_name"), "qwen-image"),
)

__all__ = ["FAMILY", "QwenImageEditPipeline", "QwenImageEditPlusPipeline", "QwenImagePipeline"]
