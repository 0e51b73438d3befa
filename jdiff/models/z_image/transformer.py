"""The Z-Image transformer (diffusers `ZImageTransformer2DModel`): a single-stream DiT (S3-DiT).

Axis letters: B batch, C latent channels of one token (a 2x2 patch), h/w latent height/width, S image tokens,
P = S padded to a multiple of 32, T caption tokens (a multiple of 32), L = P + T, J caption width, D model
width, N heads, H head dim, F MLP width, A AdaLN width.

The image tokens go through `noise_refiner` (modulated blocks), the caption tokens through `context_refiner`
(unmodulated blocks), then [image; caption] through the main `layers`. diffusers pads each prompt's caption
to a multiple of 32 with `cap_pad_token` and the image to a multiple of 32 with `x_pad_token` (both pads are
attended to, as real tokens), then pads the batch to its longest sequence with masked zeros. Here every row
has the same static layout [image P; caption T]: caption positions past the row's own padded length are
masked, which is the same attention. The image's rotary position follows its own caption's padded length, so
rotary tables are per row (`rope_tables`, computed on the host from the token counts).

Attribute paths mirror diffusers' state dict except `x_embedder` and `final_layer`, which diffusers keeps in
dicts keyed by patch size (`all_x_embedder.2-1`, `all_final_layer.2-1`; see plan.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from jdiff import sharding as sh
from jdiff.errors import InputError
from jdiff.layers import LayerNorm, Linear, RMSNorm, dot_product_attention
from jdiff.layers.embeddings import timestep_embedding
from jdiff.layers.stack import map_layers, scan, stacked
from jdiff.models.z_image.config import SEQ_MULTI_OF, ZImageConfig

# (cos, sin), each [L, H] shared by the batch or [B, L, H] per row.
Rope = tuple[jax.Array, jax.Array]
_TOKENS = (sh.BATCH, sh.LENGTH, sh.ACT_EMBED)


def padded(n: int) -> int:
    """`n` rounded up to the multiple of 32 diffusers pads every token group to."""
    return -(-n // SEQ_MULTI_OF) * SEQ_MULTI_OF


def patchify(latents: Float[Array, "b c h w"]) -> Float[Array, "b s k"]:
    """[B, C, h, w] -> [B, S, 4C]: 2x2 patches as tokens, (row, column, channel) within a token (diffusers'
    order for Z-Image; FLUX's is channel-major)."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // 2) * (w // 2), 4 * c)


def unpatchify(tokens: Float[Array, "b s k"], h: int, w: int) -> Float[Array, "b c h w"]:
    """The inverse of `patchify` for latents of size h x w."""
    b, _, k = tokens.shape
    x = tokens.reshape(b, h // 2, w // 2, 2, 2, k // 4).transpose(0, 5, 1, 3, 2, 4)
    return x.reshape(b, k // 4, h, w)


def rope_tables(
    cfg: ZImageConfig, cap_lens: Sequence[int], text_len: int, h2: int, w2: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Host-side rotary tables: (image cos, image sin) [B, P, H] and (caption cos, sin) [T, H].

    As diffusers' `RopeEmbedder`: angles in float64 rounded to float32, then cos/sin. Caption token j has ids
    (1 + j, 0, 0); image token (r, c) has (Tp + 1, r, c) with Tp its row's caption length padded to 32; image
    padding tokens have (0, 0, 0).

    Raises:
        InputError: a position past the model's `axes_lens` (a caption or image too large for it).
    """
    s, p = h2 * w2, padded(h2 * w2)
    cap_ids = np.stack([1 + np.arange(text_len), np.zeros(text_len), np.zeros(text_len)], 1)
    img_ids = np.zeros((len(cap_lens), p, 3))
    for i, n in enumerate(cap_lens):
        img_ids[i, :s, 0] = padded(n) + 1
        img_ids[i, :s, 1] = np.repeat(np.arange(h2), w2)
        img_ids[i, :s, 2] = np.tile(np.arange(w2), h2)
    top = np.maximum(cap_ids.max(0), img_ids.reshape(-1, 3).max(0))
    if np.any(top >= np.asarray(cfg.axes_lens)):
        raise InputError(
            f"Z-Image: rotary positions up to {top.astype(int).tolist()} exceed the model's axes_lens "
            f"{list(cfg.axes_lens)}; use a shorter prompt or a smaller image"
        )

    def table(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        for a, d in enumerate(cfg.axes_dims):
            freqs = 1.0 / cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
            parts.append(np.repeat((ids[..., a : a + 1] * freqs).astype(np.float32), 2, axis=-1))
        angles = np.concatenate(parts, -1).astype(np.float64)
        return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)

    return (*table(img_ids), *table(cap_ids))


def _rope(x: Float[Array, "b l n h"], cos: jax.Array, sin: jax.Array) -> Float[Array, "b l n h"]:
    """Interleaved-pair rotation in float32 with tables [L, H] or [B, L, H]."""
    if cos.ndim == 2:
        cos, sin = cos[None], sin[None]
    x32 = x.astype(jnp.float32)
    pairs = x32.reshape(*x.shape[:-1], -1, 2)
    rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
    return (x32 * cos[:, :, None] + rotated * sin[:, :, None]).astype(x.dtype)


class ZImageModulation(NamedTuple):
    """The AdaLN vectors of one evaluation (leading batch axes as FLUX's `FluxModulation`)."""

    refiner: jax.Array  # [Lr, B, 4D]: the noise refiner's blocks
    layers: jax.Array  # [Lm, B, 4D]: the main blocks
    out: jax.Array  # [B, D]: the final layer's scale (before the + 1)


class Attention(nnx.Module):
    """diffusers `Attention` with `ZSingleStreamAttnProcessor`: bias-free q/k/v/out, per-head RMS QK-norm."""

    def __init__(self, cfg: ZImageConfig, *, rngs: nnx.Rngs):
        d = cfg.dim
        self.head_dim = cfg.head_dim
        self.to_q = Linear(d, d, axes=(sh.EMBED, sh.HEADS), use_bias=False, rngs=rngs)
        self.to_k = Linear(d, d, axes=(sh.EMBED, sh.HEADS), use_bias=False, rngs=rngs)
        self.to_v = Linear(d, d, axes=(sh.EMBED, sh.HEADS), use_bias=False, rngs=rngs)
        self.norm_q = RMSNorm(cfg.head_dim, eps=1e-5)
        self.norm_k = RMSNorm(cfg.head_dim, eps=1e-5)
        self.to_out = nnx.List([Linear(d, d, axes=(sh.HEADS, sh.EMBED), use_bias=False, rngs=rngs)])

    def __call__(self, x: Float[Array, "b l d"], rope: Rope, mask: jax.Array | None) -> Float[Array, "b l d"]:
        """`mask`: [B, L] True for the keys each row attends to; None: all."""

        def heads(y):
            return y.reshape(*y.shape[:-1], -1, self.head_dim)  # [B, L, N, H]

        q = _rope(self.norm_q(heads(self.to_q(x))), *rope)
        k = _rope(self.norm_k(heads(self.to_k(x))), *rope)
        v = heads(self.to_v(x))
        out = dot_product_attention(
            q, k, v, mask=None if mask is None else mask[:, None, None, :], context_parallel=mask is None
        )
        return self.to_out[0](out.reshape(*out.shape[:2], -1))


class FeedForward(nnx.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), bias-free."""

    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.w1 = Linear(dim, hidden, axes=(sh.EMBED, sh.MLP), use_bias=False, rngs=rngs)
        self.w2 = Linear(hidden, dim, axes=(sh.MLP, sh.EMBED), use_bias=False, rngs=rngs)
        self.w3 = Linear(dim, hidden, axes=(sh.EMBED, sh.MLP), use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.w2(jax.nn.silu(self.w1(x)) * self.w3(x))


class ZImageTransformerBlock(nnx.Module):
    """diffusers `ZImageTransformerBlock(modulation=True)`: sandwich RMS norms, tanh-gated AdaLN (no shift)."""

    def __init__(self, cfg: ZImageConfig, *, modulation: bool = True, rngs: nnx.Rngs):
        d, eps = cfg.dim, cfg.norm_eps
        self.attention = Attention(cfg, rngs=rngs)
        self.feed_forward = FeedForward(d, cfg.ffn_dim, rngs=rngs)
        self.attention_norm1 = RMSNorm(d, eps=eps)
        self.ffn_norm1 = RMSNorm(d, eps=eps)
        self.attention_norm2 = RMSNorm(d, eps=eps)
        self.ffn_norm2 = RMSNorm(d, eps=eps)
        # diffusers' block modulation is a bare linear (no SiLU before it, unlike the final layer's).
        self.adaLN_modulation = (
            nnx.List([Linear(cfg.adaln_dim, 4 * d, axes=(sh.EMBED, sh.MLP), rngs=rngs)])
            if modulation
            else None
        )

    def modulation(self, adaln: Float[Array, "b a"]) -> Float[Array, "b 4d"]:
        return self.adaLN_modulation[0](adaln)

    def __call__(self, x: Float[Array, "b l d"], modulation: jax.Array, rope: Rope, mask) -> jax.Array:
        return self._forward(x, modulation, rope, mask)

    def _forward(self, x, modulation, rope, mask):
        if modulation is None:
            h = self.attention(self.attention_norm1(x), rope, mask)
            x = x + self.attention_norm2(h)
            x = x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
            return sh.constrain(x, _TOKENS)
        mod = modulation[:, None].astype(jnp.float32)  # [B, 1, 4D]
        scale_msa, gate_msa, scale_mlp, gate_mlp = jnp.split(mod, 4, axis=-1)

        def scaled(y, scale):
            return (y.astype(jnp.float32) * (1 + scale)).astype(x.dtype)

        def gated(y, gate):
            return (jnp.tanh(gate) * y.astype(jnp.float32)).astype(x.dtype)

        h = self.attention(scaled(self.attention_norm1(x), scale_msa), rope, mask)
        x = x + gated(self.attention_norm2(h), gate_msa)
        h = self.feed_forward(scaled(self.ffn_norm1(x), scale_mlp))
        x = x + gated(self.ffn_norm2(h), gate_mlp)
        return sh.constrain(x, _TOKENS)


class ZImageRefinerBlock(ZImageTransformerBlock):
    """diffusers `ZImageTransformerBlock(modulation=False)`: the caption refiner's blocks."""

    def __init__(self, cfg: ZImageConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, modulation=False, rngs=rngs)

    def __call__(self, x: Float[Array, "b l d"], rope: Rope, mask) -> jax.Array:
        return self._forward(x, None, rope, mask)


class FinalLayer(nnx.Module):
    """Parameter-free layer norm scaled by 1 + linear(SiLU(adaln)), then the projection to patch channels."""

    def __init__(self, cfg: ZImageConfig, *, rngs: nnx.Rngs):
        self.norm_final = LayerNorm(cfg.dim, eps=1e-6, elementwise_affine=False)
        self.linear = Linear(cfg.dim, cfg.patch_dim, axes=(sh.EMBED, None), rngs=rngs)
        self.adaLN_modulation = nnx.List(
            [None, Linear(cfg.adaln_dim, cfg.dim, axes=(sh.EMBED, sh.MLP), rngs=rngs)]
        )

    def modulation(self, adaln: jax.Array) -> jax.Array:
        return self.adaLN_modulation[1](jax.nn.silu(adaln))

    def __call__(self, x: jax.Array, modulation: jax.Array) -> jax.Array:
        y = self.norm_final(x).astype(jnp.float32) * (1 + modulation[:, None].astype(jnp.float32))
        return self.linear(y.astype(x.dtype))


class TimestepEmbedder(nnx.Module):
    """Sinusoid of 256 (cos first) -> linear to 1024 -> SiLU -> linear to A."""

    def __init__(self, out_size: int, *, rngs: nnx.Rngs):
        self.mlp = nnx.List(
            [
                Linear(256, 1024, axes=(None, sh.MLP), rngs=rngs),
                None,
                Linear(1024, out_size, axes=(sh.MLP, None), rngs=rngs),
            ]
        )

    def __call__(self, t: Float[Array, " b"]) -> Float[Array, "b a"]:
        freq = timestep_embedding(t, 256).astype(self.mlp[0].kernel[...].dtype)
        return self.mlp[2](jax.nn.silu(self.mlp[0](freq)))


class ZImageTransformer2DModel(nnx.Module):
    """The Z-Image denoiser: latents + caption features -> the model output diffusers' transformer returns."""

    def __init__(self, cfg: ZImageConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.config = cfg
        d = cfg.dim
        self.x_embedder = Linear(cfg.patch_dim, d, axes=(None, sh.EMBED), rngs=rngs)
        self.final_layer = FinalLayer(cfg, rngs=rngs)
        self.noise_refiner = stacked(
            lambda r: ZImageTransformerBlock(cfg, rngs=r), cfg.n_refiner_layers, rngs
        )
        self.context_refiner = stacked(lambda r: ZImageRefinerBlock(cfg, rngs=r), cfg.n_refiner_layers, rngs)
        self.t_embedder = TimestepEmbedder(cfg.adaln_dim, rngs=rngs)
        self.cap_embedder = nnx.List(
            [
                RMSNorm(cfg.cap_feat_dim, eps=cfg.norm_eps),
                Linear(cfg.cap_feat_dim, d, axes=(None, sh.EMBED), rngs=rngs),
            ]
        )
        self.x_pad_token = nnx.Param(
            jnp.zeros((1, d), jnp.float32), out_sharding=(None, sh.NORM), eager_sharding=False
        )
        self.cap_pad_token = nnx.Param(
            jnp.zeros((1, d), jnp.float32), out_sharding=(None, sh.NORM), eager_sharding=False
        )
        self.layers = stacked(lambda r: ZImageTransformerBlock(cfg, rngs=r), cfg.n_layers, rngs)

    def __call__(
        self,
        latents: Float[Array, "b c h w"],
        cap_feats: Float[Array, "b t j"],
        cap_lens: Int[Array, " b"],
        timestep: Float[Array, " b"],
        rope: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
    ) -> Float[Array, "b c h w"]:
        """One evaluation, as diffusers' `transformer(list(latents[:, :, None]), t, caps).sample` stacked.

        Args:
            latents: the pipeline's latents.
            cap_feats: each row's caption features, its real tokens first (T >= every row's padded length).
            cap_lens: each row's count of real caption tokens.
            timestep: diffusers' `t` (1 - sigma in the pipeline); scaled by `t_scale` inside.
            rope: `rope_tables(cfg, cap_lens, T, h / 2, w / 2)`.
        """
        h, w = latents.shape[2:]
        out = self.predict(patchify(latents), cap_feats, cap_lens, self.modulation(timestep), rope)
        return unpatchify(out, h, w)

    def modulation(self, timestep: Float[Array, " b"]) -> ZImageModulation:
        """Every block's AdaLN vectors for these timesteps; rows are independent (see FLUX's `modulation`)."""
        adaln = self.t_embedder(timestep.astype(jnp.float32) * self.config.t_scale)
        return ZImageModulation(
            map_layers(self.noise_refiner, lambda b: b.modulation(adaln)),
            map_layers(self.layers, lambda b: b.modulation(adaln)),
            self.final_layer.modulation(adaln),
        )

    def predict(
        self,
        tokens: Float[Array, "b s c"],
        cap_feats: Float[Array, "b t j"],
        cap_lens: Int[Array, " b"],
        modulation: ZImageModulation,
        rope: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
        *,
        masked: bool = True,
    ) -> Float[Array, "b s c"]:
        """The output per image token (`patchify` order), given the evaluation's `modulation`.

        `masked=False` (static) when every row's caption, padded to 32, fills all T positions (one prompt, or
        prompts of similar length): attention then runs without a mask, on the unmasked (and sequence-parallel)
        kernels.
        """
        s = tokens.shape[1]
        unified, ctx = self.embed(tokens, cap_feats, cap_lens, modulation, rope, masked=masked)
        return self.output(self.run_layers(unified, ctx), ctx, s)

    # ---- the parts step caching runs apart (jdiff.sampling.step_cache) --------------------------------------

    def embed(self, tokens, cap_feats, cap_lens, modulation: ZImageModulation, rope, *, masked: bool = True):
        """The unified [image; caption] sequence entering the first main layer (after both refiners), and
        (modulation, unified rope, mask) for the layers; arguments as `predict`."""
        img_cos, img_sin, cap_cos, cap_sin = rope
        b, s, _ = tokens.shape
        p, t = img_cos.shape[1], cap_feats.shape[1]
        if p != padded(s) or t % SEQ_MULTI_OF:
            raise ValueError(
                f"Z-Image: {s} image tokens need rope tables of {padded(s)} rows and T % 32 == 0"
            )
        x = self.x_embedder(tokens)
        x = jnp.pad(x, ((0, 0), (0, p - s), (0, 0)))
        x = jnp.where((jnp.arange(p) >= s)[None, :, None], self.x_pad_token[...].astype(x.dtype), x)
        x = scan(self.noise_refiner, x, (img_cos, img_sin), None, per_layer=modulation.refiner)

        cap = self.cap_embedder[1](self.cap_embedder[0](cap_feats.astype(x.dtype)))
        j = jnp.arange(t)[None, :]
        n = cap_lens.astype(jnp.int32)[:, None]
        cap_valid = j < -(-n // SEQ_MULTI_OF) * SEQ_MULTI_OF  # [B, T]: the row's padded caption
        cap = jnp.where((j >= n)[..., None], self.cap_pad_token[...].astype(cap.dtype), cap)
        cap = scan(self.context_refiner, cap, (cap_cos, cap_sin), cap_valid if masked else None)

        unified = jnp.concatenate([x, cap], axis=1)
        u_rope = tuple(
            jnp.concatenate([a, jnp.broadcast_to(c, (b, *c.shape))], axis=1)
            for a, c in ((img_cos, cap_cos), (img_sin, cap_sin))
        )
        mask = jnp.concatenate([jnp.ones((b, p), bool), cap_valid], axis=1) if masked else None
        return unified, (modulation, u_rope, mask)

    def run_layers(self, unified: jax.Array, ctx, layers: slice | None = None) -> jax.Array:
        """The main layers in `layers` (default all) over the unified sequence; `ctx` from `embed`."""
        modulation, u_rope, mask = ctx
        return scan(self.layers, unified, u_rope, mask, per_layer=modulation.layers, layers=layers)

    def output(self, unified: jax.Array, ctx, s: int) -> jax.Array:
        """The final layer over the `s` image tokens."""
        return self.final_layer(unified[:, :s], ctx[0].out)
