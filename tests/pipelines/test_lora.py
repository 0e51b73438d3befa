"""LoRA on FLUX.1 and Wan vs diffusers' `load_lora_weights` + `set_adapters`; no recompiles; mixing in a batch."""

import numpy as np
import pytest
import torch

import jdiff
from jdiff.errors import InputError
from tests import lora_files
from tests.fixtures import tiny_flux_pipeline
from tests.fixtures_wan import saved, tiny_wan
from tests.utils import rel_err

H, W = 32, 48
KW = dict(height=H, width=W, num_inference_steps=3, max_sequence_length=24)
PROMPT = "a red circle"
# Attention (stacked double and single blocks), feed-forward, the per-step AdaLN modulation (computed for
# every step at once, step-major rows) and the unstacked embedders and output.
FLUX_MODULES = [
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.1.attn.add_k_proj",
    "transformer_blocks.1.ff.net.0.proj",
    "transformer_blocks.0.norm1.linear",
    "single_transformer_blocks.1.proj_mlp",
    "single_transformer_blocks.0.attn.to_v",
    "x_embedder",
    "proj_out",
]
CLIP_MODULES = ["encoder.layers.0.self_attn.q_proj", "encoder.layers.1.mlp.fc1"]


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    pipe = tiny_flux_pipeline(guidance_embeds=True)
    root = tmp_path_factory.mktemp("flux-lora")
    pipe.save_pretrained(root / "model")
    gen = jdiff.DiffGenerator.from_pretrained(root / "model", dtype="float32")
    mods = lora_files.linears(pipe.transformer)
    clip = lora_files.linears(pipe.text_encoder)
    files = {
        "a": lora_files.write(root / "a.safetensors", mods, FLUX_MODULES, alpha=6.0),
        "b": lora_files.write(root / "b.safetensors", mods, FLUX_MODULES[2:6], rank=2, seed=1),
        "c": lora_files.write(root / "c.safetensors", mods, FLUX_MODULES[2:6], rank=4, seed=2),
        "te": lora_files.write(root / "te.safetensors", clip, CLIP_MODULES, prefix="text_encoder.", seed=3),
        "kohya": lora_files.write(root / "k.safetensors", mods, FLUX_MODULES, alpha=6.0, kohya=True,
                                  prefix="lora_unet_"),
    }  # fmt: skip
    yield pipe, gen, files
    for name in list(gen.loras):
        gen.unload_lora(name)


