"""The CLIP text encoders (transformers `CLIPTextModel` and `CLIPTextModelWithProjection`): last hidden state,
pooled output, the projected pooled output (SDXL's second encoder) and any layer's hidden state (SDXL reads
`hidden_states[-2]`, the penultimate layer's output).

Axis letters: B batch, L sequence, D width (hidden_size), N heads, H head dim, F mlp width, V vocabulary.

Attribute paths mirror the state-dict names of the checkpoints FLUX.1 ships
(`text_model.encoder.layers.0.self_attn.q_proj.weight`), so the conversion plan is the default rules; the
encoder layers are stacked (leading layer axis) and run with one `lax.scan`.

No attention padding mask is taken, on purpose: CLIP attends causally and its tokenizer pads at the end, so
padding never reaches a real token, and FLUX (like diffusers' pipelines) passes none.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from jdiff import sharding as sh
from jdiff.errors import InputError
from jdiff.layers import LayerNorm, Linear, dot_product_attention
from jdiff.layers.embed import Embed
from jdiff.layers.linear import scanned_weights
from jdiff.layers.stack import scan, stacked
from jdiff.models.clip.config import CLIPTextConfig

# transformers' ACT2FN entries; "gelu" is the exact (erf) GELU.
_ACTS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": partial(jax.nn.gelu, approximate=False),
    "gelu_pytorch_tanh": partial(jax.nn.gelu, approximate=True),  # SigLIP
}

# transformers' pooling reads the argmax of the token ids when eos_token_id is this legacy value.
LEGACY_EOS_TOKEN_ID = 2


class CLIPTextEmbeddings(nnx.Module):
    """Token embedding plus learned absolute position embedding."""

    def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs):
        self.token_embedding = Embed(cfg.vocab_size, cfg.hidden_size, axes=(sh.VOCAB, sh.EMBED), rngs=rngs)
        self.position_embedding = Embed(
            cfg.max_position_embeddings, cfg.hidden_size, axes=(None, sh.EMBED), rngs=rngs
        )

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        tokens = self.token_embedding(input_ids)  # [B, L, D]
        positions = self.position_embedding.embedding[: input_ids.shape[1]]  # [L, D]
        return tokens + positions[None]


class CLIPAttention(nnx.Module):
    """Multi-head self-attention with separate q, k, v projections (scale 1/sqrt(H)); causal for the text
    tower, bidirectional for the vision tower."""

    def __init__(self, cfg: CLIPTextConfig, *, causal: bool = True, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.causal = causal
        self.q_proj = Linear(d, d, axes=(sh.EMBED, sh.HEADS), rngs=rngs)
        self.k_proj = Linear(d, d, axes=(sh.EMBED, sh.HEADS), rngs=rngs)
        self.v_proj = Linear(d, d, axes=(sh.EMBED, sh.HEADS), rngs=rngs)
        self.out_proj = Linear(d, d, axes=(sh.HEADS, sh.EMBED), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        heads = (x.shape[0], x.shape[1], self.num_heads, -1)
        q, k, v = (p(x).reshape(heads) for p in (self.q_proj, self.k_proj, self.v_proj))  # [B, L, N, H]
        out = dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out_proj(out.reshape(x.shape))


class CLIPMLP(nnx.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs):
        self.act = cfg.hidden_act
        self.fc1 = Linear(cfg.hidden_size, cfg.intermediate_size, axes=(sh.EMBED, sh.MLP), rngs=rngs)
        self.fc2 = Linear(cfg.intermediate_size, cfg.hidden_size, axes=(sh.MLP, sh.EMBED), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(_ACTS[self.act](self.fc1(x)))  # through [B, L, F]


class CLIPEncoderLayer(nnx.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs):
        self.self_attn = CLIPAttention(cfg, rngs=rngs)
        self.layer_norm1 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg, rngs=rngs)
        self.layer_norm2 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x))
        x = x + self.mlp(self.layer_norm2(x))
        return sh.constrain(x, (sh.BATCH, sh.LENGTH, sh.ACT_EMBED))


class CLIPEncoder(nnx.Module):
    """The encoder layers, stacked on a leading layer axis and run with one `lax.scan`."""

    def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs):
        self.layers = stacked(lambda r: CLIPEncoderLayer(cfg, rngs=r), cfg.num_hidden_layers, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return scan(self.layers, x)

    def keeping(self, x: jax.Array, index: int) -> tuple[jax.Array, jax.Array]:
        """(the last layer's output, transformers' `hidden_states[index]`), in one scan over the layers.

        `hidden_states[0]` is the embeddings' output and `hidden_states[k]` the k-th layer's, before the final
        layer norm; negative indices count from the end (-1 is the last layer's output, -2 the penultimate).
        """
        graphdef, state = nnx.split(self.layers)
        n = jax.tree.leaves(state)[0].shape[0]
        if not -(n + 1) <= index <= n:
            raise InputError(f"CLIP text encoder: hidden state {index} of {n} layers does not exist")
        k = index % (n + 1)

        def body(carry, xs):
            h, kept = carry
            i, layer_state = xs
            kept = jnp.where(i == k, h, kept)  # hidden_states[i] is the input of layer i
            with scanned_weights():
                return (nnx.merge(graphdef, layer_state)(h), kept), None

        (x, kept), _ = jax.lax.scan(body, (x, jnp.zeros_like(x)), (jnp.arange(n), state))
        return x, (x if k == n else kept)


def pool_eos(
    hidden: Float[Array, "b l d"], input_ids: Int[Array, "b l"], eos_token_id: int
) -> Float[Array, "b d"]:
    """The hidden state at each sequence's end-of-text token, as transformers' `CLIPTextModel` picks it.

    With the legacy `eos_token_id == 2` (configs from before transformers PR #24773, FLUX.1's among them)
    the position is the argmax of the token ids: the original CLIP vocabulary puts end-of-text last, so it is
    the largest id. Otherwise it is the first position equal to `eos_token_id` (the tokenizer may pad with the
    same id). Ties resolve to the first position in both cases, as torch's argmax does.

    Args:
        hidden: [B, L, D] final hidden states.
        input_ids: [B, L] token ids.
        eos_token_id: the config's `eos_token_id`.

    Returns:
        [B, D] pooled output.
    """
    if eos_token_id == LEGACY_EOS_TOKEN_ID:
        idx = jnp.argmax(input_ids, axis=-1)
    else:
        idx = jnp.argmax((input_ids == eos_token_id).astype(jnp.int32), axis=-1)
    return jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]


class CLIPTextOutput(NamedTuple):
    """What `encode` returns (transformers' output fields, those the pipelines read)."""

    last_hidden_state: jax.Array  # [B, L, D], after the final layer norm
    pooled: jax.Array  # [B, D] at the end-of-text token (pooler_output)
    hidden_state: jax.Array | None  # [B, L, D]: hidden_states[index], when asked for
    text_embeds: jax.Array | None = None  # [B, P]: the projected pooled output (WithProjection only)


class CLIPTextTransformer(nnx.Module):
    """Embeddings, encoder, final norm and end-of-text pooling (transformers 4's `CLIPTextTransformer`)."""

    def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs):
        self.embeddings = CLIPTextEmbeddings(cfg, rngs=rngs)
        self.encoder = CLIPEncoder(cfg, rngs=rngs)
        self.final_layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.eos_token_id = cfg.eos_token_id
        self.max_position_embeddings = cfg.max_position_embeddings

    def __call__(self, input_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = self.encode(input_ids)
        return out.last_hidden_state, out.pooled

    def encode(self, input_ids: jax.Array, hidden_index: int | None = None) -> CLIPTextOutput:
        if input_ids.ndim != 2 or input_ids.shape[1] > self.max_position_embeddings:
            raise InputError(
                f"CLIP text encoder: expected token ids [batch, length] with length <= "
                f"{self.max_position_embeddings} (max_position_embeddings), got shape {tuple(input_ids.shape)}; "
                "tokenize with truncation to that length"
            )
        x = sh.constrain(self.embeddings(input_ids), (sh.BATCH, sh.LENGTH, sh.ACT_EMBED))  # [B, L, D]
        hidden = None
        if hidden_index is None:
            x = self.encoder(x)
        else:
            x, hidden = self.encoder.keeping(x, hidden_index)
        x = self.final_layer_norm(x)
        return CLIPTextOutput(x, pool_eos(x, input_ids, self.eos_token_id), hidden)


class CLIPTextModel(nnx.Module):
    """transformers' `CLIPTextModel`: no projection head (FLUX uses the pooled output as is)."""

    def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs):
        self.text_model = CLIPTextTransformer(cfg, rngs=rngs)

    def __call__(self, input_ids: Int[Array, "b l"]) -> tuple[Float[Array, "b l d"], Float[Array, "b d"]]:
        """Encodes token ids.

        Args:
            input_ids: [B, L] token ids, L <= max_position_embeddings; no attention mask (see module doc).

        Returns:
            (last_hidden_state [B, L, D] after the final layer norm, pooled [B, D] at the end-of-text token).

        Raises:
            InputError: input_ids not [B, L], or L above max_position_embeddings.
        """
        return self.text_model(input_ids)

    def encode(self, input_ids: Int[Array, "b l"], hidden_index: int | None = None) -> CLIPTextOutput:
        """The encoder's outputs, with `hidden_states[hidden_index]` when an index is given (see
        `CLIPEncoder.keeping`; diffusers' SD pipelines read -2 for SDXL and for `clip_skip`)."""
        return self.text_model.encode(input_ids, hidden_index)


class CLIPTextModelWithProjection(nnx.Module):
    """transformers' `CLIPTextModelWithProjection` (SDXL's `text_encoder_2`): the text tower plus a bias-free
    projection of the pooled output (`text_embeds`, SDXL's pooled conditioning)."""

    def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs):
        self.text_model = CLIPTextTransformer(cfg, rngs=rngs)
        self.text_projection = Linear(
            cfg.hidden_size, cfg.projection_dim, axes=(sh.EMBED, None), use_bias=False, rngs=rngs
        )

    def __call__(self, input_ids: Int[Array, "b l"]) -> tuple[Float[Array, "b l d"], Float[Array, "b p"]]:
        """(last_hidden_state [B, L, D], text_embeds [B, P]), as transformers returns them."""
        out = self.encode(input_ids)
        return out.last_hidden_state, out.text_embeds

    def encode(self, input_ids: Int[Array, "b l"], hidden_index: int | None = None) -> CLIPTextOutput:
        """As `CLIPTextModel.encode`, with `text_embeds` set."""
        out = self.text_model.encode(input_ids, hidden_index)
        return out._replace(text_embeds=self.text_projection(out.pooled))
