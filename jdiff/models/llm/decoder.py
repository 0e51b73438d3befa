"""One decoder-only transformer (the Llama family) shared by the LLM text encoders: Qwen2.5-VL's language
model, Qwen3 and Mistral.

Axis letters: B batch, L sequence (queries), S sequence (keys, = L), D model dim (hidden_size), N query heads,
K key/value heads, H head dim, F MLP width, R position rows (1, or 3 for mrope), J requested hidden states.

Attribute paths mirror transformers' `LlamaModel` / `Qwen2Model` / `Qwen3Model` state dicts (`embed_tokens`,
`layers.{i}.self_attn.q_proj`, `layers.{i}.mlp.gate_proj`, `layers.{i}.input_layernorm`, `norm`), the layers
stacked on a leading axis and run with one `lax.scan`.

What the text encoders return is transformers' `output_hidden_states=True` list, or only the entries asked
for: entry 0 is the token embeddings, entry i (1 <= i < num_hidden_layers) the output of layer i, and the
last entry the output of the last layer after the final norm (as transformers records it). Layers past the
deepest entry asked for are skipped, not computed: FLUX.2 reads (10, 20, 30) of Mistral's 40 layers, Z-Image
reads entry -2 and never runs the last layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from jdiff import sharding as sh
from jdiff.errors import InputError
from jdiff.layers import Linear, RMSNorm, dot_product_attention
from jdiff.layers.embed import Embed
from jdiff.layers.linear import scanned_weights
from jdiff.layers.stack import stacked
from jdiff.models.llm.config import DecoderConfig


def inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """RoPE inverse frequencies [H / 2], in float32 as transformers computes them."""
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    return (np.float32(1.0) / np.power(np.float32(theta), exponent)).astype(np.float32)


def rope_tables(
    position_ids: Int[Array, "r b l"], head_dim: int, theta: float, mrope_section: Sequence[int] | None
) -> tuple[Float[Array, "b l h"], Float[Array, "b l h"]]:
    """cos and sin [B, L, H] (float32) for rotate-half RoPE.

    With `mrope_section` (Qwen2.5-VL) the position rows are (temporal, height, width) and frequency j takes
    its angle from row `c % 3` of the chunk c of `mrope_section` it falls in; transformers'
    `recomposition_frequencies`. Otherwise row 0 is used.
    """
    freqs = position_ids.astype(jnp.float32)[..., None] * jnp.asarray(
        inv_freq(head_dim, theta)
    )  # [R,B,L,H/2]
    if mrope_section is None:
        freqs = freqs[0]
    else:
        bounds = np.cumsum([0, *mrope_section])
        freqs = jnp.concatenate(
            [freqs[c % 3, ..., bounds[c] : bounds[c + 1]] for c in range(len(mrope_section))], axis=-1
        )
    angles = jnp.concatenate([freqs, freqs], axis=-1)  # [B, L, H]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope_half(x: Float[Array, "b l n h"], cos: Float[Array, "b l h"], sin: Float[Array, "b l h"]):
    """x * cos + rotate_half(x) * sin with rotate_half((a, b)) = (-b, a) over the two halves, in float32."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]).astype(x.dtype)


def causal_padding_mask(
    attention_mask: Bool[Array, "b s"] | None, length: int, sliding_window: int | None = None
) -> Bool[Array, "b 1 l s"]:
    """Causal attention restricted to real keys, as transformers' `create_causal_mask` builds it (and
    `create_sliding_window_causal_mask`: with `sliding_window`, query q sees keys k with q - k < window).

    A query with no real key at or before it (the head of a left-padded row) would have an all-masked row;
    it attends to itself instead, so no row is empty on any backend. Such queries are padding: their outputs
    are unspecified in the reference too, and the pipelines drop them.
    """
    offset = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]  # query - key
    causal = offset >= 0
    if sliding_window is not None:
        causal = causal & (offset < sliding_window)
    causal = causal[None]  # [1, L, S]
    allowed = causal if attention_mask is None else causal & attention_mask.astype(bool)[:, None, :]
    empty = ~allowed.any(-1, keepdims=True)  # [B, L, 1]
    allowed = allowed | (empty & jnp.eye(length, dtype=bool)[None])
    return allowed[:, None]


