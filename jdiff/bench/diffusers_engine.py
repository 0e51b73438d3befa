"""diffusers' side of the single-model workloads: random weights on the device, eager or torch.compile.

Imports of torch and diffusers stay inside functions: the driver process imports this package without them.
"""

from __future__ import annotations

from jdiff.bench.workloads import GIB, _resolve, position_ids, sdxl_time_ids, timed_calls


def _randomize(model, keep: list[str], device, dtype):
    """Replaces every parameter of `model` by normal(0, 0.02) in `dtype`, float32 for the `keep` modules.

    The float32 exceptions follow the loaders: a parameter whose dotted name has one of those module names as
    a component; floating buffers are cast to `dtype` only for models without exceptions (diffusers'
    `from_pretrained` calls `model.to(dtype)` only then).
    """
    import torch

    gen = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            dt = torch.float32 if any(m in name.split(".") for m in keep) else dtype
            p.data = torch.randn(p.shape, generator=gen, device=device, dtype=dt) * 0.02
        if not keep:
            for mod in model.modules():
                for bname, buf in list(mod.named_buffers(recurse=False)):
                    if buf.is_floating_point():
                        setattr(mod, bname, buf.to(dtype))
    return model.eval().requires_grad_(False)


def _torch_random(cls, config: dict, device, dtype):
    """A diffusers model with every parameter normal(0, 0.02), in `dtype` except `_keep_in_fp32_modules`.

    Built in float32 on the device (default init, no host copy), then each parameter is replaced, so the
    float32 build is freed tensor by tensor.
    """
    import torch

    with torch.device(device):
        model = cls(**config)
    return _randomize(model, list(getattr(cls, "_keep_in_fp32_modules", None) or []), device, dtype)


def _transformers_random(cls, config_cls, config: dict, device, dtype):
    """A transformers model built like `_torch_random`, with transformers' float32 rule for `dtype`.

    transformers keeps `_keep_in_fp32_modules` in float32 for float16 loads only, and
    `_keep_in_fp32_modules_strict` for float16 and bfloat16 (T5's "wo" is bfloat16 in a bfloat16 load).
    """
    import torch

    with torch.device(device):
        model = cls(config_cls(**config))
    keep = list(getattr(cls, "_keep_in_fp32_modules_strict", None) or [])
    if dtype == torch.float16:
        keep += list(getattr(cls, "_keep_in_fp32_modules", None) or [])
    return _randomize(model, keep, device, dtype)


