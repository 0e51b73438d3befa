"""The FLUX.2 pipelines, stage by stage as diffusers' `Flux2Pipeline` (dev) and `Flux2KleinPipeline` run them:
validate -> encode text (Mistral-3 / Qwen3) -> [encode reference images: VAE] -> timesteps -> latents ->
denoise -> decode. This module holds what both share and FLUX.2-dev's pipeline; `flux2_klein.py` klein's.

Axis letters: B batch (x2 with CFG), T text tokens (= max_sequence_length), J stacked encoder width, C latent
channels, K = 4C packed channels, S = (h/2)(w/2) generated tokens, R reference tokens, h/w latent
height/width, H/W image height/width.

Text: the encoder's hidden states at three layers (dev: 10, 20, 30; klein: 9, 18, 27), padded to
max_sequence_length, stacked per token [T, 3D] (padding tokens included, as diffusers feeds them). Reference
images (`image=[...]`, any sizes): each one capped at 1024^2 pixels (Lanczos), cropped to a multiple of 16,
VAE-encoded (the posterior's mode), packed 2x2 and batch-normalised, and appended after the generated tokens
with its own time coordinate (10, 20, ...). Without a height/width the output takes the first reference
image's size. Latents are packed [B, h/2, w/2, K] during sampling; `latents=` takes diffusers' [B, K, h/2, w/2]
and `result.latents` is the reference pipeline's `output_type="latent"`: dev's packed normalised tokens
[B, S, K]; klein's un-normalised unpacked [B, C, h, w].
"""

from __future__ import annotations

import collections
import math

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
from jdiff.pipelines.base import warn_truncated
from jdiff.pipelines.chat_template import read_template, render, special_tokens
from jdiff.pipelines.family import Family
from jdiff.pipelines.model_dir import ModelDir
from jdiff.pipelines.pipeline import Pipeline, Stage
from jdiff.pipelines.request import Request
from jdiff.presets import load_preset
from jdiff.sampling.flow_match import default_sigmas
from jdiff.sampling.noise import noise_from_keys, noise_keys
from jdiff.sampling.step_cache import CachedModel

# diffusers' pipelines/flux2/system_messages.py (from black-forest-labs/flux2), FLUX.2-dev's system turn.
SYSTEM_MESSAGE = """You are an AI that reasons about image descriptions. You give structured responses focusing on object relationships, object
attribution and actions without speculation."""
MAX_REFERENCE_AREA = 1024 * 1024


def compute_empirical_mu(image_seq_len: int, num_steps: int) -> float:
    """FLUX.2's resolution- and step-dependent shift (black-forest-labs/flux2 sampling.py, as diffusers)."""
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666
    if image_seq_len > 4300:
        return float(a2 * image_seq_len + b2)
    m_200, m_10 = a2 * image_seq_len + b2, a1 * image_seq_len + b1
    a = (m_200 - m_10) / 190.0
    return float(a * num_steps + (m_200 - 200.0 * a))


def reference_image(image, multiple: int) -> np.ndarray:
    """A reference image as diffusers' FLUX.2 pipelines prepare it: [h, w, 3] float32 in [-1, 1].

    Raises:
        InputError: a side under 64 pixels or an aspect ratio over 8 (diffusers' `check_image_input`).
    """
    from PIL import Image

    w, h = image.size
    if w < 64 or h < 64:
        raise InputError(f"reference image too small: {w}x{h}; FLUX.2 needs both sides at least 64 pixels")
    if max(w / h, h / w) > 8:
        raise InputError(f"reference image aspect ratio too extreme: {w}x{h}; FLUX.2 takes at most 8:1")
    if w * h > MAX_REFERENCE_AREA:
        scale = math.sqrt(MAX_REFERENCE_AREA / (w * h))
        image = image.resize((int(w * scale), int(h * scale)), Image.Resampling.LANCZOS)
        w, h = image.size
    w, h = w // multiple * multiple, h // multiple * multiple
    left, top = (image.width - w) // 2, (image.height - h) // 2
    image = image.crop((left, top, left + w, top + h)).convert("RGB")
    return np.asarray(image, np.float32) / 255.0 * 2.0 - 1.0


