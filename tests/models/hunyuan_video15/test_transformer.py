"""HunyuanVideo-1.5 transformer parity with diffusers through the real loader, and real-size key coverage."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import HunyuanVideo15Transformer3DModel as TorchHY15

from jdiff.errors import InputError
from jdiff.models.hunyuan_video15.config import HunyuanVideo15Config
from jdiff.models.hunyuan_video15.plan import SPEC
from jdiff.models.hunyuan_video15.transformer import rope_tables
from jdiff.weights.config import from_dict
from tests import parity

T2V_480P = parity.kwargs(HunyuanVideo15Config.t2v_480p())
PATCH_2 = {"patch_size": 2, "num_attention_heads": 1, "attention_head_dim": 20, "rope_axes_dim": (4, 8, 8)}


def _inputs(cfg, b, f, h, w, rng):
    """Latents, timesteps and the three condition streams; prompts padded to different lengths."""
    t1, t2, i = 7, 5, 4
    x = rng.standard_normal((b, cfg.in_channels, f, h, w)).astype(np.float32)
    text = rng.standard_normal((b, t1, cfg.text_embed_dim)).astype(np.float32)
    glyph = rng.standard_normal((b, t2, cfg.text_embed_2_dim)).astype(np.float32)
    image = rng.standard_normal((b, i, cfg.image_embed_dim)).astype(np.float32)
    mask = (np.arange(t1)[None] < np.array([[7], [4]])[:b]).astype(np.int64)
    mask_2 = (np.arange(t2)[None] < np.array([[2], [5]])[:b]).astype(np.int64)
    timestep = np.array([700.0, 250.0], np.float32)[:b]
    return x, timestep, text, mask, glyph, mask_2, image


@pytest.mark.parametrize(
    "overrides,fhw,task",
    [
        ({}, (3, 4, 6), "t2v"),  # odd heads (3), non-square, 3 latent frames
        ({}, (2, 5, 3), "i2v"),
        (PATCH_2, (2, 4, 6), "i2v"),  # one head of 20
        ({"patch_size_t": 2, "use_meanflow": True, "num_refiner_layers": 2}, (4, 3, 5), "t2v_zeros"),
    ],
)
def test_parity(tmp_path, overrides, fhw, task):
    cfg = HunyuanVideo15Config.tiny(**overrides)
    ref = parity.randomized(TorchHY15(**parity.kwargs(cfg)), norms_near_one=True)
    _, model = parity.load(ref, SPEC, tmp_path)

    b, (f, h, w) = 2, fhw
    x, timestep, text, mask, glyph, mask_2, image = _inputs(cfg, b, f, h, w, np.random.default_rng(0))
    if task != "i2v":
        image = np.zeros_like(image)  # diffusers' T2V pipeline feeds zero image features
    timestep_r = np.array([300.0, 100.0], np.float32) if cfg.use_meanflow else None
    with torch.no_grad():
        want = ref(
            hidden_states=torch.from_numpy(x),
            timestep=torch.from_numpy(timestep),
            encoder_hidden_states=torch.from_numpy(text),
            encoder_attention_mask=torch.from_numpy(mask),
            encoder_hidden_states_2=torch.from_numpy(glyph),
            encoder_attention_mask_2=torch.from_numpy(mask_2),
            image_embeds=torch.from_numpy(image),
            timestep_r=None if timestep_r is None else torch.from_numpy(timestep_r),
        ).sample.numpy()
    want = want.transpose(0, 2, 3, 4, 1)  # channels-last
    rope = tuple(jnp.asarray(a) for a in rope_tables(cfg, f, h, w))
    got = jax.jit(lambda m, *a, **k: m(*a, **k))(
        model,
        jnp.asarray(x.transpose(0, 2, 3, 4, 1)),
        jnp.asarray(timestep),
        jnp.asarray(text),
        jnp.asarray(mask),
        jnp.asarray(glyph),
        jnp.asarray(mask_2),
        rope,
        image_embeds=None if task == "t2v" else jnp.asarray(image),
        timestep_r=None if timestep_r is None else jnp.asarray(timestep_r),
    )
    assert got.shape == (b, f, h, w, cfg.output_channels)
    parity.assert_close(got, want)


def test_padding_does_not_leak(tmp_path):
    """A prompt's output is the same whatever its padding holds, and changes with its real tokens."""
    cfg = HunyuanVideo15Config.tiny()
    ref = parity.randomized(TorchHY15(**parity.kwargs(cfg)), norms_near_one=True)
    _, model = parity.load(ref, SPEC, tmp_path)
    x, timestep, text, mask, glyph, mask_2, _ = _inputs(cfg, 2, 2, 3, 4, np.random.default_rng(1))
    rope = rope_tables(cfg, 2, 3, 4)

    call = jax.jit(lambda m, *a: m(*a, rope))

    def run(text, glyph):
        args = (x.transpose(0, 2, 3, 4, 1), timestep, text, mask, glyph, mask_2)
        return np.asarray(call(model, *map(jnp.asarray, args)))

    base = run(text, glyph)
    noisy_text, noisy_glyph = text.copy(), glyph.copy()
    noisy_text[1, 4:] = 100.0  # sample 1's padded text and sample 0's padded glyph tokens
    noisy_glyph[0, 2:] = -50.0
    np.testing.assert_allclose(run(noisy_text, noisy_glyph), base, rtol=1e-5, atol=1e-5)
    noisy_text[1, 0] += 1.0
    assert np.abs(run(noisy_text, glyph)[1] - base[1]).max() > 1e-3


