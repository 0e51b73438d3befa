"""The embedded default model: it draws what it is asked, diffusers loads it too, and training reproduces."""

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import jdiff
from jdiff.api import embedded_model_path
from jdiff.cli import main
from jdiff.models.autoencoder_kl.vae import AutoencoderKL
from jdiff.tiny import shapes
from jdiff.tiny import train as T
from jdiff.tiny.evaluate import eval_captions, evaluate
from tests.utils import rel_err


@pytest.fixture(scope="module")
def gen():
    return jdiff.DiffGenerator.from_pretrained()  # no path: the embedded model, float32 on CPU


def test_quality(gen):
    scores = evaluate(
        lambda prompts, seed: gen.generate(prompts, seed=seed, output_type="np").images,
        eval_captions(48),
        [0, 1],
    )
    assert scores["colour"] >= 0.9, scores
    assert scores["shape"] >= 0.8, scores
    assert scores["background"] >= 0.9, scores


def test_cli_default_model(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["generate", "--prompt", "a yellow circle on a blue background", "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    from PIL import Image

    img = np.asarray(Image.open(out), np.float32) / 255
    assert img.shape == (64, 64, 3)
    colour, _, background = shapes.judge(img)
    assert (shapes.COLOURS[colour], shapes.BACKGROUNDS[background]) == ("yellow", "blue")


def test_diffusers_loads_the_same_folder(gen):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(embedded_model_path(), torch_dtype=torch.float32)
    latents = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(0))
    prompts = ["a red square", "a white triangle on a green background"]
    kw = dict(height=64, width=64, num_inference_steps=20, max_sequence_length=32, latents=latents)
    ref = pipe(prompts, output_type="np", **kw).images
    ref_latents = pipe(prompts, output_type="latent", **kw).images.numpy()
    got = gen.generate(prompts, latents=latents.numpy(), output_type="np")
    assert rel_err(got.latents, ref_latents) <= 1e-3
    assert np.abs(got.images - ref).max() <= 5e-3


def test_committed_tokenizers_are_reproducible(tmp_path):
    """The shipped tokenizers are what the deterministic construction gives (same vocabulary, same ids)."""
    from transformers import AutoTokenizer

    built = T.build_tokenizers(tmp_path)
    texts = [c.text for c in shapes.all_captions()] + ["an orange circle", "Zebra 42!"]
    for name, fresh in zip(("tokenizer", "tokenizer_2"), built, strict=True):
        shipped = AutoTokenizer.from_pretrained(embedded_model_path() / name)
        assert shipped.get_vocab() == fresh.get_vocab()
        assert shipped(texts).input_ids == fresh(texts).input_ids


def test_training_steps_reduce_the_loss():
    caps = T.as_arrays(shapes.caption_arrays(shapes.all_captions()))
    # Only the VAE trains here, at half the embedded one's depth and widths: the step's compile is the cost.
    cfg = dataclasses.replace(
        T.tiny_configs(600, 200).vae,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        norm_num_groups=4,
    )
    vae = AutoencoderKL(cfg, rngs=nnx.Rngs(params=0))
    graphdef, params = nnx.split(vae)
    tx = T.optimizer(2e-3, steps=10, warmup=1)
    objective = T.vae_objective(batch=2, kl_weight=1e-4)

    def same_batch(module, key, aux):  # the same images and noise every step: their loss must fall
        return objective(module, jax.random.key(0), aux)

    run = T.trainer(same_batch, graphdef, tx)
    _, _, losses = run(params, tx.init(params), jax.random.key(1), 0, caps, num=8)
    assert losses[-1] < 0.8 * losses[0], losses


def test_embedded_model_is_small():
    size = sum(f.stat().st_size for f in Path(embedded_model_path()).rglob("*") if f.is_file())
    assert size < 10 * 2**20


def test_flow_training_step_where_inference_would_pick_the_pallas_kernel(monkeypatch):
    """On an NVIDIA GPU inference picks the fused norm+rope Pallas kernel, which has no gradient rule; the
    training step must trace the XLA path (it failed there before). Simulated on the CPU (interpret mode):
    the flow loss of a one-block-each transformer on random latents and text, the frozen encoders left out."""
    from jdiff.kernels import norm_rope
    from jdiff.models.flux.transformer import FluxTransformer2DModel

    monkeypatch.setattr(norm_rope, "_default_implementation", lambda x: "pallas")
    cfg = T.tiny_configs(8, 8).transformer
    cfg = dataclasses.replace(cfg, num_layers=1, num_single_layers=1)
    graphdef, params = nnx.split(FluxTransformer2DModel(cfg, rngs=nnx.Rngs(params=0)))
    k = jax.random.split(jax.random.key(1), 3)
    x0 = jax.random.normal(k[0], (2, (T.SIZE // 8) ** 2, cfg.in_channels))
    embeds = jax.random.normal(k[1], (2, T.MAX_TEXT, cfg.joint_attention_dim))
    pooled = jax.random.normal(k[2], (2, cfg.pooled_projection_dim))

    def loss_fn(model, key, aux):
        return T.flow_loss(model, *aux, key)

    tx = T.optimizer(1e-3, steps=2, warmup=1)
    run = T.trainer(loss_fn, graphdef, tx)
    _, _, losses = run(
        params, tx.init(params), jax.random.key(0), 0, (x0, embeds, pooled, T.rope(cfg)), num=1
    )
    assert np.isfinite(np.asarray(losses)).all()
    assert norm_rope._FORCED.get() is None  # the override is only for the training step's trace