def _channels_last(x):
    """[B, K, h/2, w/2] -> [B, h/2, w/2, K]: the layout FLUX.2's loop keeps its (packed) latents in."""
    return x.transpose(0, 2, 3, 1)


def image_ids(h: int, w: int, t: float = 0.0) -> np.ndarray:
    """(t, row, column, 0) for an h x w grid of tokens, row-major."""
    ids = np.zeros((h, w, 4))
    ids[..., 0], ids[..., 1], ids[..., 2] = t, np.arange(h)[:, None], np.arange(w)[None, :]
    return ids.reshape(-1, 4)


class Flux2Pipeline(Pipeline):
    """FLUX.2-dev (Mistral-3 text encoder, guidance-distilled) from a diffusers-format directory."""

    family = "FLUX.2"
    is_video = False
    accepts = frozenset({"guidance_scale", "max_sequence_length", "image"})
    # First-block caching at FLUX.1's default, not measured on FLUX.2 (no TeaCache polynomial is published).
    step_caches = {"first_block": 0.12}  # noqa: RUF012
    max_images = 10
    refusals = {  # noqa: RUF012
        "num_frames": "FLUX.2 makes images: num_frames must be omitted (or 1)",
        "negative_prompt": "FLUX.2 takes no negative prompt (its reference pipelines have none)",
        "true_cfg_scale": "FLUX.2 takes no true_cfg_scale; guidance_scale is its guidance",
    }
    text_layers: tuple[int, ...] = (10, 20, 30)

    def __init__(self, model: ModelDir, *, dtype, placement=None):
        self.dtype = jnp.dtype(dtype)
        self.placement = placement
        self.sampler, self.scheduler = model.sampler(flow=True, model="FLUX.2")
        self.transformer_config, transformer = model.load("transformer", dtype=dtype, placement=placement)
        self.text_config, text_encoder = model.load("text_encoder", dtype=dtype, placement=placement)
        self.vae_config, vae = model.load("vae", dtype=dtype, placement=placement)
        self.tokenizer = model.tokenizer("tokenizer")
        self.chat_template = read_template(model.folder("tokenizer"))
        self.special_tokens = special_tokens(model.folder("tokenizer"))
        tc, vc = self.transformer_config, self.vae_config
        if tc.in_channels != 4 * vc.latent_channels:
            raise InputError(
                f"transformer in_channels {tc.in_channels} != 4 x VAE latent_channels {vc.latent_channels}; the "
                "transformer and VAE come from different models"
            )
        self.vae_scale_factor = 2 ** (len(vc.block_out_channels) - 1)
        self.size_multiple = 2 * self.vae_scale_factor
        self.preset = load_preset(
            self.preset_name(model), model.root, sample_size=vc.sample_size, multiple=self.size_multiple
        )
        self._bn = (np.asarray(vae.bn.running_mean[...]), np.asarray(vae.bn.running_var[...]), vae.bn.eps)
        self.trace_counts: collections.Counter[str] = collections.Counter()
        self._defs, self._params = {}, {}
        for name, module in (("transformer", transformer), ("text", text_encoder), ("vae", vae)):
            self._defs[name], self._params[name] = nnx.split(module)
        self._encode = compiler_options.jit(self._encode_fn)
        self._encode_image = compiler_options.jit(self._encode_image_fn)
        self.lora = lora.Adapters(self, model, {"transformer": "transformer"})
        self._denoise = lora.jit(self._denoise_fn, static_argnames=("cfg", "noise_shape", "step_cache"))
        self._decode = compiler_options.jit(self._decode_fn)

    def preset_name(self, model: ModelDir) -> str:
        return "flux2-dev"

    # ---- what the variants differ in ------------------------------------------------------------------------

    def chat(self, prompts: list[str]) -> list[str]:
        """diffusers' `format_input` (system turn, then the user's text without "[IMG]") in the chat template,
        without a generation prompt."""
        return [
            render(
                self.chat_template,
                [
                    {"role": "system", "content": [{"type": "text", "text": SYSTEM_MESSAGE}]},
                    {"role": "user", "content": [{"type": "text", "text": p.replace("[IMG]", "")}]},
                ],
                add_generation_prompt=False,
                **self.special_tokens,
            )
            for p in prompts
        ]

    def tokenize(self, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """The rendered chat tokenized as transformers' `apply_chat_template(tokenize=True)` does: the template
        writes the special tokens itself, so none are added."""
        return self.tokenizer(texts, max_length, add_special_tokens=False)

    def _cfg(self, request: Request) -> bool:
        return False

    def guidance(self, request: Request) -> np.ndarray | None:
        """The guidance embedding's input per output (dev's distilled guidance), or None (klein)."""
        if not self.transformer_config.guidance_embeds:
            return None
        return np.full((request.batch,), request.guidance_scale or 0.0, np.float32)

    # ---- jitted stages ------------------------------------------------------------------------------------

    def _encode_fn(self, params, ids, mask):
        self.trace_counts["encode"] += 1
        hidden = nnx.merge(self._defs["text"], params)(
            ids, mask, hidden_layers=self.text_layers
        )  # [J, B, T, D]
        j, b, t, d = hidden.shape
        return hidden.transpose(1, 2, 0, 3).reshape(b, t, j * d).astype(self.dtype)

    def _encode_image_fn(self, vae_params, image):
        self.trace_counts["encode_image"] += 1
        packed = nnx.merge(self._defs["vae"], vae_params).encode_packed(image.astype(self.dtype))
        return packed.reshape(packed.shape[0], -1, packed.shape[-1])  # [1, R, K]

    def _denoise_fn(
        self, params, init, embeds, refs, cos, sin, schedule, guidance, scale, progress, cache_params=None, *,
        cfg, noise_shape, step_cache=None,
    ):  # fmt: skip
        """The whole sampling loop; with `cfg` (klein base), embeds hold [negatives; prompts]. With a
        `step_cache` mode and its `cache_params`, returns (latents, step-cache statistics)."""
        self.trace_counts["denoise"] += 1
        model = nnx.merge(self._defs["transformer"], params)
        # The loop's latents are packed but spatial, [B, h/2, w/2, K]: the decoder and `latents_out` see the size.
        latents = init if noise_shape is None else _channels_last(noise_from_keys(init, noise_shape))
        latents = sh.constrain(latents, (sh.BATCH, None, None, None))
        n, bm = schedule.timesteps.shape[0], embeds.shape[0]
        g = (
            None
            if guidance is None
            else jnp.tile(jnp.concatenate([guidance, guidance]) if cfg else guidance, n)
        )
        modulation = model.modulation(jnp.repeat(pipeline_sigma(schedule.timesteps, self.dtype), bm), g)
        per_step = jax.tree.map(lambda m: m.reshape(n, -1, m.shape[-1]), modulation)

        shape = latents.shape

        def tokens(x):
            b, h2, w2, k = x.shape
            xb = x.reshape(b, h2 * w2, k)
            xb = jnp.concatenate([xb, xb]) if cfg else xb
            if refs is not None:
                xb = jnp.concatenate([xb, jnp.broadcast_to(refs, (xb.shape[0], *refs.shape[1:]))], axis=1)
            return xb.astype(self.dtype)

        def guide(v):
            v = v[:, : shape[1] * shape[2]].astype(jnp.float32)
            if cfg:
                neg, pos = jnp.split(v, 2)
                v = neg + scale * (pos - neg)
            return v.reshape(shape)

        def velocity(x, t, mod):
            return guide(model.predict(tokens(x), embeds, mod, (cos, sin)))

        parts = None
        if step_cache is not None:
            rope = (cos, sin)
            parts = CachedModel(
                embed=lambda x, t, mod: (model.embed(tokens(x), embeds), mod),
                first=lambda h, mod: model.first_block(h, mod, rope),
                rest=lambda h, mod: model.rest_blocks(h, mod, rope),
                final=lambda h, mod: guide(model.output(h[0], mod)),
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

    def _decode_fn(self, vae_params, latents):
        self.trace_counts["decode"] += 1
        vae = nnx.merge(self._defs["vae"], vae_params)
        latents = sh.constrain(latents, (sh.BATCH, None, None, None))
        image = vae.decode_packed(latents.astype(self.dtype)).astype(jnp.float32)
        return jnp.clip(image * 0.5 + 0.5, 0, 1)

    # ---- the hooks of Pipeline.generate ------------------------------------------------------------------

    def size(self, request: Request) -> tuple[int, int]:
        """(height, width): as asked, else the first reference image's (prepared) size, else the preset's."""
        if request.images is None or "height" in request.given or "width" in request.given:
            return request.height, request.width
        ref = reference_image(request.images[0], self.size_multiple)
        return ref.shape[0], ref.shape[1]

    def check(self, request: Request) -> None:
        super().check(request)
        if request.max_sequence_length > 512:
            raise InputError(f"max_sequence_length {request.max_sequence_length} exceeds FLUX.2's 512 tokens")

    def encode(self, request: Request):
        cfg = self._cfg(request)
        texts = ([""] * len(request.prompts) if cfg else []) + list(request.prompts)
        texts = [t for t in texts for _ in range(request.num_outputs_per_prompt)]
        chats = self.chat(texts)
        warn_truncated(
            request.warnings, self.tokenizer, chats, request.max_sequence_length, "the text encoder"
        )
        ids, mask = self.tokenize(chats, request.max_sequence_length)
        with context(self.placement):
            embeds = self._encode(self._params["text"], put(self.placement, ids), put(self.placement, mask))
            refs, ref_ids = None, None
            if request.images is not None:
                parts, id_parts = [], []
                for i, image in enumerate(request.images):
                    pixels = reference_image(image, self.size_multiple)
                    parts.append(self._encode_image(self._params["vae"], put(self.placement, pixels[None])))
                    h2, w2 = pixels.shape[0] // self.size_multiple, pixels.shape[1] // self.size_multiple
                    id_parts.append(image_ids(h2, w2, 10 + 10 * i))
                refs, ref_ids = jnp.concatenate(parts, axis=1), np.concatenate(id_parts)
        return embeds, refs, ref_ids

    def denoise_stage(self, request: Request, cond, progress) -> Stage:
        embeds, refs, ref_ids = cond
        height, width = self.size(request)
        h2, w2 = height // self.size_multiple, width // self.size_multiple
        k = self.transformer_config.in_channels
        if request.latents is None:
            init, noise_shape = noise_keys(list(request.seeds)), (k, h2, w2)
        else:
            arr = np.asarray(request.latents, np.float32)
            if arr.shape != (request.batch, k, h2, w2):
                raise InputError(
                    f"latents have shape {arr.shape}; for {request.batch} output(s) at {width}x{height} FLUX.2 "
                    f"expects {(request.batch, k, h2, w2)} (diffusers' layout)"
                )
            init, noise_shape = (
                put(self.placement, arr.transpose(0, 2, 3, 1), (sh.BATCH, None, None, None)),
                None,
            )
        schedule = self.slot_schedule(request)
        cos, sin = self._rope(embeds.shape[1], h2, w2, ref_ids)
        scale = np.float32(request.guidance_scale or 0.0)
        args = (
            self._params["transformer"],
            init,
            embeds,
            refs,
            cos,
            sin,
            schedule,
            self.guidance(request),
            scale,
        )
        mode, cache_params = self.step_cache(request)
        kwargs = dict(cfg=self._cfg(request), noise_shape=noise_shape, step_cache=mode)
        key = (np.shape(init), embeds.shape, None if refs is None else refs.shape, request.steps, h2, w2)
        return Stage(self._denoise, (*args, progress, cache_params), kwargs, key=key)

    def decode_stage(self, request: Request) -> Stage:
        return Stage(self._decode, (self._params["vae"],), {}, key=self.size(request))

    def _rope(self, t: int, h2: int, w2: int, ref_ids=None) -> tuple[np.ndarray, np.ndarray]:
        """The rotary tables (cos, sin) of [text (t tokens); image (h2 x w2 tokens); reference images]."""
        txt_ids = np.stack([np.zeros(t), np.zeros(t), np.zeros(t), np.arange(t)], 1)
        ids = np.concatenate([txt_ids, image_ids(h2, w2)] + ([] if ref_ids is None else [ref_ids]))
        return rope_cos_sin(
            ids, tuple(self.transformer_config.axes_dims_rope), self.transformer_config.rope_theta
        )

    # ---- step-level continuous batching (`jdiff.pipelines.slots`) ------------------------------------------
    # Text-to-image (dev and klein): a slot holds one image's packed latents [h/2, w/2, K], its text embeddings
    # [R, T, J] (R = 2 for klein base's CFG: [empty negative; prompt]), its guidance (dev's embedding input)
    # and its scale (klein base's CFG). Reference images keep request-level batching.

    def slot_refusal(self, request: Request) -> str | None:
        if request.images is not None:
            return "reference images run with request-level batching"
        return None

    def slot_bucket(self, request: Request, cond) -> tuple:
        return ("flux2", *self.size(request))

    def slot_schedule(self, request: Request):
        height, width = self.size(request)
        h2, w2 = height // self.size_multiple, width // self.size_multiple
        mu = compute_empirical_mu(h2 * w2, request.steps)
        return self.sampler.schedule(
            self.scheduler, request.steps, mu=mu, sigmas=default_sigmas(request.steps)
        )

    def slot_inputs(self, request: Request, cond):
        embeds, _, _ = cond
        h2, w2 = (n // self.size_multiple for n in self.size(request))
        noise = slots.noise(request, (self.transformer_config.in_channels, h2, w2), _channels_last)
        g = self.guidance(request)
        return noise, (embeds, None if g is None else g[0], np.float32(request.guidance_scale or 0.0))

    def slot_shared(self, request: Request, cond):
        h2, w2 = (n // self.size_multiple for n in self.size(request))
        return self._rope(cond[0].shape[1], h2, w2)

    def slot_params(self):
        return self._params["transformer"]

    def slot_model(self, params, rope, cond, x, t, run):
        """The velocity for every slot [S, h/2, w/2, K] at per-slot timesteps t [S] (traced)."""
        del run  # every slot's rows are computed (fixed shapes)
        embeds, g, scale = cond  # [S, R, T, J], [S] or None, [S]
        model = nnx.merge(self._defs["transformer"], params)
        s, h2, w2, k = x.shape
        xs, ts, emb = slots.cfg_rows(x.reshape(s, h2 * w2, k), t, embeds)
        r = embeds.shape[1]
        modulation = model.modulation(
            pipeline_sigma(ts, self.dtype), None if g is None else jnp.concatenate([g] * r)
        )
        v = model.predict(xs.astype(self.dtype), emb, modulation, rope)[:, : h2 * w2].astype(jnp.float32)
        return (slots.guided(v, scale) if r == 2 else v).reshape(x.shape)

    def latents_out(self, final: np.ndarray) -> np.ndarray:
        """diffusers' Flux2Pipeline `output_type="latent"`: the packed, normalised tokens [B, S, K]."""
        return final.reshape(final.shape[0], -1, final.shape[-1])


FAMILY = Family(
    name="flux2",
    pipeline_classes=("Flux2Pipeline",),
    pipeline=Flux2Pipeline,
    components={
        "Flux2Transformer2DModel": "jdiff.models.flux2.plan",
        "Mistral3ForConditionalGeneration": "jdiff.models.mistral3.plan",
        "AutoencoderKLFlux2": "jdiff.models.flux2.vae_plan",
    },
    preset=lambda index, transformer: "flux2-dev",
)

__all__ = ["FAMILY", "Flux2Pipeline", "compute_empirical_mu", "image_ids", "reference_image"]