class LlamaAttention(nnx.Module):
    """Grouped-query self-attention with RoPE, optional q/k/v bias and optional per-head q/k RMSNorm."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        d, h = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, h
        qkv = dict(axes=(sh.EMBED, sh.HEADS), use_bias=cfg.qkv_bias, bias_epilogue=True, rngs=rngs)
        self.q_proj = Linear(d, self.num_heads * h, **qkv)
        self.k_proj = Linear(d, self.num_kv_heads * h, **qkv)
        self.v_proj = Linear(d, self.num_kv_heads * h, **qkv)
        self.o_proj = Linear(self.num_heads * h, d, axes=(sh.HEADS, sh.EMBED), use_bias=cfg.o_bias, rngs=rngs)
        self.q_norm = RMSNorm(h, eps=cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(h, eps=cfg.rms_norm_eps) if cfg.qk_norm else None

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array) -> jax.Array:
        b, length, _ = x.shape
        q = self.q_proj(x).reshape(b, length, self.num_heads, self.head_dim)  # [B, L, N, H]
        k = self.k_proj(x).reshape(b, length, self.num_kv_heads, self.head_dim)  # [B, L, K, H]
        v = self.v_proj(x).reshape(b, length, self.num_kv_heads, self.head_dim)  # [B, L, K, H]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope_half(q, cos, sin), apply_rope_half(k, cos, sin)
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            # kv head j serves query heads j*groups .. j*groups + groups - 1 (transformers' repeat_kv).
            k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)  # [B, S, N, H]
        out = dot_product_attention(q, k, v, mask=mask)  # [B, L, N, H]
        return self.o_proj(out.reshape(b, length, -1))


class LlamaMLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear(d, f, axes=(sh.EMBED, sh.MLP), use_bias=False, rngs=rngs)
        self.up_proj = Linear(d, f, axes=(sh.EMBED, sh.MLP), use_bias=False, rngs=rngs)
        self.down_proj = Linear(f, d, axes=(sh.MLP, sh.EMBED), use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))  # through [B, L, F]


class LlamaDecoderLayer(nnx.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        self.self_attn = LlamaAttention(cfg, rngs=rngs)
        self.mlp = LlamaMLP(cfg, rngs=rngs)
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return sh.constrain(x, (sh.BATCH, sh.LENGTH, sh.ACT_EMBED))


def hidden_state_indices(hidden_layers: Sequence[int] | None, num_layers: int) -> tuple[int, ...]:
    """`hidden_layers` (indices into transformers' hidden_states list, negative ones from the end) as indices
    in 0..num_layers; None means all of them.

    Raises:
        InputError: an index out of range.
    """
    n = num_layers + 1
    if hidden_layers is None:
        return tuple(range(n))
    out = []
    for i in hidden_layers:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -n <= i < n:
            raise InputError(
                f"hidden state index {i!r} is out of range: the decoder has {n} hidden states "
                f"(embeddings + {num_layers} layers), so indices run from {-n} to {n - 1}"
            )
        out.append(int(i) % n)
    if not out:
        raise InputError("hidden_layers is empty; ask for at least one hidden state (e.g. (-1,))")
    return tuple(out)


@partial(jax.jit, static_argnames=("hidden_layers",))
def _encode(model, input_ids, attention_mask, position_ids, hidden_layers):
    return model(input_ids, attention_mask, position_ids=position_ids, hidden_layers=hidden_layers)


def encode_tokens(
    model: nnx.Module,
    input_ids,
    attention_mask=None,
    *,
    hidden_layers: Sequence[int] | None = (-1,),
    position_ids=None,
) -> Float[Array, "j b l d"]:
    """One jitted call of a text encoder built on this decoder (Qwen3, Mistral-3): `model(input_ids,
    attention_mask, position_ids=..., hidden_layers=...)`, compiled once per shape and `hidden_layers`.

    Args:
        model: a `Qwen3TextEncoder` or `Mistral3TextEncoder`.
        input_ids: [B, L] token ids (numpy or jax).
        attention_mask: [B, L], nonzero for real tokens; None: no padding.
        hidden_layers: indices into transformers' hidden_states list (Z-Image: (-2,); FLUX.2-klein: (9, 18,
            27); FLUX.2-dev: (10, 20, 30)); default the last; None: all.
        position_ids: [B, L] RoPE positions; None: 0..L-1 per row.

    Returns:
        [J, B, L, D] hidden states (`concat_hidden_states` gives FLUX.2's [B, L, J * D]).
    """
    hidden = None if hidden_layers is None else tuple(int(i) for i in hidden_layers)
    mask = None if attention_mask is None else jnp.asarray(attention_mask)
    positions = None if position_ids is None else jnp.asarray(position_ids)
    return _encode(model, jnp.asarray(input_ids), mask, positions, hidden)


def concat_hidden_states(hidden: Float[Array, "j b l d"]) -> Float[Array, "b l jd"]:
    """[J, B, L, D] -> [B, L, J * D], each token's requested layers side by side: FLUX.2's prompt embedding
    (`torch.stack(hidden_states[k] for k in layers, dim=1).permute(0, 2, 1, 3).reshape(B, L, J * D)`)."""
    j, b, length, d = hidden.shape
    return hidden.transpose(1, 2, 0, 3).reshape(b, length, j * d)


class Decoder(nnx.Module):
    """transformers' `LlamaModel`-style decoder (`embed_tokens`, `layers`, `norm`) returning hidden states."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, axes=(sh.VOCAB, sh.EMBED), rngs=rngs)
        self.layers = stacked(lambda r: LlamaDecoderLayer(cfg, rngs=r), cfg.num_hidden_layers, rngs)
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def embed(self, input_ids: Int[Array, "b l"]) -> Float[Array, "b l d"]:
        """Token embeddings [B, L, D] in the table's dtype."""
        return self.embed_tokens(input_ids)

    def __call__(
        self,
        inputs_embeds: Float[Array, "b l d"],
        attention_mask: Int[Array, "b l"] | Bool[Array, "b l"] | None = None,
        position_ids: Int[Array, "b l"] | Int[Array, "r b l"] | None = None,
        *,
        hidden_layers: Sequence[int] | None = None,
    ) -> Float[Array, "j b l d"]:
        """Runs the layers over embedded tokens.

        Args:
            inputs_embeds: [B, L, D] token embeddings (`embed(input_ids)`, possibly with image features
                scattered in).
            attention_mask: [B, L], nonzero for real tokens, zero for padding (left or right); None: all real.
                Attention is causal over real keys.
            position_ids: [B, L] or [R, B, L] RoPE positions (R = 3 rows for mrope); None: 0..L-1 for every
                row whatever the padding, as transformers does without explicit positions.
            hidden_layers: indices into transformers' `hidden_states` list (0 = embeddings, i = layer i's
                output, num_hidden_layers = the last layer's output after the final norm; negative indices
                count from the end); None: all num_hidden_layers + 1. Layers past the deepest index are skipped.

        Returns:
            [J, B, L, D] the requested hidden states, in the order asked, in the activation dtype.
        """
        cfg = self.cfg
        b, length, _ = inputs_embeds.shape
        wants = hidden_state_indices(hidden_layers, cfg.num_hidden_layers)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
        if position_ids.ndim == 2:
            position_ids = position_ids[None]
        if cfg.mrope_section is not None and position_ids.shape[0] == 1:
            position_ids = jnp.broadcast_to(position_ids, (3, b, length))
        cos, sin = rope_tables(position_ids, cfg.head_dim, cfg.rope_theta, cfg.mrope_section)
        mask = causal_padding_mask(attention_mask, length, cfg.sliding_window)
        x = sh.constrain(inputs_embeds, (sh.BATCH, sh.LENGTH, sh.ACT_EMBED))

        # Entries strictly inside the stack are recorded as the scan passes them; slot[i] is where the
        # output of layer i + 1 goes (-1: not asked for).
        inner = sorted({w for w in wants if 0 < w < cfg.num_hidden_layers})
        deepest = max(wants)
        slot = np.full(cfg.num_hidden_layers, -1, np.int32)
        for s, w in enumerate(inner):
            slot[w - 1] = s
        buf = jnp.zeros((max(len(inner), 1), *x.shape), x.dtype)  # [J', B, L, D]
        graphdef, state = nnx.split(self.layers)

        def body(carry, xs):
            h, rec = carry
            layer_state, i, s = xs
            with scanned_weights():
                block = nnx.merge(graphdef, layer_state)
                if deepest < cfg.num_hidden_layers:  # layers past the deepest entry are skipped
                    h = jax.lax.cond(i < deepest, lambda y: block(y, cos, sin, mask), lambda y: y, h)
                else:
                    h = block(h, cos, sin, mask)
            if inner:
                rec = jax.lax.cond(
                    s >= 0, lambda r: jax.lax.dynamic_update_index_in_dim(r, h, s, 0), lambda r: r, rec
                )
            return (h, rec), None

        steps = (state, jnp.arange(cfg.num_hidden_layers, dtype=jnp.int32), jnp.asarray(slot))
        (x_last, buf), _ = jax.lax.scan(body, (x, buf), steps)
        outs = []
        for w in wants:
            if w == 0:
                outs.append(inputs_embeds)
            elif w == cfg.num_hidden_layers:
                outs.append(self.norm(x_last))
            else:
                outs.append(buf[inner.index(w)])
        return jnp.stack(outs)
