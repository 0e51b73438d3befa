"""bf16 next to the references, per component: does jdiff's bfloat16 output stay at bfloat16 noise from the
reference's bfloat16 output?

Usage (CPU is enough; each component takes seconds to a minute):
    python benchmarks/bf16_survey.py flux z_image ...     # some components
    python benchmarks/bf16_survey.py --all
    python benchmarks/bf16_survey.py --list

For each component, one tiny random reference (diffusers / transformers, widths that matter: head_dim >= 32),
saved with `save_pretrained` and read back three ways: the float32 reference itself, the reference as a user's
`from_pretrained(..., torch_dtype=torch.bfloat16)` gives it (its `_keep_in_fp32_modules` kept in float32), and
jdiff's loader in bfloat16 (plus jdiff in float32, a check of the probe's construction: ~1e-5). Inputs are the
ones the reference pipeline passes in bfloat16 (timesteps, guidance, latents and masks in the dtypes it casts
them to). One JSON line per component:

    a = rel_err(jdiff bf16, reference bf16)
    b = rel_err(jdiff bf16, reference f32)
    c = rel_err(reference bf16, reference f32)
    f32 = rel_err(jdiff f32, reference f32)          (the probe's own check)

A healthy component has `a` of the order of `b` and `c` (both engines bf16 noise apart). `a` much larger than
both is a divergence: the reference computes something in the lower dtype that jdiff computes otherwise (FLUX's
timestep and guidance before docs/devlog.md's 2026-12-05 fix: a = 0.29 at real width). Where the reference's
pipeline rounds an input that the float32 reference gets exactly (a timestep of 723.4 is 724 in bfloat16), `b`
and `c` include that rounding and can both sit far above `a`.

The `*_pipeline` components run a whole tiny pipeline (tests/fixtures*: the parity tests' directories) the same
four ways from the same latents and compare the final latents: they catch what a pipeline casts before the
model call (SDXL's size/crop time ids, 2026-12-05).

To locate a divergence: forward hooks on the reference's modules (`register_forward_hook`) against jdiff's
intermediate outputs, in bfloat16 on both sides.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import parity  # noqa: E402
from tests.utils import rel_err  # noqa: E402

BF = torch.bfloat16
COMPONENTS: dict[str, Callable[[], dict]] = {}


def component(fn):
    COMPONENTS[fn.__name__] = fn
    return fn


def np32(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().float().numpy()
    return np.asarray(jnp.asarray(x, jnp.float32))


def loaded(ref, spec, *, prefix: str = "", **options):
    """(jdiff config, jdiff bf16, jdiff f32, reference bf16 as `from_pretrained(torch_dtype=bf16)` gives it)."""
    tmp = Path(tempfile.mkdtemp())
    cfg, m16 = parity.load(ref, spec, tmp / "j16", dtype=jnp.bfloat16, prefix=prefix, **options)
    _, m32 = parity.load(ref, spec, tmp / "j32", dtype=jnp.float32, prefix=prefix, **options)
    ref.save_pretrained(tmp / "ref")
    if type(ref).__module__.startswith("diffusers"):
        r16 = type(ref).from_pretrained(tmp / "ref", torch_dtype=BF)
    else:
        r16 = type(ref).from_pretrained(tmp / "ref", dtype=BF)
    return cfg, m16, m32, r16.eval()


def figures(got16, got32, want16, want32, keep=None) -> dict:
    """a, b, c and the float32 check; `keep` a boolean mask of the rows that count (e.g. real tokens)."""
    arrs = [np32(x) for x in (got16, got32, want16, want32)]
    if keep is not None:
        arrs = [x[keep] for x in arrs]
    g16, g32, w16, w32 = arrs
    return dict(
        a=round(rel_err(g16, w16), 5),
        b=round(rel_err(g16, w32), 5),
        c=round(rel_err(w16, w32), 5),
        f32=float(f"{rel_err(g32, w32):.2g}"),
    )


def jitted(fn):
    """`fn(model, *args, **kwargs)` jitted (op by op, some models take minutes on a CPU core)."""
    return jax.jit(fn)


# ---------------------------------------------------------------------------------------------- DiTs


@component
def flux():
    """FLUX.1-dev-like: the pipeline passes `t.to(bf16) / 1000` and a float32 guidance; the model embeds
    `timestep.to(bf16) * 1000` (fixed 2026-12-05)."""
    from diffusers import FluxTransformer2DModel as Ref

    from jdiff.layers.embeddings import pipeline_sigma
    from jdiff.layers.rope import rope_cos_sin
    from jdiff.models.flux.config import FluxConfig
    from jdiff.models.flux.plan import SPEC

    axes = (8, 12, 12)
    cfg = FluxConfig.tiny(
        in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=32, num_attention_heads=3,
        joint_attention_dim=64, pooled_projection_dim=48, axes_dims_rope=axes,
    )  # fmt: skip
    ref = parity.randomized(Ref(**parity.kwargs(cfg)))
    cfg, m16, m32, r16 = loaded(ref, SPEC)
    h, w, t = 6, 10, 12
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, h * w, cfg.in_channels)).astype(np.float32)
    txt = rng.standard_normal((1, t, cfg.joint_attention_dim)).astype(np.float32)
    pooled = rng.standard_normal((1, cfg.pooled_projection_dim)).astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    img[..., 1], img[..., 2] = np.arange(h)[:, None], np.arange(w)[None]
    ids = np.concatenate([np.zeros((t, 3), np.float32), img.reshape(-1, 3)])
    timestep, guidance = 723.4, 3.5

    def want(r, dt):
        with torch.no_grad():
            return r(
                hidden_states=torch.tensor(x).to(dt),
                encoder_hidden_states=torch.tensor(txt).to(dt),
                pooled_projections=torch.tensor(pooled).to(dt),
                timestep=torch.tensor([timestep]).to(dt) / 1000,  # FluxPipeline: t.to(latents.dtype) / 1000
                guidance=torch.tensor([guidance]),  # float32
                txt_ids=torch.tensor(ids[:t]).to(dt),  # FluxPipeline: ids in the latents' dtype
                img_ids=torch.tensor(ids[t:]).to(dt),
                return_dict=False,
            )[0]

    rope = rope_cos_sin(jnp.asarray(ids), axes, 10000.0)
    run = jitted(lambda m, *a: m(*a, rope, guidance=jnp.asarray([guidance])))

    def got(m, dt):
        return run(
            m, *(jnp.asarray(a, dt) for a in (x, txt, pooled)), pipeline_sigma(jnp.asarray([timestep]), dt)
        )

    return figures(got(m16, jnp.bfloat16), got(m32, jnp.float32), want(r16, BF), want(ref, torch.float32))


@component
def flux2():
    """FLUX.2-dev-like (guidance): the pipeline passes `t.to(bf16) / 1000` and a float32 guidance; the model
    embeds `.to(bf16) * 1000` (fixed 2026-12-05)."""
    from diffusers import Flux2Transformer2DModel as Ref

    from jdiff.layers.embeddings import pipeline_sigma
    from jdiff.layers.rope import rope_cos_sin
    from jdiff.models.flux2.config import Flux2Config
    from jdiff.models.flux2.plan import SPEC

    axes = (8, 8, 8, 8)
    cfg = Flux2Config.tiny(
        num_attention_heads=3, attention_head_dim=32, axes_dims_rope=axes, guidance_embeds=True, num_layers=2,
        num_single_layers=2, joint_attention_dim=64,
    )  # fmt: skip
    ref = parity.randomized(Ref(**parity.kwargs(cfg)))
    cfg, m16, m32, r16 = loaded(ref, SPEC)
    h, w, t = 6, 10, 12
    txt_ids = np.stack([np.zeros(t), np.zeros(t), np.zeros(t), np.arange(t)], 1)
    img_ids = np.zeros((h, w, 4))
    img_ids[..., 1], img_ids[..., 2] = np.arange(h)[:, None], np.arange(w)[None]
    img_ids = img_ids.reshape(-1, 4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, h * w, cfg.in_channels)).astype(np.float32)
    txt = rng.standard_normal((1, t, cfg.joint_attention_dim)).astype(np.float32)
    timestep, guidance = 723.4, 3.5

    def want(r, dt):
        with torch.no_grad():
            return r(
                hidden_states=torch.tensor(x).to(dt),
                encoder_hidden_states=torch.tensor(txt).to(dt),
                timestep=torch.tensor([timestep]).to(dt) / 1000,
                guidance=torch.tensor([guidance]),
                txt_ids=torch.tensor(txt_ids, dtype=torch.int64),  # Flux2Pipeline: integer ids
                img_ids=torch.tensor(img_ids, dtype=torch.int64),
                return_dict=False,
            )[0]

    rope = rope_cos_sin(jnp.asarray(np.concatenate([txt_ids, img_ids]), jnp.float32), axes, cfg.rope_theta)
    run = jitted(lambda m, *a: m(*a, rope, guidance=jnp.asarray([guidance])))

    def got(m, dt):
        return run(m, jnp.asarray(x, dt), jnp.asarray(txt, dt), pipeline_sigma(jnp.asarray([timestep]), dt))

    return figures(got(m16, jnp.bfloat16), got(m32, jnp.float32), want(r16, BF), want(ref, torch.float32))


@component
def qwen_image():
    """Qwen-Image: the pipeline passes `t.to(bf16) / 1000`, the model rounds it again (fixed 2026-12-05); a
    padded prompt (integer mask)."""
    from diffusers import QwenImageTransformer2DModel as Ref

    from jdiff.layers.embeddings import pipeline_sigma
    from jdiff.models.qwen_image.config import QwenImageConfig
    from jdiff.models.qwen_image.plan import SPEC
    from jdiff.models.qwen_image.rope import rope_tables

    axes = (8, 12, 12)
    cfg = QwenImageConfig.tiny(attention_head_dim=32, num_attention_heads=3, axes_dims_rope=axes,
                               joint_attention_dim=64)  # fmt: skip
    ref = parity.randomized(Ref(**parity.kwargs(cfg)))
    cfg, m16, m32, r16 = loaded(ref, SPEC)
    grids, t, b = [(1, 6, 10)], 12, 2
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, 60, cfg.in_channels)).astype(np.float32)
    ctx = rng.standard_normal((b, t, cfg.joint_attention_dim)).astype(np.float32)
    mask = np.arange(t)[None, :] < np.array([[t], [7]])
    timestep = 723.4

    def want(r, dt):
        with torch.no_grad():
            return r(
                hidden_states=torch.tensor(x).to(dt),
                encoder_hidden_states=torch.tensor(ctx).to(dt),
                encoder_hidden_states_mask=torch.tensor(mask.astype(np.int64)),
                timestep=torch.tensor([timestep] * b).to(dt) / 1000,
                img_shapes=[list(grids)] * b,
                return_dict=False,
            )[0]

    rope = tuple(jnp.asarray(a) for a in rope_tables(tuple(grids), t, axes))
    run = jitted(lambda m, *a: m(*a[:3], rope, a[3], noise_tokens=60))

    def got(m, dt):
        sigma = pipeline_sigma(jnp.asarray([timestep] * b), dt)
        return run(m, jnp.asarray(x, dt), jnp.asarray(ctx, dt), sigma, jnp.asarray(mask))

    return figures(got(m16, jnp.bfloat16), got(m32, jnp.float32), want(r16, BF), want(ref, torch.float32))


@component
def hunyuan_video15():
    """HunyuanVideo-1.5 (T2V with MeanFlow's timestep_r): the pipeline passes `t.to(latents.dtype)` (fixed
    2026-12-05) and masks in the model's dtype."""
    from diffusers import HunyuanVideo15Transformer3DModel as Ref

    from jdiff.layers.rounding import rounded
    from jdiff.models.hunyuan_video15.config import HunyuanVideo15Config
    from jdiff.models.hunyuan_video15.plan import SPEC
    from jdiff.models.hunyuan_video15.transformer import rope_tables

    cfg = HunyuanVideo15Config.tiny(num_attention_heads=3, attention_head_dim=32, rope_axes_dim=(8, 12, 12),
                                    text_embed_dim=48, text_embed_2_dim=40, use_meanflow=True)  # fmt: skip
    ref = parity.randomized(Ref(**parity.kwargs(cfg)), norms_near_one=True)
    cfg, m16, m32, r16 = loaded(ref, SPEC)
    b, (f, h, w) = 2, (3, 4, 6)
    t1, t2, i = 9, 5, 4
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, cfg.in_channels, f, h, w)).astype(np.float32)
    text = rng.standard_normal((b, t1, cfg.text_embed_dim)).astype(np.float32)
    glyph = rng.standard_normal((b, t2, cfg.text_embed_2_dim)).astype(np.float32)
    image = np.zeros((b, i, cfg.image_embed_dim), np.float32)  # T2V: zero image features
    mask = (np.arange(t1)[None] < np.array([[9], [4]])).astype(np.float32)
    mask_2 = (np.arange(t2)[None] < np.array([[2], [5]])).astype(np.float32)
    timestep, timestep_r = 723.4, 517.3

    def want(r, dt):
        with torch.no_grad():
            out = r(
                hidden_states=torch.tensor(x).to(dt),
                timestep=torch.tensor([timestep] * b).to(dt),
                timestep_r=torch.tensor([timestep_r] * b).to(dt),
                encoder_hidden_states=torch.tensor(text).to(dt),
                encoder_attention_mask=torch.tensor(mask).to(dt),
                encoder_hidden_states_2=torch.tensor(glyph).to(dt),
                encoder_attention_mask_2=torch.tensor(mask_2).to(dt),
                image_embeds=torch.tensor(image).to(dt),
                return_dict=False,
            )[0]
        return out.permute(0, 2, 3, 4, 1)

    rope = tuple(jnp.asarray(a) for a in rope_tables(cfg, f, h, w))
    run = jitted(lambda m, *a, **k: m(*a, rope, **k))

    def got(m, dt):
        args = [jnp.asarray(x.transpose(0, 2, 3, 4, 1), dt), rounded(jnp.asarray([timestep] * b), dt)]
        args += [jnp.asarray(text, dt), jnp.asarray(mask), jnp.asarray(glyph, dt), jnp.asarray(mask_2)]
        return run(m, *args, timestep_r=rounded(jnp.asarray([timestep_r] * b), dt))

    return figures(got(m16, jnp.bfloat16), got(m32, jnp.float32), want(r16, BF), want(ref, torch.float32))