def _torch_setup(name: str, config: dict, sz: dict, device):
    """(model, call(model)) for one workload; inputs in diffusers' layout and dtypes."""
    import diffusers
    import torch

    bf16 = torch.bfloat16
    gen = torch.Generator(device).manual_seed(1)

    def rand(*shape, dtype=bf16):
        return torch.randn(shape, generator=gen, device=device, dtype=dtype)

    def ids(axes):
        txt, img = position_ids(sz["text"], sz["h"], sz["w"], axes)
        f32 = dict(device=device, dtype=torch.float32)
        return dict(txt_ids=torch.tensor(txt, **f32), img_ids=torch.tensor(img, **f32))

    if name == "flux_step":
        model = _torch_random(diffusers.FluxTransformer2DModel, config, device, bf16)
        x = dict(
            hidden_states=rand(1, sz["h"] * sz["w"], config["in_channels"]),
            encoder_hidden_states=rand(1, sz["text"], config["joint_attention_dim"]),
            pooled_projections=rand(1, config["pooled_projection_dim"]),
            # FluxPipeline: t / 1000, in the latents' dtype
            timestep=torch.full((1,), 0.5, device=device, dtype=bf16),
            guidance=torch.full((1,), 3.5, device=device, dtype=torch.float32),
            **ids(3),
            return_dict=False,
        )
        return model, lambda m: m(**x)[0]
    if name == "z_image_step":
        model = _torch_random(diffusers.ZImageTransformer2DModel, config, device, bf16)
        # ZImagePipeline: a list of [C, 1, h, w] latents, t = 1 - sigma (float32), a list of [T, J] captions.
        latents = [rand(config["in_channels"], 1, 2 * sz["h"], 2 * sz["w"])]
        t = torch.full((1,), 0.5, device=device)
        caps = [rand(sz["text"], config["cap_feat_dim"])]
        return model, lambda m: m(latents, t, caps, return_dict=False)[0][0]
    if name in ("flux2_klein_step", "flux2_dev_step"):
        model = _torch_random(diffusers.Flux2Transformer2DModel, config, device, bf16)
        x = dict(
            hidden_states=rand(1, sz["h"] * sz["w"], config["in_channels"]),
            encoder_hidden_states=rand(1, sz["text"], config["joint_attention_dim"]),
            # Flux2(Klein)Pipeline: t / 1000 in the latents' dtype; klein has no guidance embedding, dev gets
            # its guidance (4.0) in float32
            timestep=torch.full((1,), 0.5, device=device, dtype=bf16),
            guidance=torch.full((1,), 4.0, device=device) if config["guidance_embeds"] else None,
            **ids(4),
            return_dict=False,
        )
        return model, lambda m: m(**x)[0]
    if name == "sdxl_unet_step":
        model = _torch_random(diffusers.UNet2DConditionModel, config, device, bf16)
        b, h, w = sz["batch"], sz["h"], sz["w"]
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        x = dict(
            sample=rand(b, config["in_channels"], h, w),
            timestep=torch.full((), 500.0, device=device),
            encoder_hidden_states=rand(b, sz["text"], config["cross_attention_dim"]),
            added_cond_kwargs=dict(
                text_embeds=rand(b, pooled),
                time_ids=torch.tensor(sdxl_time_ids(sz), device=device, dtype=bf16),
            ),
            return_dict=False,
        )
        return model, lambda m: m(**x)[0]
    if name == "qwen_image_step":
        model = _torch_random(diffusers.QwenImageTransformer2DModel, config, device, bf16)
        x = dict(
            hidden_states=rand(1, sz["h"] * sz["w"], config["in_channels"]),
            encoder_hidden_states=rand(1, sz["text"], config["joint_attention_dim"]),
            encoder_hidden_states_mask=None,  # QwenImagePipeline drops an all-ones mask (one prompt)
            timestep=torch.full((1,), 0.5, device=device, dtype=bf16),
            img_shapes=[[(1, sz["h"], sz["w"])]],
            return_dict=False,
        )
        return model, lambda m: m(**x)[0]
    if name == "qwen_image_cfg_step":
        model = _torch_random(diffusers.QwenImageTransformer2DModel, config, device, bf16)
        calls = [  # QwenImagePipeline's true CFG: the prompt, then the negative, each at its own length
            dict(
                hidden_states=rand(1, sz["h"] * sz["w"], config["in_channels"]),
                encoder_hidden_states=rand(1, t, config["joint_attention_dim"]),
                encoder_hidden_states_mask=None,
                timestep=torch.full((1,), 0.5, device=device, dtype=bf16),
                img_shapes=[[(1, sz["h"], sz["w"])]],
                return_dict=False,
            )
            for t in (sz["text"], sz["negative_text"])
        ]
        return model, lambda m: torch.cat([m(**x)[0] for x in calls])
    if name == "hunyuan_video15_step":
        model = _torch_random(diffusers.HunyuanVideo15Transformer3DModel, config, device, bf16)
        f, h, w, t, g = sz["f"], sz["h"], sz["w"], sz["ref_text"], sz["ref_glyph"]

        def mask(n, real):
            return (torch.arange(n, device=device) < real)[None].to(torch.int64)

        calls = [  # HunyuanVideo15Pipeline's CFG: one batch-1 call per condition, its padding masked
            dict(
                hidden_states=rand(1, config["in_channels"], f, h, w),
                timestep=torch.full((1,), 500.0, device=device, dtype=bf16),
                encoder_hidden_states=rand(1, t, config["text_embed_dim"]),
                encoder_attention_mask=mask(t, real),
                encoder_hidden_states_2=rand(1, g, config["text_embed_2_dim"]),
                encoder_attention_mask_2=mask(g, 0),
                image_embeds=torch.zeros(
                    1, sz["image"], config["image_embed_dim"], device=device, dtype=bf16
                ),
                return_dict=False,
            )
            for real in sz["text_lens"]
        ]
        return model, lambda m: torch.cat([m(**x)[0] for x in calls])
    if name.startswith("hunyuan_video15_vae_decode"):
        model = _torch_random(diffusers.AutoencoderKLHunyuanVideo15, config, device, bf16)
        if "tiling" in sz:  # enable_tiling's arguments in its order
            names = ("tile_sample_min_height", "tile_sample_min_width", "tile_latent_min_height")
            names += ("tile_latent_min_width", "tile_overlap_factor")
            model.enable_tiling(**dict(zip(names, sz["tiling"], strict=True)))
        z = rand(1, config["latent_channels"], sz["f"], sz["h"], sz["w"])
        return model, lambda m: m.decode(z, return_dict=False)[0]
    if name.startswith("wan_forward"):
        model = _torch_random(diffusers.WanTransformer3DModel, config, device, bf16)
        x = dict(
            hidden_states=rand(1, config["in_channels"], sz["f"], sz["h"], sz["w"]),
            timestep=torch.full((1,), 500.0, device=device),
            encoder_hidden_states=rand(1, sz["text"], config["text_dim"]),
            return_dict=False,
        )
        return model, lambda m: m(**x)[0]
    if name == "flux_vae_decode":
        model = _torch_random(diffusers.AutoencoderKL, config, device, bf16)
        z = rand(1, config["latent_channels"], sz["h"], sz["w"])
        return model, lambda m: m.decode(z, return_dict=False)[0]
    if name == "wan_vae_decode":
        model = _torch_random(diffusers.AutoencoderKLWan, config, device, bf16)
        z = rand(1, config.get("z_dim", 16), sz["f"], sz["h"], sz["w"])
        return model, lambda m: m.decode(z, return_dict=False)[0]
    raise KeyError(name)


def torch_versions(cuda: bool) -> dict:
    import diffusers
    import torch

    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
    }


def torch_memory(cuda: bool) -> dict:
    """Peak allocated and reserved GiB since the last reset (None on CPU)."""
    import torch

    return {
        "peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 2) if cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2) if cuda else None,
    }


def settle(cuda: bool) -> float | None:
    """After building weights: drops the float32 builds' cached blocks, resets the peak; GiB allocated."""
    import torch

    if not cuda:
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated() / GIB


def run_diffusers(name: str, tiny: bool, compiled: bool) -> dict:
    import torch

    wl, config, sz = _resolve(name, tiny)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    model, call = _torch_setup(name, config, sz, device)
    weights_gib = settle(cuda)
    if compiled:
        model = torch.compile(model)

    def run():
        with torch.inference_mode():
            out = call(model)
        sync()
        return out

    out, first_s, times = timed_calls(run, wl.warmup, wl.repeats)
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "versions": torch_versions(cuda),
        "attention": "torch SDPA (diffusers native backend)",
        "compile_s": round(first_s, 2) if compiled else None,
        "first_call_s": round(first_s, 3),
        "times_ms": [round(1e3 * t, 2) for t in times],
        "weights_gib": None if weights_gib is None else round(weights_gib, 2),
        **torch_memory(cuda),
        "out_shape": list(out.shape),
        "finite": bool(torch.isfinite(out).all()),
    }
