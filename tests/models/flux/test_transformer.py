"""FLUX transformer parity with diffusers through the real loader, and real-size shape / key coverage."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FluxTransformer2DModel as TorchFlux

from jdiff.errors import InputError
from jdiff.kernels import norm_rope
from jdiff.layers.rope import rope_cos_sin
from jdiff.models.flux.config import FluxConfig
from jdiff.models.flux.plan import SPEC
from jdiff.weights.config import from_dict
from jdiff.weights.loading import param_shapes
from jdiff.weights.safetensors import open_weights
from tests import parity
from tests.utils import rel_err

FLUX_DEV = parity.kwargs(FluxConfig.dev())


def _ids(t: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    img = np.zeros((h, w, 3), np.float32)
    img[..., 1] = np.arange(h)[:, None]
    img[..., 2] = np.arange(w)[None, :]
    return np.zeros((t, 3), np.float32), img.reshape(-1, 3)


def _randomized(module, scale: float):
    """`module` (built for real or with `nnx.eval_shape`) with every parameter drawn from normal(0, scale): none
    left at a zero or unit init."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(module)
    leaves, tree = jax.tree.flatten(state)
    rng = np.random.default_rng(1)  # numpy: jax.random compiles once per leaf shape (20 s here)
    values = [jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype) for x in leaves]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, values))


@pytest.mark.parametrize(
    "heads,head_dim,axes,guidance,hw,kernel",
    [
        (2, 16, (4, 6, 6), True, (3, 5), None),
        (4, 8, (2, 2, 4), False, (4, 4), None),
        (3, 16, (4, 4, 8), True, (2, 6), None),
        # The GPU's fused QK norm + rope kernel (Pallas interpret mode here), both streams' kernels writing
        # into the joint buffers.
        (2, 16, (4, 6, 6), True, (4, 8), "pallas"),
    ],
)
def test_parity(tmp_path, heads, head_dim, axes, guidance, hw, kernel):
    cfg = FluxConfig.tiny(
        in_channels=8, num_layers=2, num_single_layers=3, attention_head_dim=head_dim, num_attention_heads=heads,
        joint_attention_dim=24, pooled_projection_dim=20, guidance_embeds=guidance, axes_dims_rope=axes,
    )  # fmt: skip
    # At weight scales above 0.05 the float32 sinusoid of t * 1000 (one ulp of the angle ~ 6e-5) alone differs
    # by ~1e-5 between XLA and torch, and deep random nets amplify it.
    ref = parity.randomized(TorchFlux(**parity.kwargs(cfg)), 0.05)
    _, model = parity.load(ref, SPEC, tmp_path)

    b, t, (h, w) = 2, (32 if kernel else 7), hw  # 32 text tokens: both streams' kernels share one buffer
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, h * w, 8)).astype(np.float32)
    ctx = rng.standard_normal((b, t, 24)).astype(np.float32)
    pooled = rng.standard_normal((b, 20)).astype(np.float32)
    timestep = np.array([0.7, 0.2], np.float32)
    g = np.array([3.5, 4.0], np.float32)
    txt_ids, img_ids = _ids(t, h, w)
    with torch.no_grad():
        want = ref(
            hidden_states=torch.from_numpy(x),
            encoder_hidden_states=torch.from_numpy(ctx),
            pooled_projections=torch.from_numpy(pooled),
            timestep=torch.from_numpy(timestep),
            img_ids=torch.from_numpy(img_ids),
            txt_ids=torch.from_numpy(txt_ids),
            guidance=torch.from_numpy(g) if guidance else None,
        ).sample.numpy()
    rope = tuple(jnp.asarray(a) for a in rope_cos_sin(np.concatenate([txt_ids, img_ids]), axes, 10000.0))
    with norm_rope.forced(kernel):
        got = model(
            jnp.asarray(x),
            jnp.asarray(ctx),
            jnp.asarray(pooled),
            jnp.asarray(timestep),
            rope,
            guidance=jnp.asarray(g) if guidance else None,
        )
    parity.assert_close(got, want)


