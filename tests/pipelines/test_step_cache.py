"""Step caching through the FLUX.1 and Wan pipelines: diffusers' FirstBlockCache on the same tiny FLUX,
exactness at threshold 0, statistics, one compile for every threshold, batch independence, bad input."""

import numpy as np
import pytest
import torch

import jdiff
from jdiff.errors import InputError
from tests.fixtures import tiny_flux_pipeline
from tests.fixtures_wan import saved, tiny_wan
from tests.utils import rel_err

H, W, STEPS = 32, 48, 8
KW = dict(height=H, width=W, num_inference_steps=STEPS, max_sequence_length=24, output_type="latent")


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    pipe = tiny_flux_pipeline(guidance_embeds=True)
    pipe.set_progress_bar_config(disable=True)
    path = tmp_path_factory.mktemp("flux-cache")
    pipe.save_pretrained(path)
    return pipe, jdiff.DiffGenerator.from_pretrained(path, dtype="float32")


def _latents(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, (H // 4) * (W // 4), 16, generator=torch.Generator().manual_seed(seed))


def test_first_block_matches_diffusers_first_block_cache(flux):
    from diffusers.hooks import FirstBlockCacheConfig

    pipe, gen = flux
    lat = _latents(1)
    # On these random weights the first block's residual changes by 0.28-0.46 per step: at 0.4 some steps
    # are skipped and none is near the threshold.
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.4))
    try:
        ref = pipe("a red circle", latents=lat, guidance_scale=4.0, **KW).images.numpy()
    finally:
        pipe.transformer.disable_cache()
    kw = dict(latents=lat.numpy(), guidance_scale=4.0, **KW)
    got = gen.generate("a red circle", step_cache="first_block", step_cache_threshold=0.4, **kw)
    assert got.timings["steps_skipped"] >= 3
    assert got.timings["steps_computed"] == STEPS - got.timings["steps_skipped"]
    assert rel_err(got.latents, ref) <= 1e-4
    full = gen.generate("a red circle", **kw)
    assert (
        rel_err(full.latents, ref) > 1e-3
    )  # the skips changed the result (10x the tolerance), as diffusers'
    assert "steps_skipped" not in full.timings


@pytest.mark.parametrize(("mode", "computed"), [("first_block", 1), ("teacache", 2)])
def test_flux_threshold_zero_exact_huge_skips_one_compile(flux, mode, computed):
    _, gen = flux
    kw = dict(seed=3, negative_prompt="blue", true_cfg_scale=2.0, **KW)  # a true-CFG pair
    full = gen.generate("a red circle", **kw)
    zero = gen.generate("a red circle", step_cache=mode, step_cache_threshold=0.0, **kw)
    np.testing.assert_array_equal(zero.latents, full.latents)
    assert zero.timings["steps_skipped"] == 0
    before = dict(gen.pipeline.trace_counts)
    huge = gen.generate("a red circle", step_cache=mode, step_cache_threshold=1e9, **kw)
    default = gen.generate("a red circle", step_cache=mode, **kw)
    assert dict(gen.pipeline.trace_counts) == before  # the threshold is traced
    assert huge.timings["steps_skipped"] == STEPS - computed
    assert huge.timings["steps_cached_per_output"] == STEPS - computed
    assert 0 <= default.timings["steps_skipped"] <= STEPS - computed