@component
def z_image():
    """Z-Image: the pipeline passes float32 `(1000 - t) / 1000` (no rounding); two captions of different
    lengths (masked keys)."""
    from diffusers import ZImageTransformer2DModel as Ref

    from jdiff.models.z_image.config import ZImageConfig
    from jdiff.models.z_image.plan import SPEC
    from jdiff.models.z_image.transformer import padded, rope_tables

    axes = (8, 12, 12)
    cfg = ZImageConfig.tiny(n_heads=3, n_kv_heads=3, dim=3 * 32, axes_dims=axes, cap_feat_dim=64)
    ref = parity.randomized(Ref(**parity.kwargs(cfg)), 0.15)
    cfg, m16, m32, r16 = loaded(ref, SPEC)
    cap_lens, (h, w), c = (5, 37), (6, 10), cfg.in_channels
    t = max(padded(n) for n in cap_lens)
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((2, c, h, w)).astype(np.float32)
    caps = rng.standard_normal((2, t, cfg.cap_feat_dim)).astype(np.float32)
    sigma = ((1000 - np.array([723.4, 250.1], np.float32)) / 1000).astype(np.float32)

    def want(r, dt):
        with torch.no_grad():
            out = r(
                [torch.tensor(v[:, None]).to(dt) for v in latents],
                torch.tensor(sigma),  # float32, as ZImagePipeline passes it
                [torch.tensor(caps[i, :n]).to(dt) for i, n in enumerate(cap_lens)],
            ).sample
        return torch.stack([v[:, 0] for v in out])

    rope = tuple(jnp.asarray(a) for a in rope_tables(cfg, cap_lens, t, h // 2, w // 2))
    run = jitted(lambda m, *a: m(*a, rope))

    def got(m, dt):
        lens = jnp.asarray(cap_lens, jnp.int32)
        return run(m, jnp.asarray(latents, dt), jnp.asarray(caps, dt), lens, jnp.asarray(sigma))

    return figures(got(m16, jnp.bfloat16), got(m32, jnp.float32), want(r16, BF), want(ref, torch.float32))


@component
def wan():
    """Wan2.1 I2V-like: integer UniPC timesteps (float32 to the model), the time embedder and modulation
    tables kept in float32 by both loaders."""
    from diffusers import WanTransformer3DModel as Ref

    from jdiff.models.wan.config import WanTransformerConfig
    from jdiff.models.wan.plan import SPEC
    from jdiff.models.wan.rope import wan_rope_tables

    cfg = WanTransformerConfig.tiny(num_attention_heads=3, attention_head_dim=32, text_dim=48, ffn_dim=160,
                                    in_channels=8, image_dim=40, added_kv_proj_dim=96)  # fmt: skip
    ref = parity.randomized(Ref(**parity.kwargs(cfg)))
    cfg, m16, m32, r16 = loaded(ref, SPEC)
    b, (f, h, w), t = 2, (3, 4, 6), 512  # diffusers splits image tokens off 512 text tokens
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, cfg.in_channels, f, h, w)).astype(np.float32)
    ctx = rng.standard_normal((b, t, cfg.text_dim)).astype(np.float32)
    img = rng.standard_normal((b, 5, cfg.image_dim)).astype(np.float32)
    timestep = np.array([723.0, 251.0], np.float32)

    def want(r, dt):
        with torch.no_grad():
            out = r(
                hidden_states=torch.tensor(x).to(dt),
                timestep=torch.tensor(timestep.astype(np.int64)),  # UniPC's integer timesteps
                encoder_hidden_states=torch.tensor(ctx).to(dt),
                encoder_hidden_states_image=torch.tensor(img).to(dt),
                return_dict=False,
            )[0]
        return out.permute(0, 2, 3, 4, 1)

    rope = tuple(jnp.asarray(a) for a in wan_rope_tables(cfg, f, h, w))
    run = jitted(lambda m, *a: m(*a[:3], rope, a[3]))

    def got(m, dt):
        xs = jnp.asarray(x.transpose(0, 2, 3, 4, 1), dt)
        return run(m, xs, jnp.asarray(timestep), jnp.asarray(ctx, dt), jnp.asarray(img, dt))

    return figures(got(m16, jnp.bfloat16), got(m32, jnp.float32), want(r16, BF), want(ref, torch.float32))


