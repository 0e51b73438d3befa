"""Prompt (and input image) encoding for the Qwen-Image pipelines: diffusers' chat templates, Qwen2.5-VL's
last hidden states, the template's tokens dropped.

Axis letters: Bm texts (one per model batch row), L tokens, T kept tokens, J encoder width, P image patches,
E values per patch.

As diffusers' `_get_qwen_prompt_embeds`: each text is formatted into the pipeline's template (the edit
templates name each input image, "Picture i: <|vision_start|><|image_pad|><|vision_end|>" for Edit-Plus),
every `<|image_pad|>` is expanded to its image's merged patch count (what transformers' processor does),
the encoder runs over the padded batch, and each row keeps its real tokens after the first `drop_idx`. Rows
are then right-padded with zeros to the longest, with a key mask (None when no row is padded), and cut to
`max_sequence_length`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff import compiler_options
from jdiff.errors import InputError
from jdiff.parallel.placement import context, put
from jdiff.pipelines.base import text_bucket
from jdiff.pipelines.model_dir import ModelDir

T2I_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
EDIT_TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
T2I_DROP, EDIT_DROP = 34, 64  # template tokens before the prompt's, as diffusers drops them
IMAGE_PAD = "<|image_pad|>"
VISION = "<|vision_start|>" + IMAGE_PAD + "<|vision_end|>"
T2I_MAX_TOKENS = 1024  # diffusers' tokenizer_max_length (text-to-image truncates there, after the template)
# Text lengths are rounded up to a multiple of this (the encoder's tokens and the kept ones), the rest masked:
# one compiled program per bucket rather than per prompt length. The encoder masks the padding (its rotary
# positions count real tokens only); the kept tokens' padding trails them, which the transformer's attention
# takes as key lengths (cuDNN's padding mask). At 1024^2 it is at most 31 text tokens next to 4096 image tokens.
TEXT_BUCKET = 32


def edit_prompt(prompt: str, n_images: int, plus: bool) -> str:
    """The user turn of the edit templates: QwenImageEditPipeline puts its one image first; Edit-Plus names
    each image ("Picture 1: ..."). Formatted into `EDIT_TEMPLATE` by the caller."""
    if not plus:
        return VISION + prompt
    return "".join(f"Picture {i + 1}: {VISION}" for i in range(n_images)) + prompt


class QwenVLText:
    """The tokenizer, image processor and Qwen2.5-VL encoder of a Qwen-Image directory.

    The encoder's weights (`params`, as loaded) belong in the pipeline's `_params` (under "text_encoder"), so
    that offload and the memory planner treat them as every other component's; `encode` takes them back.
    """

    def __init__(self, model: ModelDir, *, dtype, placement=None, edits: bool, plus: bool = False):
        from jdiff.models.qwen2_5_vl.image_processor import Qwen2VLImageProcessorConfig

        self.placement = placement
        self.edits, self.plus = edits, plus
        self.template = EDIT_TEMPLATE if edits else T2I_TEMPLATE
        self.drop_idx = EDIT_DROP if edits else T2I_DROP
        self.config, encoder = model.load("text_encoder", dtype=dtype, placement=placement)
        self._def, self.params = nnx.split(encoder)
        has_processor = "processor" in model.components()
        self.tokenizer = model.tokenizer("processor" if edits and has_processor else "tokenizer")
        self.image_processor = None
        if edits:
            if not has_processor:
                raise InputError(f"{model.root}: an edit pipeline needs its processor/ folder (Qwen2.5-VL's)")
            self.image_processor = Qwen2VLImageProcessorConfig.from_folder(model.folder("processor"))
        self._encode = compiler_options.jit(self._encode_fn)

    def _encode_fn(self, params, ids, mask, pixel_values, layout, gather, keep):
        enc = nnx.merge(self._def, params)
        hidden = enc(ids, mask, pixel_values=pixel_values, layout=layout, hidden_layers=(-1,))[
            0
        ]  # [Bm, L, J]
        rows = jnp.take_along_axis(hidden, gather[..., None], axis=1)  # [Bm, T, J]
        return jnp.where(keep[..., None], rows, 0).astype(hidden.dtype)

    def encode(self, params, texts: list[str], images: list, max_sequence_length: int | None):
        """(embeds [Bm, T, J], key mask [Bm, T] bool or None) for `texts`, each seeing every one of `images`,
        with the encoder's weights `params`.

        Raises:
            InputError: a prompt whose template leaves no token, or images a model directory cannot take.
        """
        from jdiff.models.qwen2_5_vl.image_processor import preprocess
        from jdiff.models.qwen2_5_vl.text_encoder import expand_image_tokens, prepare_images

        pixel_values = layout = None
        if self.edits:
            users = [edit_prompt(t, len(images), self.plus) for t in texts]
            patches, grid = preprocess(images, self.image_processor)
            # Every text sees every image: the expansion walks the images once per text.
            formatted = [expand_image_tokens([self.template.format(u)], grid, self.config)[0] for u in users]
        else:
            formatted = [self.template.format(t) for t in texts]
        lengths = self.tokenizer.lengths(formatted)
        limit = None if self.edits else T2I_MAX_TOKENS + self.drop_idx
        length = text_bucket(max(lengths), TEXT_BUCKET)
        length = length if limit is None else min(length, limit)
        ids, mask = self.tokenizer(formatted, length)
        if self.edits:
            grid_all = np.tile(grid, (len(texts), 1))
            pixel_values = np.tile(patches, (len(texts), 1))
            layout = prepare_images(ids, grid_all, self.config)
        gather, keep = _kept_tokens(mask, self.drop_idx, max_sequence_length)
        with context(self.placement):
            embeds = self._encode(
                params,
                put(self.placement, ids),
                put(self.placement, mask),
                pixel_values,
                layout,
                gather,
                keep,
            )
        return embeds, (None if keep.all() else keep)


def _kept_tokens(mask: np.ndarray, drop_idx: int, max_len: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(gather [Bm, T] int32 token positions, keep [Bm, T] bool): each row's real tokens after its first
    `drop_idx`, left-aligned, T the longest row's count rounded up to `TEXT_BUCKET` (cut to `max_len`)."""
    rows = [np.flatnonzero(m)[drop_idx:] for m in np.asarray(mask)]
    t = max(len(r) for r in rows)
    if t == 0:
        raise InputError("the prompt template left no prompt tokens; is this a Qwen-Image tokenizer?")
    t = text_bucket(t, TEXT_BUCKET)
    if max_len is not None:
        t = min(t, max_len)
    gather = np.zeros((len(rows), t), np.int32)
    keep = np.zeros((len(rows), t), bool)
    for b, r in enumerate(rows):
        r = r[:t]
        gather[b, : len(r)] = r
        keep[b, : len(r)] = True
    return gather, keep