def _latents(batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, (H // 4) * (W // 4), 16, generator=torch.Generator().manual_seed(seed))


def _reference(pipe, files: dict, weights: dict[str, float], lat, prompt=PROMPT, check=None) -> np.ndarray:
    """diffusers' latents with these adapters; with `check` (a generator holding them), also that it adapts
    exactly the same layers by the same deltas."""
    for name in weights:
        pipe.load_lora_weights(str(files[name]), adapter_name=name)
    try:
        pipe.set_adapters(list(weights), adapter_weights=list(weights.values()))
        if check is not None:
            assert lora_files.assert_same_deltas(pipe.transformer, check, "transformer", weights) == len(
                FLUX_MODULES
            )
        return pipe(prompt, latents=lat, output_type="latent", **KW).images.numpy()
    finally:
        pipe.unload_lora_weights()


def _ours(gen, lat, loras=None, prompt=PROMPT) -> np.ndarray:
    return gen.generate(prompt, latents=lat.numpy(), output_type="latent", loras=loras, **KW).latents


def test_one_adapter_and_text_encoder_adapter_match_diffusers(flux):
    pipe, gen, files = flux
    lat = _latents()
    base = _ours(gen, lat)
    assert gen.load_lora(files["a"]) == "a" and gen.load_lora(files["te"], name="te") == "te"
    try:
        got = _ours(gen, lat, {"a": 0.7})
        assert rel_err(got, _reference(pipe, files, {"a": 0.7}, lat, check=gen)) <= 1e-4
        assert rel_err(got, base) > 0.05  # the adapter matters
        got_te = _ours(gen, lat, {"te": 1.5})
        assert rel_err(got_te, _reference(pipe, files, {"te": 1.5}, lat)) <= 1e-4
        assert rel_err(got_te, base) > 1e-3
    finally:
        gen.unload_lora("a")
        gen.unload_lora("te")


def test_two_adapters_at_once_match_diffusers(flux):
    pipe, gen, files = flux
    lat = _latents(seed=2)
    gen.load_lora(files["a"])
    gen.load_lora(files["b"])
    try:
        got = _ours(gen, lat, {"a": 0.6, "b": 1.3})
        assert rel_err(got, _reference(pipe, files, {"a": 0.6, "b": 1.3}, lat)) <= 1e-4
    finally:
        gen.unload_lora("a")
        gen.unload_lora("b")


def test_scale_zero_no_loras_and_unload_equal_the_base_model(flux):
    _, gen, files = flux
    lat = _latents(seed=3)
    base = _ours(gen, lat)
    gen.load_lora(files["a"])
    np.testing.assert_allclose(_ours(gen, lat, {"a": 0.0}), base, rtol=0, atol=1e-6)
    np.testing.assert_allclose(_ours(gen, lat), base, rtol=0, atol=1e-6)
    gen.unload_lora("a")
    assert gen.loras == []
    np.testing.assert_array_equal(_ours(gen, lat), base)
    # Without adapters the model is the plain one: no LoRA parameters at all.
    assert "lora_a" not in str(gen.pipeline._params["transformer"])


def test_fuse_equals_the_adapter_chosen_per_request_and_unfuse_restores(flux):
    _, gen, files = flux
    lat = _latents(seed=6)
    base = _ours(gen, lat)
    gen.load_lora(files["a"])
    gen.load_lora(files["b"])
    try:
        want = _ours(gen, lat, {"a": 0.7, "b": 0.5})
        gen.fuse_lora({"a": 0.7})
        np.testing.assert_allclose(_ours(gen, lat, {"b": 0.5}), want, rtol=0, atol=1e-5)
        with pytest.raises(InputError, match="fused"):
            _ours(gen, lat, {"a": 0.7})
        with pytest.raises(InputError, match="unfuse"):
            gen.unload_lora("a")
        gen.unload_lora("b")
        # The fused adapter left its slot: with no other adapter, no LoRA variables at all.
        assert "lora_a" not in str(gen.pipeline._params["transformer"])
        fused = _ours(gen, lat)
        gen.unfuse_lora()
        np.testing.assert_allclose(_ours(gen, lat, {"a": 0.7}), fused, rtol=0, atol=1e-5)
        gen.unload_lora("a")
        np.testing.assert_array_equal(_ours(gen, lat), base)
    finally:
        if gen.pipeline.lora.fused:
            gen.unfuse_lora()
        for name in list(gen.loras):
            gen.unload_lora(name)


def test_kohya_names_load_like_diffusers_names(flux):
    _, gen, files = flux
    lat = _latents(seed=4)
    gen.load_lora(files["a"], name="peft")
    gen.load_lora(files["kohya"], name="kohya")
    try:
        np.testing.assert_allclose(
            _ours(gen, lat, {"kohya": 0.8}), _ours(gen, lat, {"peft": 0.8}), rtol=0, atol=1e-6
        )
    finally:
        gen.unload_lora("peft")
        gen.unload_lora("kohya")


def test_new_adapter_or_scale_at_a_seen_shape_compiles_nothing(flux):
    _, gen, files = flux
    lat = _latents(seed=5)
    gen.load_lora(files["b"])
    gen.load_lora(files["a"])
    try:
        first = _ours(gen, lat, {"b": 1.0})
        counts = dict(gen.pipeline.trace_counts)
        scaled = _ours(gen, lat, {"b": 0.5})
        both = _ours(gen, lat, {"b": 0.5, "a": 0.3})
        gen.unload_lora("b")
        gen.load_lora(files["c"])  # another rank, same bucket and layers: values change, shapes do not
        other = _ours(gen, lat, {"c": 1.0})
        assert dict(gen.pipeline.trace_counts) == counts
        assert rel_err(scaled, first) > 1e-3 and rel_err(both, scaled) > 1e-3 and rel_err(other, first) > 1e-3
    finally:
        for name in list(gen.loras):
            gen.unload_lora(name)


def test_one_batch_mixing_adapters_equals_each_request_alone(flux):
    _, gen, files = flux
    gen.load_lora(files["a"])
    gen.load_lora(files["b"])
    try:
        kw = dict(output_type="latent", **KW)
        mixed = gen.generate(
            ["a red circle", "a blue square"], seed=[7, 8], loras=[{"a": 0.9}, {"b": 1.2}], **kw
        )
        alone_a = gen.generate("a red circle", seed=7, loras={"a": 0.9}, **kw)
        alone_b = gen.generate("a blue square", seed=8, loras={"b": 1.2}, **kw)
        np.testing.assert_allclose(mixed.latents[:1], alone_a.latents, rtol=0, atol=1e-5)
        np.testing.assert_allclose(mixed.latents[1:], alone_b.latents, rtol=0, atol=1e-5)
    finally:
        gen.unload_lora("a")
        gen.unload_lora("b")


def test_bad_files_and_names_fail_clearly_and_change_nothing(flux, tmp_path):
    _, gen, files = flux
    wan_like = lora_files.write(
        tmp_path / "other.safetensors",
        {"blocks.0.attn1.to_q": torch.nn.Linear(4, 4)},
        ["blocks.0.attn1.to_q"],
    )
    with pytest.raises(InputError, match=r"fit no layer.*blocks\.0\.attn1\.to_q"):
        gen.load_lora(wan_like)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(InputError, match="garbage.safetensors"):
        gen.load_lora(garbage)
    with pytest.raises(InputError, match="does not exist"):
        gen.load_lora(tmp_path / "missing.safetensors")
    assert gen.loras == []
    assert "lora_a" not in str(gen.pipeline._params["transformer"])
    with pytest.raises(InputError, match="unknown LoRA"):
        gen.generate(PROMPT, loras={"nope": 1.0}, **KW)
    gen.load_lora(files["b"])
    try:
        with pytest.raises(InputError, match="already loaded"):
            gen.load_lora(files["b"])
        with pytest.raises(InputError, match=r"unknown LoRA adapter\(s\) \['nope'\]; loaded: \['b'\]"):
            gen.generate(PROMPT, loras={"nope": 1.0}, **KW)
        with pytest.raises(InputError, match="finite"):
            gen.generate(PROMPT, loras={"b": float("nan")}, **KW)
        assert gen.generate(PROMPT, loras={"b": 1.0}, output_type="latent", **KW).latents.shape[0] == 1
    finally:
        gen.unload_lora("b")
    with pytest.raises(InputError, match="no LoRA named"):
        gen.unload_lora("b")


WAN_MODULES = [
    "blocks.0.attn1.to_q",
    "blocks.1.attn2.to_k",
    "blocks.0.ffn.net.0.proj",
    "condition_embedder.time_proj",
    "proj_out",
]


WAN_ORIGINAL = {  # original name -> diffusers name
    "blocks.0.self_attn.q": "blocks.0.attn1.to_q",
    "blocks.1.cross_attn.o": "blocks.1.attn2.to_out.0",
    "blocks.0.ffn.0": "blocks.0.ffn.net.0.proj",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
}


def test_wan_one_and_two_adapters_match_diffusers(tmp_path):
    pipe = tiny_wan("t2v")
    gen = jdiff.DiffGenerator.from_pretrained(saved(pipe), dtype="float32")
    mods = lora_files.linears(pipe.transformer)
    a = lora_files.write(tmp_path / "a.safetensors", mods, WAN_MODULES)  # diffusers refuses Wan .alpha keys
    b = lora_files.write(tmp_path / "b.safetensors", mods, WAN_MODULES[:3], rank=2, seed=1)
    z, sp = pipe.vae.config.z_dim, pipe.vae.config.scale_factor_spatial
    latents = torch.randn(1, z, 3, 32 // sp, 48 // sp, generator=torch.Generator().manual_seed(1))
    kw = dict(height=32, width=48, num_frames=9, num_inference_steps=3, guidance_scale=4.0,
              negative_prompt="blue", max_sequence_length=16)  # fmt: skip
    gen.load_lora(a)
    gen.load_lora(b)
    for weights in ({"a": 0.8}, {"a": 0.5, "b": 1.5}):
        for name in weights:
            pipe.load_lora_weights(str(tmp_path / f"{name}.safetensors"), adapter_name=name)
        pipe.set_adapters(list(weights), adapter_weights=list(weights.values()))
        ref = pipe(prompt=PROMPT, latents=latents, output_type="latent", **kw).frames.numpy()
        pipe.unload_lora_weights()
        got = gen.generate(PROMPT, latents=latents.numpy(), output_type="latent", loras=weights, **kw)
        assert rel_err(got.latents, ref) <= 1e-4, weights
    base = gen.generate(PROMPT, latents=latents.numpy(), output_type="latent", **kw).latents
    ref_base = pipe(prompt=PROMPT, latents=latents, output_type="latent", **kw).frames.numpy()
    assert rel_err(base, ref_base) <= 1e-4
    assert rel_err(got.latents, base) > 1e-2

    # The original Wan repository's names (`diffusion_model.blocks.0.self_attn.q`, as LightX2V ships them),
    # and musubi-tuner's kohya form of them: diffusers renames the first on load.
    original = {n: mods[d] for n, d in WAN_ORIGINAL.items()}
    orig = lora_files.write(
        tmp_path / "orig.safetensors", original, list(original), prefix="diffusion_model."
    )
    musubi = lora_files.write(tmp_path / "musubi.safetensors", original, list(original), prefix="lora_unet_",
                              kohya=True)  # fmt: skip
    gen.load_lora(orig)
    gen.load_lora(musubi)
    pipe.load_lora_weights(str(orig), adapter_name="orig")
    pipe.set_adapters(["orig"], adapter_weights=[0.9])
    ref = pipe(prompt=PROMPT, latents=latents, output_type="latent", **kw).frames.numpy()
    got = gen.generate(
        PROMPT, latents=latents.numpy(), output_type="latent", loras={"orig": 0.9}, **kw
    ).latents
    assert rel_err(got, ref) <= 1e-4 and rel_err(got, base) > 1e-2
    assert lora_files.assert_same_deltas(pipe.transformer, gen, "transformer", {"orig": 0.9}) == len(
        WAN_ORIGINAL
    )
    again = gen.generate(PROMPT, latents=latents.numpy(), output_type="latent", loras={"musubi": 0.9}, **kw)
    np.testing.assert_allclose(again.latents, got, rtol=0, atol=1e-6)