def test_real_size_shapes_and_keys(tmp_path):
    cfg = from_dict(HunyuanVideo15Config, {"_class_name": "HunyuanVideo15Transformer3DModel", **T2V_480P})
    assert cfg == HunyuanVideo15Config.t2v_480p()
    shapes = parity.check_coverage(
        SPEC,
        cfg,
        parity.real_layout(lambda: TorchHY15(**T2V_480P).to(torch.bfloat16)),
        tmp_path,
        component="transformer",
        missing="transformer_blocks.53.attn.norm_added_k.weight",
        unexpected=("context_embedder.token_refiner.refiner_blocks.0.attn.norm_q.weight", (128,)),
    )
    assert shapes["transformer_blocks.attn.to_q.kernel"] == (54, 2048, 2048)
    assert shapes["context_embedder.token_refiner.refiner_blocks.ff.net.0.proj.kernel"] == (2, 2048, 8192)
    assert shapes["x_embedder.proj.kernel"] == (1, 1, 1, 65, 2048)
    assert shapes["proj_out.kernel"] == (2048, 32)
    assert 8.2e9 < parity.n_params(shapes) < 8.4e9  # HunyuanVideo-1.5 has 8.3B parameters


def test_presets_and_bad_config():
    assert HunyuanVideo15Config.i2v_720p().target_size == 960
    assert HunyuanVideo15Config.t2v_720p().task_type == "t2v"
    with pytest.raises(InputError, match="rope_axes_dim"):
        from_dict(HunyuanVideo15Config, {**T2V_480P, "rope_axes_dim": [16, 56, 40]})
    with pytest.raises(InputError, match="qk_norm"):
        HunyuanVideo15Config.tiny(qk_norm="layer_norm")
    with pytest.raises(InputError, match="task_type"):
        HunyuanVideo15Config.tiny(task_type="v2v")


def test_bad_inputs():
    from flax import nnx

    from jdiff.models.hunyuan_video15.transformer import HunyuanVideo15Transformer3DModel

    cfg = HunyuanVideo15Config.tiny(patch_size=2)
    with pytest.raises(InputError, match="multiples of the patch size"):
        rope_tables(cfg, 2, 3, 4)
    model = nnx.eval_shape(
        lambda: HunyuanVideo15Transformer3DModel(cfg, rngs=nnx.Rngs(0))
    )  # checks come first
    x, timestep, text, mask, glyph, mask_2, _ = _inputs(cfg, 1, 2, 4, 4, np.random.default_rng(2))
    args = tuple(map(jnp.asarray, (x.transpose(0, 2, 3, 4, 1), timestep, text, mask, glyph, mask_2)))
    with pytest.raises(InputError, match="rope tables cover"):
        model(*args, rope_tables(cfg, 2, 4, 8))
    with pytest.raises(InputError, match="MeanFlow"):
        model(*args, rope_tables(cfg, 2, 4, 4), timestep_r=timestep)


