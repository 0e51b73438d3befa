"""What a request asks and the model ignores (or is likely to draw badly) is said: in `result.warnings`, logged
once per process, printed by the CLI; and the seed of every output is returned."""

import json
import logging
import shutil

import numpy as np
import pytest

import jdiff
from jdiff.cli import main
from jdiff.pipelines import base
from jdiff.presets import load_preset

FAST = dict(num_inference_steps=1, output_type="latent")
PRESET = {"height": 1024, "width": 1024}


@pytest.fixture(scope="module")
def gen():
    return jdiff.DiffGenerator.from_pretrained()  # the embedded model: no guidance embedding, 64x64 only


@pytest.fixture(autouse=True)
def fresh_log(monkeypatch):
    """Each test starts as a new process would: no warning logged yet."""
    monkeypatch.setattr(base, "_logged", set())


def _has(warnings: list[str], fragment: str) -> bool:
    return any(fragment in w for w in warnings)


def test_guidance_scale_without_guidance_embedding(gen):
    assert _has(
        gen.generate("a red circle", guidance_scale=5.0, **FAST).warnings, "guidance_scale 5 is ignored"
    )
    # The preset's own value (what the server sends when a request names none) changes nothing: no warning.
    assert gen.generate("a red circle", guidance_scale=0.0, **FAST).warnings == []


def test_negative_prompt_without_true_cfg(gen):
    w = gen.generate("a red circle", negative_prompt="a square", **FAST).warnings
    assert _has(w, "negative_prompt is ignored") and len(w) == 1, w
    assert gen.generate("a red circle", negative_prompt="a square", true_cfg_scale=2.0, **FAST).warnings == []
    assert _has(
        gen.generate("a red circle", true_cfg_scale=2.0, **FAST).warnings, "true_cfg_scale is ignored"
    )


def test_long_prompt_says_how_many_tokens_are_dropped(gen):
    prompt = "a red circle on a blue background " * 6
    n = gen.pipeline.tokenizer_2.lengths([prompt])[0]
    assert n > 32  # the embedded model reads 32 T5 tokens (its max_sequence_length)
    w = gen.generate(prompt, **FAST).warnings
    assert _has(
        w, f"T5 reads at most 32 tokens and the prompt 'a red circle on a blue background a r...' has {n}"
    )
    assert _has(w, f"the last {n - 32} are ignored")
    assert not _has(w, "CLIP")  # within CLIP's 77
    assert not _has(gen.generate(prompt, max_sequence_length=64, **FAST).warnings, "T5")


def test_embedded_model_warns_off_its_size(gen):
    assert gen.pipeline.preset["trained_size_only"] is True
    w = gen.generate("a red circle", height=64, width=96, **FAST).warnings
    assert w == [
        "this model was trained at 64x64 only; at 96x64 its shapes come out resized, cut off or repeated: use 64x64"
    ]
    assert gen.generate("a red circle", **FAST).warnings == []  # 64x64, its default


@pytest.mark.parametrize(
    "height, width, far",
    [(1024, 1024, False), (512, 512, False), (2048, 2048, False), (768, 1360, False), (256, 256, True),
     (2304, 512, True), (4096, 4096, True), (1024, 448, True)],
)  # fmt: skip
def test_sizes_far_from_training(height, width, far):
    warnings = []
    base.check_trained_size(warnings, height, width, PRESET)
    assert bool(warnings) == far, warnings
    if far:
        assert warnings[0].startswith(f"{width}x{height} is far from the 1024x1024 this model was trained at")


def test_each_warning_is_logged_once_per_process(gen, caplog):
    with caplog.at_level(logging.WARNING, logger="jdiff"):
        first = gen.generate("a red circle", guidance_scale=4.0, **FAST)
        second = gen.generate("a red circle", guidance_scale=4.0, **FAST)
    assert first.warnings == second.warnings != []  # every result carries it
    logged = [r.getMessage() for r in caplog.records if r.name == "jdiff"]
    assert logged == first.warnings  # logged the first time only


def test_cli_prints_warnings_as_lines(tmp_path, capsys):
    out = tmp_path / "a.png"
    argv = [
        "generate",
        "--prompt",
        "a red circle",
        "--guidance-scale",
        "3",
        "--steps",
        "1",
        "--output",
        str(out),
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("jdiff: warning: guidance_scale 3 is ignored")] == err[
        :1
    ], err
    assert out.is_file()


def test_seeds_of_each_output(gen):
    r = gen.generate(["a red circle", "a blue square"], seed=7, num_outputs_per_prompt=2, **FAST)
    assert r.seeds == [7, 8, 9, 10]
    listed = gen.generate(["a red circle", "a red circle"], seed=[42, 3], **FAST)
    assert listed.seeds == [42, 3]
    # Output i drawn alone with seeds[i] is output i of the batch (up to float rounding).
    alone = gen.generate("a red circle", seed=3, **FAST)
    np.testing.assert_allclose(alone.latents[0], listed.latents[1], atol=1e-4)


def test_small_models_default_to_their_own_size(tiny_flux_dir, tmp_path):
    """A custom FLUX whose VAE says sample_size 32 defaults to 32x32, not FLUX.1's 1024x1024."""
    gen = jdiff.DiffGenerator.from_pretrained(tiny_flux_dir)
    assert (gen.pipeline.preset["height"], gen.pipeline.preset["width"]) == (32, 32)
    r = gen.generate("a red circle", num_inference_steps=1, output_type="np")
    assert r.images.shape == (1, 32, 32, 3) and r.warnings == []
    # The real VAEs' sample size (1024) keeps the family's; a model directory's jdiff_preset.json wins.
    assert load_preset("flux-dev", sample_size=1024, multiple=16)["height"] == 1024
    assert load_preset("flux-dev", sample_size=[40, 72], multiple=16)[("height")] == 32
    model = tmp_path / "model"
    shutil.copytree(tiny_flux_dir, model)
    (model / "jdiff_preset.json").write_text(json.dumps({"height": 48, "width": 64}))
    preset = load_preset("flux-dev", model, sample_size=32, multiple=4)
    assert (preset["height"], preset["width"]) == (48, 64)


def test_wan_negative_prompt_and_long_prompt():
    from tests.fixtures_wan import saved, tiny_wan

    gen = jdiff.DiffGenerator.from_pretrained(saved(tiny_wan("t2v")))
    kw = dict(height=32, width=32, num_frames=5, max_sequence_length=8, **FAST)
    w = gen.generate("a cat", negative_prompt="a dog", guidance_scale=1.0, **kw).warnings
    assert _has(w, "negative_prompt is ignored: Wan uses it only with guidance_scale > 1"), w
    r = gen.generate("a cat running in the snow " * 3, guidance_scale=1.0, seed=5, **kw)
    assert _has(r.warnings, "UMT5 reads at most 8 tokens") and r.seeds == [5]
