"""The CLIP vision encoder (transformers `CLIPVisionModel`) as Wan2.1 I2V uses it: the penultimate hidden state.

Axis letters: B batch, I image height and width (image_size), C image channels, G patch-grid side
(image_size // patch_size), P patches (G * G), L tokens (1 + P: the class token, then the patches in
row-major order), D width (hidden_size), N heads, H head dim, F mlp width.

diffusers' `WanImageToVideoPipeline.encode_image` runs the model with `output_hidden_states=True` and keeps
`hidden_states[-2]`: the output of the second-to-last encoder layer, before any final norm. So this module
runs `pre_layrnorm` and the first `num_hidden_layers - 1` layers only. The last layer stays loaded (a
conversion plan is independent of the config and could not name it to skip it; loading every checkpoint layer
also keeps the layer-count check), and `post_layernorm`, which only feeds the pooled output, is ignored by the
plan (jdiff/models/clip/vision_plan.py).

Attribute paths mirror the transformers-4 state-dict names Wan ships (`vision_model.encoder.layers.0.
self_attn.q_proj.weight`); the layers are stacked (leading layer axis) and run with one `lax.scan`.

`preprocess_images` is the host-side `CLIPImageProcessor` of that pipeline (PIL + numpy).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
from flax import nnx
from jaxtyping import Array, Float

from jdiff import sharding as sh
from jdiff.errors import InputError
from jdiff.layers import Conv, LayerNorm
from jdiff.layers.embed import Embed
from jdiff.layers.stack import stacked
from jdiff.models.clip.text_encoder import CLIPMLP, CLIPAttention
from jdiff.models.clip.vision_config import CLIPVisionConfig

# transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD, the normalisation of Wan's `image_processor`.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPVisionEmbeddings(nnx.Module):
    """Patch embedding (a stride-`patch_size` convolution), a learned class token, absolute positions."""

    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
        d, p = cfg.hidden_size, cfg.patch_size
        self.image_size = cfg.image_size
        init = nnx.with_partitioning(nnx.initializers.normal(d**-0.5), (sh.EMBED,), eager_sharding=False)
        self.class_embedding = nnx.Param(init(rngs.params(), (d,), jnp.float32))  # [D]
        self.patch_embedding = Conv(cfg.num_channels, d, (p, p), strides=p, use_bias=False, rngs=rngs)
        self.position_embedding = Embed(cfg.num_patches + 1, d, axes=(None, sh.EMBED), rngs=rngs)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        # transformers casts the pixels to the patch embedding's dtype.
        patches = self.patch_embedding(pixel_values.astype(self.patch_embedding.kernel.dtype))  # [B, G, G, D]
        b, d = patches.shape[0], patches.shape[-1]
        patches = patches.reshape(b, -1, d)  # [B, P, D], row-major as torch's flatten(2)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(patches.dtype), (b, 1, d))
        x = jnp.concatenate([cls, patches], axis=1)  # [B, L, D]
        return x + self.position_embedding.embedding[...].astype(x.dtype)[None]


class CLIPVisionEncoderLayer(nnx.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)). The MLP is the text tower's."""

    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
        self.self_attn = CLIPAttention(cfg, causal=False, rngs=rngs)
        self.layer_norm1 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg, rngs=rngs)  # reads hidden_size, intermediate_size, hidden_act only
        self.layer_norm2 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x))
        x = x + self.mlp(self.layer_norm2(x))
        return sh.constrain(x, (sh.BATCH, sh.LENGTH, sh.ACT_EMBED))


class CLIPVisionEncoder(nnx.Module):
    """All `num_hidden_layers` layers, stacked on a leading layer axis; `__call__` runs the first n of them."""

    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
        self.layers = stacked(lambda r: CLIPVisionEncoderLayer(cfg, rngs=r), cfg.num_hidden_layers, rngs)

    def __call__(self, x: jax.Array, num_layers: int) -> jax.Array:
        graphdef, state = nnx.split(self.layers)

        def body(carry, i):
            # Index the whole stack inside the loop: scanning over `state[:num_layers]` would copy it.
            layer = jax.tree.map(lambda p: jax.lax.dynamic_index_in_dim(p, i, keepdims=False), state)
            return nnx.merge(graphdef, layer)(carry), None

        return jax.lax.scan(body, x, jnp.arange(num_layers))[0]