def _unet(sdxl: bool, rounded_ids: bool = True):
    from diffusers import UNet2DConditionModel as Ref

    from jdiff.layers.rounding import rounded
    from jdiff.models.unet.config import UNet2DConditionConfig
    from jdiff.models.unet.plan import SPEC

    if sdxl:  # 64-wide heads at the deeper levels, SDXL's text_time added embedding
        cfg = UNet2DConditionConfig.tiny(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 64, 128), attention_head_dim=(1, 2, 2), transformer_layers_per_block=(1, 1, 2),
            use_linear_projection=True, cross_attention_dim=64, addition_embed_type="text_time",
            addition_time_embed_dim=256, projection_class_embeddings_input_dim=48 + 6 * 256,
        )  # fmt: skip
    else:
        cfg = UNet2DConditionConfig.tiny(
            block_out_channels=(64, 96), attention_head_dim=2, cross_attention_dim=64
        )
    ref = parity.randomized(Ref(**parity.kwargs(cfg)))
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.GroupNorm | torch.nn.LayerNorm):
                m.weight += 1.0
    cfg, m16, m32, r16 = loaded(ref, SPEC)
    rng = np.random.default_rng(0)
    b, h, w = 2, 16, 12
    x = rng.standard_normal((b, 4, h, w)).astype(np.float32)
    t = np.array([723.0, 37.5], np.float32)
    text = rng.standard_normal((b, 9, cfg.cross_dim_at(0))).astype(np.float32)
    added = {}
    if sdxl:  # an original size that bfloat16 cannot hold (1500 -> 1504), as a user may pass it
        added = dict(
            text_embeds=rng.standard_normal((b, 48)).astype(np.float32),
            time_ids=np.array([[1000, 1500, 0, 0, 1024, 768], [1024, 1024, 16, 8, 1024, 1024]], np.float32),
        )

    def want(r, dt):
        with torch.no_grad():
            kw = {k: torch.tensor(v).to(dt) for k, v in added.items()}  # SDXL: time ids in the embeds' dtype
            out = r(torch.tensor(x).to(dt), torch.tensor(t), torch.tensor(text).to(dt),
                    added_cond_kwargs=kw or None, return_dict=False)[0]  # fmt: skip
        return out.permute(0, 2, 3, 1)

    run = jitted(lambda m, *a, **k: m(*a, **k))

    def got(m, dt):
        kw = {}
        if added:
            # jdiff's SDXL pipeline rounds the time ids as diffusers does (rounded_ids=False: float32, as before)
            ids = jnp.asarray(added["time_ids"])
            kw = dict(
                text_embeds=jnp.asarray(added["text_embeds"], dt),
                time_ids=rounded(ids, dt) if rounded_ids else ids,
            )
        return run(m, jnp.asarray(x.transpose(0, 2, 3, 1), dt), jnp.asarray(t), jnp.asarray(text, dt), **kw)

    return figures(got(m16, jnp.bfloat16), got(m32, jnp.float32), want(r16, BF), want(ref, torch.float32))


