"""The shape of a Llama-family decoder, as the family configs (Qwen2.5-VL, Qwen3, Mistral) describe it.

Not a config.json: each family's config class reads its own reference keys and builds one of these with
`decoder_config()`. Frozen and hashable, so modules keep it as static graph data.
"""

from __future__ import annotations

from dataclasses import dataclass

from jdiff.errors import InputError

SUPPORTED_ACTS = ("silu",)


@dataclass(frozen=True)
class DecoderConfig:
    """A decoder-only transformer: RMSNorm, grouped-query attention with RoPE, SwiGLU MLP.

    Attributes:
        vocab_size, hidden_size, intermediate_size, num_hidden_layers: the usual sizes.
        num_attention_heads, num_key_value_heads: query heads and key/value heads (GQA when fewer).
        head_dim: per-head width (Qwen3 and Mistral set it apart from hidden_size // heads).
        rms_norm_eps: epsilon of every RMSNorm (including Qwen3's q/k norms).
        rope_theta: RoPE base.
        qkv_bias: q/k/v projections carry a bias (Qwen2 / Qwen2.5, Qwen3's attention_bias).
        o_bias: the output projection carries a bias (Qwen3's attention_bias).
        qk_norm: per-head RMSNorm of q and k before RoPE (Qwen3).
        mrope_section: multimodal RoPE (Qwen2.5-VL): how many of the head_dim // 2 frequencies take their
            angle from the temporal, height and width position rows; None for plain 1D RoPE.
        hidden_act: the MLP gate activation.
        sliding_window: keys further back than this many positions are masked (Mistral); None: none.
        name: the family, for error messages.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    mrope_section: tuple[int, ...] | None = None
    hidden_act: str = "silu"
    sliding_window: int | None = None
    name: str = "decoder"

    def validate(self) -> None:
        """Raises InputError naming the first value the decoder does not implement."""
        sizes = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
        )
        for key in sizes:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{self.name} config: {key} should be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise InputError(
                f"{self.name} config: num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}; fix the text config"
            )
        if self.head_dim % 2:
            raise InputError(
                f"{self.name} config: head_dim={self.head_dim} must be even for rotary embeddings"
            )
        if self.hidden_act not in SUPPORTED_ACTS:
            raise InputError(
                f"{self.name} config: hidden_act {self.hidden_act!r} is not supported; expected one of "
                f"{list(SUPPORTED_ACTS)}"
            )
        if self.mrope_section is not None and (
            len(self.mrope_section) != 3 or sum(self.mrope_section) != self.head_dim // 2
        ):
            raise InputError(
                f"{self.name} config: mrope_section {list(self.mrope_section)} should be 3 numbers summing to "
                f"head_dim // 2 = {self.head_dim // 2}"
            )
        if self.sliding_window is not None and (
            not isinstance(self.sliding_window, int) or self.sliding_window < 1
        ):
            raise InputError(
                f"{self.name} config: sliding_window should be a positive integer or null, got {self.sliding_window!r}"
            )
        if not self.rope_theta > 0:
            raise InputError(f"{self.name} config: rope_theta should be positive, got {self.rope_theta!r}")


def rope_theta_of(
    name: str,
    rope_theta: float | None,
    rope_parameters: dict | None,
    rope_scaling: dict | None,
    default: float,
) -> tuple[float, dict]:
    """The RoPE base and the parameter dict, from either config.json spelling.

    transformers 5 writes `rope_parameters: {rope_type, rope_theta, ...}`; earlier exports (and the published
    checkpoints) write a top-level `rope_theta` and, where scaling is used, `rope_scaling: {type|rope_type,
    ...}`. Only unscaled RoPE ("default", or Qwen2.5-VL's "mrope", which is default RoPE over three position
    rows) is implemented.

    Raises:
        InputError: a scaled RoPE type (linear, dynamic, yarn, llama3, ...).
    """
    params = dict(rope_scaling or {})
    params.update(rope_parameters or {})
    theta = params.get("rope_theta", rope_theta if rope_theta is not None else default)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", "mrope"):
        raise InputError(
            f"{name} config: RoPE type {kind!r} is not supported (jdiff implements unscaled RoPE and mrope); "
            "remove rope_scaling or use a checkpoint without it"
        )
    return float(theta), params
