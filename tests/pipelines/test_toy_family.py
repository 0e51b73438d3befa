"""A new model family through the documented path (docs/architecture.md): a Pipeline subclass with its
hooks, a FAMILY declaration, one line in the registry, and `DiffGenerator` runs it.

The toy "model" draws a flat colour from the prompt's length: no weights, so the test shows the skeleton's
work (request parsing, refusals, the sampler table's loop, decoding, saving) and nothing else.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff import registry
from jdiff.errors import InputError
from jdiff.pipelines.family import Family
from jdiff.pipelines.pipeline import Pipeline, Stage
from jdiff.sampling.loop import sample
from jdiff.sampling.noise import noise_from_keys, noise_keys
from jdiff.sampling.table import sampler_for


class ToyPipeline(Pipeline):
    family = "Toy"
    accepts = frozenset({"guidance_scale"})

    def __init__(self, model, *, dtype, placement=None):
        self.placement = placement
        self.preset = {"height": 8, "width": 12, "num_inference_steps": 3, "guidance_scale": 1.0}
        self.size_multiple = 4
        self.sampler, self.scheduler = sampler_for(
            "FlowMatchEulerDiscreteScheduler", model.scheduler_config()
        )
        self._denoise = jax.jit(self._denoise_fn, static_argnames=("shape",))
        self._decode = jax.jit(lambda z: jnp.clip(z * 0.5 + 0.5, 0, 1))

    def _denoise_fn(self, keys, target, guidance, schedule, progress, *, shape):
        # The flow towards `target`: v = noise - data, so every Euler step moves x towards the target.
        noise = noise_from_keys(keys, shape)
        velocity = lambda x, t, _: (x - target[:, None, None, None] * guidance) / jnp.maximum(t / 1000, 1e-3)
        return sample(self.sampler, self.scheduler, velocity, noise, schedule, progress=progress)

    def encode(self, request):
        return jnp.asarray(
            [len(p) / 10 - 1 for p in request.prompts for _ in range(request.num_outputs_per_prompt)]
        )

    def denoise_stage(self, request, cond, progress):
        shape = (request.height, request.width, 3)
        schedule = self.sampler.schedule(self.scheduler, request.steps)
        g = np.float32(request.guidance_scale)
        args = (noise_keys(list(request.seeds)), cond, g, schedule, progress)
        return Stage(self._denoise, args, dict(shape=shape), key=(request.batch, shape, request.steps))

    def decode_stage(self, request):
        return Stage(self._decode)


FAMILY = Family(name="toy", pipeline_classes=("ToyPipeline",), pipeline=ToyPipeline)


@pytest.fixture
def toy_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "FAMILY_MODULES", (*registry.FAMILY_MODULES, __name__))  # the one line
    registry.families.cache_clear()
    root = tmp_path / "toy"
    (root / "scheduler").mkdir(parents=True)
    (root / "model_index.json").write_text(
        json.dumps(
            {"_class_name": "ToyPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}
        )
    )
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"shift": 1.0}))
    yield root
    registry.families.cache_clear()


def test_a_toy_family_generates(toy_dir, tmp_path):
    gen = jdiff.DiffGenerator.from_pretrained(toy_dir)
    assert isinstance(gen.pipeline, ToyPipeline)
    r = gen.generate(["ab", "abcdefghijklmnopqrst"], output_type="np", seed=3)
    assert r.images.shape == (2, 8, 12, 3)
    # The flow ends at its target: len/10 - 1, decoded to [0, 1].
    np.testing.assert_allclose(r.images[0], 0.5 * (0.2 - 1) + 0.5, atol=1e-3)
    np.testing.assert_allclose(r.images[1], 1.0, atol=1e-3)
    assert set(r.timings) == {"text_encoding", "denoising", "decoding", "total"}
    saved = gen.generate("abcde", output_path=tmp_path / "toy.png", num_inference_steps=2)
    assert saved.paths == [str(tmp_path / "toy.png")]
    with pytest.raises(InputError, match=r"Toy takes no negative_prompt \(a negative prompt\)"):
        gen.generate("a", negative_prompt="b")
    with pytest.raises(InputError, match="height 9 is not divisible by 4, as Toy needs"):
        gen.generate("a", height=9)


def test_an_unregistered_family_is_refused(tmp_path):
    root = tmp_path / "toy"
    root.mkdir()
    (root / "model_index.json").write_text(json.dumps({"_class_name": "ToyPipeline"}))
    with pytest.raises(
        InputError, match="ToyPipeline, which jdiff does not support; supported: .*FluxPipeline"
    ):
        jdiff.DiffGenerator.from_pretrained(root)