@component
def unet_sd15():
    """SD 1.5-like UNet: float32 scheduler timesteps (the UNet embeds them in float32)."""
    return _unet(sdxl=False)


@component
def unet_sdxl():
    """SDXL-like UNet: the pipeline builds the size/crop time ids in the text embeddings' dtype (rounded by
    jdiff's pipeline since 2026-12-05)."""
    return _unet(sdxl=True)


@component
def unet_sdxl_unrounded():
    """The same, the time ids in float32 as jdiff passed them before 2026-12-05."""
    return _unet(sdxl=True, rounded_ids=False)


# ------------------------------------------------------------------------------------- text / image encoders


def _hf_out(r, **inputs):
    with torch.no_grad():
        return r(**{k: torch.tensor(v) for k, v in inputs.items()}, output_hidden_states=True)


@component
def clip_text():
    """CLIP-L-like text tower (FLUX.1's, SD's): the last hidden state and the pooled output (FLUX reads it)."""
    import transformers

    from jdiff.models.clip.plan import SPEC

    config = transformers.CLIPTextConfig(vocab_size=1000, hidden_size=128, intermediate_size=256,
                                         num_hidden_layers=3, num_attention_heads=4, hidden_act="quick_gelu",
                                         max_position_embeddings=77, bos_token_id=0, pad_token_id=1, eos_token_id=2)  # fmt: skip
    ref = parity.randomized(transformers.CLIPTextModel(config), 0.05, norms_near_one=True)
    _, m16, m32, r16 = loaded(ref, SPEC, prefix="text_model.")
    ids = np.random.default_rng(0).integers(3, 998, (2, 77))
    ids[:, 0], ids[0, 20:], ids[1, 60:] = 0, 999, 999  # legacy pooling: the argmax id ends the prompt
    run = jitted(lambda m, i: m(i))
    g16, g32 = run(m16, jnp.asarray(ids)), run(m32, jnp.asarray(ids))
    w16, w32 = _hf_out(r16, input_ids=ids), _hf_out(ref, input_ids=ids)
    return {
        "hidden": figures(g16[0], g32[0], w16.last_hidden_state, w32.last_hidden_state),
        "pooled": figures(g16[1], g32[1], w16.pooler_output, w32.pooler_output),
    }


