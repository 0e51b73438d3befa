"""The HunyuanVideo-1.5 pipelines, text-to-video and image-to-video, as diffusers'
`HunyuanVideo15Pipeline` / `HunyuanVideo15ImageToVideoPipeline` run them.

Stages: validate -> encode text (Qwen2.5-VL in the chat template; byT5 on the prompt's quoted text) ->
[encode image: VAE first frame, SigLIP] -> timesteps -> latents -> denoise -> decode -> post-process (frames,
mp4).

Axis letters: B batch, Bm model batch rows (2B with CFG), F latent frames, h/w latent height/width, C latent
channels, T text tokens, G glyph tokens, NF video frames, H/W video height/width.

Layouts: the loop state is channels-last [B, F, h, w, C]; `latents=` and `result.latents` use diffusers'
[B, C, F, h, w]. The model input is [latents, condition latents, condition mask] on channels (zeros for
text-to-video). CFG (diffusers' `ClassifierFreeGuidance` in `guider/`, its scale the preset's default) runs as
one batch of two ([negative; positive]). diffusers pads the text to 1000 tokens and the glyph text to 256 and
masks the padding as keys; here both are cut to the longest real row of the batch, which changes nothing but
the work (the condition tokens take no rotary position, and padded keys are masked either way).
"""

from __future__ import annotations

import collections
from functools import lru_cache

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff import compiler_options
from jdiff import sharding as sh
from jdiff.errors import InputError
from jdiff.io.images import read_images
from jdiff.layers.rounding import rounded
from jdiff.models.hunyuan_video15.text import (
    CROP_START,
    GLYPH_MAX_LENGTH,
    HIDDEN_LAYER,
    MAX_LENGTH,
    SYSTEM_MESSAGE,
    glyph_text,
)
from jdiff.models.hunyuan_video15.tiling import VAETiling, decode_activation_bytes
from jdiff.models.hunyuan_video15.transformer import post_patch_grid
from jdiff.models.hunyuan_video15.transformer import rope_tables as _rope_tables_uncached
from jdiff.models.siglip.vision import preprocess_images
from jdiff.parallel.placement import context, put
from jdiff.pipelines import memory
from jdiff.pipelines.base import text_bucket, video_latents, warn, warn_truncated
from jdiff.pipelines.chat_template import read_template, render
from jdiff.pipelines.family import Family
from jdiff.pipelines.hunyuan_video15_image import bucket_size, resize_and_crop, vae_pixels
from jdiff.pipelines.model_dir import ModelDir
from jdiff.pipelines.pipeline import Pipeline, Stage
from jdiff.pipelines.request import Request, negatives_for
from jdiff.presets import load_preset
from jdiff.sampling.loop import sample
from jdiff.sampling.noise import noise_from_keys
from jdiff.weights.config import read_json

# Rotary tables depend only on the config and the latent shape: computed once per shape, on the host.
_rope_tables = lru_cache(maxsize=16)(_rope_tables_uncached)


TEXT_BUCKET, GLYPH_BUCKET = 128, 64  # token counts the text and glyph lengths round up to