def test_sequence_parallel_matches_one_device(tmp_path, monkeypatch):
    """Under a `context` mesh the joint attention runs sequence-parallel (padded text keys masked through the
    schemes' key mask) and gives the one-device output."""
    from jdiff.parallel import attention as sp
    from jdiff.parallel import rules
    from jdiff.parallel.mesh import make_mesh

    cfg = HunyuanVideo15Config.tiny(num_attention_heads=2, attention_head_dim=16)
    ref = parity.randomized(TorchHY15(**parity.kwargs(cfg)), norms_near_one=True)
    _, model = parity.load(ref, SPEC, tmp_path)
    x, timestep, text, mask, glyph, mask_2, image = _inputs(cfg, 2, 3, 3, 5, np.random.default_rng(3))
    args = tuple(map(jnp.asarray, (x.transpose(0, 2, 3, 4, 1), timestep, text, mask, glyph, mask_2)))
    rope = rope_tables(cfg, 3, 3, 5)
    call = jax.jit(lambda m, *a: m(*a, rope, image_embeds=jnp.asarray(image)))
    base = call(model, *args)

    calls = []
    real = sp.context_attention
    monkeypatch.setattr(sp, "context_attention", lambda *a, **k: calls.append(k.get("mask")) or real(*a, **k))
    with rules.activate(make_mesh("context=2,data=2,fsdp=2"), sequence_parallel="ulysses"):
        got = jax.jit(lambda m, *a: m(*a, rope, image_embeds=jnp.asarray(image)))(model, *args)
    assert len(calls) == 1 and calls[0] is not None  # one traced block (scan), with its key mask
    parity.assert_close(got, base)


def test_bfloat16_runs_close_to_float32(tmp_path):
    """The dtype plumbing: loaded in bfloat16 the model computes in bfloat16 and stays near float32."""
    from jdiff.weights.loading import load_component

    cfg = HunyuanVideo15Config.tiny()
    ref = parity.randomized(TorchHY15(**parity.kwargs(cfg)), norms_near_one=True)
    ref.save_pretrained(tmp_path)
    _, model = load_component(SPEC, tmp_path, dtype=jnp.bfloat16)
    x, timestep, text, mask, glyph, mask_2, image = _inputs(cfg, 2, 2, 3, 4, np.random.default_rng(4))
    with torch.no_grad():
        want = ref(
            hidden_states=torch.from_numpy(x),
            timestep=torch.from_numpy(timestep),
            encoder_hidden_states=torch.from_numpy(text),
            encoder_attention_mask=torch.from_numpy(mask),
            encoder_hidden_states_2=torch.from_numpy(glyph),
            encoder_attention_mask_2=torch.from_numpy(mask_2),
            image_embeds=torch.from_numpy(image),
        ).sample.numpy()
    args = tuple(map(jnp.asarray, (x.transpose(0, 2, 3, 4, 1), timestep, text, mask, glyph, mask_2)))
    rope = rope_tables(cfg, 2, 3, 4)
    got = jax.jit(lambda m, *a: m(*a, rope, image_embeds=jnp.asarray(image)))(model, *args)
    assert got.dtype == jnp.bfloat16
    parity.assert_close(got.astype(jnp.float32), want.transpose(0, 2, 3, 4, 1), tol=3e-2)


def test_real_size_forward_shapes():
    """The 480p model traced abstractly (no memory) over a 480p latent of 2 frames, with I2V features."""
    import jax
    from flax import nnx

    from jdiff.models.hunyuan_video15.transformer import HunyuanVideo15Transformer3DModel

    cfg = HunyuanVideo15Config.i2v_480p()
    model = nnx.eval_shape(lambda: HunyuanVideo15Transformer3DModel(cfg, rngs=nnx.Rngs(0)))
    sds = jax.ShapeDtypeStruct
    rope = tuple(sds(a.shape, a.dtype) for a in rope_tables(cfg, 2, 30, 53))
    out = jax.eval_shape(
        lambda m, *a: m(*a[:6], a[6:8], image_embeds=a[8]),
        model,
        sds((1, 2, 30, 53, 65), jnp.bfloat16),
        sds((1,), jnp.float32),
        sds((1, 1000, 3584), jnp.bfloat16),
        sds((1, 1000), jnp.int32),
        sds((1, 256, 1472), jnp.bfloat16),
        sds((1, 256), jnp.int32),
        *rope,
        sds((1, 729, 1152), jnp.bfloat16),
    )
    assert out.shape == (1, 2, 30, 53, 32)