def _t5(umt5: bool):
    import transformers

    if umt5:
        from jdiff.models.t5.config import UMT5Config as Config
        from jdiff.models.t5.umt5_plan import SPEC

        cls, config_cls = transformers.UMT5EncoderModel, transformers.UMT5Config
    else:
        from jdiff.models.t5.config import T5Config as Config
        from jdiff.models.t5.plan import SPEC

        cls, config_cls = transformers.T5EncoderModel, transformers.T5Config
    cfg = Config.tiny(d_model=128, d_kv=32, num_heads=4, d_ff=256, feed_forward_proj="gated-gelu",
                      relative_attention_num_buckets=32, relative_attention_max_distance=128)  # fmt: skip
    ref = cls(config_cls(**parity.kwargs(cfg))).eval()  # transformers' own init: T5's scales
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg, m16, m32, r16 = loaded(ref, SPEC)
    length = 64
    ids = np.random.default_rng(0).integers(1, cfg.vocab_size, (2, length))
    mask = np.ones((2, length), np.int64)
    mask[1, 23:] = 0
    ids[mask == 0] = 0
    run = jitted(lambda m, i, a: m(i, a))
    g16, g32 = (run(m, jnp.asarray(ids), jnp.asarray(mask)) for m in (m16, m32))
    w16, w32 = (_hf_out(r, input_ids=ids, attention_mask=mask).last_hidden_state for r in (r16, ref))
    return figures(g16, g32, w16, w32, keep=mask.astype(bool))


@component
def t5():
    """T5 v1.1-like encoder (FLUX.1's text_encoder_2, gated GELU), transformers' init scales; right padding."""
    return _t5(umt5=False)


@component
def umt5():
    """UMT5 encoder (Wan's), per-layer relative attention bias; right padding."""
    return _t5(umt5=True)


def _decoder_lm(name: str):
    """Qwen3 (Z-Image: hidden_states[-2]) or Mistral-3 (FLUX.2-dev: a few hidden states); right padding."""
    import transformers

    if name == "qwen3":
        from jdiff.models.qwen3.config import Qwen3Config
        from jdiff.models.qwen3.plan import SPEC

        cfg = Qwen3Config.tiny(hidden_size=128, num_attention_heads=6, num_key_value_heads=2, head_dim=32,
                               intermediate_size=256, num_hidden_layers=4, rope_theta=1000000.0)  # fmt: skip
        ref = transformers.Qwen3Model(transformers.Qwen3Config(**parity.kwargs(cfg)))
        layers = (-2,)
    else:
        from jdiff.models.mistral3.config import Mistral3Config
        from jdiff.models.mistral3.plan import SPEC

        cfg = Mistral3Config.tiny(hidden_size=128, num_attention_heads=6, num_key_value_heads=2, head_dim=32,
                                  intermediate_size=256, num_hidden_layers=4, rope_theta=1000000000.0,
                                  sliding_window=None)  # fmt: skip
        vision = dict(hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2, head_dim=8,
                      image_size=28, patch_size=14)  # fmt: skip
        config = transformers.Mistral3Config(**parity.kwargs(cfg, vision_config=vision))
        ref = transformers.Mistral3ForConditionalGeneration(config)
        layers = (1, 2, 3)
    ref = parity.randomized(ref, norms_near_one=True)  # norm scales near 1: attention logits O(1)
    cfg, m16, m32, r16 = loaded(ref, SPEC)
    length = 96  # positions where bfloat16 rope tables and angles would show
    ids = np.random.default_rng(1).integers(1, 1000, (2, length))
    mask = np.ones((2, length), np.int64)
    mask[1, 40:] = 0
    run = jax.jit(lambda m, i, a: m(i, a, hidden_layers=layers))
    g16, g32 = (run(m, jnp.asarray(ids), jnp.asarray(mask)) for m in (m16, m32))
    w16, w32 = (np.stack([np32(_hf_out(r, input_ids=ids, attention_mask=mask).hidden_states[i]) for i in layers])
                for r in (r16, ref))  # fmt: skip
    keep = np.broadcast_to(mask.astype(bool), (len(layers), *mask.shape))
    return figures(g16, g32, w16, w32, keep=keep)


@component
def qwen3():
    """Qwen3 text encoder (Z-Image reads hidden_states[-2]); 96 tokens, right padding."""
    return _decoder_lm("qwen3")


@component
def mistral3():
    """Mistral-3 language model (FLUX.2-dev reads several hidden states); 96 tokens, right padding."""
    return _decoder_lm("mistral3")


