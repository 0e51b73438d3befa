"""Z-Image transformer parity with diffusers through the real loader, and real-size shape / key coverage."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import ZImageTransformer2DModel as TorchZImage

from jdiff.errors import InputError
from jdiff.models.z_image.config import ZImageConfig
from jdiff.models.z_image.plan import SPEC
from jdiff.models.z_image.transformer import padded, rope_tables
from jdiff.weights.config import from_dict
from tests import parity


@pytest.mark.parametrize(
    "heads,axes,cap_lens,hw",
    [
        (3, (4, 6, 6), (5, 37), (6, 10)),  # rows of different caption lengths: masked keys; padded image
        (2, (8, 4, 12), (40,), (8, 16)),  # exactly 32 image tokens: no image padding
    ],
)
def test_parity(tmp_path, heads, axes, cap_lens, hw):
    cfg = ZImageConfig.tiny(n_heads=heads, dim=heads * sum(axes), axes_dims=axes)
    # Weights at 0.15: at 0.05 the tanh gates are so small that the caption moves the output by ~1e-3 only, and
    # a caption-side bug (image rope one position off) stayed under 1e-5.
    ref = parity.randomized(TorchZImage(**parity.kwargs(cfg)), 0.15)
    _, model = parity.load(ref, SPEC, tmp_path)

    b, (h, w), c = len(cap_lens), hw, cfg.in_channels
    t = max(padded(n) for n in cap_lens)
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((b, c, h, w)).astype(np.float32)
    caps = rng.standard_normal((b, t, cfg.cap_feat_dim)).astype(np.float32)  # past each row's length: ignored
    timestep = np.array([0.7, 0.2][:b], np.float32)
    rope = tuple(jnp.asarray(a) for a in rope_tables(cfg, cap_lens, t, h // 2, w // 2))

    def run(caps):
        with torch.no_grad():
            want = ref(
                [torch.from_numpy(x[:, None]) for x in latents],
                torch.from_numpy(timestep),
                [torch.from_numpy(caps[i, :n]) for i, n in enumerate(cap_lens)],
            ).sample
        got = model(
            jnp.asarray(latents),
            jnp.asarray(caps),
            jnp.asarray(cap_lens, jnp.int32),
            jnp.asarray(timestep),
            rope,
        )
        return np.asarray(got), torch.stack([x[:, 0] for x in want]).numpy()

    got, want = run(caps)
    parity.assert_close(got, want)
    # The caption's own effect, where a wrong caption position, pad token or mask shows most.
    got_2, want_2 = run(rng.standard_normal(caps.shape).astype(np.float32))
    parity.assert_close(got_2 - got, want_2 - want, 1e-4, what="caption effect")


def test_real_size_shapes_and_keys(tmp_path):
    turbo = parity.kwargs(ZImageConfig.turbo())
    cfg = from_dict(ZImageConfig, {"_class_name": "ZImageTransformer2DModel", **turbo})
    assert cfg == ZImageConfig.turbo()
    shapes = parity.check_coverage(
        SPEC,
        cfg,
        parity.real_layout(lambda: TorchZImage(**turbo).to(torch.bfloat16)),
        tmp_path,
        component="transformer",
        missing="layers.29.attention.norm_k.weight",
        unexpected=("layers.0.attention.to_q.lora_A.weight", (16, 3840)),
    )
    assert shapes["layers.attention.to_q.kernel"] == (30, 3840, 3840)
    assert shapes["layers.feed_forward.w1.kernel"] == (30, 3840, 10240)
    assert shapes["x_embedder.kernel"] == (64, 3840)
    assert 6.0e9 < parity.n_params(shapes) < 6.3e9  # Z-Image-Turbo: 6.15B parameters


def test_bad_config_and_sizes():
    turbo = parity.kwargs(ZImageConfig.turbo())
    with pytest.raises(InputError, match="axes_dims"):
        from_dict(ZImageConfig, {**turbo, "axes_dims": [32, 48, 40]})
    with pytest.raises(InputError, match="siglip_feat_dim"):
        from_dict(ZImageConfig, {**turbo, "siglip_feat_dim": 1152})
    with pytest.raises(InputError, match="all_patch_size"):
        from_dict(ZImageConfig, {**turbo, "all_patch_size": [2, 4], "all_f_patch_size": [1, 1]})
    with pytest.raises(InputError, match="axes_lens"):
        rope_tables(ZImageConfig.tiny(), [600], 640, 4, 4)


def test_unmasked_path_equals_masked_when_rows_fill_the_captions():
    """`masked=False` (the pipeline's choice when every row's padded caption fills T) is the same model."""
    import jax
    from flax import nnx

    from jdiff.models.z_image.transformer import ZImageTransformer2DModel, patchify

    cfg = ZImageConfig.tiny()
    model = ZImageTransformer2DModel(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    leaves, tree = jax.tree.flatten(state)
    draw = np.random.default_rng(1)  # numpy: jax.random would compile once per leaf shape
    model = nnx.merge(graphdef, jax.tree.unflatten(tree, [jnp.asarray(0.1 * draw.standard_normal(x.shape), x.dtype) for x in leaves]))  # fmt: skip
    rng = np.random.default_rng(0)
    cap_lens = (40, 50)  # both pad to 64 = T
    x = patchify(jnp.asarray(rng.standard_normal((2, 4, 6, 10)), jnp.float32))
    caps = jnp.asarray(rng.standard_normal((2, 64, cfg.cap_feat_dim)), jnp.float32)
    rope = tuple(jnp.asarray(a) for a in rope_tables(cfg, cap_lens, 64, 3, 5))
    t = jnp.asarray([0.3, 0.8])
    lens = jnp.asarray(cap_lens, jnp.int32)
    args = (x, caps, lens, t, rope)
    # jitted: op by op, the two calls take 20 s on a CPU core
    want = nnx.jit(lambda m, x, c, n, t, r: m.predict(x, c, n, m.modulation(t), r))(model, *args)
    got = nnx.jit(lambda m, x, c, n, t, r: m.predict(x, c, n, m.modulation(t), r, masked=False))(model, *args)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
