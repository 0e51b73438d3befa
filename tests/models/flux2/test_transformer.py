"""FLUX.2 transformer parity with diffusers through the real loader, and real-size shape / key coverage."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import Flux2Transformer2DModel as TorchFlux2

from jdiff.errors import InputError
from jdiff.kernels import norm_rope
from jdiff.layers.rope import rope_cos_sin
from jdiff.models.flux2.config import Flux2Config
from jdiff.models.flux2.plan import SPEC
from jdiff.weights.config import from_dict
from tests import parity


def _ids(t: int, grids: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """FLUX.2's (t, h, w, l) ids: text (0, 0, 0, l); each image (its t, row, column, 0)."""
    txt = np.stack([np.zeros(t), np.zeros(t), np.zeros(t), np.arange(t)], 1)
    imgs = []
    for tc, h, w in grids:
        ids = np.zeros((h, w, 4))
        ids[..., 0], ids[..., 1], ids[..., 2] = tc, np.arange(h)[:, None], np.arange(w)[None, :]
        imgs.append(ids.reshape(-1, 4))
    return txt.astype(np.float32), np.concatenate(imgs).astype(np.float32)


@pytest.mark.parametrize(
    "heads,axes,guidance,grids,kernel",
    [
        (3, (4, 4, 4, 4), False, [(0, 3, 5)], None),  # klein-like
        (2, (4, 6, 2, 4), True, [(0, 4, 2), (10, 2, 3), (20, 3, 3)], None),  # dev-like, two reference images
        (3, (4, 4, 4, 4), False, [(0, 4, 8), (10, 4, 4)], "pallas"),  # the GPU's fused norm + rope kernel
    ],
)
def test_parity(tmp_path, heads, axes, guidance, grids, kernel):
    cfg = Flux2Config.tiny(num_attention_heads=heads, attention_head_dim=sum(axes), axes_dims_rope=axes,
                           guidance_embeds=guidance, num_layers=2)  # fmt: skip
    ref = parity.randomized(TorchFlux2(**parity.kwargs(cfg)), 0.1)
    _, model = parity.load(ref, SPEC, tmp_path)

    b, t = 2, (32 if kernel else 7)
    txt_ids, img_ids = _ids(t, grids)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, len(img_ids), cfg.in_channels)).astype(np.float32)
    ctx = rng.standard_normal((b, t, cfg.joint_attention_dim)).astype(np.float32)
    timestep = np.array([0.7, 0.2], np.float32)
    g = np.array([4.0, 2.5], np.float32)
    with torch.no_grad():
        want = ref(
            hidden_states=torch.from_numpy(x),
            encoder_hidden_states=torch.from_numpy(ctx),
            timestep=torch.from_numpy(timestep),
            img_ids=torch.from_numpy(img_ids),
            txt_ids=torch.from_numpy(txt_ids),
            guidance=torch.from_numpy(g) if guidance else None,
        ).sample.numpy()
    ids = np.concatenate([txt_ids, img_ids])
    rope = tuple(jnp.asarray(a) for a in rope_cos_sin(ids, axes, cfg.rope_theta))
    with norm_rope.forced(kernel):
        got = model(jnp.asarray(x), jnp.asarray(ctx), jnp.asarray(timestep), rope,
                    guidance=jnp.asarray(g) if guidance else None)  # fmt: skip
    parity.assert_close(got, want)


@pytest.mark.parametrize(
    "preset,missing,width,lo,hi",
    [
        ("klein_4b", "single_transformer_blocks.19.attn.norm_k.weight", 3072, 3.8e9, 4.0e9),
        ("klein_9b", "transformer_blocks.7.ff_context.linear_out.weight", 4096, 8.9e9, 9.2e9),
        ("dev", "single_transformer_blocks.47.attn.to_out.weight", 6144, 31.5e9, 32.5e9),
    ],
)
def test_real_size_shapes_and_keys(tmp_path, preset, missing, width, lo, hi):
    cfg = getattr(Flux2Config, preset)()
    kwargs = parity.kwargs(cfg)
    assert from_dict(Flux2Config, {"_class_name": "Flux2Transformer2DModel", **kwargs}) == cfg
    shapes = parity.check_coverage(
        SPEC,
        cfg,
        parity.real_layout(lambda: TorchFlux2(**kwargs).to(torch.bfloat16)),
        tmp_path,
        component="transformer",
        missing=missing,
        unexpected=("transformer_blocks.0.attn.to_q.lora_A.weight", (16, width)),
    )
    assert shapes["single_transformer_blocks.attn.to_qkv_mlp_proj.kernel"] == (
        cfg.num_single_layers, width, 9 * width
    )  # fmt: skip
    assert lo < parity.n_params(shapes) < hi


def test_bad_config():
    dev = parity.kwargs(Flux2Config.dev())
    with pytest.raises(InputError, match="axes_dims_rope"):
        from_dict(Flux2Config, {**dev, "axes_dims_rope": [32, 32, 64]})
    with pytest.raises(InputError, match="patch_size"):
        from_dict(Flux2Config, {**dev, "patch_size": 2})