@component
def qwen2_5_vl():
    """Qwen2.5-VL (Qwen-Image's text encoder): the last hidden state of a text-only prompt and of a prompt with
    two images (Edit), and the vision tower's features; right padding."""
    import dataclasses

    import transformers

    from jdiff.models.qwen2_5_vl.config import Qwen2_5_VLConfig
    from jdiff.models.qwen2_5_vl.image_processor import preprocess
    from jdiff.models.qwen2_5_vl.plan import SPEC
    from jdiff.models.qwen2_5_vl.text_encoder import prepare_images
    from tests.models.qwen2_5_vl.test_text_encoder import PROCESSOR, _images, _prompt, _ref_config

    tiny = Qwen2_5_VLConfig.tiny()
    vision = dataclasses.replace(tiny.vision_config, hidden_size=96, num_heads=3, intermediate_size=128,
                                 out_hidden_size=192)  # fmt: skip
    cfg = Qwen2_5_VLConfig.tiny(hidden_size=192, num_attention_heads=6, num_key_value_heads=2, intermediate_size=256,
                                mrope_section=(4, 6, 6), rope_theta=1000000.0, vision_config=vision)  # fmt: skip
    ref = parity.randomized(
        transformers.Qwen2_5_VLForConditionalGeneration(_ref_config(cfg)), norms_near_one=True
    )
    cfg, m16, m32, r16 = loaded(ref, SPEC)
    out = {}
    pixel_values, grid = preprocess(_images(), PROCESSOR)
    for name, rows in (("text", [(0, 60), (0, 25)]), ("images", [(2, 30)])):
        g = grid if name == "images" else np.zeros((0, 3), np.int64)
        ids, mask = _prompt(cfg, rows, g, "right")
        kw, jkw = {}, {}
        if name == "images":
            kw = dict(pixel_values=pixel_values, image_grid_thw=grid)
            jkw = dict(pixel_values=jnp.asarray(pixel_values), layout=prepare_images(ids, grid, cfg))
        run = jax.jit(lambda m, i, a, k: m(i, a, hidden_layers=(-1,), **k))
        g16, g32 = (run(m, jnp.asarray(ids), jnp.asarray(mask), jkw)[0] for m in (m16, m32))
        w16, w32 = (
            _hf_out(r, input_ids=ids, attention_mask=mask, **kw).hidden_states[-1] for r in (r16, ref)
        )
        out[name] = figures(g16, g32, w16, w32, keep=mask.astype(bool))
    layout = prepare_images(np.full((1, 36), cfg.image_token_id), grid, cfg)
    run = jax.jit(lambda m, p, lay: m.image_features(p, lay))
    g16, g32 = (run(m, jnp.asarray(pixel_values), layout) for m in (m16, m32))
    with torch.no_grad():
        w16, w32 = (torch.cat(r.model.get_image_features(torch.tensor(pixel_values), torch.tensor(grid)).pooler_output)
                    for r in (r16, ref))  # fmt: skip
    out["vision"] = figures(g16, g32, w16, w32)
    return out


@component
def siglip():
    """SigLIP vision tower (HunyuanVideo-1.5 I2V's image encoder): the last hidden state."""
    import transformers

    from jdiff.models.siglip.config import SiglipVisionConfig
    from jdiff.models.siglip.plan import SPEC

    cfg = SiglipVisionConfig.tiny(
        hidden_size=128, num_attention_heads=4, intermediate_size=256, num_hidden_layers=3
    )
    ref = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**parity.kwargs(cfg)))
    ref = parity.randomized(ref, 0.1, norms_near_one=True)
    cfg, m16, m32, r16 = loaded(ref, SPEC)
    pixels = np.random.default_rng(0).uniform(-1, 1, (2, 3, 28, 28)).astype(np.float32)
    run = jitted(lambda m, x: m(x))
    g16, g32 = (run(m, jnp.asarray(pixels.transpose(0, 2, 3, 1))) for m in (m16, m32))
    # transformers casts the float32 pixels to the patch embedding's dtype
    w16, w32 = (_hf_out(r, pixel_values=pixels).last_hidden_state for r in (r16, ref))
    return figures(g16, g32, w16, w32)


@component
def clip_vision():
    """CLIP vision tower (Wan2.1 I2V's image encoder): the penultimate hidden state Wan reads."""
    import transformers

    from jdiff.models.clip.vision_plan import SPEC

    config = transformers.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=128, intermediate_size=256,
                                           num_hidden_layers=3, num_attention_heads=4, hidden_act="gelu")  # fmt: skip
    ref = parity.randomized(transformers.CLIPVisionModel(config), 0.05, norms_near_one=True)
    _, m16, m32, r16 = loaded(ref, SPEC, prefix="vision_model.")
    pixels = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    run = jitted(lambda m, x: m(x))
    g16, g32 = (run(m, jnp.asarray(pixels)) for m in (m16, m32))
    w16, w32 = (_hf_out(r, pixel_values=pixels.transpose(0, 3, 1, 2)).hidden_states[-2] for r in (r16, ref))
    return figures(g16, g32, w16, w32)


# ---------------------------------------------------------------------------------------------------- VAEs

# XLA compiles dominate the VAEs on a CPU; level 0 takes a few times less for the same arithmetic.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _method(model, name):
    from flax import nnx

    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda st, x: getattr(nnx.merge(graphdef, st), name)(x), compiler_options=FAST_COMPILE)
    return lambda x: fn(state, x)


def _vae(ref, spec, image, z, *, to_torch, from_torch, encode="encode", decode="decode", t_encode=None,
         t_decode=None):  # fmt: skip
    """Encoder mean and decoder output of a VAE, the inputs in the model's dtype on both sides."""
    _, m16, m32, r16 = loaded(ref, spec)
    t_encode = t_encode or (lambda r, x: r.encode(x).latent_dist.mean)
    t_decode = t_decode or (lambda r, x: r.decode(x).sample)
    out = {}
    for name, x, jm, tm in (("encode", image, encode, t_encode), ("decode", z, decode, t_decode)):
        g16 = _method(m16, jm)(jnp.asarray(x, jnp.bfloat16))
        g32 = _method(m32, jm)(jnp.asarray(x))
        with torch.no_grad():
            w16 = from_torch(tm(r16, to_torch(x).to(BF)))
            w32 = from_torch(tm(ref, to_torch(x)))
        got = (g16[0], g32[0]) if isinstance(g16, tuple) else (g16, g32)
        out[name] = figures(*got, w16, w32)
    return out


def _nchw(x):
    return torch.tensor(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def _nhwc(x):
    return np.moveaxis(np32(x), 1, -1)


@component
def autoencoder_kl():
    """AutoencoderKL (SD, SDXL, FLUX.1): a FLUX-like VAE, 16 latent channels, mid-block attention of 64."""
    from diffusers import AutoencoderKL as Ref

    from jdiff.models.autoencoder_kl.plan import SPEC

    ref = Ref(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
              up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=8, layers_per_block=1, latent_channels=16,
              use_quant_conv=False, use_post_quant_conv=False)  # fmt: skip
    ref = parity.randomized(ref, 0.1, norms_near_one=True)
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (1, 32, 48, 3)).astype(np.float32)
    z = rng.standard_normal((1, 16, 24, 16)).astype(np.float32)
    return _vae(ref, SPEC, image, z, to_torch=_nchw, from_torch=_nhwc)


