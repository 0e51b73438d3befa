"""jdiff's side of the single-model workloads: random weights built on device, one jitted call timed.

Imports of jax and jdiff stay inside functions: the driver process imports this package without them.
"""

from __future__ import annotations

import functools
import math
import time

from jdiff.bench.workloads import FP8_STEPS, GIB, _resolve, position_ids, sdxl_time_ids, timed_calls

# Leaves of at most this many elements are drawn on the host (see `_jdiff_random`).
HOST_RANDOM_MAX = 2**16


def _jdiff_random(spec, cfg, dtype):
    """(graphdef, params): the model built abstractly, every leaf normal(0, 0.02) in the loader's dtype."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jdiff.weights.loading import path_str

    graphdef, abstract = spec.abstract(cfg)
    leaves = nnx.to_flat_state(abstract)

    # Large leaves: one small jit per distinct (shape, dtype), each leaf written in place by a fused threefry:
    # one jit over all leaves compiles for minutes on a VAE's hundreds of leaves, and a non-fusible generator
    # (rbg) would add a temporary as large as the leaf to the peak memory measured later. Small leaves (norms,
    # biases; most of a toy model) come from numpy: a compile per shape costs more than generating them.
    @functools.partial(jax.jit, static_argnums=(2, 3))
    def leaf(key, i, shape, dt):
        return jax.random.normal(jax.random.fold_in(key, i), shape, dt) * jnp.asarray(0.02, dt)

    def host(i, shape, dt):
        x = np.random.default_rng(i).standard_normal(shape, np.float32) * np.float32(0.02)
        return jax.device_put(x.astype(dt))

    key = jax.random.key(0)
    values = []
    for i, (p, v) in enumerate(leaves):
        dt = spec.plan.target_dtype(path_str(p), dtype)
        values.append(
            leaf(key, i, v.shape, dt) if math.prod(v.shape) > HOST_RANDOM_MAX else host(i, v.shape, dt)
        )
    flat = [(p, v.replace(x)) for (p, v), x in zip(leaves, values, strict=True)]
    return graphdef, nnx.from_flat_state(flat)


def _jdiff_setup(name: str, config: dict, sz: dict):
    """(graphdef, params, apply(model, *inputs), inputs) for one single-model workload."""
    import importlib

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jdiff.weights.config import from_dict

    bf16 = jnp.bfloat16
    keys = iter(jax.random.split(jax.random.key(1), 8))

    def rand(shape, dtype=bf16):
        return jax.random.normal(next(keys), shape, dtype)

    if name.endswith("_fp8") and name.removesuffix("_fp8") in FP8_STEPS:  # <base>_fp8: <base>, quantized
        base = name.removesuffix("_fp8")
        graphdef, params, apply, inputs = _jdiff_setup(base, config, sz)
        spec = importlib.import_module(FP8_STEPS[base]).SPEC
        return (*quantized_fp8(spec, graphdef, params), apply, inputs)
    if name in ("flux_step", *LORA_WORKLOADS):
        from jdiff.models.flux.plan import SPEC
        from jdiff.pipelines.flux import _rope_tables

        cfg = from_dict(SPEC.config_cls, config)
        cos, sin = (
            jnp.asarray(a) for a in _rope_tables(sz["text"], sz["h"], sz["w"], tuple(cfg.axes_dims_rope))
        )
        b = sz.get("batch", 1)
        inputs = (
            rand((b, sz["h"] * sz["w"], cfg.in_channels)),
            rand((b, sz["text"], cfg.joint_attention_dim)),
            rand((b, cfg.pooled_projection_dim)),
            jnp.full((b,), 0.5, jnp.float32),
            jnp.full((b,), 3.5, jnp.float32),
            cos,
            sin,
        )

        def apply(m, x, txt, pooled, t, g, cos, sin):
            return m(x, txt, pooled, t, (cos, sin), guidance=g)

        if name in LORA_WORKLOADS:
            graphdef, params = _jdiff_random(SPEC, cfg, bf16)
            return _with_lora(graphdef, params, apply, inputs, sz)

    elif name == "z_image_step":
        from jdiff.models.z_image.plan import SPEC
        from jdiff.models.z_image.transformer import patchify, rope_tables, unpatchify

        cfg = from_dict(SPEC.config_cls, config)
        h, w, t = sz["h"], sz["w"], sz["text"]
        inputs = (
            rand((1, cfg.in_channels, 2 * h, 2 * w)),
            rand((1, t, cfg.cap_feat_dim)),
            jnp.full((1,), t, jnp.int32),
            jnp.full((1,), 0.5, jnp.float32),
            tuple(jnp.asarray(a) for a in rope_tables(cfg, [t], t, h, w)),
        )

        def apply(m, x, caps, cap_lens, t, rope):
            # ZImagePipeline's step: one prompt fills its padded caption, so attention runs without a mask.
            out = m.predict(patchify(x), caps, cap_lens, m.modulation(t), rope, masked=False)
            return unpatchify(out, *x.shape[2:])

    elif name in ("flux2_klein_step", "flux2_dev_step"):
        from jdiff.layers.rope import rope_cos_sin
        from jdiff.models.flux2.plan import SPEC

        cfg = from_dict(SPEC.config_cls, config)
        ids = np.concatenate(position_ids(sz["text"], sz["h"], sz["w"], 4))
        cos, sin = (jnp.asarray(a) for a in rope_cos_sin(ids, cfg.axes_dims_rope, cfg.rope_theta))
        inputs = (
            rand((1, sz["h"] * sz["w"], cfg.in_channels)),
            rand((1, sz["text"], cfg.joint_attention_dim)),
            jnp.full((1,), 0.5, jnp.float32),
            cos,
            sin,
        )

        guidance = jnp.full((1,), 4.0, jnp.float32) if cfg.guidance_embeds else None

        def apply(m, x, txt, t, cos, sin):
            return m(x, txt, t, (cos, sin), guidance=guidance)

    elif name == "sdxl_unet_step":
        from jdiff.models.unet.plan import SPEC

        cfg = from_dict(SPEC.config_cls, config)
        b, pooled = sz["batch"], cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        inputs = (
            rand((b, sz["h"], sz["w"], cfg.in_channels)),
            jnp.full((b,), 500.0, jnp.float32),
            rand((b, sz["text"], cfg.cross_dim_at(0))),
            rand((b, pooled)),
            jnp.asarray(sdxl_time_ids(sz), jnp.float32),
        )

        def apply(m, x, t, ctx, pooled, time_ids):
            return m(x, t, ctx, text_embeds=pooled, time_ids=time_ids)

    elif name == "qwen_image_step":
        from jdiff.models.qwen_image.plan import SPEC
        from jdiff.models.qwen_image.rope import rope_tables

        cfg = from_dict(SPEC.config_cls, config)
        rope = rope_tables(((1, sz["h"], sz["w"]),), sz["text"], tuple(cfg.axes_dims_rope))
        inputs = (
            rand((1, sz["h"] * sz["w"], cfg.in_channels)),
            rand((1, sz["text"], cfg.joint_attention_dim)),
            jnp.full((1,), 0.5, jnp.float32),
            *(jnp.asarray(a) for a in rope),
        )

        def apply(m, x, txt, t, cos, sin):
            return m(x, txt, t, (cos, sin))  # one prompt: no text mask, as QwenImagePipeline

    elif name == "qwen_image_cfg_step":
        from jdiff.models.qwen_image.plan import SPEC
        from jdiff.models.qwen_image.rope import rope_tables

        cfg = from_dict(SPEC.config_cls, config)
        t = sz["text"]
        rope = rope_tables(((1, sz["h"], sz["w"]),), t, tuple(cfg.axes_dims_rope))
        inputs = (
            rand((2, sz["h"] * sz["w"], cfg.in_channels)),
            rand((2, t, cfg.joint_attention_dim)),
            jnp.full((2,), 0.5, jnp.float32),
            *(jnp.asarray(a) for a in rope),
            jnp.arange(t)[None, :] < jnp.array([[sz["negative_text"]], [t]]),  # [negative; prompt], padded
        )

        def apply(m, x, txt, t, cos, sin, mask):
            return m(x, txt, t, (cos, sin), mask)  # as QwenImagePipeline runs true CFG

    elif name == "hunyuan_video15_step":
        from jdiff.models.hunyuan_video15.plan import SPEC
        from jdiff.models.hunyuan_video15.transformer import rope_tables

        cfg = from_dict(SPEC.config_cls, config)
        f, h, w, t, g = sz["f"], sz["h"], sz["w"], sz["text"], sz["glyph"]
        inputs = (
            rand(
                (2, f, h, w, cfg.in_channels)
            ),  # T2V: zero condition channels in the pipeline; any values time the same
            jnp.full((2,), 500.0, jnp.float32),
            rand((2, t, cfg.text_embed_dim)),
            jnp.arange(t)[None, :] < jnp.asarray(sz["text_lens"])[:, None],  # [negative; prompt], padded
            rand((2, g, cfg.text_embed_2_dim)),
            jnp.zeros((2, g), bool),  # no quoted text: the glyph tokens are all padding
            *(jnp.asarray(a) for a in rope_tables(cfg, f, h, w)),
        )

        def apply(m, x, ts, txt, txt_mask, glyph, glyph_mask, cos, sin):
            return m(x, ts, txt, txt_mask, glyph, glyph_mask, (cos, sin))

    elif name in ("hunyuan_video15_vae_decode", "hunyuan_video15_vae_decode_720p_tiled"):
        from jdiff.models.hunyuan_video15.tiling import VAETiling
        from jdiff.models.hunyuan_video15.vae_plan import SPEC

        cfg = from_dict(SPEC.config_cls, config)
        inputs = (rand((1, sz["f"], sz["h"], sz["w"], cfg.latent_channels)),)
        tiling = VAETiling(*sz["tiling"]) if "tiling" in sz else None

        def apply(m, z):
            return m.decode(z, tiling)

    elif name.startswith("wan_forward"):
        from jdiff.models.wan.plan import SPEC
        from jdiff.models.wan.rope import wan_rope_tables

        cfg = from_dict(SPEC.config_cls, config)
        cos, sin = (jnp.asarray(a) for a in wan_rope_tables(cfg, sz["f"], sz["h"], sz["w"]))
        inputs = (
            rand((1, sz["f"], sz["h"], sz["w"], cfg.in_channels)),
            jnp.full((1,), 500.0, jnp.float32),
            rand((1, sz["text"], cfg.text_dim)),
            cos,
            sin,
        )

        def apply(m, x, t, ctx, cos, sin):
            return m(x, t, ctx, (cos, sin))

    elif name == "flux_vae_decode":
        from jdiff.models.autoencoder_kl.plan import SPEC

        cfg = from_dict(SPEC.config_cls, config)
        inputs = (rand((1, sz["h"], sz["w"], cfg.latent_channels)),)

        def apply(m, z):
            return m.decode(z)

    elif name == "wan_vae_decode":
        from jdiff.models.wan_vae.plan import SPEC

        cfg = from_dict(SPEC.config_cls, config)
        inputs = (rand((1, sz["f"], sz["h"], sz["w"], cfg.z_dim)),)

        def apply(m, z):
            return m.decode(z)

    else:
        raise KeyError(name)
    graphdef, params = _jdiff_random(SPEC, cfg, bf16)
    return graphdef, params, apply, inputs


# LoRA workloads: FLUX.1 steps whose attention and feed-forward linears hold `slots` adapters of `rank`.
LORA_WORKLOADS = ("flux_lora_step", "flux_lora_batch4_one", "flux_lora_batch4_mixed")


def _with_lora(graphdef, params, apply, inputs, sz: dict):
    """The model with random adapters in every block linear but the AdaLN modulation (what FLUX LoRAs
    train), as `jdiff.pipelines.lora` loads them, and per-row scales as an input: row i uses slot i mod S."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jdiff.layers import lora
    from jdiff.layers.linear import Linear

    slots, rank, b = sz["slots"], sz["rank"], sz.get("batch", 1)
    model = nnx.merge(graphdef, params)
    key = jax.random.key(2)
    for path, node in nnx.iter_graph(model):
        names = [str(p) for p in path]
        if not isinstance(node, Linear) or "transformer_blocks" not in names[0] or "norm" in ".".join(names):
            continue
        *lead, d_in, d_out = node.kernel.shape
        key, ka, kb = jax.random.split(key, 3)
        node.lora_a = lora.LoraParam(jax.random.normal(ka, (*lead, d_in, slots * rank), jnp.bfloat16) * 0.02)
        node.lora_b = lora.LoraParam(jax.random.normal(kb, (*lead, slots * rank, d_out), jnp.bfloat16) * 0.02)
    graphdef, params = nnx.split(model)
    scales = np.zeros((b, slots * rank), np.float32)
    for i in range(b):
        scales[i, (i % slots) * rank : (i % slots + 1) * rank] = 0.8

    def with_rows(m, rows, *xs):
        with lora.rows(rows):
            return apply(m, *xs)

    return graphdef, params, with_rows, (jnp.asarray(scales), *inputs)


