"""Pipelines on meshes of 8 fake CPU devices: same images as one device, parameters where the rules say,
sharded loading by slices, and bad meshes refused."""

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jdiff
import jdiff.weights.plan as plan_module
from jdiff.errors import InputError
from tests.fixtures_wan import saved, tiny_wan
from tests.utils import rel_err

KW = dict(height=32, width=48, num_inference_steps=3, max_sequence_length=16, output_type="np", seed=3)


@pytest.fixture(scope="module")
def flux_base(tiny_flux_dir):
    gen = jdiff.DiffGenerator.from_pretrained(tiny_flux_dir)
    return gen.generate(["a red circle", "blue"], negative_prompt="x", true_cfg_scale=2.0, **KW)


@pytest.mark.parametrize(
    "mesh, mode",
    [
        ("fsdp=8", "ulysses"),
        ("context=2,data=2,fsdp=2", "ulysses"),  # CFG pair over data, sequence over context
        ("context=4,data=2", "ring"),
        ("tensor=2,context=2,data=2", "ring"),
    ],
)
def test_flux_sharded_matches_one_device(tiny_flux_dir, flux_base, mesh, mode):
    gen = jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, mesh=mesh, sequence_parallel=mode)
    got = gen.generate(["a red circle", "blue"], negative_prompt="x", true_cfg_scale=2.0, **KW)
    assert rel_err(got.latents, flux_base.latents) <= 1e-4
    assert np.abs(got.images - flux_base.images).max() <= 1e-4


def test_param_and_activation_layouts(tiny_flux_dir):
    gen = jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, mesh="tensor=2,fsdp=4")
    tr = gen.pipeline._params["transformer"]
    assert tr["transformer_blocks"]["attn"]["to_q"]["kernel"][...].sharding.spec == P(None, "fsdp", "tensor")
    assert tr["single_transformer_blocks"]["proj_out"]["kernel"][...].sharding.spec == P(
        None, "tensor", "fsdp"
    )
    assert tr["x_embedder"]["kernel"][...].sharding.spec == P(None, "fsdp")
    assert all(a is None for a in tr["transformer_blocks"]["attn"]["norm_q"]["scale"][...].sharding.spec)
    latents = gen.pipeline.placement.put(np.zeros((4, 24, 16), np.float32), ("activation_batch", None, None))
    assert latents.sharding.spec == P("fsdp", None, None)  # batch over data, then fsdp (data is 1 here)
    embeds, _ = gen.pipeline.encode_prompts(["a", "b", "c", "d"], 16)
    assert len(embeds.sharding.device_set) == 8


def test_sharded_loading_reads_slices(tiny_flux_dir, monkeypatch):
    reads = []
    original = plan_module.materialize_slice

    def counting(assignment, read, index):
        out = original(assignment, read, index)
        reads.append((assignment.target, out.nbytes, int(np.prod(assignment.shape)) * 4))
        return out

    monkeypatch.setattr(plan_module, "materialize_slice", counting)
    import jdiff.weights.loading as loading

    monkeypatch.setattr(loading, "materialize_slice", counting)
    jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, mesh="fsdp=8")
    q = [(n, full) for t, n, full in reads if t == "transformer_blocks.attn.to_q.kernel"]
    assert len(q) == 8 and all(n == full // 8 for n, full in q)  # each device read an eighth, never it all


def test_wan_sharded_matches_one_device():
    path = saved(tiny_wan("t2v"))
    kw = dict(
        height=32,
        width=48,
        num_frames=5,
        num_inference_steps=3,
        guidance_scale=4.0,
        negative_prompt="x",
        max_sequence_length=16,
        output_type="np",
        seed=1,
    )
    base = jdiff.DiffGenerator.from_pretrained(path).generate("a cat", **kw)
    for mesh, mode in (("context=2,data=2,fsdp=2", "ulysses"), ("context=4,data=2", "ring")):
        got = jdiff.DiffGenerator.from_pretrained(path, mesh=mesh, sequence_parallel=mode).generate(
            "a cat", **kw
        )
        assert rel_err(got.latents, base.latents) <= 1e-4, mesh
        assert np.abs(got.frames - base.frames).max() <= 1e-4, mesh


def test_bad_meshes(tiny_flux_dir):
    with pytest.raises(InputError, match="needs 3 devices but 8"):
        jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, mesh="data=3")
    with pytest.raises(InputError, match="unknown axis .pipeline."):
        jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, mesh="pipeline=8")
    gen = jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, mesh="context=8")  # 2 heads over 8 shards
    with pytest.raises(InputError, match="use mode='ring'"):
        gen.generate("a red circle", **KW)


def test_wan_i2v_sharded_matches_one_device():
    path = saved(tiny_wan("i2v"))
    image = (np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8)
    kw = dict(
        height=32,
        width=48,
        num_frames=5,
        num_inference_steps=2,
        guidance_scale=4.0,
        max_sequence_length=512,
        output_type="np",
        seed=1,
        image=image,
    )
    base = jdiff.DiffGenerator.from_pretrained(path).generate("a cat", **kw)
    got = jdiff.DiffGenerator.from_pretrained(path, mesh="context=2,data=2,fsdp=2").generate("a cat", **kw)
    assert rel_err(got.latents, base.latents) <= 1e-4
    assert np.abs(got.frames - base.frames).max() <= 1e-4


