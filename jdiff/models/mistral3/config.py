"""The Mistral-3 config: transformers' `Mistral3Config`, whose `text_config` (a `MistralConfig`) shapes the
language model jdiff builds.

Only the language model is an encoder for FLUX.2-dev (its pipeline never passes images to it), so the vision
tower's `vision_config` and the projector's keys are read but not built; nested `text_config` keys follow
transformers' `MistralConfig` (defaults included). RoPE comes as `rope_theta` or `rope_parameters`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from jdiff.errors import InputError
from jdiff.models.llm.config import DecoderConfig, rope_theta_of
from jdiff.weights.config import preset


@dataclass(frozen=True)
class MistralTextConfig:
    """transformers `MistralConfig` keys (Mistral-3's `text_config`)."""

    model_type: str = "mistral"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096 * 32
    rms_norm_eps: float = 1e-6
    rope_theta: float | None = None
    rope_parameters: dict | None = None
    rope_scaling: dict | None = None
    sliding_window: int | None = 4096

    def __post_init__(self):
        theta, _ = rope_theta_of("Mistral", self.rope_theta, self.rope_parameters, self.rope_scaling, 10000.0)
        object.__setattr__(self, "rope_theta", theta)
        object.__setattr__(self, "rope_parameters", None)
        object.__setattr__(self, "rope_scaling", None)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)


@dataclass(frozen=True)
class Mistral3Config:
    """transformers `Mistral3Config`: `text_config` (a dict in config.json, a `MistralTextConfig` once read).

    `vision_config` is not kept (the vision tower is not built); the loader ignores its weights.
    """

    text_config: MistralTextConfig | dict | None = None
    vision_config: dict | None = None
    image_token_index: int = 10

    def __post_init__(self):
        text = self.text_config
        if text is None:
            text = MistralTextConfig()
        elif isinstance(text, dict):
            names = {f.name for f in dataclasses.fields(MistralTextConfig)}
            text = MistralTextConfig(**{k: v for k, v in text.items() if k in names})
        object.__setattr__(self, "text_config", text)
        object.__setattr__(self, "vision_config", None)

    # Named presets: the released config.json files, and a toy size.
    @classmethod
    def small_24b(cls) -> Mistral3Config:
        """Mistral-Small-3.1/3.2-24B's language model: FLUX.2-dev's text encoder (40 layers of 5120, 32 heads
        over 8 key/value heads of 128, RoPE base 1e9, no sliding window)."""
        return cls(
            text_config=MistralTextConfig(
                vocab_size=131072, hidden_size=5120, intermediate_size=32768, num_hidden_layers=40,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
                rms_norm_eps=1e-5, rope_theta=1000000000.0, sliding_window=None,
            )
        )  # fmt: skip

    @classmethod
    def tiny(cls, **overrides) -> Mistral3Config:
        """A toy language model: 3 layers, 9 query heads over 3 key/value heads of 8, MLP 37, a sliding window
        of 6; `overrides` replace text_config fields."""
        return preset(
            cls,
            dict(text_config={
                **dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=3,
                       num_attention_heads=9, num_key_value_heads=3, head_dim=8, rope_theta=10000.0,
                       rms_norm_eps=1e-5, sliding_window=6, max_position_embeddings=512),
                **overrides,
            }),
            {},
        )  # fmt: skip

    def decoder_config(self) -> DecoderConfig:
        t = self.text_config
        return DecoderConfig(
            vocab_size=t.vocab_size,
            hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_hidden_layers,
            num_attention_heads=t.num_attention_heads,
            num_key_value_heads=t.num_key_value_heads,
            head_dim=t.head_dim,
            rms_norm_eps=t.rms_norm_eps,
            rope_theta=t.rope_theta,
            hidden_act=t.hidden_act,
            sliding_window=t.sliding_window,
            name="Mistral-3 text",
        )

    def validate(self) -> None:
        """Raises InputError naming the first value jdiff does not implement."""
        if self.text_config.model_type != "mistral":
            raise InputError(
                f"Mistral-3 config: text_config.model_type {self.text_config.model_type!r} is not supported; "
                "jdiff builds the 'mistral' language model (FLUX.2-dev's)"
            )
        self.decoder_config().validate()