def quantized_fp8(spec, graphdef, params):
    """(graphdef, params) with the linears `spec.fp8` names quantized, as `quantization="fp8"` loads them."""
    from flax import nnx

    from jdiff.pipelines.quantize import fp8_linears

    model = nnx.merge(graphdef, params)
    del params
    for _, linear in fp8_linears(model, spec.fp8):
        linear.quantize_fp8()
    return nnx.split(model)


def _attention_head_dim(name: str, config: dict) -> int:
    """The head dim that decides the workload's attention kernel (the VAEs' mid-block attention is one head)."""
    name = name.removesuffix("_fp8")
    if name in (
        "flux_step",
        "wan_forward",
        "wan_forward_14b",
        "wan_forward_14b_720p",
        "flux2_klein_step",
        "flux2_dev_step",
        "qwen_image_step",
        "qwen_image_cfg_step",
        "hunyuan_video15_step",
        *LORA_WORKLOADS,
    ):
        return config["attention_head_dim"]
    if name.startswith("hunyuan_video15_vae_decode"):  # its mid-block attention: one head of the last width
        return config["block_out_channels"][-1]
    if name == "sdxl_unet_step":  # diffusers' attention_head_dim is the head count: 1280 / 20 = 64
        return config["block_out_channels"][-1] // config["attention_head_dim"][-1]
    if name == "z_image_step":
        return config["dim"] // config["n_heads"]
    if name == "flux_vae_decode":
        return config["block_out_channels"][-1]
    from jdiff.models.wan_vae.plan import SPEC
    from jdiff.weights.config import from_dict

    cfg = from_dict(SPEC.config_cls, config)
    return cfg.decoder_dim * cfg.dim_mult[-1]