def test_an_output_does_not_depend_on_its_batch(flux):
    _, gen = flux
    prompts, kw = ["a red circle", "a blue square on a red background"], dict(seed=[5, 9], **KW)
    kw.update(step_cache="first_block", step_cache_threshold=0.4)
    both = gen.generate(prompts, **kw)
    kw.pop("seed")
    alone = [gen.generate(p, seed=s, **kw) for p, s in zip(prompts, [5, 9], strict=True)]
    for i, one in enumerate(alone):
        np.testing.assert_allclose(both.latents[i : i + 1], one.latents, rtol=1e-4, atol=1e-5)
    per_output = np.mean([one.timings["steps_skipped"] for one in alone])
    assert both.timings["steps_cached_per_output"] == per_output
    assert both.timings["steps_skipped"] <= min(one.timings["steps_skipped"] for one in alone)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(step_cache="fbcache"), r"step_cache must be one of \['first_block', 'teacache'\]"),
        (dict(step_cache="teacache", step_cache_threshold=-0.1), "must be a finite number >= 0"),
        (dict(step_cache="first_block", step_cache_threshold=float("nan")), "must be a finite number >= 0"),
        (dict(step_cache="first_block", step_cache_threshold="x"), "step_cache_threshold must be a number"),
        (dict(step_cache_threshold=0.1), "step_cache_threshold needs a step_cache"),
        (dict(step_cache="first_block", scheduler_steps=1), "unknown argument"),
    ],
)
def test_bad_input(flux, kw, match):
    with pytest.raises(InputError, match=match) as err:
        flux[1].generate("a red circle", **KW, **kw)
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def wan():
    pipe = tiny_wan("t2v")
    pipe.set_progress_bar_config(disable=True)
    return pipe, jdiff.DiffGenerator.from_pretrained(saved(pipe), dtype="float32")