def _family_dir(name: str) -> tuple[object, dict]:
    """(saved tiny directory, generate kwargs with CFG where the family has it) of a 2026 family."""
    from tests.fixtures_qwen_image import saved as saved_with_processor
    from tests.fixtures_qwen_image import tiny_qwen_image_pipeline
    from tests.fixtures_sd import tiny_sdxl_pipeline
    from tests.fixtures_zimage_flux2 import tiny_flux2_klein_pipeline, tiny_z_image_pipeline

    small = dict(height=24, width=40, num_inference_steps=2, output_type="np", seed=2)
    if name == "qwen_image":
        kw = dict(small, height=32, width=48, negative_prompt="x", true_cfg_scale=3.0)
        return saved_with_processor(tiny_qwen_image_pipeline()), kw
    pipe, kw = {
        "z_image": (tiny_z_image_pipeline, dict(small, guidance_scale=2.0, negative_prompt="x")),
        "flux2_klein": (tiny_flux2_klein_pipeline, small),
        "sdxl": (tiny_sdxl_pipeline, dict(small, guidance_scale=5.0, negative_prompt="x")),
    }[name]
    return saved(pipe()), kw


@pytest.mark.parametrize("family", ["z_image", "flux2_klein", "qwen_image", "sdxl"])
def test_new_families_sharded_match_one_device(family):
    """The small-card recipe of docs/parallelism.md (weights over `fsdp`, the CFG pair over `data`) gives the
    one-device images for every family landed in 2026-12."""
    path, kw = _family_dir(family)
    base = jdiff.DiffGenerator.from_pretrained(path).generate("a red circle", **kw)
    # Qwen-Image also over `context`: its true-CFG text padding reaches the sequence-parallel attention as
    # key lengths turned into a key mask (ring: the tiny model's 3 heads do not split for Ulysses).
    mesh = "context=2,data=2,fsdp=2" if family == "qwen_image" else "data=2,fsdp=4"
    gen = jdiff.DiffGenerator.from_pretrained(path, mesh=mesh, sequence_parallel="ring")
    got = gen.generate("a red circle", **kw)
    assert rel_err(got.latents, base.latents) <= 1e-4
    assert np.abs(got.images - base.images).max() <= 1e-4


# Real-size components of the 2026 families: (config class module, class, preset), billions of parameters.
REAL = {
    "Qwen-Image transformer": ("qwen_image", "QwenImageConfig", "qwen_image", 20.43),
    "Qwen2.5-VL-7B": ("qwen2_5_vl", "Qwen2_5_VLConfig", "qwen_image_7b", 7.75),
    "FLUX.2-dev transformer": ("flux2", "Flux2Config", "dev", 32.22),
    "Mistral-Small-3 24B": ("mistral3", "Mistral3Config", "small_24b", 22.90),
    "Z-Image-Turbo transformer": ("z_image", "ZImageConfig", "turbo", 6.16),
    "FLUX.1-dev transformer": ("flux", "FluxConfig", "dev", 11.90),
    "Wan2.1-T2V-14B transformer": ("wan", "WanTransformerConfig", "t2v_14b", 14.29),
    "SDXL UNet": ("unet", "UNet2DConditionConfig", "sdxl", 2.57),
    "HunyuanVideo-1.5 transformer": ("hunyuan_video15", "HunyuanVideo15Config", "t2v_480p", 8.33),
}


@pytest.mark.parametrize("name", list(REAL))
def test_real_size_weights_split_over_fsdp(name):
    """docs/parallelism.md's per-device weight figures: at real size, `fsdp=8` leaves about 1/8 of the
    model's parameters on each device (shardings from the abstract model; nothing is allocated). Before
    2026-12-04 the AdaLN modulation kernels were replicated: 27% of FLUX.1-dev, 42% of Qwen-Image."""
    import importlib
    import math

    from jdiff.parallel.mesh import make_mesh
    from jdiff.parallel.placement import Placement
    from jdiff.weights.loading import param_shapes

    family, cls_name, preset, billions = REAL[name]
    cfg = getattr(getattr(importlib.import_module(f"jdiff.models.{family}.config"), cls_name), preset)()
    _, state = importlib.import_module(f"jdiff.models.{family}.plan").SPEC.abstract(cfg)
    shardings = Placement(make_mesh("fsdp=8")).shardings(state)
    shapes = param_shapes(state)
    total = sum(math.prod(s) for s in shapes.values())
    one = sum(math.prod(shardings[p].shard_shape(s)) for p, s in shapes.items())
    assert abs(total / 1e9 - billions) < 0.01, total
    assert one <= 1.02 * total / 8, f"{name}: {one / total:.3f} of the parameters on one device under fsdp=8"


def test_step_cache_sharded_matches_one_device(tiny_flux_dir):
    """The cache's state sharded like the hidden states it holds (CFG pair over data, tokens over context):
    the same steps skipped and the same images (teacache keeps the same state: first_block suffices)."""
    kw = dict(KW, num_inference_steps=6, step_cache="first_block", step_cache_threshold=0.4)

    def run(gen):
        return gen.generate(["a red circle", "blue"], negative_prompt="x", true_cfg_scale=2.0, **kw)

    base = run(jdiff.DiffGenerator.from_pretrained(tiny_flux_dir))
    got = run(jdiff.DiffGenerator.from_pretrained(tiny_flux_dir, mesh="context=2,data=2,fsdp=2"))
    assert base.timings["steps_cached_per_output"] > 0
    for key in ("steps_skipped", "steps_cached_per_output"):
        assert got.timings[key] == base.timings[key], key
    assert rel_err(got.latents, base.latents) <= 1e-4