def _ncthw(x):
    return torch.tensor(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


@component
def wan_vae():
    """AutoencoderKLWan, the Wan2.1 layout (also Qwen-Image's): 5 frames encoded, 2 latent frames decoded."""
    from diffusers import AutoencoderKLWan as Ref

    from jdiff.models.wan_vae.plan import SPEC

    ref = Ref(base_dim=32, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
              temperal_downsample=[False, True, True]).eval()  # fmt: skip
    with torch.no_grad():  # as tests/models/wan_vae: gammas near 1, a small last conv (no clamping)
        for name, p in ref.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("gamma") else 0.1 * torch.randn_like(p))
        ref.decoder.conv_out.weight.mul_(0.2)
    rng = np.random.default_rng(0)
    video = rng.uniform(-1, 1, (1, 5, 32, 48, 3)).astype(np.float32)
    z = rng.standard_normal((1, 2, 4, 6, 16)).astype(np.float32)
    return _vae(ref, SPEC, video, z, to_torch=_ncthw, from_torch=_nhwc)


@component
def qwen_image_vae():
    """AutoencoderKLQwenImage: images as one-frame videos."""
    from diffusers import AutoencoderKLQwenImage as Ref

    from jdiff.models.qwen_image.vae import QwenImageVAEConfig
    from jdiff.models.qwen_image.vae_plan import SPEC

    ref = Ref(**parity.kwargs(QwenImageVAEConfig.tiny(base_dim=32, z_dim=16, latents_mean=(0.0,) * 16,
                                                      latents_std=(1.0,) * 16))).eval()  # fmt: skip
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("gamma") else 0.1 * torch.randn_like(p))
        ref.decoder.conv_out.weight.mul_(0.2)
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (1, 1, 32, 48, 3)).astype(np.float32)
    z = rng.standard_normal((1, 1, 4, 6, 16)).astype(np.float32)
    return _vae(ref, SPEC, image, z, to_torch=_ncthw, from_torch=_nhwc)


@component
def flux2_vae():
    """AutoencoderKLFlux2: encode to the pipelines' packed batch-normalised latents, decode from them."""
    import inspect

    from diffusers import AutoencoderKLFlux2 as Ref
    from diffusers import Flux2KleinPipeline as P

    from jdiff.models.flux2.vae_config import AutoencoderKLFlux2Config
    from jdiff.models.flux2.vae_plan import SPEC

    keys = set(inspect.signature(Ref.__init__).parameters)
    cfg = AutoencoderKLFlux2Config.tiny(block_out_channels=(32, 64), norm_num_groups=8)
    ref = parity.randomized(Ref(**{k: v for k, v in parity.kwargs(cfg).items() if k in keys}), 0.1)
    with torch.no_grad():
        ref.bn.running_mean.normal_(0, 0.5)
        ref.bn.running_var.uniform_(0.5, 2.0)

    def bn(r, x):  # diffusers casts the statistics to the latents' dtype
        mean = r.bn.running_mean.view(1, -1, 1, 1).to(x.dtype)
        std = torch.sqrt(r.bn.running_var.view(1, -1, 1, 1) + r.config.batch_norm_eps).to(x.dtype)
        return mean, std

    def t_encode(r, x):
        latents = P._patchify_latents(r.encode(x).latent_dist.mode())
        mean, std = bn(r, latents)
        return (latents - mean) / std

    def t_decode(r, z):
        mean, std = bn(r, z)
        return r.decode(P._unpatchify_latents(z * std + mean)).sample

    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (1, 32, 48, 3)).astype(np.float32)
    z = rng.standard_normal((1, 8, 12, 4 * cfg.latent_channels)).astype(np.float32)
    return _vae(ref, SPEC, image, z, to_torch=_nchw, from_torch=_nhwc, encode="encode_packed",
                decode="decode_packed", t_encode=t_encode, t_decode=t_decode)  # fmt: skip


@component
def hunyuan_video15_vae():
    """AutoencoderKLHunyuanVideo15: 5 frames encoded, 3 latent frames decoded."""
    from diffusers import AutoencoderKLHunyuanVideo15 as Ref

    from jdiff.models.hunyuan_video15.config import HunyuanVideo15VAEConfig
    from jdiff.models.hunyuan_video15.vae_plan import SPEC

    cfg = HunyuanVideo15VAEConfig.tiny(block_out_channels=(32, 64, 64, 64), spatial_compression_ratio=8)
    ref = parity.randomized(Ref(**parity.kwargs(cfg)), 0.1)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("gamma"):
                p += 1.0
    rng = np.random.default_rng(0)
    video = rng.uniform(-1, 1, (1, 5, 16, 24, 3)).astype(np.float32)
    z = rng.standard_normal((1, 3, 3, 2, cfg.latent_channels)).astype(np.float32)
    return _vae(ref, SPEC, video, z, to_torch=_ncthw, from_torch=_nhwc)


# ------------------------------------------------------------------------------------ whole pipelines


def _pipeline(
    pipe, prompt: str, latents: torch.Tensor, *, keep_bf16: bool = False, callback: bool = False, **kw
):
    """A tiny diffusers pipeline (tests/fixtures*) saved, then run whole from the same latents four ways: as
    `from_pretrained(torch_dtype=bf16)` and in float32, and jdiff's in bfloat16 and float32. Figures on the final
    latents (diffusers' `output_type="latent"` output, or with `callback` its last step's latents, in the layout
    jdiff's `result.latents` has for that family). The latents are bfloat16 values, given as
    float32 (the pipelines cast them where they keep them in the model's dtype) or, `keep_bf16`, as bfloat16 (the
    SD pipelines use them as given)."""
    import jdiff

    path = Path(tempfile.mkdtemp())
    pipe.save_pretrained(path)
    r16 = type(pipe).from_pretrained(path, torch_dtype=BF)
    latents = latents.to(BF).float()

    def reference(p, lat):
        final = {}

        def keep(_p, _i, _t, tensors):
            final["latents"] = tensors["latents"]
            return {}

        with torch.no_grad():
            extra = {"callback_on_step_end": keep} if callback else {}
            out = p(prompt=prompt, latents=lat, output_type="latent", **extra, **kw)
        if callback:
            return final["latents"]
        return out.frames if hasattr(out, "frames") else out.images

    w16 = reference(r16, latents.to(BF) if keep_bf16 else latents)
    w32 = reference(pipe, latents)
    got = {}
    for dtype in ("bfloat16", "float32"):
        gen = jdiff.DiffGenerator.from_pretrained(path, dtype=dtype)
        got[dtype] = gen.generate(prompt, latents=latents.numpy(), output_type="latent", **kw).latents
    return figures(got["bfloat16"], got["float32"], w16, w32)