def device_memory(dev, key: str) -> float | None:
    """`memory_stats()[key]` of `dev` in GiB, or None where the backend keeps no statistics (CPU)."""
    stats = dev.memory_stats() or {}
    return stats[key] / GIB if key in stats else None


def gib(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def jax_versions() -> dict:
    import flax
    import jax
    import jaxlib

    versions = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__}
    try:
        from jax._src.lib import cuda_versions

        versions["cudnn"] = cuda_versions.cudnn_get_version() if cuda_versions else None
    except Exception:  # version probing is best-effort: absent on CPU builds
        pass
    return versions


def run_jdiff(name: str, tiny: bool) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jdiff import compiler_options
    from jdiff.layers.attention import default_implementation

    wl, config, sz = _resolve(name, tiny)
    dev = jax.devices()[0]
    graphdef, params, apply, inputs = _jdiff_setup(name, config, sz)
    jax.block_until_ready((params, inputs))
    weights_gib = device_memory(dev, "bytes_in_use")

    @compiler_options.jit  # what the pipelines compile with
    def fn(params, *xs):
        return apply(nnx.merge(graphdef, params), *xs)

    t0 = time.perf_counter()
    compiled = fn.lower(params, *inputs).compile()
    compile_s = time.perf_counter() - t0
    try:
        xla_temp_gib = round(compiled.memory_analysis().temp_size_in_bytes / GIB, 2)
    except Exception:  # memory_analysis is optional per backend
        xla_temp_gib = None

    def call():
        return jax.block_until_ready(compiled(params, *inputs))

    out, first_s, times = timed_calls(call, wl.warmup, wl.repeats)
    return {
        "device": dev.device_kind,
        "versions": jax_versions(),
        "attention": default_implementation(jnp.bfloat16, _attention_head_dim(name, config)),
        "xla_temp_gib": xla_temp_gib,
        "compile_s": round(compile_s, 2),
        "first_call_s": round(first_s, 3),
        "times_ms": [round(1e3 * t, 2) for t in times],
        "weights_gib": gib(weights_gib),
        "peak_gib": gib(device_memory(dev, "peak_bytes_in_use")),
        "out_shape": list(out.shape),
        "finite": bool(jnp.isfinite(out).all()),
    }
