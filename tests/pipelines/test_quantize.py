"""`from_pretrained(..., quantization="fp8")` on a tiny FLUX.1: which linears are quantized, images close to
the unquantized ones, LoRA on top, and bad values."""

from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jdiff
from jdiff.errors import InputError
from jdiff.pipelines import quantize
from tests import lora_files
from tests.fixtures import tiny_flux_pipeline
from tests.utils import rel_err

H, W = 32, 48
KW = dict(height=H, width=W, num_inference_steps=3, max_sequence_length=24, guidance_scale=4.0)
BLOCK_LINEARS = [  # FLUX.1's attention and MLP linears of both block kinds: fp8
    "transformer_blocks.attn.to_q",
    "transformer_blocks.attn.add_v_proj",
    "transformer_blocks.attn.to_out.0",
    "transformer_blocks.attn.to_add_out",
    "transformer_blocks.ff.net.0.proj",
    "transformer_blocks.ff_context.net.2",
    "single_transformer_blocks.attn.to_k",
    "single_transformer_blocks.proj_mlp",
    "single_transformer_blocks.proj_out",
]
KEPT = [  # what the reference keeps in high precision: modulation, embedders, final layer
    "transformer_blocks.norm1.linear",
    "transformer_blocks.norm1_context.linear",
    "single_transformer_blocks.norm.linear",
    "x_embedder",
    "context_embedder",
    "time_text_embed.timestep_embedder.linear_1",
    "time_text_embed.guidance_embedder.linear_2",
    "time_text_embed.text_embedder.linear_1",
    "norm_out.linear",
    "proj_out",
]


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    pipe = tiny_flux_pipeline(guidance_embeds=True)
    root = tmp_path_factory.mktemp("flux-fp8")
    pipe.save_pretrained(root / "model")
    lora = lora_files.write(
        root / "a.safetensors",
        lora_files.linears(pipe.transformer),
        ["transformer_blocks.0.attn.to_q", "single_transformer_blocks.1.proj_mlp", "proj_out"],
        alpha=6.0,
    )
    ref = jdiff.DiffGenerator.from_pretrained(root / "model", dtype="float32")
    fp8 = jdiff.DiffGenerator.from_pretrained(root / "model", dtype="float32", quantization="fp8")
    return ref, fp8, lora


def _paths(state, leaf: str) -> set[str]:
    return {".".join(map(str, p[:-1])) for p, _ in nnx.to_flat_state(state) if p[-1] == leaf}


def test_block_linears_quantized_the_rest_kept(flux):
    ref, fp8, _ = flux
    assert fp8.pipeline.quantization == "fp8" and ref.pipeline.quantization is None
    params = fp8.pipeline._params
    quantized = _paths(params["transformer"], "kernel_fp8")
    assert set(BLOCK_LINEARS) <= quantized
    assert not set(KEPT) & quantized and set(KEPT) <= _paths(params["transformer"], "kernel")
    assert quantized == _paths(params["transformer"], "kernel_scale")
    # Every block linear but the modulation: 12 per double-stream block, 5 per single-stream one; the rest
    # of the transformer is what stays.
    assert len(quantized) == 12 + 5, sorted(quantized)
    stays = _paths(ref.pipeline._params["transformer"], "kernel") - quantized
    assert all(
        not p.startswith(("transformer_blocks", "single_transformer_blocks")) or ".norm" in p for p in stays
    )
    for other in ("clip", "t5", "vae"):
        assert not _paths(params[other], "kernel_fp8")
    dtypes = {v.dtype for p, v in nnx.to_flat_state(params["transformer"]) if p[-1] == "kernel_fp8"}
    assert dtypes == {jnp.dtype(jnp.float8_e4m3fn)}


