"""The Mistral-3 text encoder: the language model of transformers' `Mistral3ForConditionalGeneration`
returning the hidden states the FLUX.2-dev pipeline stacks.

Axis letters: B batch, L sequence, D hidden size, J requested hidden states.

The module holds the decoder at `model.language_model` (`embed_tokens`, `layers`, `norm`), transformers 5's
key layout; the plan also reads the earlier `language_model.model.*` layout. No vision tower: FLUX.2-dev
encodes text only.

Use (FLUX.2-dev stacks entries 10, 20, 30; `hidden_layers` static under jit):

    cfg, enc = load_component(SPEC, folder)
    h = concat_hidden_states(encode(enc, ids, mask, hidden_layers=(10, 20, 30)))  # [B, L, 3 * D]
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from jdiff.models.llm.decoder import Decoder, concat_hidden_states, encode_tokens
from jdiff.models.mistral3.config import Mistral3Config


class _Mistral3Model(nnx.Module):
    def __init__(self, cfg: Mistral3Config, *, rngs: nnx.Rngs):
        self.language_model = Decoder(cfg.decoder_config(), rngs=rngs)


class Mistral3TextEncoder(nnx.Module):
    """Mistral-3's language model as a text encoder (no vision tower, projector or LM head)."""

    def __init__(self, cfg: Mistral3Config, *, rngs: nnx.Rngs):
        self.model = _Mistral3Model(cfg, rngs=rngs)

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
                num_hidden_layers or -1: last layer after the final norm); None: all num_hidden_layers + 1.
                Static (a tuple) under jit; layers past the deepest index are not run.
            position_ids: [B, L] RoPE positions; None: 0..L-1 per row, as transformers without positions.

        Returns:
            [J, B, L, D] the requested hidden states in the order asked, in the parameters' dtype. Outputs at
            padded positions are computed (right padding: as transformers does; left padding: unspecified).
        """
        lm = self.model.language_model
        return lm(lm.embed(input_ids), attention_mask, position_ids, hidden_layers=hidden_layers)


# The jitted entry point the pipelines call: `encode(model, ids, mask, hidden_layers=(...))` -> [J, B, L, D].
encode = encode_tokens
__all__ = ["Mistral3TextEncoder", "concat_hidden_states", "encode"]