def _kept_tokens(mask: np.ndarray, drop: int, keep_max: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(gather [Bm, length] int32 token positions, keep [Bm, length] bool): each row's real tokens after its
    first `drop` (diffusers' crop of the template), at most `keep_max`, left-aligned."""
    gather = np.zeros((mask.shape[0], length), np.int32)
    keep = np.zeros((mask.shape[0], length), bool)
    for b, m in enumerate(np.asarray(mask)):
        r = np.flatnonzero(m)[drop:][:keep_max]
        gather[b, : len(r)] = r
        keep[b, : len(r)] = True
    return gather, keep


def custom_sigmas(steps: int) -> np.ndarray:
    """diffusers' HunyuanVideo-1.5 schedule input: `linspace(1, 0, steps + 1)[:-1]` (the shift applied after)."""
    return np.linspace(1.0, 0.0, steps + 1)[:-1].astype(np.float32)


class HunyuanVideo15Pipeline(Pipeline):
    """HunyuanVideo-1.5 text-to-video or image-to-video (by the directory's pipeline class) from a
    diffusers-format directory (or a jdiff checkpoint)."""

    family = "HunyuanVideo-1.5"
    is_video = True
    # VAE tiling (diffusers' `vae.enable_tiling()`): None decodes in tiles only where memory planning finds
    # that the whole frame would not fit the device (`decode_tiling`); True tiles decode and encode with
    # diffusers' default tiles, a `VAETiling` with its own; False never tiles.
    vae_tiling: bool | VAETiling | None = None
    refusals = {  # noqa: RUF012
        "true_cfg_scale": "HunyuanVideo-1.5 runs classifier-free guidance with guidance_scale",
        "max_sequence_length": "HunyuanVideo-1.5 reads a fixed 1000 prompt tokens (and 256 glyph tokens)",
        "image": "this HunyuanVideo-1.5 model is text-to-video only and takes no conditioning image",
    }

    def __init__(self, model: ModelDir, *, dtype, placement=None):
        self.dtype = jnp.dtype(dtype)
        self.placement = placement
        self.i2v = model.pipeline_class == "HunyuanVideo15ImageToVideoPipeline"
        accepts = {"negative_prompt", "num_frames", "guidance_scale", "fps"}
        self.accepts = frozenset(accepts | {"image"} if self.i2v else accepts)
        self.sampler, self.scheduler = model.sampler(flow=True, model="HunyuanVideo-1.5")
        self.transformer_config, transformer = model.load("transformer", dtype=dtype, placement=placement)
        self.vae_config, vae = model.load("vae", dtype=dtype, placement=placement)
        self.text_config, text = model.load("text_encoder", dtype=dtype, placement=placement)
        self.glyph_config, glyph = model.load("text_encoder_2", dtype=dtype, placement=placement)
        self.tokenizer = model.tokenizer("tokenizer")
        self.chat_template = read_template(model.folder("tokenizer"))
        self.glyph_tokenizer = model.tokenizer("tokenizer_2")
        self._defs, self._params = {}, {}
        for name, module in (("transformer", transformer), ("vae", vae), ("text", text), ("glyph", glyph)):
            self._defs[name], self._params[name] = nnx.split(module)
        if self.i2v:
            siglip, image_encoder = model.load("image_encoder", dtype=dtype, placement=placement)
            self._defs["image_encoder"], self._params["image_encoder"] = nnx.split(image_encoder)
            self.siglip_size = _siglip_size(model, siglip.image_size)
        vc, tc = self.vae_config, self.transformer_config
        self.z_dim = vc.latent_channels
        self.temporal = vc.temporal_compression_ratio
        self.spatial = vc.spatial_compression_ratio
        self.size_multiple = self.spatial * tc.patch_size  # height / width divide by it
        if tc.in_channels != 2 * self.z_dim + 1:
            raise InputError(
                f"{model.root}: the transformer takes {tc.in_channels} channels, the VAE's latents need "
                f"2 x {self.z_dim} + 1 (latents, condition latents, mask); they do not belong together"
            )
        self.preset = load_preset(FAMILY.preset(model.index, tc), model.root)
        guider = model.components().get("guider")
        if guider is not None and (model.folder("guider") / "guider_config.json").is_file():
            scale = read_json(model.folder("guider") / "guider_config.json").get("guidance_scale")
            if isinstance(scale, int | float) and "guidance_scale" not in _own_overrides(model):
                self.preset["guidance_scale"] = float(scale)  # the step-distilled checkpoints: 1.0
        self.trace_counts: collections.Counter[str] = collections.Counter()
        self._encode_text = compiler_options.jit(self._encode_text_fn)
        self._encode_glyph = compiler_options.jit(self._encode_glyph_fn)
        self._denoise = compiler_options.jit(self._denoise_fn, static_argnames=("cfg", "noise_shape"))
        self._decode = compiler_options.jit(self._decode_fn, static_argnames=("tiling",))
        self._encode_image = compiler_options.jit(self._encode_image_fn, static_argnames=("tiling",))

    # ---- jitted stages ------------------------------------------------------------------------------------

    def _encode_text_fn(self, params, ids, mask, gather, keep):
        self.trace_counts["encode"] += 1
        enc = nnx.merge(self._defs["text"], params)
        hidden = enc(enc.embed(ids), mask, hidden_layers=(HIDDEN_LAYER,))[0]  # [Bm, L, J]
        rows = jnp.take_along_axis(hidden, gather[..., None], axis=1)  # [Bm, T, J]
        return jnp.where(keep[..., None], rows, 0).astype(self.dtype)

    def _encode_glyph_fn(self, params, ids, mask):
        self.trace_counts["encode_glyph"] += 1
        embeds = nnx.merge(self._defs["glyph"], params)(ids, mask)
        return (embeds * mask[..., None].astype(embeds.dtype)).astype(self.dtype)

    def _encode_image_fn(self, vae_params, siglip_params, video, pixel_values, tiling=None):
        """(first-frame latents [1, 1, h, w, C] times scaling_factor (diffusers: the mode), SigLIP tokens)."""
        self.trace_counts["encode_image"] += 1
        mean, _ = nnx.merge(self._defs["vae"], vae_params).encode(video.astype(self.dtype), tiling)
        tokens = nnx.merge(self._defs["image_encoder"], siglip_params)(pixel_values)
        return mean.astype(jnp.float32) * self.vae_config.scaling_factor, tokens.astype(self.dtype)

    def _decode_fn(self, params, latents, tiling=None):
        self.trace_counts["decode"] += 1
        latents = sh.constrain(latents, (sh.BATCH, None, None, None, None))  # batch-split only
        z = latents / self.vae_config.scaling_factor
        video = nnx.merge(self._defs["vae"], params).decode(z.astype(self.dtype), tiling).astype(jnp.float32)
        return jnp.clip(video * 0.5 + 0.5, 0, 1)

    def _denoise_fn(
        self,
        params,
        init,
        text,
        text_mask,
        glyph,
        glyph_mask,
        condition,
        image_embeds,
        cos,
        sin,
        schedule,
        guidance,
        progress,
        *,
        cfg,
        noise_shape,
    ):
        """The sampling loop. `init` is the starting latents [B, F, h, w, C], or with a `noise_shape` the seeds'
        noise keys (the noise is drawn here); `condition` [B, F, h, w, C + 1] the condition latents and mask."""
        self.trace_counts["denoise"] += 1
        latents = init if noise_shape is None else noise_from_keys(init, noise_shape)
        latents = sh.constrain(latents, (sh.BATCH,) + (None,) * 4)
        model = nnx.merge(self._defs["transformer"], params)
        b = latents.shape[0]
        if cfg and image_embeds is not None:
            image_embeds = jnp.concatenate([image_embeds, image_embeds])

        def velocity(x, t, t_r):
            xin = jnp.concatenate([x.astype(self.dtype), condition.astype(self.dtype)], axis=-1)
            if cfg:
                xin = jnp.concatenate([xin, xin])
            # diffusers casts the timestep to the latents' dtype before the model.
            tt = rounded(jnp.full((xin.shape[0],), t, jnp.float32), self.dtype)
            if t_r is not None:  # MeanFlow (I2V): the next step's timestep, 0 after the last
                t_r = rounded(jnp.full_like(tt, t_r), self.dtype)
            v = model(xin, tt, text, text_mask, glyph, glyph_mask, (cos, sin), image_embeds, t_r)
            v = v.astype(jnp.float32)
            if cfg:
                neg, pos = v[:b], v[b:]
                v = neg + guidance * (pos - neg)
            return v

        per_step = None
        if self.i2v and self.transformer_config.use_meanflow:
            per_step = jnp.concatenate([schedule.timesteps[1:], jnp.zeros((1,), schedule.timesteps.dtype)])
        return sample(
            self.sampler, self.scheduler, velocity, latents, schedule, per_step=per_step, progress=progress
        )

    # ---- request handling ---------------------------------------------------------------------------------

    def chat(self, texts: list[str]) -> list[str]:
        """diffusers' `format_text_input` in the tokenizer's chat template, with the generation prompt."""
        return [
            render(
                self.chat_template,
                [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": t or " "}],
                add_generation_prompt=True,
            )
            for t in texts
        ]

    def encode_texts(self, texts: list[str], warnings: list[str]):
        """(text [Bm, T, J], text mask [Bm, T] bool, glyph [Bm, G, J2], glyph mask [Bm, G] bool); T and G are
        the longest real row rounded up to `TEXT_BUCKET` / `GLYPH_BUCKET` tokens, so that prompts of similar
        length share one compiled program."""
        formatted = self.chat(texts)
        limit = CROP_START + MAX_LENGTH
        warn_truncated(warnings, self.tokenizer, formatted, limit, "Qwen2.5-VL", "")
        longest = max(self.tokenizer.lengths(formatted)) - CROP_START
        if longest < 1:
            raise InputError(
                "the prompt template left no prompt tokens; is this HunyuanVideo-1.5's tokenizer?"
            )
        t = min(text_bucket(longest, TEXT_BUCKET), MAX_LENGTH)
        ids, mask = self.tokenizer(formatted, CROP_START + t, add_special_tokens=False)
        gather, keep = _kept_tokens(mask, CROP_START, t, t)
        with context(self.placement):
            text = self._encode_text(
                self._params["text"], put(self.placement, ids), put(self.placement, mask), gather, keep
            )
        glyphs = [glyph_text(x) for x in texts]
        present = [g for g in glyphs if g is not None]
        if not present:  # diffusers: all-masked zeros (masked keys: how many does not matter)
            glyph = jnp.zeros((len(texts), GLYPH_BUCKET, self.glyph_config.d_model), self.dtype)
            return text, jnp.asarray(keep), glyph, jnp.zeros((len(texts), GLYPH_BUCKET), bool)
        warn_truncated(warnings, self.glyph_tokenizer, present, GLYPH_MAX_LENGTH, "byT5", "")
        length = min(text_bucket(max(self.glyph_tokenizer.lengths(present)), GLYPH_BUCKET), GLYPH_MAX_LENGTH)
        ids, mask = self.glyph_tokenizer([g or "" for g in glyphs], length)
        mask = mask * np.array([g is not None for g in glyphs], np.int32)[:, None]
        with context(self.placement):
            glyph = self._encode_glyph(
                self._params["glyph"], put(self.placement, ids), put(self.placement, mask)
            )
        return text, jnp.asarray(keep), glyph, jnp.asarray(mask.astype(bool))

    def parse(self, prompt, **fields) -> Request:
        """Image-to-video without height and width: the size of the image's aspect bucket around the model's
        `target_size` (diffusers' I2V pipeline always picks it)."""
        if self.i2v and fields.get("image") is not None:
            given = [k for k in ("height", "width") if fields.get(k) is not None]
            if len(given) == 1:
                raise InputError(
                    f"image-to-video: give both height and width, or neither (the image's aspect bucket); "
                    f"got only {given[0]}"
                )
            if not given:
                pil = read_images(fields["image"], most=self.max_images)[0]
                height, width = bucket_size(
                    pil.height, pil.width, self.transformer_config.target_size, self.spatial
                )
                fields = {**fields, "height": height, "width": width}
        return super().parse(prompt, **fields)

    def check(self, request: Request) -> None:
        super().check(request)
        frames = request.num_frames
        if (frames - 1) % self.temporal:
            lo = (frames - 1) // self.temporal * self.temporal + 1
            raise InputError(
                f"num_frames {frames} must be {self.temporal}k+1 for the HunyuanVideo-1.5 VAE; use {lo} or "
                f"{lo + self.temporal}"
            )
        if request.negative_prompts is not None and request.guidance_scale <= 1.0:
            warn(
                request.warnings,
                "negative_prompt is ignored: HunyuanVideo-1.5 uses it only with guidance_scale > 1",
            )
        if self.i2v and request.images is None:
            raise InputError("this is an image-to-video model: pass image= (CLI: --image PATH)")
        post_patch_grid(self.transformer_config, *self._latent_grid(request))

    def _latent_grid(self, request: Request) -> tuple[int, int, int]:
        """(latent frames, latent height, latent width)."""
        f = (request.num_frames - 1) // self.temporal + 1
        return f, request.height // self.spatial, request.width // self.spatial

    def _cfg(self, request: Request) -> bool:
        return request.guidance_scale > 1.0  # diffusers' guider: off at 1.0

    def encode(self, request: Request):
        """(text, text mask, glyph, glyph mask, condition [B, F, h, w, C + 1], image embeddings or None)."""
        cfg = self._cfg(request)
        negatives = request.negative_prompts
        if negatives is None:
            negatives = tuple(negatives_for("", list(request.prompts)))
        distinct = (list(negatives) if cfg else []) + list(request.prompts)
        # One encoder call, [negatives; prompts] with each text repeated per output (diffusers' order).
        texts = [t for t in distinct for _ in range(request.num_outputs_per_prompt)]
        encoded = self.encode_texts(texts, request.warnings)
        f, h, w = self._latent_grid(request)
        condition = jnp.zeros((request.batch, f, h, w, self.z_dim + 1), self.dtype)
        if not self.i2v:
            return (*encoded, condition, None)
        image = resize_and_crop(request.images[0], request.height, request.width)
        pixel_values = preprocess_images(image, size=self.siglip_size)
        with context(self.placement):
            latent, tokens = self._encode_image(
                self._params["vae"],
                self._params["image_encoder"],
                put(self.placement, vae_pixels(image)),
                put(self.placement, pixel_values),
                tiling=self._tiling(),
            )
        # diffusers: the image latent in frame 0 of the condition latents, the mask 1 there and 0 elsewhere.
        first = jnp.concatenate([latent[:, 0], jnp.ones(latent.shape[:1] + latent.shape[2:4] + (1,))], -1)
        condition = condition.at[:, 0].set(first.astype(self.dtype))
        image_embeds = jnp.repeat(tokens, request.batch, axis=0)
        return (*encoded, condition, image_embeds)

    def denoise_stage(self, request: Request, cond, progress) -> Stage:
        text, text_mask, glyph, glyph_mask, condition, image_embeds = cond
        f, h, w = self._latent_grid(request)
        init, noise_shape = self._initial_latents(
            request.latents, list(request.seeds), request.batch, f, h, w
        )
        init = put(self.placement, init, None if noise_shape else (sh.BATCH,) + (None,) * 4)
        schedule = self.sampler.schedule(self.scheduler, request.steps, sigmas=custom_sigmas(request.steps))
        cos, sin = _rope_tables(self.transformer_config, f, h, w)
        args = (
            self._params["transformer"],
            init,
            text,
            text_mask,
            glyph,
            glyph_mask,
            condition,
            image_embeds,
            cos,
            sin,
            schedule,
            np.float32(request.guidance_scale),
            progress,
        )
        kwargs = dict(cfg=self._cfg(request), noise_shape=noise_shape)
        key = (init.shape, text.shape, glyph.shape, request.steps, image_embeds is None)
        return Stage(self._denoise, args, kwargs, key=key)

    def decode_stage(self, request: Request) -> Stage:
        params = self._params["vae"]  # first: under offload this brings the VAE in, counted as resident
        tiling = self.decode_tiling(request)
        return Stage(self._decode, (params,), {"tiling": tiling}, key=(tiling,))

    def _tiling(self) -> VAETiling | None:
        """The explicit `vae_tiling` setting as a `VAETiling` (None: untiled, or the automatic choice)."""
        if self.vae_tiling is True:
            return VAETiling()
        return self.vae_tiling or None

    def decode_tiling(self, request: Request) -> VAETiling | None:
        """The decode's tiles: `vae_tiling` where set, else diffusers' default tiles where memory planning is
        on (`jdiff.pipelines.memory`) and the whole-frame decode's estimate
        (`hunyuan_video15.tiling.decode_activation_bytes`) does not fit what the device has free now."""
        if self.vae_tiling is not None or not memory.enabled():
            return self._tiling()
        f, h, w = self._latent_grid(request)
        need = decode_activation_bytes(self.vae_config, request.batch, f, h, w, self.dtype.itemsize)
        return None if memory.fits(need) else VAETiling()

    def latents_out(self, final: np.ndarray) -> np.ndarray:
        return final.transpose(0, 4, 1, 2, 3)  # channels-last -> diffusers' [B, C, F, H, W]

    def _initial_latents(self, latents, seeds, batch, f, h, w):
        return video_latents(latents, seeds, batch, self.z_dim, f, h, w, "HunyuanVideo-1.5")


def _own_overrides(model: ModelDir) -> dict:
    """The model directory's jdiff_preset.json keys (they win over the guider's scale)."""
    from jdiff.presets import OVERRIDE

    path = model.root / OVERRIDE
    return read_json(path) if path.is_file() else {}


def _siglip_size(model: ModelDir, default: int | None) -> int:
    """The SigLIP input size: feature_extractor/preprocessor_config.json's, else the encoder config's."""
    path = model.root / "feature_extractor" / "preprocessor_config.json"
    size = read_json(path).get("size") if path.is_file() else None
    if isinstance(size, dict):
        size = size.get("height", size.get("shortest_edge"))
    return int(size or default or 384)


def _preset(index: dict, transformer) -> str:
    """Which preset a HunyuanVideo-1.5 directory gets: by task and resolution (the transformer's target size)."""
    task = "i2v" if index.get("_class_name") == "HunyuanVideo15ImageToVideoPipeline" else "t2v"
    return f"hunyuan-video-1.5-{'720p' if transformer.target_size >= 960 else '480p'}-{task}"


FAMILY = Family(
    name="hunyuan_video15",
    pipeline_classes=("HunyuanVideo15Pipeline", "HunyuanVideo15ImageToVideoPipeline"),
    pipeline=HunyuanVideo15Pipeline,
    components={
        "HunyuanVideo15Transformer3DModel": "jdiff.models.hunyuan_video15.plan",
        "AutoencoderKLHunyuanVideo15": "jdiff.models.hunyuan_video15.vae_plan",
        "Qwen2_5_VLTextModel": "jdiff.models.hunyuan_video15.text_plan",
        "T5EncoderModel": "jdiff.models.t5.plan",
        "SiglipVisionModel": "jdiff.models.siglip.plan",
    },
    preset=_preset,
)

__all__ = ["FAMILY", "HunyuanVideo15Pipeline", "custom_sigmas"]
