"""Step caching inside the one compiled loop: skip a step's remaining transformer blocks when its input
changed little since the last full evaluation, and reuse what they added then.

A family gives the loop its model in parts (`CachedModel`): embeddings, the first block, the remaining blocks,
the final layer. The loop's carry holds the cache (`init`), and each step (`call`) decides with one
`lax.cond` whether the remaining blocks run:

* "first_block" (diffusers' `FirstBlockCacheConfig` / ParaAttention's First Block Cache): the first block
  always runs; its residual r (its output minus its input, on the image/video tokens) is compared with r'
  of the last step that ran in full, as `mean|r - r'| / mean|r'|`. Below the threshold, the remaining
  blocks' residual from that step is added to the first block's output instead of running them. r' and the
  cached residual are refreshed only when the remaining blocks run, as in diffusers' hook. The first step
  always runs in full.
* "teacache" (TeaCache, Liu et al. 2024, github.com/ali-vilab/TeaCache): the signal is the first block's
  timestep-modulated input; its relative L1 change from the previous step (every step, skipped or not) is
  rescaled by the model's fitted polynomial and accumulated; while the sum stays below the threshold the step
  adds the residual all blocks added at the last full step; once it reaches it, the step runs in full and the
  sum restarts from zero. The first and the last step always run in full, as TeaCache4FLUX and
  TeaCache4Wan2.1 do.

Differences from the references, on purpose: a threshold of 0 never skips (diffusers' hook skips at a change
<= threshold, TeaCache at a sum < threshold, which a negative polynomial value can reach). Each output of a
batch decides as it would alone (diffusers averages over the batch it is called with), so an output does not
depend on what it is batched with; the remaining blocks are skipped on the steps every output skips, and an
output that would skip takes its cached residual on the others. True CFG's halves ([negative; positive],
`groups` = 2) decide together: each half's change is computed as the reference computes it for its own call
(diffusers keeps separate "cond" / "uncond" caches), and the larger decides. The threshold and the polynomial
are traced (changing them never recompiles); the mode is static. Every hidden-state leaf and signal has the
model batch (G * B rows, group-major) leading.

Axis letters: G groups (batch parts deciding together), B outputs; X any shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

MODES = ("first_block", "teacache")

# np.poly1d order (highest degree first): y = x, for families without a fitted TeaCache polynomial.
IDENTITY = (1.0, 0.0)


@dataclass(frozen=True)
class CachedModel:
    """A model evaluation in parts; each part a closure over the request's conditioning.

    With `h0, ctx = embed(x, t, extra)`, `final(rest(first(h0, ctx), ctx), ctx)` is the model output at step
    input x, model timestep t and the step's `per_step` slice `extra`; `ctx` is whatever the blocks need besides
    the hidden state (modulation, text tokens). Hidden states are any pytree of arrays; `first` and `rest`
    return the structure (and shapes) they take.

    Attributes:
        embed: (x, t, extra) -> (h0, ctx), what enters the first block.
        first: (h0, ctx) -> h1, the first block's output.
        rest: (h1, ctx) -> h, after the remaining blocks.
        final: (h, ctx) -> the model output (final norm and projection, CFG combination).
        probe: h -> the array of a hidden state whose first-block residual "first_block" compares, with the
            batch leading (the block's `hidden_states` output in diffusers' hook: image or video tokens).
        modulated: (h0, ctx) -> TeaCache's signal, batch leading (the first block's modulated input, or
            what the reference reads for the family); None: the family has no TeaCache.
        groups: how many equal parts of the batch decide separately (2 for true CFG's [negative; positive]).
    """

    embed: Callable[..., Any]
    first: Callable[..., Any]
    rest: Callable[..., Any]
    final: Callable[..., Array]
    probe: Callable[[Any], Array]
    modulated: Callable[..., Array] | None = None
    groups: int = 1


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class CacheParams:
    """The traced settings: `threshold` [] (0: never skip) and TeaCache's `coefficients` [K] (np.poly1d order)."""

    threshold: Float[Array, ""]
    coefficients: Float[Array, " k"]


@dataclass(frozen=True)
class StepCache:
    """What `sample(..., cache=...)` takes: the mode (static), the model in parts and the traced settings."""

    mode: str
    model: CachedModel
    params: CacheParams


def params(threshold: float, coefficients=IDENTITY) -> CacheParams:
    """Host-side settings for a jitted stage's arguments (numpy: traced there, one compile for all values)."""
    import numpy as np

    return CacheParams(np.float32(threshold), np.asarray(coefficients, np.float32))


def relative_change(new: Array, old: Array, groups: int) -> Float[Array, "g b"]:
    """mean|new - old| / mean|old| per row of the leading axis (G groups of B rows), in float32."""
    new = new.astype(jnp.float32).reshape(groups, -1, math.prod(new.shape[1:]))
    old = old.astype(jnp.float32).reshape(groups, -1, math.prod(old.shape[1:]))
    den = jnp.mean(jnp.abs(old), axis=-1)
    return jnp.mean(jnp.abs(new - old), axis=-1) / jnp.where(den > 0, den, 1.0)


def _rows(mask: Bool[Array, " b"], groups: int, like: Array) -> Array:
    """A per-output mask [B] for an array whose leading axis is the model batch [G * B], broadcastable."""
    return jnp.tile(mask, groups).reshape(-1, *([1] * (like.ndim - 1)))


def _pick(mask, groups: int, a, b):
    """Per output: `a` where `mask`, else `b` (pytrees with the model batch leading)."""
    return jax.tree.map(lambda u, v: jnp.where(_rows(mask, groups, u), u, v), a, b)


def _add(a, b):
    return jax.tree.map(lambda u, v: (u + v).astype(u.dtype), a, b)


def _sub(a, b):
    return jax.tree.map(lambda u, v: (u - v).astype(u.dtype), a, b)


def init(cache: StepCache, x: Array, t: Array, extra: Any) -> dict[str, Any]:
    """The cache's part of the loop carry before step 0, zeros of the shapes step 0 will produce."""
    m = cache.model
    h0 = jax.eval_shape(lambda: m.embed(x, t, extra)[0])
    if cache.mode == "first_block":
        signal = jax.eval_shape(lambda: m.probe(m.first(*m.embed(x, t, extra))))
    elif m.modulated is None:
        raise ValueError("this model has no TeaCache signal (CachedModel.modulated)")
    else:
        signal = jax.eval_shape(lambda: m.modulated(*m.embed(x, t, extra)))
    b = signal.shape[0] // m.groups

    def zeros(s):
        return jnp.zeros(s.shape, s.dtype)

    return dict(
        signal=zeros(signal),
        residual=jax.tree.map(zeros, h0),
        distance=jnp.zeros((m.groups, b), jnp.float32),
        skipped=jnp.zeros((), jnp.int32),  # steps on which the remaining blocks did not run
        reused=jnp.zeros((b,), jnp.int32),  # per output: steps that took its cached residual
    )


def call(
    cache: StepCache, state: dict[str, Any], i: Int[Array, ""], n: int, x: Array, t: Array, extra: Any
) -> tuple[Array, dict[str, Any]]:
    """Step i of n: the model output at (x, t) and the updated cache state (see the module docstring).

    Each output decides as it would alone (its CFG halves together): the remaining blocks run when any
    output needs them, and an output that would have skipped still takes its cached residual, so an output's
    result does not depend on what it is batched with.
    """
    m, p, g = cache.model, cache.params, cache.model.groups
    on = p.threshold > 0
    h0, ctx = m.embed(x, t, extra)
    old_signal, old_residual = state["signal"], state["residual"]
    if cache.mode == "first_block":
        h1 = m.first(h0, ctx)
        r = (m.probe(h1).astype(jnp.float32) - m.probe(h0).astype(jnp.float32)).astype(old_signal.dtype)
        change = jnp.max(relative_change(r, old_signal, g), axis=0)  # [B]
        skip = on & (i > 0) & (change < p.threshold)
        base, distance = h1, state["distance"]
        run = lambda: m.rest(h1, ctx)
        # As diffusers' hook: the compared residual is the one of the last step that ran in full.
        new_signal = _pick(skip, g, old_signal, r)
    else:
        signal = m.modulated(h0, ctx).astype(old_signal.dtype)
        rescaled = jnp.polyval(p.coefficients, relative_change(signal, old_signal, g))  # [G, B]
        always = (i == 0) | (i == n - 1)
        distance = jnp.where(always, 0.0, state["distance"] + rescaled)
        skip = on & ~always & jnp.all(distance < p.threshold, axis=0)
        distance = jnp.where(skip[None], distance, 0.0)
        base = h0
        run = lambda: m.rest(m.first(h0, ctx), ctx)
        new_signal = signal  # TeaCache compares consecutive steps, skipped or not

    def full():
        h = run()
        residual = _sub(h, base)
        return _pick(skip, g, _add(base, old_residual), h), _pick(skip, g, old_residual, residual)

    def reuse():
        return _add(base, old_residual), old_residual

    h, residual = jax.lax.cond(jnp.all(skip), reuse, full)
    state = dict(
        signal=new_signal,
        residual=residual,
        distance=distance,
        skipped=state["skipped"] + jnp.all(skip).astype(jnp.int32),
        reused=state["reused"] + skip.astype(jnp.int32),
    )
    return m.final(h, ctx), state
