"""The Qwen2.5-VL text encoder (transformers `Qwen2_5_VLForConditionalGeneration` without its LM head):
prompt tokens, optionally with images, -> the hidden states the Qwen-Image pipelines read.

Axis letters: B batch, L sequence, D hidden size, J requested hidden states, P patches, E values per patch,
M merged image tokens (P / 4).

Attribute paths follow transformers 5 (`model.language_model.*`, `model.visual.*`); the plan reads the
published layout (`model.*`, `visual.*`) too.

How the pipelines call it:

    cfg, enc = load_component(SPEC, folder)
    processor = Qwen2VLImageProcessorConfig.from_folder(model_dir / "processor")          # edit pipelines
    texts = expand_image_tokens(texts, image_grid(images, processor), cfg)  # each <|image_pad|> -> its count
    ids, mask = tokenize(texts)                                              # the pipeline's tokenizer
    h = encode(enc, cfg, ids, mask, images=images, processor=processor)[0]                     # [B, L, D]

`encode` does the host work (preprocessing, token checks, the vision layout) and one jitted call; the parts
are public for pipelines that jit more around them (`preprocess`, `prepare_images`, `rope_index`, and the
module's `__call__`).

RoPE positions: without `position_ids` every row counts 0..L-1, images included. That is what transformers
5.x computes when the caller passes no `mm_token_type_ids`, which is how diffusers' Qwen-Image pipelines call
it (so it is the parity target for them). The model was trained with multimodal positions (image tokens at
(t, row, column) of their grid): `rope_index(...)` gives those, as transformers does when
`mm_token_type_ids` is passed (and as transformers 4.x did by default); pass them as `position_ids`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from jdiff.errors import InputError
from jdiff.models.llm.decoder import Decoder
from jdiff.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from jdiff.models.qwen2_5_vl.image_processor import Qwen2VLImageProcessorConfig, preprocess, smart_resize
from jdiff.models.qwen2_5_vl.vision import Qwen2_5_VisionTransformer, VisionLayout, _check_grid, vision_layout


def _image_runs(ids: np.ndarray, image_token_id: int) -> list[tuple[bool, int, int]]:
    """(is_image, start, end) runs of consecutive image-pad / other tokens of one row."""
    runs, start = [], 0
    for is_image, group in itertools.groupby(ids.tolist(), lambda t: t == image_token_id):
        n = len(list(group))
        runs.append((is_image, start, start + n))
        start += n
    return runs


IMAGE_PAD = "<|image_pad|>"


def image_grid(images, processor: Qwen2VLImageProcessorConfig | None = None) -> np.ndarray:
    """image_grid_thw [num_images, 3] that `preprocess` will give for PIL `images`, without preprocessing."""
    p = processor or Qwen2VLImageProcessorConfig()
    factor = p.patch_size * p.merge_size
    sizes = [smart_resize(im.height, im.width, factor, p.min_pixels, p.max_pixels) for im in images]
    return np.asarray([(1, h // p.patch_size, w // p.patch_size) for h, w in sizes], np.int64)


def expand_image_tokens(
    texts: Sequence[str], image_grid_thw: np.ndarray, cfg: Qwen2_5_VLConfig, image_token: str = IMAGE_PAD
) -> list[str]:
    """Each `image_token` of `texts` (in order, across texts) repeated once per merged token of its image
    (t * h * w / merge^2), as transformers' Qwen2.5-VL processor rewrites prompts before tokenizing.

    Raises:
        InputError: the number of image tokens in the texts differs from the number of images.
    """
    grid = np.asarray(image_grid_thw).reshape(-1, 3)
    found = sum(t.count(image_token) for t in texts)
    if found != len(grid):
        raise InputError(
            f"Qwen2.5-VL: the prompts hold {found} {image_token} tokens for {len(grid)} images; put one per image"
        )
    counts = iter((grid.prod(-1) // cfg.vision_config.spatial_merge_size**2).tolist())
    return ["".join(part if i == 0 else image_token * next(counts) + part
                    for i, part in enumerate(t.split(image_token))) for t in texts]  # fmt: skip


def prepare_images(input_ids: np.ndarray, image_grid_thw: np.ndarray, cfg: Qwen2_5_VLConfig) -> VisionLayout:
    """The vision tower's `VisionLayout` for `image_grid_thw`, after checking that `input_ids` holds exactly
    one image-pad token per merged image token (t * h * w / merge^2 per image, in image order).

    Raises:
        InputError: a grid the tower cannot take, or a token count that does not match the images.
    """
    grid = _check_grid(image_grid_thw, cfg.vision_config)
    want = int((grid.prod(-1) // cfg.vision_config.spatial_merge_size**2).sum())
    got = int((np.asarray(input_ids) == cfg.image_token_id).sum())
    if got != want:
        raise InputError(
            f"Qwen2.5-VL: the prompt has {got} image-pad tokens (id {cfg.image_token_id}) but the images give {want} "
            "features; expand each <|image_pad|> to t*h*w/4 tokens of its image_grid_thw, as the processor does"
        )
    return vision_layout(grid, cfg.vision_config)


def rope_index(
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None,
    image_grid_thw: np.ndarray | None,
    cfg: Qwen2_5_VLConfig,
) -> np.ndarray:
    """Multimodal RoPE positions [3, B, L] (temporal, row, column), transformers' `get_rope_index` for images.

    Over each row's real tokens: text counts up by one on all three rows; a run of image-pad tokens takes the
    next image of `image_grid_thw` (images are used in order across the batch) and gets (start + t, start + row,
    start + column) over its merged grid, after which text resumes at start + max(rows, columns). Padding
    positions are 0.

    Raises:
        InputError: a run of image-pad tokens whose length does not match its image, or too few images.
    """
    ids = np.asarray(input_ids)
    mask = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    m = cfg.vision_config.spatial_merge_size
    grids = iter([] if image_grid_thw is None else np.asarray(image_grid_thw).reshape(-1, 3).tolist())
    out = np.zeros((3, *ids.shape), np.int64)
    for b in range(ids.shape[0]):
        pos, parts = 0, []
        for is_image, start, end in _image_runs(ids[b][mask[b]], cfg.image_token_id):
            if not is_image:
                parts.append(np.broadcast_to(np.arange(end - start) + pos, (3, end - start)))
                pos += end - start
                continue
            t, h, w = next(grids, (0, 0, 0))
            gh, gw = h // m, w // m
            if t * gh * gw != end - start:
                raise InputError(
                    f"Qwen2.5-VL: a run of {end - start} image-pad tokens in row {b} does not match its image's "
                    f"grid (t, h, w) = {(t, h, w)} ({t * gh * gw} merged tokens)"
                )
            tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
            parts.append(np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + pos)
            pos += max(h, w) // m
        if parts:
            out[:, b, mask[b]] = np.concatenate(parts, axis=1)
    return out


class _Qwen2_5_VLModel(nnx.Module):
    def __init__(self, cfg: Qwen2_5_VLConfig, *, rngs: nnx.Rngs):
        self.visual = Qwen2_5_VisionTransformer(cfg.vision_config, rngs=rngs)
        self.language_model = Decoder(cfg.decoder_config(), rngs=rngs)


class Qwen2_5_VLTextEncoder(nnx.Module):
    """Qwen2.5-VL's language model and vision tower as a prompt (+ image) encoder."""

    def __init__(self, cfg: Qwen2_5_VLConfig, *, rngs: nnx.Rngs):
        self.image_token_id = cfg.image_token_id
        self.model = _Qwen2_5_VLModel(cfg, rngs=rngs)

    def image_features(self, pixel_values: Float[Array, "p e"], layout: VisionLayout) -> Float[Array, "m d"]:
        """The vision tower's features [M, D] for `preprocess`ed images (`get_image_features`, concatenated)."""
        return self.model.visual(pixel_values, layout)

    def __call__(
        self,
        input_ids: Int[Array, "b l"],
        attention_mask: Int[Array, "b l"] | Bool[Array, "b l"] | None = None,
        *,
        pixel_values: Float[Array, "p e"] | None = None,
        layout: VisionLayout | None = None,
        position_ids: Int[Array, "3 b l"] | Int[Array, "b l"] | None = None,
        hidden_layers: Sequence[int] | None = None,
    ) -> Float[Array, "j b l d"]:
        """Encodes a prompt, replacing its image-pad tokens' embeddings with the images' features.

        Args:
            input_ids: [B, L] token ids; with images, each image's `<|image_pad|>` expanded to t*h*w/4 tokens.
            attention_mask: [B, L], nonzero for real tokens, zero for padding (either side); None: no padding.
            pixel_values: [P, E] patches of every image of the batch, in prompt order (`preprocess`).
            layout: `prepare_images(input_ids, image_grid_thw, cfg)` for those images (host-made arrays).
            position_ids: [3, B, L] multimodal positions (`rope_index`) or [B, L]; None: 0..L-1 on all three
                rows (transformers without `mm_token_type_ids`; see the module doc).
            hidden_layers: indices into transformers' `output_hidden_states` list (0: embeddings; -1: the
                last layer after the final norm, which the Qwen-Image pipelines read); None: all of them.

        Returns:
            [J, B, L, D] the requested hidden states in the order asked, in the parameters' dtype.

        Raises:
            InputError: pixel_values without a layout, or the reverse.
        """
        lm = self.model.language_model
        x = lm.embed(input_ids)  # [B, L, D]
        if (pixel_values is None) != (layout is None):
            raise InputError("Qwen2.5-VL encoder: pass pixel_values and layout together (or neither)")
        if pixel_values is not None:
            features = self.image_features(pixel_values, layout).astype(x.dtype)  # [M, D]
            is_image = input_ids == self.image_token_id  # [B, L]
            # The k-th image-pad token of the batch (row-major) takes feature k, as transformers' masked_scatter.
            k = jnp.clip(jnp.cumsum(is_image.reshape(-1)) - 1, 0, features.shape[0] - 1)
            x = jnp.where(is_image[..., None], features[k].reshape(x.shape), x)
        return lm(x, attention_mask, position_ids, hidden_layers=hidden_layers)


