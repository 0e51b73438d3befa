"""The Qwen3 config: field names are transformers' `Qwen3Config` keys, with its defaults.

Keys only used in training or generation (dropouts, initialiser range, token ids, cache flags) are ignored by
`from_dict`. RoPE comes as `rope_theta` (published checkpoints) or `rope_parameters` (transformers 5 saves);
both are folded into `rope_theta` when the config is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from jdiff.errors import InputError
from jdiff.models.llm.config import DecoderConfig, rope_theta_of
from jdiff.weights.config import preset


@dataclass(frozen=True)
class Qwen3Config:
    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 22016
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 32
    head_dim: int = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float | None = None
    rope_parameters: dict | None = None
    rope_scaling: dict | None = None
    attention_bias: bool = False
    use_sliding_window: bool = False
    tie_word_embeddings: bool = False

    def __post_init__(self):
        # Fold both RoPE spellings into rope_theta, so the config holds only hashable values.
        theta, _ = rope_theta_of("Qwen3", self.rope_theta, self.rope_parameters, self.rope_scaling, 10000.0)
        object.__setattr__(self, "rope_theta", theta)
        object.__setattr__(self, "rope_parameters", None)
        object.__setattr__(self, "rope_scaling", None)
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)

    # Named presets: the released config.json files, and a toy size.
    @classmethod
    def qwen3_4b(cls) -> Qwen3Config:
        """Qwen3-4B: Z-Image(-Turbo)'s and FLUX.2-klein-4B's text encoder."""
        return cls(
            vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
            num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
            rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        )  # fmt: skip

    @classmethod
    def qwen3_8b(cls) -> Qwen3Config:
        """Qwen3-8B: FLUX.2-klein-9B's text encoder."""
        return cls(
            vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
            num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
            rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
        )  # fmt: skip

    @classmethod
    def tiny(cls, **overrides) -> Qwen3Config:
        """A toy Qwen3: 3 layers, 9 query heads over 3 key/value heads of 8 (head_dim apart from
        hidden_size // heads), MLP 37; `overrides` replace fields."""
        return preset(
            cls,
            dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=9,
                 num_key_value_heads=3, head_dim=8, rope_theta=10000.0, max_position_embeddings=512),
            overrides,
        )  # fmt: skip

    def decoder_config(self) -> DecoderConfig:
        """The shared decoder's shape: q/k RMSNorm per head; attention_bias on q, k, v and o."""
        return DecoderConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            qkv_bias=self.attention_bias,
            o_bias=self.attention_bias,
            qk_norm=True,
            hidden_act=self.hidden_act,
            name="Qwen3",
        )

    def validate(self) -> None:
        """Raises InputError naming the first value jdiff does not implement."""
        if self.use_sliding_window:
            raise InputError(
                "Qwen3 config: use_sliding_window=true (sliding attention on the upper layers) is not "
                "implemented; the released Qwen3 checkpoints set it false"
            )
        self.decoder_config().validate()
