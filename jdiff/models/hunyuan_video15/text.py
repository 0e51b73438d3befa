"""HunyuanVideo-1.5's text side: the Qwen2.5-VL language model it ships alone, and the glyph-text extraction.

Axis letters: B batch, L tokens, D hidden size, J requested hidden states.

`text_encoder/` is transformers' `Qwen2_5_VLTextModel` (the language model of Qwen2.5-VL-7B-Instruct saved
without its vision tower or LM head): keys `embed_tokens.*`, `layers.{i}.*`, `norm.*` at the top level, which
is jdiff's Llama-style `Decoder` as it is. diffusers reads its hidden_states[-3] (`HIDDEN_LAYER`: two layers
skipped, no final norm) after a chat template, and drops the template's first `CROP_START` tokens.

`text_encoder_2/` is a T5 encoder (byT5-small with Glyph-SDXL-v2's weights, `T5Config.byt5_glyph()`), run on
the quoted text of the prompt only (`glyph_text`); a prompt without quotes gets all-masked zero features.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flax import nnx

from jdiff.errors import InputError
from jdiff.models.llm.config import DecoderConfig, rope_theta_of
from jdiff.models.llm.decoder import Decoder
from jdiff.weights.config import preset
from jdiff.weights.loading import ComponentSpec
from jdiff.weights.plan import Plan

# diffusers `HunyuanVideo15Pipeline.__init__` / `_get_mllm_prompt_embeds`.
SYSTEM_MESSAGE = (
    "You are a helpful assistant. Describe the video by detailing the following aspects:         "
    "1. The main content and theme of the video.         "
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects.         "
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects.         "
    "4. background environment, light, style and atmosphere.         "
    "5. camera angles, movements, and transitions used in the video."
)
CROP_START = 108  # template tokens before the prompt's
MAX_LENGTH = 1000  # prompt tokens kept after the template
HIDDEN_LAYER = -3  # hidden_states[-(num_hidden_layers_to_skip + 1)], num_hidden_layers_to_skip = 2
GLYPH_MAX_LENGTH = 256  # byT5 tokens

_QUOTED = re.compile(r"\"(.*?)\"|“(.*?)”")


def glyph_text(prompt: str) -> str | None:
    """The byT5 input of a prompt (diffusers `extract_glyph_texts`): each quoted span ("..." or “...”), in
    order, deduplicated when there are several, as `Text "span". `; None when the prompt quotes nothing."""
    spans = [a or b for a, b in _QUOTED.findall(prompt)]
    if len(spans) > 1:
        spans = list(dict.fromkeys(spans))
    return "".join(f'Text "{s}". ' for s in spans) if spans else None


@dataclass(frozen=True)
class Qwen2_5_VLTextConfig:
    """transformers `Qwen2_5_VLTextConfig` (defaults: transformers' defaults); the rope keys in either spelling
    (`rope_parameters`, or `rope_theta` + `rope_scaling`)."""

    vocab_size: int = 152064
    hidden_size: int = 8192
    intermediate_size: int = 29568
    num_hidden_layers: int = 80
    num_attention_heads: int = 64
    num_key_value_heads: int | None = 8
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-5
    use_sliding_window: bool = False
    rope_theta: float | None = None
    rope_scaling: dict | None = None
    rope_parameters: dict | None = None

    @classmethod
    def qwen2_5_vl_7b(cls) -> Qwen2_5_VLTextConfig:
        """Qwen2.5-VL-7B-Instruct's language model: HunyuanVideo-1.5's text_encoder."""
        return cls(
            vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
        )  # fmt: skip

    @classmethod
    def tiny(cls, **overrides) -> Qwen2_5_VLTextConfig:
        """A toy language model: 4 layers, 9 query heads over 3 key/value heads of 8; `overrides` replace fields."""
        return preset(
            cls,
            dict(vocab_size=100, hidden_size=72, intermediate_size=37, num_hidden_layers=4, num_attention_heads=9,
                 num_key_value_heads=3, rms_norm_eps=1e-6,
                 rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0}),
            overrides,
        )  # fmt: skip

    def decoder_config(self) -> DecoderConfig:
        theta, params = rope_theta_of(
            "Qwen2.5-VL text", self.rope_theta, self.rope_parameters, self.rope_scaling, 1000000.0
        )
        heads = self.num_attention_heads
        return DecoderConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=heads,
            num_key_value_heads=self.num_key_value_heads or heads,
            head_dim=self.hidden_size // heads,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=theta,
            qkv_bias=True,
            mrope_section=tuple(params.get("mrope_section", (16, 24, 24))),
            hidden_act=self.hidden_act,
            name="Qwen2.5-VL text",
        )

    def validate(self) -> None:
        if self.use_sliding_window:
            raise InputError(
                "Qwen2.5-VL text config: use_sliding_window=true is not implemented; the released checkpoints "
                "set it false"
            )
        if self.hidden_size % self.num_attention_heads:
            raise InputError(
                f"Qwen2.5-VL text config: hidden_size {self.hidden_size} does not split into "
                f"{self.num_attention_heads} attention heads; fix the text encoder's config.json"
            )
        self.decoder_config().validate()


class Qwen2_5_VLTextModel(Decoder):
    """transformers `Qwen2_5_VLTextModel`: Qwen2.5-VL's language model alone (q/k/v biases, mrope).

    Called as `Decoder`: `model(model.embed(ids), mask, hidden_layers=(HIDDEN_LAYER,))` -> [J, B, L, D]. With
    text only, mrope's three position rows are equal, i.e. plain RoPE over 0..L-1 as transformers computes it
    without explicit positions.
    """

    def __init__(self, cfg: Qwen2_5_VLTextConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg.decoder_config(), rngs=rngs)


# Default rules (kernel <- weight transposed, scale and embedding <- weight), the layers stacked. A full
# Qwen2_5_VLForConditionalGeneration checkpoint is read by jdiff.models.qwen2_5_vl.plan instead.
TEXT_SPEC = ComponentSpec(
    "Qwen2_5_VLTextModel", Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, Plan(stacked=("layers",))
)