@component
def flux_pipeline():
    """FLUX.1-dev-like, guidance 3.5, 4 steps."""
    from tests.fixtures import tiny_flux_pipeline

    lat = torch.randn(1, 96, 16, generator=torch.Generator().manual_seed(1))
    return _pipeline(tiny_flux_pipeline(guidance_embeds=True), "a red circle", lat, height=32, width=48,
                     num_inference_steps=4, max_sequence_length=24, guidance_scale=3.5)  # fmt: skip


@component
def flux2_klein_pipeline():
    """FLUX.2-klein (base: CFG 3.0), 3 steps."""
    from tests.fixtures_zimage_flux2 import tiny_flux2_klein_pipeline

    lat = torch.randn(1, 16, 6, 10, generator=torch.Generator().manual_seed(1))
    return _pipeline(tiny_flux2_klein_pipeline(is_distilled=False), "a red circle", lat, height=24, width=40,
                     num_inference_steps=3, max_sequence_length=64, guidance_scale=3.0)  # fmt: skip


@component
def z_image_pipeline():
    """Z-Image, CFG 2.0 with a negative prompt, 3 steps."""
    from tests.fixtures_zimage_flux2 import tiny_z_image_pipeline

    lat = torch.randn(1, 4, 12, 20, generator=torch.Generator().manual_seed(1))
    return _pipeline(tiny_z_image_pipeline(), "a red circle", lat, height=24, width=40, num_inference_steps=3,
                     max_sequence_length=64, guidance_scale=2.0, negative_prompt="blue")  # fmt: skip


@component
def qwen_image_pipeline():
    """Qwen-Image text-to-image, true CFG 4.0 with a negative prompt, 3 steps."""
    from tests.fixtures_qwen_image import tiny_qwen_image_pipeline

    lat = torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(1))
    return _pipeline(tiny_qwen_image_pipeline("t2i"), "a red circle", lat, callback=True, height=32, width=48,
                     num_inference_steps=3, true_cfg_scale=4.0, negative_prompt="blue")  # fmt: skip


@component
def wan_pipeline():
    """Wan2.1 T2V, CFG 4.0 with a negative prompt, UniPC, 4 steps, 9 frames."""
    from tests.fixtures_wan import tiny_wan

    pipe = tiny_wan("t2v")
    z, sp = pipe.vae.config.z_dim, pipe.vae.config.scale_factor_spatial
    lat = torch.randn(1, z, 3, 32 // sp, 48 // sp, generator=torch.Generator().manual_seed(1))
    return _pipeline(pipe, "a cat running in the snow", lat, height=32, width=48, num_frames=9,
                     num_inference_steps=4, guidance_scale=4.0, negative_prompt="blue", max_sequence_length=16)  # fmt: skip


@component
def hunyuan_video15_pipeline():
    """HunyuanVideo-1.5 T2V, CFG 6.0, 3 steps, 9 frames."""
    from tests.fixtures_hunyuan_video15 import tiny_hunyuan_video15

    lat = torch.randn(1, 4, 3, 8, 12, generator=torch.Generator().manual_seed(1))
    return _pipeline(tiny_hunyuan_video15(), 'a red "OPEN" sign', lat, height=32, width=48, num_frames=9,
                     num_inference_steps=3, negative_prompt="blue")  # fmt: skip


@component
def sdxl_pipeline():
    """SDXL, CFG 5.0 with a negative prompt, an original size of 3000 x 1500, 3 steps."""
    from tests.fixtures_sd import tiny_sdxl_pipeline

    lat = torch.randn(1, 4, 12, 20, generator=torch.Generator().manual_seed(1))
    return _pipeline(tiny_sdxl_pipeline(), "a red circle", lat, keep_bf16=True, callback=True, height=24, width=40,
                     num_inference_steps=3, guidance_scale=5.0, negative_prompt="blue", original_size=(3000, 1500),
                     target_size=(24, 40))  # fmt: skip


@component
def sd15_pipeline():
    """SD 1.5, CFG 7.5 with a negative prompt, 3 steps."""
    from tests.fixtures_sd import tiny_sd_pipeline

    lat = torch.randn(1, 4, 12, 20, generator=torch.Generator().manual_seed(1))
    return _pipeline(tiny_sd_pipeline(), "a red circle", lat, keep_bf16=True, callback=True, height=24, width=40,
                     num_inference_steps=3, guidance_scale=7.5, negative_prompt="blue")  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("components", nargs="*", help="components to probe (--list)")
    ap.add_argument("--all", action="store_true", help="every component")
    ap.add_argument("--list", action="store_true", help="print the components and exit")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(COMPONENTS))
        return 0
    names = list(COMPONENTS) if args.all else args.components
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown or not names:
        ap.error(f"unknown or no components {unknown}; choose from {', '.join(COMPONENTS)}")
    torch.manual_seed(0)
    for name in names:
        t0 = time.perf_counter()
        out = COMPONENTS[name]()
        seconds = round(time.perf_counter() - t0, 1)
        parts = out if isinstance(next(iter(out.values())), dict) else {"": out}
        for part, figs in parts.items():
            label = f"{name}/{part}" if part else name
            print(json.dumps(dict(component=label, **figs, seconds=seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