def test_images_close_to_unquantized(flux):
    ref, fp8, _ = flux
    lat = torch.randn(1, (H // 4) * (W // 4), 16, generator=torch.Generator().manual_seed(1)).numpy()
    want = ref.generate("a red circle", latents=lat, output_type="np", **KW)
    got = fp8.generate("a red circle", latents=lat, output_type="np", **KW)
    err = rel_err(got.latents, want.latents)
    assert 1e-4 < err < 0.1, err  # fp8 moved the result (it ran), by little
    assert np.abs(got.images - want.images).mean() < 0.02


def test_lora_on_fp8(flux):
    ref, fp8, lora = flux
    lat = torch.randn(1, (H // 4) * (W // 4), 16, generator=torch.Generator().manual_seed(2)).numpy()
    base = fp8.generate("a red circle", latents=lat, output_type="np", **KW)
    for gen in (ref, fp8):
        gen.load_lora(lora, "a")
    try:
        got = fp8.generate("a red circle", latents=lat, output_type="np", loras={"a": 1.0}, **KW)
        want = ref.generate("a red circle", latents=lat, output_type="np", loras={"a": 1.0}, **KW)
        # The adapter acts (its delta is not dropped) and lands near the unquantized model's result.
        assert rel_err(got.latents, base.latents) > 0.05
        assert rel_err(got.latents, want.latents) < 0.1
        q = fp8.pipeline._params["transformer"]["transformer_blocks"]["attn"]["to_q"]
        assert q["lora_a"][...].dtype == np.float32  # the factors in the activation dtype, not fp8
        with pytest.raises(InputError, match="fuse_lora cannot fold adapters into quantization='fp8'"):
            fp8.fuse_lora({"a": 1.0})
    finally:
        for gen in (ref, fp8):
            gen.unload_lora("a")


def test_bad_quantization_value(tiny_flux_dir):
    with pytest.raises(InputError, match=r"quantization must be one of \['fp8'\].*got 'int4'"):
        jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, quantization="int4")


def test_family_without_fp8_is_refused():
    unet = SimpleNamespace(_defs={"unet": None, "vae": None}, family="Stable Diffusion")
    with pytest.raises(InputError, match="fp8 is for DiT families|is for DiT families"):
        quantize.apply(unet, None, "fp8")
    assert quantize.apply(unet, None, None) == []


def test_family_without_fp8_is_refused_before_loading(monkeypatch):
    from jdiff import registry

    def never(*a, **kw):
        raise AssertionError("the pipeline was built (weights loaded) before the refusal")

    spec = SimpleNamespace(fp8=())
    family = SimpleNamespace(name="stable_diffusion", pipeline=never)
    model = SimpleNamespace(components=lambda: {"unet": 0, "vae": 0}, spec=lambda k: spec, family=family)
    monkeypatch.setattr(registry, "open_model", lambda path: model)
    with pytest.raises(InputError, match="stable_diffusion has no fp8 mode"):
        jdiff.DiffGenerator.from_pretrained("/nonexistent-sd", quantization="fp8")
    quantize.check_model(model, None)  # no quantization: nothing to refuse


@pytest.fixture(scope="module")
def fp8_one_device(tiny_flux_dir):
    """The tiny FLUX.1 under fp8 on one device: what the mesh and offload runs must reproduce."""
    gen = jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, quantization="fp8")
    return gen.generate("a red circle", **SMALL)


SMALL = dict(height=32, width=48, num_inference_steps=2, max_sequence_length=16, output_type="np", seed=3)


def test_fp8_sharded_matches_one_device(tiny_flux_dir, fp8_one_device):
    from jax.sharding import PartitionSpec as P

    gen = jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, quantization="fp8", mesh="tensor=2,fsdp=4")
    tr = gen.pipeline._params["transformer"]
    q = tr["transformer_blocks"]["attn"]["to_q"]
    # The bf16 kernel's layout [L, in: fsdp, out: tensor], transposed with the kernel; scales by output.
    assert q["kernel_fp8"][...].sharding.spec == P(None, "tensor", "fsdp")
    assert q["kernel_scale"][...].sharding.spec == P(None, "tensor")
    got = gen.generate("a red circle", **SMALL)
    assert rel_err(got.latents, fp8_one_device.latents) <= 1e-3


def test_fp8_with_layer_offload_matches_on_device(tiny_flux_dir, fp8_one_device):
    gen = jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, quantization="fp8", offload="layers")
    host = gen.pipeline._params.host("transformer")["transformer_blocks"]["attn"]["to_q"]
    assert all(host[k][...].sharding.memory_kind == "pinned_host" for k in ("kernel_fp8", "kernel_scale"))
    got = gen.generate("a red circle", **SMALL)
    np.testing.assert_array_equal(got.images, fp8_one_device.images)