def test_real_size_shapes_and_keys(tmp_path):
    cfg = from_dict(FluxConfig, {"_class_name": "FluxTransformer2DModel", **FLUX_DEV})
    assert cfg == FluxConfig.dev()
    shapes = parity.check_coverage(
        SPEC,
        cfg,
        parity.real_layout(lambda: TorchFlux(**FLUX_DEV).to(torch.bfloat16)),
        tmp_path,
        component="transformer",
        missing="single_transformer_blocks.37.attn.norm_k.weight",
        unexpected=("transformer_blocks.0.attn.to_q.lora_A.weight", (16, 3072)),
    )
    assert shapes["transformer_blocks.attn.to_q.kernel"] == (19, 3072, 3072)
    assert shapes["single_transformer_blocks.proj_out.kernel"] == (38, 15360, 3072)
    assert shapes["proj_out.kernel"] == (3072, 64)
    assert 11.8e9 < parity.n_params(shapes) < 12.0e9  # FLUX.1-dev has 11.9B parameters


def test_bad_config():
    with pytest.raises(InputError, match="axes_dims_rope"):
        from_dict(FluxConfig, {**FLUX_DEV, "axes_dims_rope": [16, 56, 40]})
    assert dataclasses.replace(FluxConfig(), guidance_embeds=True).inner_dim == 3072


def test_modulation_rows_are_independent():
    """A sampler computes every step's modulation in one call (rows step-major) and feeds `predict` one
    step's slice: that must equal the plain call at that step's timestep."""
    from flax import nnx

    from jdiff.models.flux.transformer import FluxTransformer2DModel

    cfg = FluxConfig.tiny(
        num_layers=2, num_single_layers=3, joint_attention_dim=32, pooled_projection_dim=24, in_channels=8
    )
    # Zero-initialised biases and modulation would hide a mixed-up row: give every parameter a value.
    model = _randomized(nnx.eval_shape(lambda: FluxTransformer2DModel(cfg, rngs=nnx.Rngs(0))), 0.2)
    b, t, h, w = 2, 3, 2, 3
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((b, h * w, 8)), jnp.float32)
    text = jnp.asarray(rng.standard_normal((b, t, 32)), jnp.float32)
    pooled = jnp.asarray(rng.standard_normal((b, 24)), jnp.float32)
    guidance = jnp.asarray([3.5, 2.0], jnp.float32)
    rope = rope_cos_sin(np.concatenate(_ids(t, h, w)), (4, 6, 6), 10000.0)
    steps = jnp.asarray([0.9, 0.4, 0.1], jnp.float32)
    mod = model.modulation(jnp.repeat(steps, b), jnp.tile(pooled, (3, 1)), jnp.tile(guidance, 3))
    assert mod.double.shape == (2, 3 * b, 6 * 32) and mod.single.shape == (3, 3 * b, 3 * 32)
    predict = nnx.jit(lambda m, step: m.predict(x, text, step, rope))  # op by op, each call takes seconds
    call = nnx.jit(lambda m, t: m(x, text, pooled, jnp.full((b,), t), rope, guidance=guidance))
    for i in range(3):
        rows = slice(i * b, (i + 1) * b)
        step = type(mod)(mod.double[:, rows], mod.double_context[:, rows], mod.single[:, rows], mod.out[rows])
        got, want = predict(model, step), call(model, steps[i])
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pass `guidance`"):  # a guidance-distilled model needs it
        model.modulation(steps[:1], pooled[:1])
    other = call(model, steps[0])
    assert not np.allclose(np.asarray(other), np.asarray(want), atol=1e-3)  # the timestep matters here


