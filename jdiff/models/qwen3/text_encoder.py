"""The Qwen3 text encoder: transformers' `Qwen3Model` (or `Qwen3ForCausalLM` without its head) returning
the hidden states the pipelines read.

Axis letters: B batch, L sequence, D hidden size, J requested hidden states.

The module holds the decoder as `model` (`model.embed_tokens`, `model.layers`, `model.norm`), the
`Qwen3ForCausalLM` key layout; the plan accepts `Qwen3Model`'s unprefixed keys too.

Use, e.g. Z-Image (entry -2) or FLUX.2-klein (entries 9, 18, 27), `hidden_layers` static under jit:

    cfg, enc = load_component(SPEC, folder)
    h = encode(enc, ids, mask, hidden_layers=(-2,))[0]  # [B, L, D], one jitted call
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from jdiff.models.llm.decoder import Decoder, concat_hidden_states, encode_tokens
from jdiff.models.qwen3.config import Qwen3Config


class Qwen3TextEncoder(nnx.Module):
    """Qwen3 as a text encoder (no LM head)."""

    def __init__(self, cfg: Qwen3Config, *, rngs: nnx.Rngs):
        self.model = Decoder(cfg.decoder_config(), rngs=rngs)

    def __call__(
        self,
        input_ids: Int[Array, "b l"],
        attention_mask: Int[Array, "b l"] | Bool[Array, "b l"] | None = None,
        *,
        hidden_layers: Sequence[int] | None = None,
        position_ids: Int[Array, "b l"] | None = None,
    ) -> Float[Array, "j b l d"]:
        """Encodes token ids.

        Args:
            input_ids: [B, L] token ids.
            attention_mask: [B, L], nonzero for real tokens, zero for padding (either side); None: no padding.
            hidden_layers: indices into transformers' `output_hidden_states` list (0: embeddings; i: layer i;
                num_hidden_layers or -1: last layer after the final norm; -2: the layer before, unnormed);
                None: all num_hidden_layers + 1. Static (a tuple) under jit.
            position_ids: [B, L] RoPE positions; None: 0..L-1 per row, as transformers without positions.

        Returns:
            [J, B, L, D] the requested hidden states in the order asked, in the parameters' dtype. Outputs at
            padded positions are computed (right padding: as transformers does; left padding: unspecified).
        """
        return self.model(
            self.model.embed(input_ids), attention_mask, position_ids, hidden_layers=hidden_layers
        )


# The jitted entry point the pipelines call: `encode(model, ids, mask, hidden_layers=(...))` -> [J, B, L, D].
encode = encode_tokens
__all__ = ["Qwen3TextEncoder", "concat_hidden_states", "encode"]
