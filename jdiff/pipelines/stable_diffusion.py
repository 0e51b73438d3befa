"""Stable Diffusion 1.5 / 2.x and SDXL text-to-image (diffusers' `StableDiffusionPipeline` and
`StableDiffusionXLPipeline`): encode text -> denoise with the UNet and the directory's DDPM-family solver ->
decode with the VAE.

Axis letters: B batch (outputs), Bm the model's batch (2B with classifier-free guidance: [unconditional;
conditional]), T text tokens, J text width, P pooled width (SDXL), K = 6 size/crop numbers (SDXL),
C latent channels, h/w latent height/width, H/W image height/width.

The latents stay channels-last ([B, h, w, C]) through the loop; `result.latents` is diffusers' [B, C, h, w].
Every jitted stage takes the weights and all per-request values (embeddings, schedule, guidance, size
conditioning) as arguments: one compile per shape serves every prompt. CFG runs both halves as one UNet call.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff import compiler_options
from jdiff import sharding as sh
from jdiff.errors import InputError
from jdiff.layers.rounding import rounded
from jdiff.parallel.placement import context, put
from jdiff.pipelines import lora
from jdiff.pipelines.base import warn, warn_truncated
from jdiff.pipelines.family import Family
from jdiff.pipelines.model_dir import ModelDir
from jdiff.pipelines.pipeline import Pipeline, Stage
from jdiff.pipelines.request import Request
from jdiff.presets import load_preset
from jdiff.sampling.loop import sample
from jdiff.sampling.noise import noise_from_keys, noise_keys

SDXL = "StableDiffusionXLPipeline"


def rescale_cfg(guided: jax.Array, text: jax.Array, rescale) -> jax.Array:
    """diffusers' `rescale_noise_cfg`: the guided prediction rescaled to the conditional one's standard
    deviation (per sample, torch's unbiased std), mixed back by `rescale` (arXiv 2305.08891, section 3.4)."""
    axes = tuple(range(1, guided.ndim))
    std_text = jnp.std(text, axis=axes, keepdims=True, ddof=1)
    std_cfg = jnp.std(guided, axis=axes, keepdims=True, ddof=1)
    return rescale * (guided * (std_text / std_cfg)) + (1 - rescale) * guided


class StableDiffusionPipeline(Pipeline):
    """SD 1.5 / 2.x text-to-image (one CLIP text encoder; epsilon or v-prediction from the scheduler config)."""

    family = "Stable Diffusion"
    is_video = False
    accepts = frozenset({"negative_prompt", "guidance_scale", "guidance_rescale"})
    refusals = {  # noqa: RUF012
        "num_frames": "Stable Diffusion makes images: num_frames must be omitted (or 1)",
        "image": "Stable Diffusion text-to-image takes no conditioning image",
    }

    def __init__(self, model: ModelDir, *, dtype, placement=None):
        self.dtype = jnp.dtype(dtype)
        self.placement = placement
        self.sampler, self.scheduler = model.sampler(flow=False, model=str(self.family))  # or one swapped in
        self.unet_config, unet = model.load("unet", dtype=dtype, placement=placement)
        self.vae_config, vae = model.load("vae", dtype=dtype, placement=placement)
        uc, vc = self.unet_config, self.vae_config
        if uc.in_channels != vc.latent_channels or uc.out_channels != vc.latent_channels:
            raise InputError(
                f"unet in/out channels {uc.in_channels}/{uc.out_channels} != VAE latent_channels "
                f"{vc.latent_channels}; the UNet and VAE come from different models"
            )
        modules = {"unet": unet, "vae": vae, **self._load_text(model, dtype, placement)}
        self.vae_scale_factor = vc.downsample_factor
        sample_size = uc.sample_size
        if isinstance(sample_size, int):
            sample_size = sample_size * self.vae_scale_factor
        elif isinstance(sample_size, tuple):
            sample_size = tuple(s * self.vae_scale_factor for s in sample_size)
        self.preset = load_preset(
            FAMILY.preset(model.index, uc),
            model.root,
            sample_size=sample_size,
            multiple=self.vae_scale_factor,
        )
        self.size_multiple = self.vae_scale_factor
        self.trace_counts: collections.Counter[str] = collections.Counter()
        self._defs, self._params = {}, {}
        for name, module in modules.items():
            self._defs[name], self._params[name] = nnx.split(module)
        components = {c: c for c in ("unet", "text_encoder", "text_encoder_2")}
        self.lora = lora.Adapters(self, model, {c: c for c in components if c in modules})
        self._encode = lora.jit(self._encode_fn, static_argnames=("zero_negatives",))
        self._denoise = lora.jit(self._denoise_fn, static_argnames=("cfg", "rescaled", "noise_shape"))
        self._decode = compiler_options.jit(self._decode_fn)

    # ---- text: the one family difference ---------------------------------------------------------------------

    def _load_text(self, model: ModelDir, dtype, placement) -> dict:
        te_config, te = model.load("text_encoder", dtype=dtype, placement=placement)
        self.tokenizers = (model.tokenizer("tokenizer"),)
        if te_config.hidden_size != self.unet_config.cross_dim_at(0):
            raise InputError(
                f"text_encoder width {te_config.hidden_size} != unet cross_attention_dim "
                f"{self.unet_config.cross_attention_dim}; the text encoder and UNet come from different models"
            )
        return {"text_encoder": te}

    def _encode_fn(self, params, ids, *, zero_negatives: bool):
        """[Bm, T] ids -> (embeds [Bm, T, J], no pooled): the last hidden state (after the final norm)."""
        del zero_negatives  # SD always encodes its negatives ("" when none is given)
        self.trace_counts["encode"] += 1
        te = nnx.merge(self._defs["text_encoder"], params["text_encoder"])
        return te.encode(ids[0]).last_hidden_state.astype(self.dtype), None

    def _added(self, request: Request, cfg: bool):
        """Per-sample added conditioning of the UNet (SDXL's time ids); None for SD."""
        del request, cfg
        return None

    def _zero_negatives(self, request: Request) -> bool:
        del request
        return False

    # ---- jitted stages ------------------------------------------------------------------------------------

    def _denoise_fn(
        self, params, init, keys, embeds, pooled, time_ids, schedule, guidance, rescale, progress, *,
        cfg, rescaled, noise_shape,
    ):  # fmt: skip
        """The whole sampling loop. With `cfg`, embeds (pooled, time_ids) hold [negative; positive].

        `init` is the starting latents [B, h, w, C], or with a `noise_shape` (C, h, w) the seeds' keys: the
        noise is drawn here, in diffusers' layout, then made channels-last. `keys` are the seeds' keys for
        solvers that add noise while sampling (None otherwise).
        """
        self.trace_counts["denoise"] += 1
        unet = nnx.merge(self._defs["unet"], params)
        x = init if noise_shape is None else noise_from_keys(init, noise_shape).transpose(0, 2, 3, 1)
        x = sh.constrain(x, (sh.BATCH, None, None, None))
        added = {}
        if time_ids is not None:
            # diffusers builds the time ids in the text embeddings' dtype (`_get_add_time_ids(dtype=...)`): in
            # bfloat16 an original size of 1500 is 1504 to the UNet's sinusoidal embedding.
            added = {"text_embeds": pooled, "time_ids": rounded(time_ids, self.dtype)}

        def predict(x, t, _):
            xb = jnp.concatenate([x, x]) if cfg else x
            out = unet(xb.astype(self.dtype), t, embeds, **added).astype(jnp.float32)
            if cfg:
                uncond, text = jnp.split(out, 2)
                out = uncond + guidance * (text - uncond)
                if rescaled:
                    out = rescale_cfg(out, text, rescale)
            return out

        extra = {"noise_keys": keys} if keys is not None else {}
        return sample(self.sampler, self.scheduler, predict, x, schedule, progress=progress, **extra)

    def _decode_fn(self, vae_params, latents):
        self.trace_counts["decode"] += 1
        vae = nnx.merge(self._defs["vae"], vae_params)
        vc = self.vae_config
        z = sh.constrain(latents, (sh.BATCH, None, None, None))
        if vc.latents_mean is not None and vc.latents_std is not None:
            z = z * jnp.asarray(vc.latents_std) / vc.scaling_factor + jnp.asarray(vc.latents_mean)
        else:
            z = z / vc.scaling_factor
        image = vae.decode(z.astype(self.dtype)).astype(jnp.float32)
        return jnp.clip(image * 0.5 + 0.5, 0, 1)

    # ---- the hooks of Pipeline.generate ------------------------------------------------------------------

    def _cfg(self, request: Request) -> bool:
        return request.guidance_scale > 1

    def check(self, request: Request) -> None:
        super().check(request)
        given, w = request.given, request.warnings
        if not self._cfg(request):
            if request.negative_prompts is not None:
                warn(w, "negative_prompt is ignored: it is used only with guidance_scale > 1")
            if "guidance_rescale" in given and request.guidance_rescale:
                warn(
                    w,
                    "guidance_rescale is ignored: it rescales classifier-free guidance (guidance_scale > 1)",
                )

    def encode(self, request: Request):
        cfg = self._cfg(request)
        zeros = cfg and self._zero_negatives(request)
        negatives = list(request.negative_prompts or [""] * len(request.prompts))
        distinct = (negatives if cfg and not zeros else []) + list(request.prompts)
        n = request.num_outputs_per_prompt
        texts = [t for t in distinct for _ in range(n)]
        ids = []
        for i, tok in enumerate(self.tokenizers):
            warn_truncated(request.warnings, tok, distinct, tok.model_max_length, f"text encoder {i + 1}")
            ids.append(put(self.placement, tok(texts, tok.model_max_length)[0]))
        with context(self.placement):
            text_params = {k: self._params[k] for k in self._params if k.startswith("text_encoder")}
            return self._encode(text_params, tuple(ids), zero_negatives=zeros)

    def denoise_stage(self, request: Request, cond, progress) -> Stage:
        embeds, pooled = cond
        cfg = self._cfg(request)
        h, w = request.height // self.vae_scale_factor, request.width // self.vae_scale_factor
        c = self.vae_config.latent_channels
        init, noise_shape = self._initial_latents(request, c, h, w)
        keys = noise_keys(list(request.seeds)) if self.sampler.takes_noise else None
        schedule = self.sampler.schedule(self.scheduler, request.steps)
        rescale = request.guidance_rescale or 0.0
        args = (
            self._params["unet"], init, keys, embeds, pooled, self._added(request, cfg), schedule,
            np.float32(request.guidance_scale), np.float32(rescale), progress,
        )  # fmt: skip
        kwargs = dict(cfg=cfg, rescaled=cfg and rescale > 0, noise_shape=noise_shape)
        return Stage(self._denoise, args, kwargs, key=(np.shape(init), embeds.shape, request.steps, h, w))

    def decode_stage(self, request: Request) -> Stage:
        h, w = request.height // self.vae_scale_factor, request.width // self.vae_scale_factor
        return Stage(self._decode, (self._params["vae"],), {}, key=(h, w))

    def latents_out(self, final: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(final).transpose(0, 3, 1, 2))

    def _initial_latents(self, request: Request, c: int, h: int, w: int):
        """(init, noise_shape) for `_denoise_fn`: the seeds' keys and (C, h, w), or the caller's latents
        ([B, C, h, w], diffusers' layout) made channels-last on the host and None."""
        if request.latents is None:
            return noise_keys(list(request.seeds)), (c, h, w)
        want = (request.batch, c, h, w)
        if request.latents.shape != want:
            raise InputError(
                f"latents have shape {request.latents.shape}; for {request.batch} output(s) at "
                f"{request.width}x{request.height} {self.family} expects {want} (diffusers' layout)"
            )
        return put(self.placement, request.latents.transpose(0, 2, 3, 1), (sh.BATCH, None, None, None)), None


class StableDiffusionXLPipeline(StableDiffusionPipeline):
    """SDXL text-to-image: two text encoders (penultimate hidden states, concatenated), the second's projected
    pooled output and the size/crop micro-conditioning as the UNet's added embedding."""

    family = "SDXL"
    accepts = StableDiffusionPipeline.accepts | {"original_size", "target_size", "crops_coords_top_left"}
    refusals = {  # noqa: RUF012
        "num_frames": "SDXL makes images: num_frames must be omitted (or 1)",
        "image": "SDXL text-to-image takes no conditioning image",
    }

    def _load_text(self, model: ModelDir, dtype, placement) -> dict:
        c1, te1 = model.load("text_encoder", dtype=dtype, placement=placement)
        c2, te2 = model.load("text_encoder_2", dtype=dtype, placement=placement)
        self.tokenizers = (model.tokenizer("tokenizer"), model.tokenizer("tokenizer_2"))
        uc = self.unet_config
        if c1.hidden_size + c2.hidden_size != uc.cross_dim_at(0):
            raise InputError(
                f"text encoder widths {c1.hidden_size} + {c2.hidden_size} != unet cross_attention_dim "
                f"{uc.cross_attention_dim}; the text encoders and UNet come from different models"
            )
        if uc.addition_embed_type != "text_time" or (
            uc.projection_class_embeddings_input_dim != c2.projection_dim + 6 * uc.addition_time_embed_dim
        ):
            raise InputError(
                f"the unet's added embedding (addition_embed_type {uc.addition_embed_type!r}, input "
                f"{uc.projection_class_embeddings_input_dim}) does not take text_encoder_2's pooled "
                f"{c2.projection_dim} plus 6 size/crop numbers of {uc.addition_time_embed_dim}; is this an SDXL "
                "refiner (aesthetic-score conditioning, not supported) or a mixed directory?"
            )
        self.force_zeros_for_empty_prompt = bool(model.index.get("force_zeros_for_empty_prompt", True))
        return {"text_encoder": te1, "text_encoder_2": te2}

    def _encode_fn(self, params, ids, *, zero_negatives: bool):
        """([Bm, T] ids, [Bm, T] ids) -> (embeds [Bm, T, J1 + J2], pooled [Bm, P]): both encoders'
        `hidden_states[-2]` concatenated, the second's projected pooled output; with `zero_negatives` the
        negatives are zeros in front of the encoded prompts (diffusers' force_zeros_for_empty_prompt)."""
        self.trace_counts["encode"] += 1
        o1 = nnx.merge(self._defs["text_encoder"], params["text_encoder"]).encode(ids[0], -2)
        o2 = nnx.merge(self._defs["text_encoder_2"], params["text_encoder_2"]).encode(ids[1], -2)
        embeds = jnp.concatenate([o1.hidden_state, o2.hidden_state.astype(o1.hidden_state.dtype)], axis=-1)
        pooled = o2.text_embeds
        if zero_negatives:
            embeds = jnp.concatenate([jnp.zeros_like(embeds), embeds])
            pooled = jnp.concatenate([jnp.zeros_like(pooled), pooled])
        return embeds.astype(self.dtype), pooled.astype(self.dtype)

    def _zero_negatives(self, request: Request) -> bool:
        return request.negative_prompts is None and self.force_zeros_for_empty_prompt

    def _added(self, request: Request, cfg: bool) -> np.ndarray:
        """[Bm, 6] time ids: (original size, crop top-left, target size), diffusers' defaults the output size
        and (0, 0); the negatives get the same."""
        size = (request.height, request.width)
        row = (
            *(request.original_size or size),
            *(request.crops_coords_top_left or (0, 0)),
            *(request.target_size or size),
        )
        return np.tile(np.asarray(row, np.float32), ((2 if cfg else 1) * request.batch, 1))


def _pipeline(model: ModelDir, *, dtype, placement=None) -> StableDiffusionPipeline:
    """The pipeline of `model_index.json`'s class (the family runs both)."""
    cls = StableDiffusionXLPipeline if model.pipeline_class == SDXL else StableDiffusionPipeline
    return cls(model, dtype=dtype, placement=placement)


def _preset(index: dict, unet) -> str:
    """sdxl for SDXL; sd2 for an OpenCLIP-H (1024-wide) UNet; sd15 otherwise."""
    if index.get("_class_name") == SDXL:
        return "sdxl"
    return "sd2" if unet.cross_dim_at(0) == 1024 else "sd15"


FAMILY = Family(
    name="stable_diffusion",
    pipeline_classes=("StableDiffusionPipeline", SDXL),
    pipeline=_pipeline,
    components={
        "UNet2DConditionModel": "jdiff.models.unet.plan",
        "CLIPTextModel": "jdiff.models.clip.plan",
        "CLIPTextModelWithProjection": "jdiff.models.clip.projection_plan",
        "AutoencoderKL": "jdiff.models.autoencoder_kl.plan",
    },
    preset=_preset,
    unused=("StableDiffusionSafetyChecker",),  # SD 1.5's NSFW classifier: jdiff generates without it
)

__all__ = ["FAMILY", "StableDiffusionPipeline", "StableDiffusionXLPipeline", "rescale_cfg"]