@pytest.mark.parametrize("joint", [True, False])
def test_attention_with_the_fused_kernel(joint):
    """JointAttention with the GPU's fused QK norm + rope kernel (Pallas interpret mode) against the XLA path,
    same weights: attention-level, where a wrong bias or norm weight shows (the whole model's output, behind
    gated residuals, moves by only ~5e-6 relative when k gets q's bias)."""
    import jax
    from flax import nnx

    from jdiff.models.flux.transformer import JointAttention

    cfg = dataclasses.replace(
        FluxConfig(), num_attention_heads=2, attention_head_dim=16, axes_dims_rope=(4, 6, 6)
    )
    attn = _randomized(nnx.eval_shape(lambda: JointAttention(cfg, joint=joint, rngs=nnx.Rngs(0))), 0.3)
    x, text = (jax.random.normal(jax.random.key(i), (2, 32, 32)) for i in (2, 3))
    ids = np.stack([np.zeros(64), np.arange(64) // 8, np.arange(64) % 8], 1)
    rope = tuple(jnp.asarray(a) for a in rope_cos_sin(ids, (4, 6, 6), 10000.0))
    if not joint:  # a single block's input: the joint sequence
        x = jnp.concatenate([text, x], axis=1)
    outs = []
    for impl in ("xla", "pallas"):
        with norm_rope.forced(impl):
            out = attn(x, rope, context=text if joint else None)
        outs.append(jnp.concatenate(out, axis=1) if joint else out)
    assert rel_err(outs[1], outs[0]) < 1e-5


@pytest.mark.parametrize("joint", [True, False])
def test_attention_parity(tmp_path, joint):
    """JointAttention against diffusers' FluxAttention with the same weights, at the attention's own output:
    q/k/v, the per-head RMS norms, the rope, the joint text+image softmax and the output projections."""
    from diffusers.models.transformers.transformer_flux import FluxAttention, FluxPosEmbed
    from flax import nnx
    from safetensors.torch import save_file

    from jdiff.models.flux.transformer import JointAttention
    from jdiff.weights.loading import fill, source_shapes
    from jdiff.weights.plan import Plan, materialize, resolve

    heads, head_dim, axes = 2, 16, (4, 6, 6)
    dim = heads * head_dim
    ref = FluxAttention(
        query_dim=dim, dim_head=head_dim, heads=heads, out_dim=dim, bias=True, eps=1e-6,
        **(dict(added_kv_proj_dim=dim, context_pre_only=False) if joint else dict(pre_only=True)),
    ).eval()  # fmt: skip
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    cfg = dataclasses.replace(
        FluxConfig(), num_attention_heads=heads, attention_head_dim=head_dim, axes_dims_rope=axes
    )
    # Through the real converter: the reference's safetensors, resolved by the default rules FLUX's plan uses.
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "attn.safetensors")
    weights = open_weights(tmp_path)
    graphdef, state = nnx.split(JointAttention(cfg, joint=joint, rngs=nnx.Rngs(0)))
    assignments = resolve(Plan(), param_shapes(state), source_shapes(weights), component="attention")
    by_target = {a.target: a for a in assignments}
    attn = fill(
        graphdef, state, lambda n: materialize(by_target[n], weights.read), dtype_of=lambda n: np.float32
    )

    t, h, w = 5, 3, 4
    txt_ids, img_ids = _ids(t, h, w)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, h * w + (0 if joint else t), dim)).astype(np.float32)
    text = rng.standard_normal((2, t, dim)).astype(np.float32)
    ids = np.concatenate([txt_ids, img_ids])
    with torch.no_grad():
        rope_t = FluxPosEmbed(theta=10000, axes_dim=list(axes))(torch.from_numpy(ids))
        want = ref(
            torch.from_numpy(x),
            encoder_hidden_states=torch.from_numpy(text) if joint else None,
            image_rotary_emb=rope_t,
        )
    rope = tuple(jnp.asarray(a) for a in rope_cos_sin(ids, axes, 10000.0))
    got = attn(jnp.asarray(x), rope, context=jnp.asarray(text) if joint else None)
    if joint:
        assert rel_err(got[0], want[0].numpy()) < 1e-5 and rel_err(got[1], want[1].numpy()) < 1e-5
    else:
        assert rel_err(got, want.numpy()) < 1e-5