class CLIPVisionTransformer(nnx.Module):
    """Embeddings, pre-norm and the encoder up to its penultimate layer (no post-norm: see module doc)."""

    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
        self.embeddings = CLIPVisionEmbeddings(cfg, rngs=rngs)
        self.pre_layrnorm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # sic: the reference name
        self.encoder = CLIPVisionEncoder(cfg, rngs=rngs)
        self.num_hidden_layers = cfg.num_hidden_layers
        self.image_shape = (cfg.image_size, cfg.image_size, cfg.num_channels)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != self.image_shape:
            raise InputError(
                f"CLIP vision encoder: expected pixel values [batch, {', '.join(map(str, self.image_shape))}] "
                f"(channels last), got shape {tuple(pixel_values.shape)}; preprocess the image with "
                "preprocess_images"
            )
        x = self.pre_layrnorm(self.embeddings(pixel_values))  # [B, L, D]
        x = sh.constrain(x, (sh.BATCH, sh.LENGTH, sh.ACT_EMBED))
        return self.encoder(x, self.num_hidden_layers - 1)


class CLIPVisionModel(nnx.Module):
    """transformers' `CLIPVisionModel`, returning what Wan2.1 I2V keeps: `hidden_states[-2]`."""

    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
        self.vision_model = CLIPVisionTransformer(cfg, rngs=rngs)

    def __call__(self, pixel_values: Float[Array, "b i i c"]) -> Float[Array, "b l d"]:
        """Encodes images.

        Args:
            pixel_values: [B, I, I, C] channels-last, already resized, cropped and normalised
                (`preprocess_images`).

        Returns:
            [B, 1 + P, D] the penultimate layer's hidden state (transformers' `hidden_states[-2]`), in the
            parameters' dtype.

        Raises:
            InputError: pixel_values not [B, image_size, image_size, num_channels].
        """
        return self.vision_model(pixel_values)


def _to_rgb(image) -> PIL.Image.Image:
    # transformers' `convert_to_rgb`: transparency is composited onto white, not dropped.
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (3, 4):
            raise InputError(
                f"CLIP image preprocessing: expected a PIL image or a uint8 array [height, width, 3 or 4], got "
                f"{image.dtype} array of shape {image.shape}"
            )
        image = PIL.Image.fromarray(image)
    if not isinstance(image, PIL.Image.Image):
        raise InputError(
            f"CLIP image preprocessing: expected a PIL image or a uint8 array, got {type(image).__name__}"
        )
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        background = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def preprocess_images(
    images: PIL.Image.Image | np.ndarray | Sequence[PIL.Image.Image | np.ndarray],
    *,
    size: int = 224,
    crop_size: int = 224,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> Float[np.ndarray, "b i i 3"]:
    """transformers' `CLIPImageProcessor` (PIL backend) with Wan2.1 I2V's `image_processor` settings.

    Each image is converted to RGB, resized with PIL bicubic so its shorter side is `size` (the longer side
    truncated, as transformers computes it), center-cropped to `crop_size`, scaled by 1/255 and normalised.

    Args:
        images: one image or a list; PIL images or uint8 arrays [height, width, 3 or 4].
        size: the shorter side after resizing (`size.shortest_edge`).
        crop_size: the side of the square center crop (`crop_size`).
        mean, std: per-channel normalisation (`image_mean`, `image_std`).

    Returns:
        [B, crop_size, crop_size, 3] float32 pixel values, channels last.

    Raises:
        InputError: an image of another type, or smaller than `crop_size` after resizing.
    """
    if isinstance(images, (PIL.Image.Image, np.ndarray)):
        images = [images]
    out = []
    for image in images:
        image = _to_rgb(image)
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(size * long / short)
        new_w, new_h = (size, new_long) if w <= h else (new_long, size)
        pixels = np.asarray(image.resize((new_w, new_h), resample=PIL.Image.Resampling.BICUBIC))
        if min(new_w, new_h) < crop_size:
            raise InputError(
                f"CLIP image preprocessing: crop_size {crop_size} exceeds the resized image {new_w}x{new_h}; "
                f"use crop_size <= size ({size})"
            )
        top, left = (new_h - crop_size) // 2, (new_w - crop_size) // 2
        pixels = pixels[top : top + crop_size, left : left + crop_size]  # [I, I, 3]
        # transformers rescales in float64 and casts to float32, then normalises in float32.
        x = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
        x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        out.append(x)
    return np.stack(out)
