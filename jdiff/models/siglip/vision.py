"""SigLIP's vision tower (transformers `SiglipVisionModel`), returning `last_hidden_state`.

Axis letters: B batch, I image height and width (image_size), C image channels, P patches ((I / p)^2,
row-major), D width (hidden_size).

A ViT without class token or pre-norm: patch embedding (a stride-p convolution with bias) plus learned
absolute positions, pre-norm encoder layers (the CLIP vision layer: same names, same math), then
`post_layernorm` over every token. The attention-pooling `head` is not built (see the plan).

`preprocess_images` is `SiglipImageProcessor` with its defaults (PIL bicubic resize to image_size x
image_size, 1/255, mean = std = 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
import PIL.Image
from flax import nnx
from jaxtyping import Array, Float

from jdiff import sharding as sh
from jdiff.errors import InputError
from jdiff.layers import Conv, LayerNorm
from jdiff.layers.embed import Embed
from jdiff.layers.stack import scan, stacked
from jdiff.models.clip.vision_encoder import CLIPVisionEncoderLayer, _to_rgb
from jdiff.models.siglip.config import SiglipVisionConfig


class SiglipVisionEmbeddings(nnx.Module):
    def __init__(self, cfg: SiglipVisionConfig, *, rngs: nnx.Rngs):
        d, p = cfg.hidden_size, cfg.patch_size
        self.patch_embedding = Conv(cfg.num_channels, d, (p, p), strides=p, rngs=rngs)
        self.position_embedding = Embed(cfg.num_patches, d, axes=(None, sh.EMBED), rngs=rngs)

    def __call__(self, pixel_values: Float[Array, "b i i c"]) -> Float[Array, "b p d"]:
        # transformers casts the pixels to the patch embedding's dtype.
        x = self.patch_embedding(pixel_values.astype(self.patch_embedding.kernel.dtype))  # [B, G, G, D]
        x = x.reshape(x.shape[0], -1, x.shape[-1])  # [B, P, D], row-major as torch's flatten(2)
        return x + self.position_embedding.embedding[...].astype(x.dtype)[None]


class _Encoder(nnx.Module):
    def __init__(self, cfg: SiglipVisionConfig, *, rngs: nnx.Rngs):
        self.layers = stacked(lambda r: CLIPVisionEncoderLayer(cfg, rngs=r), cfg.num_hidden_layers, rngs)


class SiglipVisionTransformer(nnx.Module):
    def __init__(self, cfg: SiglipVisionConfig, *, rngs: nnx.Rngs):
        self.embeddings = SiglipVisionEmbeddings(cfg, rngs=rngs)
        self.encoder = _Encoder(cfg, rngs=rngs)
        self.post_layernorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.image_shape = (cfg.image_size, cfg.image_size, cfg.num_channels)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != self.image_shape:
            raise InputError(
                f"SigLIP vision encoder: expected pixel values [batch, {', '.join(map(str, self.image_shape))}] "
                f"(channels last), got shape {tuple(pixel_values.shape)}; preprocess the image with "
                "preprocess_images"
            )
        x = sh.constrain(self.embeddings(pixel_values), (sh.BATCH, sh.LENGTH, sh.ACT_EMBED))
        return self.post_layernorm(scan(self.encoder.layers, x))


class SiglipVisionModel(nnx.Module):
    """transformers' `SiglipVisionModel`: images -> `last_hidden_state` [B, P, D] (HunyuanVideo-1.5 I2V's
    `image_embeds`: 729 tokens of 1152 for so400m-patch14-384)."""

    def __init__(self, cfg: SiglipVisionConfig, *, rngs: nnx.Rngs):
        self.vision_model = SiglipVisionTransformer(cfg, rngs=rngs)

    def __call__(self, pixel_values: Float[Array, "b i i c"]) -> Float[Array, "b p d"]:
        """`pixel_values`: [B, I, I, C] channels-last from `preprocess_images`; returns the parameters' dtype.

        Raises:
            InputError: pixel_values not [B, image_size, image_size, num_channels].
        """
        return self.vision_model(pixel_values)


def preprocess_images(
    images: PIL.Image.Image | np.ndarray | Sequence[PIL.Image.Image | np.ndarray], *, size: int = 384
) -> Float[np.ndarray, "b i i 3"]:
    """transformers' `SiglipImageProcessor` (PIL backend, default settings): RGB (transparency on white),
    PIL bicubic resize to size x size (no crop, aspect not kept), x / 255, then (x - 0.5) / 0.5.

    Returns:
        [B, size, size, 3] float32 pixel values, channels last.

    Raises:
        InputError: an image that is neither a PIL image nor a uint8 array [height, width, 3 or 4].
    """
    if isinstance(images, (PIL.Image.Image, np.ndarray)):
        images = [images]
    out = []
    for image in images:
        pixels = np.asarray(_to_rgb(image).resize((size, size), resample=PIL.Image.Resampling.BICUBIC))
        # transformers rescales in float64 and casts to float32, then normalises in float32.
        x = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
        out.append((x - np.float32(0.5)) / np.float32(0.5))
    return np.stack(out)