def test_wan_first_block_matches_diffusers_first_block_cache(wan):
    """Without CFG (diffusers keeps separate caches for its CFG calls): the first block's residual changes by
    0.013-0.033 per step on these random weights, so at 0.05 every step after the first is skipped, as there."""
    from diffusers.hooks import FirstBlockCacheConfig

    pipe, gen = wan
    z, sp = pipe.vae.config.z_dim, pipe.vae.config.scale_factor_spatial
    lat = torch.randn(1, z, 2, 32 // sp, 48 // sp, generator=torch.Generator().manual_seed(1))
    kw = dict(
        height=32, width=48, num_frames=5, num_inference_steps=6, guidance_scale=1.0, max_sequence_length=16
    )
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    try:
        ref = pipe(prompt="a cat", latents=lat, output_type="latent", **kw).frames.numpy()
    finally:
        pipe.transformer.disable_cache()
    kw.update(latents=lat.numpy(), output_type="latent")
    got = gen.generate("a cat", step_cache="first_block", step_cache_threshold=0.05, **kw)
    assert got.timings["steps_skipped"] == 5
    assert rel_err(got.latents, ref) <= 1e-5
    assert rel_err(gen.generate("a cat", **kw).latents, ref) > 1e-4  # the skips changed the result there too


def test_wan_step_caches(wan):
    gen = wan[1]
    kw = dict(
        height=32, width=48, num_frames=5, num_inference_steps=5, guidance_scale=4.0, negative_prompt="blue",
        max_sequence_length=16, output_type="latent", seed=1,
    )  # fmt: skip
    full = gen.generate("a cat", **kw)
    for mode, computed in (("first_block", 1), ("teacache", 2)):
        zero = gen.generate("a cat", step_cache=mode, step_cache_threshold=0.0, **kw)
        np.testing.assert_array_equal(zero.latents, full.latents)
        before = dict(gen.pipeline.trace_counts)
        huge = gen.generate("a cat", step_cache=mode, step_cache_threshold=1e9, **kw)
        assert dict(gen.pipeline.trace_counts) == before
        assert huge.timings["steps_skipped"] == 5 - computed
        assert rel_err(huge.latents, full.latents) > 1e-4  # the skips reached the output


def test_flux_teacache_signal_is_the_first_blocks_modulated_input(flux):
    """What TeaCache4FLUX reads: `transformer_blocks[0].norm1(x_embedder(latents), emb=temb)[0]`."""
    from flax import nnx

    pipe, gen = flux
    ref = pipe.transformer
    lat, pooled = _latents(2), torch.randn(2, ref.config.pooled_projection_dim)
    t, g = torch.tensor([0.7, 0.3]), torch.tensor([4.0, 2.0])
    with torch.no_grad():
        h = ref.x_embedder(lat)
        want = ref.transformer_blocks[0].norm1(h, emb=ref.time_text_embed(t * 1000, g * 1000, pooled))[0]
    p = gen.pipeline
    model = nnx.merge(p._defs["transformer"], p._params["transformer"])
    mod = model.modulation(t.numpy(), pooled.numpy(), g.numpy())
    img, _ = model.embed(lat.numpy(), np.zeros((2, 3, ref.config.joint_attention_dim), np.float32))
    assert rel_err(np.asarray(model.first_modulated(img, mod)), want.numpy()) <= 1e-5


def _family(name: str, tmp_path):
    """(generator, generate kwargs with CFG on) for a tiny FLUX.2-klein base, Z-Image or Qwen-Image."""
    if name == "qwen_image":
        from tests.fixtures_qwen_image import saved as saved_qwen
        from tests.fixtures_qwen_image import tiny_qwen_image_pipeline

        path = saved_qwen(tiny_qwen_image_pipeline("t2i"), tmp_path)
        kw = dict(height=32, width=48, negative_prompt="blue", true_cfg_scale=4.0)
    else:
        from tests.fixtures_zimage_flux2 import tiny_flux2_klein_pipeline, tiny_z_image_pipeline

        pipe = tiny_z_image_pipeline() if name == "z_image" else tiny_flux2_klein_pipeline(is_distilled=False)
        pipe.save_pretrained(path := tmp_path)
        kw = dict(height=24, width=40, max_sequence_length=64, guidance_scale=3.0)  # klein base: CFG
        if name == "z_image":
            kw["negative_prompt"] = "blue"
    gen = jdiff.DiffGenerator.from_pretrained(path, dtype="float32")
    return gen, dict(kw, num_inference_steps=4, seed=2, output_type="latent")


@pytest.mark.parametrize("name", ["flux2_klein", "z_image", "qwen_image"])
def test_other_families_first_block(name, tmp_path):
    gen, kw = _family(name, tmp_path)
    full = gen.generate("a red circle", **kw)
    zero = gen.generate("a red circle", step_cache="first_block", step_cache_threshold=0.0, **kw)
    # Equal up to float rounding: the first block and the rest run as two scans, which XLA may fuse apart.
    np.testing.assert_allclose(zero.latents, full.latents, rtol=1e-5, atol=1e-5)
    assert zero.timings["steps_skipped"] == 0
    before = dict(gen.pipeline.trace_counts)
    huge = gen.generate("a red circle", step_cache="first_block", step_cache_threshold=1e9, **kw)
    assert dict(gen.pipeline.trace_counts) == before
    assert huge.timings["steps_skipped"] == 3
    assert rel_err(huge.latents, full.latents) > 1e-4
    with pytest.raises(InputError, match="has no 'teacache' step cache; it runs \\['first_block'\\]"):
        gen.generate("a red circle", step_cache="teacache", **kw)


def test_lora_adapters_reach_both_parts(flux, tmp_path):
    """Adapters on the first double block, a later one and a single block act on the split scans as on the
    whole one: threshold 0 gives the adapted uncached result."""
    from tests import lora_files

    pipe, gen = flux
    modules = ["transformer_blocks.0.attn.to_q", "transformer_blocks.1.ff.net.0.proj", "single_transformer_blocks.1.proj_mlp"]  # fmt: skip
    path = lora_files.write(
        tmp_path / "a.safetensors", lora_files.linears(pipe.transformer), modules, alpha=6.0
    )
    gen.load_lora(path, name="a")
    try:
        kw = dict(seed=4, loras={"a": 0.8}, **KW)
        base = gen.generate("a red circle", **{**kw, "loras": None})
        full = gen.generate("a red circle", **kw)
        zero = gen.generate("a red circle", step_cache="first_block", step_cache_threshold=0.0, **kw)
    finally:
        gen.unload_lora("a")
    assert rel_err(full.latents, base.latents) > 1e-3  # the adapter matters
    np.testing.assert_allclose(zero.latents, full.latents, rtol=1e-5, atol=1e-5)
