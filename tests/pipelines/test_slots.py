"""Step-level continuous batching (`jdiff.pipelines.slots`): a request's bytes do not depend on its slot, its
neighbours or when it joined; outputs match plain `generate`; cancelling frees a slot. On the embedded tiny
FLUX.1, and per family taking part (`FAMILIES`: Wan, Qwen-Image, Z-Image, FLUX.2) on tiny random models."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
import pytest

import jdiff
from jdiff.pipelines.slots import SlotRunner

SLOTS, CHUNK, MAX_STEPS = 3, 2, 8


@pytest.fixture(scope="module")
def runner():
    """One runner for the module: its chunk program compiles once. float32 on every backend (the default is
    bfloat16 on a GPU, where the "close to generate" checks would measure bf16 noise between batch shapes)."""
    gen = jdiff.DiffGenerator.from_pretrained(dtype="float32")
    return SlotRunner(gen.pipeline, slots=SLOTS, chunk_steps=CHUNK, max_steps=MAX_STEPS)


def _request(runner, prompt="a red square", seed=0, steps=5, **kw):
    return runner.pipeline.parse(prompt, seed=seed, num_inference_steps=steps, output_type="np", **kw)


def _drain(runner, script=None):
    """Advances until idle; `script[i]` (a callable) runs before the i-th chunk. Returns {tag: (slot, image)}."""
    script, out, i = script or {}, {}, 0
    while runner.busy or runner.pending or i in script:
        if i in script:
            script[i]()
        for job, _, image in runner.advance():
            out[job.tag] = (job.slot, np.asarray(image))
        i += 1
    return out


def _alone(runner, **kw):
    runner.add(_request(runner, **kw), "alone")
    ((slot, image),) = _drain(runner).values()
    assert slot == 0
    return image


def test_requests_joining_and_leaving_give_their_bytes_alone(runner):
    specs = {
        "a": dict(seed=1, steps=7),
        "b": dict(seed=2, steps=3, prompt="a blue circle"),
        "c": dict(seed=3, steps=5),
        "d": dict(seed=4, steps=4, prompt="a green line"),
        "e": dict(seed=1, steps=7),  # a's twin, joining late in another slot
    }
    alone = {tag: _alone(runner, **kw) for tag, kw in specs.items()}

    def add(*tags):
        return lambda: [runner.add(_request(runner, **specs[t]), t) for t in tags]

    # a starts alone; b and c join a chunk later; d and e wait for free slots and join mid-way through a.
    got = _drain(runner, {0: add("a"), 1: add("b", "c"), 2: add("e", "d")})
    assert sorted(got) == sorted(specs)
    assert {got[t][0] for t in got} == {0, 1, 2}  # every slot was used
    assert got["e"][0] != 0  # a's twin in another slot than a ran in alone
    for tag, (_, image) in got.items():
        np.testing.assert_array_equal(image, alone[tag], err_msg=tag)
    assert not np.array_equal(alone["a"], alone["c"])  # seeds matter: the comparison is not vacuous


def test_slot_position_and_full_bucket_do_not_change_bytes(runner):
    alone = _alone(runner, seed=9, steps=4)
    for t in range(SLOTS):
        runner.add(_request(runner, seed=9, steps=4), t)
    got = _drain(runner)
    assert sorted(slot for slot, _ in got.values()) == list(range(SLOTS))
    for _, image in got.values():
        np.testing.assert_array_equal(image, alone)


def test_slots_match_plain_generate(runner):
    kw = dict(seed=5, num_inference_steps=5, output_type="np")
    plain = runner.pipeline.generate("a red square", **kw)
    runner.add(_request(runner, seed=5, steps=5), "x")
    ((_, latents, image),) = _advance_all(runner)
    np.testing.assert_allclose(np.asarray(latents), plain.latents, atol=2e-5)
    np.testing.assert_allclose(np.asarray(image), plain.images, atol=2e-5)


def _advance_all(runner):
    out = []
    while runner.busy or runner.pending:
        out += runner.advance()
    return out


def test_cancel_frees_the_slot_at_the_next_chunk(runner):
    alone = _alone(runner, seed=6, steps=3)
    long = [runner.add(_request(runner, seed=s, steps=MAX_STEPS), s) for s in range(SLOTS)]
    assert runner.advance() == [] and runner.busy == SLOTS
    waiting = runner.add(_request(runner, seed=6, steps=3), "late")
    runner.cancel(long[1])
    assert runner.advance() == [] and waiting.slot == long[1].slot  # took the cancelled one's slot
    for job in long:
        runner.cancel(job)
    got = {job.tag: np.asarray(image) for job, _, image in _advance_all(runner)}
    assert list(got) == ["late"] and runner.busy == 0
    np.testing.assert_array_equal(got["late"], alone)


def test_jobs_stages_follow_the_device_timeline(runner):
    """`Job.timings` (the server's Server-Timing): each stage from the device's own timeline, in order."""
    a = runner.add(_request(runner, seed=1, steps=5), "a")  # three chunks of 2 steps
    b = runner.add(_request(runner, seed=2, steps=2), "b")  # the first of them
    _drain(runner)
    assert a.first is b.first is b.last and a.last is not a.first
    spans = [a.encoding, b.encoding, a.first, b.decoding, a.last, a.decoding]
    assert all(s.wait() for s in spans)
    assert all(x.end <= y.start for x, y in itertools.pairwise(spans))  # one after the other
    ta, tb = a.timings(), b.timings()
    assert set(ta) == {"text_encoding", "slot_wait", "denoising", "decoding"}
    assert ta["denoising"] == a.last.end - a.first.start > tb["denoising"] == b.last.end - b.last.start > 0
    assert tb["slot_wait"] == b.first.start - b.encoding.end
    assert ta["decoding"] == a.decoding.end - a.decoding.start


def test_what_slots_refuse(runner):
    assert runner.refusal(_request(runner, steps=MAX_STEPS + 1)).startswith("9 steps exceed")
    r = _request(runner, negative_prompt="blur", true_cfg_scale=2.0)
    assert "true CFG" in runner.refusal(r)
    assert "step caching runs with" in runner.refusal(_request(runner, step_cache="first_block"))
    assert runner.refusal(_request(runner)) is None
    runner.pipeline.offload = "layers"
    try:
        assert runner.refusal(_request(runner)) == "offload='layers' runs with request-level batching"
    finally:
        runner.pipeline.offload = None


def test_families_refuse_input_images_with_a_reason():
    """Edits and reference images keep request-level batching, saying so (no model needed to ask)."""
    from types import SimpleNamespace

    from jdiff.pipelines.flux2 import Flux2Pipeline
    from jdiff.pipelines.qwen_image import QwenImageEditPipeline, QwenImagePipeline

    assert "image editing" in QwenImageEditPipeline.slot_refusal(QwenImageEditPipeline, None)
    assert QwenImagePipeline.slot_refusal(QwenImagePipeline, None) is None
    assert "reference images" in Flux2Pipeline.slot_refusal(None, SimpleNamespace(images=("an image",)))
    assert Flux2Pipeline.slot_refusal(None, SimpleNamespace(images=None)) is None


def _zf():
    import tests.fixtures_zimage_flux2 as fixtures

    return fixtures


def _wan(kind):
    from tests.fixtures_wan import saved, tiny_wan

    return saved(tiny_wan(kind))


def _qwen_image():
    from tests.fixtures_qwen_image import saved, tiny_qwen_image_pipeline

    return saved(tiny_qwen_image_pipeline("t2i"))


def _saved(build):
    def make():
        path = Path(tempfile.mkdtemp(prefix="tiny-slots-"))
        build().save_pretrained(path)
        return path

    return make


def _image(h, w, seed):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


VIDEO = dict(
    prompt="a cat", height=32, width=48, num_frames=5, max_sequence_length=16, negative_prompt="blue"
)
NEGATIVE = "a blue square on the picture of a red circle, blurry, low quality, bad"  # longer: masked


# Per family: its tiny model directory, what every request asks, and the requests. Each runs alone through the
# runner, then all together, joining at the chunk given by "at" (in the order given: a slot each while free),
# and each must give its bytes alone, and (closely) what `generate` gives for it. "buckets": how many shape
# buckets they fill; each request finishes in a chunk with both slots of its bucket busy. "compare": the
# requests compared with `generate` (default "a"; one per CFG mode where the modes differ in more than the
# guide).
FAMILIES = {
    "wan-t2v": dict(  # UniPC (its own step count read from the padded schedule) and per-slot CFG
        build=lambda: _wan("t2v"),
        common=VIDEO,
        specs={"a": dict(seed=1, steps=5, guidance_scale=4.0, at=0),
               "b": dict(seed=2, steps=3, guidance_scale=2.5, at=1)},
        buckets=1,
    ),
    "wan-i2v": dict(  # Wan2.1 I2V: each slot its image's condition (mask + latents) and CLIP tokens
        build=lambda: _wan("i2v"),
        common=VIDEO,
        specs={"a": dict(seed=1, steps=5, guidance_scale=4.0, image=_image(32, 48, 1), at=0),
               "b": dict(seed=2, steps=3, guidance_scale=2.5, image=_image(32, 48, 2), at=1)},
        buckets=1,
    ),
    "wan-ti2v": dict(  # Wan2.2 TI2V-5B with an image: its latent in frame 0, per-token timesteps zero there
        build=lambda: _wan("ti2v-i2v"),
        common={**VIDEO, "width": 64},
        specs={"a": dict(seed=1, steps=5, guidance_scale=4.0, image=_image(32, 64, 1), at=0),
               "b": dict(seed=2, steps=3, guidance_scale=2.5, image=_image(32, 64, 2), at=1)},
        buckets=1,
    ),
    # Two experts, each slot its own by its timestep (boundary 875; a: 999 937 | 857 750 | 600 376, b joining
    # at the second chunk: 999 900 | 750 500): the slots straddle the boundary for a chunk, then do not.
    "wan-a14b": dict(
        build=lambda: _wan("a14b"),
        common=VIDEO,
        specs={"a": dict(seed=1, steps=6, guidance_scale=4.0, guidance_scale_2=2.0, at=0),
               "b": dict(seed=2, steps=4, guidance_scale=3.0, guidance_scale_2=1.5, at=1)},
        buckets=1,
    ),
    "qwen-image": dict(  # true CFG on (two scales sharing a bucket) and off (its own bucket), masked texts
        build=_qwen_image,
        common=dict(prompt="a red circle", height=32, width=48),
        specs={"a": dict(seed=1, steps=5, negative_prompt="a blue square on the image", true_cfg_scale=4, at=0),
               "b": dict(seed=2, steps=3, at=0),
               "c": dict(seed=3, steps=4, negative_prompt="a blue square on the image", true_cfg_scale=2, at=1),
               "d": dict(seed=4, steps=2, prompt="a blue circle", at=1)},
        buckets=2,
        compare="ab",  # CFG on, CFG off
    ),
    "z-image": dict(  # CFG (guidance_scale > 0) on with a masked caption and off, per-row image rotary tables
        build=_saved(lambda: _zf().tiny_z_image_pipeline()),
        common=dict(prompt="a red circle", height=32, width=48),
        specs={"a": dict(seed=1, steps=5, negative_prompt=NEGATIVE, guidance_scale=2.0, at=0),
               "b": dict(seed=2, steps=3, at=0),
               "c": dict(seed=3, steps=4, negative_prompt=NEGATIVE, guidance_scale=3.5, at=1),
               "d": dict(seed=4, steps=2, prompt="a blue circle", at=1)},
        buckets=2,
        compare="ab",
    ),
    "flux2": dict(  # FLUX.2-dev: each slot its own guidance embedding
        build=_saved(lambda: _zf().tiny_flux2_pipeline()),
        common=dict(prompt="a red circle", height=32, width=48, max_sequence_length=16),
        specs={"a": dict(seed=1, steps=5, guidance_scale=4.0, at=0),
               "b": dict(seed=2, steps=3, guidance_scale=2.0, at=1)},
        buckets=1,
    ),
    "flux2-klein": dict(  # klein base: CFG (guidance_scale > 1, empty negative) per slot, and off
        build=_saved(lambda: _zf().tiny_flux2_klein_pipeline(is_distilled=False)),
        common=dict(prompt="a red circle", height=32, width=48, max_sequence_length=16),
        specs={"a": dict(seed=1, steps=5, guidance_scale=4.0, at=0),
               "b": dict(seed=2, steps=3, guidance_scale=1.0, at=0),
               "c": dict(seed=3, steps=4, guidance_scale=2.5, at=1),
               "d": dict(seed=4, steps=2, prompt="a blue square", guidance_scale=1.0, at=1)},
        buckets=2,
        compare="a",  # (CFG off: as FLUX.2-dev without guidance)
    ),
}  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_family_slots_byte_identical_and_close_to_generate(family):
    case = FAMILIES[family]
    gen = jdiff.DiffGenerator.from_pretrained(case["build"](), dtype="float32")
    runner = SlotRunner(gen.pipeline, slots=2, chunk_steps=2, max_steps=6)
    specs = {
        t: {**case["common"], **{k: v for k, v in s.items() if k != "at"}} for t, s in case["specs"].items()
    }
    alone = {t: _alone(runner, **s) for t, s in specs.items()}
    script = {}
    for tag, spec in case["specs"].items():
        script.setdefault(spec["at"], []).append(tag)

    jobs = {}

    def add(tags):
        return lambda: jobs.update({t: runner.add(_request(runner, **specs[t]), t) for t in tags})

    runner.buckets.clear()
    got = _drain(runner, {i: add(tags) for i, tags in script.items()})
    assert sorted(got) == sorted(specs) and len(runner.buckets) == case["buckets"]
    assert all(job.busy == 2 for job in jobs.values())  # they did share their buckets' slots
    for tag in specs:
        np.testing.assert_array_equal(got[tag][1], alone[tag], err_msg=tag)
    for tag in case.get("compare", "a"):  # (a compile each: the plain loop's steps are static)
        spec = dict(specs[tag])
        prompt, steps = spec.pop("prompt"), spec.pop("steps")
        plain = gen.generate(prompt, num_inference_steps=steps, output_type="np", **spec)
        out = plain.frames if gen.pipeline.is_video else plain.images
        # Close, not bytewise equal: the plain loop runs at its own batch size (`jdiff.sampling.slots`), and
        # ~1e-6 apart, a pixel may round to the next uint8 (measured: 1 in ~5000 here).
        np.testing.assert_allclose(alone[tag], out, atol=2e-5, err_msg=tag)
    values = list(alone.values())
    assert all(not np.array_equal(values[0], v) for v in values[1:])  # requests differ: not vacuous


def test_guided_flux_gives_each_slot_its_guidance(tmp_path):
    """FLUX.1-dev-like (guidance embedding): two guidance scales share a chunk, each matches plain `generate`."""
    from tests.fixtures import tiny_flux_pipeline

    tiny_flux_pipeline(guidance_embeds=True).save_pretrained(tmp_path)
    gen = jdiff.DiffGenerator.from_pretrained(tmp_path, dtype="float32")
    dev = SlotRunner(gen.pipeline, slots=2, chunk_steps=2, max_steps=6)
    kw = dict(height=32, width=48, max_sequence_length=24, output_type="np")
    specs = {"a": (3.5, 1), "b": (1.5, 2)}
    for tag, (g, seed) in specs.items():
        dev.add(gen.pipeline.parse("a cat", seed=seed, num_inference_steps=5, guidance_scale=g, **kw), tag)
    got = {job.tag: np.asarray(image) for job, _, image in _advance_all(dev)}
    for tag, (g, seed) in specs.items():
        plain = gen.generate("a cat", seed=seed, num_inference_steps=5, guidance_scale=g, **kw)
        np.testing.assert_allclose(got[tag], plain.images, atol=2e-5, err_msg=tag)


def test_serial_slots_byte_identical_and_close_to_batched(runner):
    """`serial`: the model at batch 1 per slot, idle slots skipped; bytes still independent of the neighbours."""
    serial = SlotRunner(runner.pipeline, slots=SLOTS, chunk_steps=CHUNK, max_steps=MAX_STEPS, serial=True)
    alone = _alone(serial, seed=3, steps=5)
    got = _drain(serial, {0: lambda: serial.add(_request(serial, seed=8, steps=7), "x"),
                          1: lambda: serial.add(_request(serial, seed=3, steps=5), "y")})  # fmt: skip
    assert got["y"][0] == 1
    np.testing.assert_array_equal(got["y"][1], alone)
    np.testing.assert_allclose(alone, _alone(runner, seed=3, steps=5), atol=2e-5)
