"""The Z-Image text-to-image pipeline (Z-Image-Turbo), stage by stage as diffusers' `ZImagePipeline` runs it:
validate -> encode text (Qwen3) -> timesteps -> latents -> denoise -> decode.

Axis letters: B batch (x2 with CFG), L tokenizer length, T caption tokens (a multiple of 32), J Qwen3 width,
C latent channels, h/w latent height/width, H/W image height/width.

Text: each prompt in the tokenizer's chat template (user turn, generation prompt, `enable_thinking=True`),
padded to `max_sequence_length`; Qwen3's second-to-last hidden state; only the real tokens are kept (diffusers
keeps a list of variable-length captions; here each row's real tokens come first in a [B, T] block with T
the longest row padded to 32 and the counts beside it). The transformer is called at t = 1 - sigma and its
output negated into the flow velocity. CFG (guidance_scale > 0, the base model's) is diffusers' form:
pos + g (pos - neg). Latents stay in diffusers' [B, C, h, w] layout, so `latents=` and `result.latents` are
diffusers'.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff import compiler_options
from jdiff import sharding as sh
from jdiff.errors import InputError
from jdiff.models.z_image.transformer import padded, patchify, rope_tables, unpatchify
from jdiff.parallel.placement import context, put
from jdiff.pipelines import lora, slots
from jdiff.pipelines.base import warn, warn_truncated
from jdiff.pipelines.chat_template import read_template, render
from jdiff.pipelines.family import Family
from jdiff.pipelines.model_dir import ModelDir
from jdiff.pipelines.pipeline import Pipeline, Stage
from jdiff.pipelines.request import Request
from jdiff.presets import load_preset
from jdiff.sampling.loop import steps_first
from jdiff.sampling.noise import noise_from_keys, noise_keys
from jdiff.sampling.step_cache import CachedModel


def real_tokens_first(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Each row's real tokens moved to its front, in order ([B, L, J]; works for either padding side)."""
    order = jnp.argsort(~mask.astype(bool), axis=1, stable=True)
    return jnp.take_along_axis(hidden, order[..., None], axis=1)