@partial(jax.jit, static_argnames=("hidden_layers",))
def _encode(model, input_ids, attention_mask, pixel_values, layout, position_ids, hidden_layers):
    return model(
        input_ids,
        attention_mask,
        pixel_values=pixel_values,
        layout=layout,
        position_ids=position_ids,
        hidden_layers=hidden_layers,
    )


def encode(
    model: Qwen2_5_VLTextEncoder,
    cfg: Qwen2_5_VLConfig,
    input_ids,
    attention_mask=None,
    *,
    images=None,
    processor: Qwen2VLImageProcessorConfig | None = None,
    multimodal_positions: bool = False,
    hidden_layers: Sequence[int] | None = (-1,),
) -> jax.Array:
    """Prompt (+ images) -> hidden states: host preprocessing, then one jitted call (compiled once per shape).

    Args:
        model, cfg: the loaded encoder and its config.
        input_ids: [B, L] token ids (numpy or jax); with images, image pads already expanded
            (`expand_image_tokens` before tokenizing).
        attention_mask: [B, L], nonzero for real tokens; None: no padding.
        images: PIL images, in the order their image tokens appear across the batch; None: text only.
        processor: the image processor's config (`Qwen2VLImageProcessorConfig.from_folder`); None: defaults.
        multimodal_positions: use `rope_index` positions (the trained layout) instead of 0..L-1 (what
            diffusers' pipelines get from transformers 5; see the module doc).
        hidden_layers: indices into transformers' hidden_states list; default: the last (after the final norm).

    Returns:
        [J, B, L, D] hidden states.

    Raises:
        InputError: image tokens that do not match the images, or unsupported images.
    """
    ids = np.asarray(input_ids)
    mask = None if attention_mask is None else np.asarray(attention_mask)
    pixel_values = layout = grid = None
    if images:
        pixel_values, grid = preprocess(images, processor)
        layout = prepare_images(ids, grid, cfg)
        pixel_values = jnp.asarray(pixel_values)
    positions = jnp.asarray(rope_index(ids, mask, grid, cfg)) if multimodal_positions else None
    hidden = None if hidden_layers is None else tuple(hidden_layers)
    mask = None if mask is None else jnp.asarray(mask)
    return _encode(model, jnp.asarray(ids), mask, pixel_values, layout, positions, hidden)