class ZImagePipeline(Pipeline):
    """Z-Image(-Turbo) text-to-image from a diffusers-format directory or a converted jdiff checkpoint."""

    family = "Z-Image"
    is_video = False
    accepts = frozenset({"negative_prompt", "guidance_scale", "max_sequence_length"})
    # First-block caching at FLUX.1's default, not measured on Z-Image (no TeaCache polynomial is published).
    step_caches = {"first_block": 0.12}  # noqa: RUF012
    refusals = {  # noqa: RUF012
        "num_frames": "Z-Image makes images: num_frames must be omitted (or 1)",
        "image": "Z-Image text-to-image takes no conditioning image",
        "true_cfg_scale": "Z-Image's CFG is guidance_scale (> 0 turns it on); there is no true_cfg_scale",
    }

    def __init__(self, model: ModelDir, *, dtype, placement=None):
        self.dtype = jnp.dtype(dtype)
        self.placement = placement
        self.sampler, self.scheduler = model.sampler(flow=True, model="Z-Image")
        self.transformer_config, transformer = model.load("transformer", dtype=dtype, placement=placement)
        self.text_config, text_encoder = model.load("text_encoder", dtype=dtype, placement=placement)
        self.vae_config, vae = model.load("vae", dtype=dtype, placement=placement)
        self.tokenizer = model.tokenizer("tokenizer")
        self.chat_template = read_template(model.folder("tokenizer"))
        tc, vc = self.transformer_config, self.vae_config
        if tc.in_channels != vc.latent_channels or tc.cap_feat_dim != self.text_config.hidden_size:
            raise InputError(
                f"transformer in_channels {tc.in_channels} / cap_feat_dim {tc.cap_feat_dim} do not match the VAE's "
                f"{vc.latent_channels} latent channels / the text encoder's width {self.text_config.hidden_size}; "
                "the components come from different models"
            )
        self.vae_scale_factor = 2 ** (len(vc.block_out_channels) - 1)
        self.size_multiple = 2 * self.vae_scale_factor
        self.preset = load_preset(
            FAMILY.preset(model.index, tc),
            model.root,
            sample_size=vc.sample_size,
            multiple=self.size_multiple,
        )
        self.trace_counts: collections.Counter[str] = collections.Counter()
        self._defs, self._params = {}, {}
        for name, module in (("transformer", transformer), ("text", text_encoder), ("vae", vae)):
            self._defs[name], self._params[name] = nnx.split(module)
        self._encode = compiler_options.jit(self._encode_fn, static_argnames=("length",))
        self.lora = lora.Adapters(self, model, {"transformer": "transformer"})
        self._denoise = lora.jit(
            self._denoise_fn, static_argnames=("cfg", "noise_shape", "masked", "step_cache")
        )
        self._decode = compiler_options.jit(self._decode_fn)

    # ---- jitted stages ------------------------------------------------------------------------------------

    def _encode_fn(self, params, ids, mask, *, length: int):
        self.trace_counts["encode"] += 1
        (hidden,) = nnx.merge(self._defs["text"], params)(ids, mask, hidden_layers=(-2,))
        return real_tokens_first(hidden, mask)[:, :length].astype(self.dtype)

    def _denoise_fn(
        self, params, init, caps, cap_lens, rope, schedule, scale, progress, cache_params=None, *, cfg,
        noise_shape, masked, step_cache=None,
    ):  # fmt: skip
        """The whole sampling loop; with `cfg`, caps hold [negatives; prompts] (diffusers' CFG form). With a
        `step_cache` mode and its `cache_params`, returns (latents, step-cache statistics)."""
        self.trace_counts["denoise"] += 1
        model = nnx.merge(self._defs["transformer"], params)
        latents = init if noise_shape is None else noise_from_keys(init, noise_shape)
        latents = sh.constrain(latents, (sh.BATCH, None, None, None))
        h, w = latents.shape[2:]
        n, bm = schedule.timesteps.shape[0], caps.shape[0]
        # diffusers calls the transformer at t = (1000 - timestep) / 1000 = 1 - sigma.
        modulation = model.modulation(jnp.repeat((1000 - schedule.timesteps) / 1000, bm))
        per_step = jax.tree.map(lambda m: steps_first(m, n), modulation)

        def tokens(x):
            return patchify((jnp.concatenate([x, x]) if cfg else x).astype(self.dtype))

        def guide(out):
            return self.guide(out, scale if cfg else None, h, w)

        def velocity(x, t, mod):
            return guide(model.predict(tokens(x), caps, cap_lens, mod, rope, masked=masked))

        parts = None
        if step_cache is not None:
            s = (h // 2) * (w // 2)  # image tokens (2x2 patches)
            parts = CachedModel(
                embed=lambda x, t, mod: model.embed(tokens(x), caps, cap_lens, mod, rope, masked=masked),
                first=lambda u, c: model.run_layers(u, c, layers=slice(0, 1)),
                rest=lambda u, c: model.run_layers(u, c, layers=slice(1, None)),
                final=lambda u, c: guide(model.output(u, c, s)),
                probe=lambda u: u,
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
    def guide(out: jax.Array, scale, h: int, w: int) -> jax.Array:
        """The flow velocity [B, C, h, w] from the transformer's output tokens, guided with diffusers' CFG form
        pos + g (pos - neg) over the [negatives; prompts] halves where `scale` (g, scalar or broadcasting per
        row) is given."""
        out = out.astype(jnp.float32)
        if scale is not None:
            neg, pos = jnp.split(out, 2)
            out = pos + scale * (pos - neg)
        return -unpatchify(out, h, w)

    def _decode_fn(self, vae_params, latents):
        self.trace_counts["decode"] += 1
        vae = nnx.merge(self._defs["vae"], vae_params)
        z = latents.transpose(0, 2, 3, 1) / self.vae_config.scaling_factor + (
            self.vae_config.shift_factor or 0.0
        )
        image = vae.decode(z.astype(self.dtype)).astype(jnp.float32)
        return jnp.clip(image * 0.5 + 0.5, 0, 1)

    # ---- the hooks of Pipeline.generate ------------------------------------------------------------------

    def _cfg(self, request: Request) -> bool:
        return (request.guidance_scale or 0.0) > 0

    def check(self, request: Request) -> None:
        super().check(request)
        if request.negative_prompts is not None and not self._cfg(request):
            warn(request.warnings, "negative_prompt is ignored: Z-Image uses it only with guidance_scale > 0")

    def chat(self, prompts: list[str]) -> list[str]:
        """The prompts as diffusers' ZImagePipeline formats them (user turn, generation prompt, thinking on)."""
        messages = [[{"role": "user", "content": p}] for p in prompts]
        return [
            render(self.chat_template, m, add_generation_prompt=True, enable_thinking=True) for m in messages
        ]

    def encode(self, request: Request):
        cfg = self._cfg(request)
        negatives = list(request.negative_prompts or [""] * len(request.prompts)) if cfg else []
        texts = [t for t in negatives + list(request.prompts) for _ in range(request.num_outputs_per_prompt)]
        chats = self.chat(texts)
        warn_truncated(request.warnings, self.tokenizer, chats, request.max_sequence_length, "Qwen3")
        ids, mask = self.tokenizer(chats, request.max_sequence_length)
        lens = mask.sum(1).astype(np.int32)
        length = padded(int(lens.max()))
        with context(self.placement):
            caps = self._encode(
                self._params["text"], put(self.placement, ids), put(self.placement, mask), length=length
            )
        return caps, lens

    def denoise_stage(self, request: Request, cond, progress) -> Stage:
        caps, lens = cond
        h, w = self._latent_size(request)
        c = self.transformer_config.in_channels
        if request.latents is None:
            init, noise_shape = noise_keys(list(request.seeds)), (c, h, w)
        else:
            init, noise_shape = np.asarray(request.latents, np.float32), None
            if init.shape != (request.batch, c, h, w):
                raise InputError(
                    f"latents have shape {init.shape}; for {request.batch} output(s) at this size Z-Image expects "
                    f"{(request.batch, c, h, w)} (diffusers' layout)"
                )
            init = put(self.placement, init, (sh.BATCH, None, None, None))
        schedule = self.slot_schedule(request)
        rope = rope_tables(self.transformer_config, [int(n) for n in lens], caps.shape[1], h // 2, w // 2)
        scale = np.float32(request.guidance_scale or 0.0)
        mode, cache_params = self.step_cache(request)
        args = (self._params["transformer"], init, caps, lens, rope, schedule, scale, progress, cache_params)
        kwargs = dict(cfg=self._cfg(request), noise_shape=noise_shape, masked=_masked(cond), step_cache=mode)
        return Stage(self._denoise, args, kwargs, key=(np.shape(init), caps.shape, request.steps, h, w))

    def decode_stage(self, request: Request) -> Stage:
        return Stage(self._decode, (self._params["vae"],), {}, key=(request.height, request.width))

    def _latent_size(self, request: Request) -> tuple[int, int]:
        f = 2 * self.vae_scale_factor
        return 2 * (request.height // f), 2 * (request.width // f)

    # ---- step-level continuous batching (`jdiff.pipelines.slots`) ------------------------------------------
    # A slot holds one image's latents [C, h, w] and its captions [R, T, J] (R = 2 with CFG: [negative; prompt]),
    # their token counts, their per-row image rotary tables and its guidance scale; the bucket is (size, and
    # through the row's shapes T and R, and whether the plain loop masks (`ZImageSlot.masked`).

    def slot_refusal(self, request: Request) -> str | None:
        return None

    def slot_bucket(self, request: Request, cond) -> tuple:
        return ("z-image", request.height, request.width)

    def slot_schedule(self, request: Request):
        h, w = self._latent_size(request)
        return slots.flow_schedule(self, request.steps, (h // 2) * (w // 2))

    def _slot_rope(self, request: Request, cond):
        caps, lens = cond
        h, w = self._latent_size(request)
        return rope_tables(self.transformer_config, [int(n) for n in lens], caps.shape[1], h // 2, w // 2)

    def slot_inputs(self, request: Request, cond):
        caps, lens = cond
        img_cos, img_sin, _, _ = self._slot_rope(request, cond)
        noise = slots.noise(request, (self.transformer_config.in_channels, *self._latent_size(request)))
        scale = np.float32(request.guidance_scale or 0.0)
        return noise, ZImageSlot(caps, lens, img_cos, img_sin, scale, masked=_masked(cond))

    def slot_shared(self, request: Request, cond):
        return self._slot_rope(request, cond)[2:]  # the caption's rotary tables (cos, sin) [T, H]

    def slot_params(self):
        return self._params["transformer"]

    def slot_model(self, params, cap_rope, cond: ZImageSlot, x, t, run):
        """The guided velocity for every slot [S, C, h, w] at per-slot timesteps t [S] (traced)."""
        del run  # every slot's rows are computed (fixed shapes)
        model = nnx.merge(self._defs["transformer"], params)
        rows = (cond.caps, cond.lens, cond.img_cos, cond.img_sin)
        xs, ts, (caps, lens, img_cos, img_sin) = slots.cfg_rows(x, t, rows)
        out = model.predict(
            patchify(xs.astype(self.dtype)), caps, lens, model.modulation((1000 - ts) / 1000),
            (img_cos, img_sin, *cap_rope), masked=cond.masked,
        )  # fmt: skip
        scale = slots.per_slot(cond.scale, out) if cond.caps.shape[1] == 2 else None
        return self.guide(out, scale, *x.shape[2:])


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class ZImageSlot:
    """One slot's conditioning (leaves [R, ...], R text rows); `masked` is static, so it parts buckets."""

    caps: jax.Array  # [R, T, J]
    lens: jax.Array  # [R] caption tokens per row
    img_cos: jax.Array  # [R, P, H]: the image tokens' rotary tables follow their row's caption length
    img_sin: jax.Array
    scale: jax.Array  # [] guidance_scale
    masked: bool = field(default=False, metadata=dict(static=True))


def _masked(cond) -> bool:
    """Whether the plain loop masks captions: some row's caption, padded to 32, is shorter than T."""
    caps, lens = cond
    return any(padded(int(n)) != caps.shape[1] for n in lens)


FAMILY = Family(
    name="z-image",
    pipeline_classes=("ZImagePipeline",),
    pipeline=ZImagePipeline,
    components={
        "ZImageTransformer2DModel": "jdiff.models.z_image.plan",
        "Qwen3Model": "jdiff.models.qwen3.plan",
        "Qwen3ForCausalLM": "jdiff.models.qwen3.plan",
        "AutoencoderKL": "jdiff.models.autoencoder_kl.plan",
    },
    # The released Z-Image-Turbo; the undistilled Z-Image has the same components (pass its steps and
    # guidance, or a jdiff_preset.json in its directory).
    preset=lambda index, transformer: "z-image-turbo",
)

__all__ = ["FAMILY", "ZImagePipeline"]
