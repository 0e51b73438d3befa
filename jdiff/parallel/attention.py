"""Sequence-parallel attention over the `context` mesh axis (inside `shard_map`).

Axis letters: B batch, T query length, S key length, N heads, H head dim, c context-axis size.

Layout: q [B, T, N, H] and k, v [B, S, N, H] enter and leave the `shard_map` as
P(batch axes, "context", head axes, None): the sequence split over `context`, the batch over the rules'
`activation_batch` axes (data, fsdp) and the heads over `activation_heads` (tensor), each where it divides
(`jdiff.parallel.rules.logical_to_spec`). Outputs [B, T, N, H] come back in that same layout.

Modes:
  * "ulysses" (DeepSpeed-Ulysses): an all-to-all turns sequence shards into head shards, each device runs
    full-sequence attention on N/c heads with `jdiff.kernels.attention.local_attention` (cuDNN flash attention on
    GPU in bf16), and a second all-to-all turns it back. Two all-to-alls of q/k/v/o per call; needs the
    per-device head count to divide by c.
  * "ring": each device keeps its query block and the key/value blocks travel around the ring (c - 1
    `ppermute`s, each overlappable with a block of compute); partial results merge with a running
    log-sum-exp in float32. Any head count; the block kernel is XLA's and materialises [B, N, T/c, S/c]
    logits.
  * "auto" (`context_attention` only): ulysses when the heads divide, else ring.

Lengths that do not divide c: `context_attention` pads q to a multiple of c (padded query rows are dropped
from the output) and k/v likewise, masking the padded keys through the key padding mask. `ulysses_attention`
and `ring_attention` take already divisible lengths.

Joint text + image attention (FLUX, SD3). Do not replicate the text on every context shard: its projections,
MLP and attention rows would be computed c times. The single-stream blocks carry [text; image] as one
sequence: split it over `context` as a whole and call `context_attention`; every token lives on exactly one
shard. The double-stream blocks keep two streams, each split over `context` on its own; concatenating them
globally makes XLA move tokens to re-split the joint sequence. `joint_context_attention` takes the segments
separately and each device concatenates its local slices, so no tokens move: the joint sequence is then a
permutation of [text; image], to which attention is equivariant as long as nothing in the kernel depends on
position (RoPE is applied to q and k before the call, per token). Outputs come back per segment, in order.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec
from jaxtyping import Array, Bool, Float

from jdiff import sharding as sh
from jdiff.errors import InputError
from jdiff.kernels.attention import local_attention
from jdiff.parallel.rules import DEFAULT_RULES, Rules, logical_to_spec

CONTEXT = "context"
MODES = ("ulysses", "ring", "auto")


def _shard_map(f, *, mesh: Mesh, in_specs, out_specs):
    """`jax.shard_map` (or the experimental one on older jax) with replication checks off.

    The checks are off because outputs are replicated over the axes their specs omit by construction
    (inputs replicated there, identical computation), and older checkers reject valid ring collectives.
    """
    fn = getattr(jax, "shard_map", None)
    if fn is None:
        from jax.experimental.shard_map import shard_map as fn
    params = inspect.signature(fn).parameters
    check = {"check_vma": False} if "check_vma" in params else {"check_rep": False}
    return fn(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, **check)


def _context_size(mesh: Mesh) -> int:
    return dict(mesh.shape).get(CONTEXT, 1)


def _layout(mesh: Mesh, batch: int, heads: int, rules: Rules) -> tuple[PartitionSpec, PartitionSpec, int]:
    """(q/k/v/out spec, key-mask spec, heads per device) for a mesh whose context axis is > 1."""
    c = _context_size(mesh)
    names = (sh.BATCH, sh.LENGTH, sh.ACT_HEADS, None)
    spec = logical_to_spec(names, {**rules, sh.LENGTH: (CONTEXT,)}, shape=(batch, c, heads, 1), mesh=mesh)
    if spec[1] != CONTEXT:
        raise ValueError(f"rules put the context axis on batch or heads ({spec}); keep it for the sequence")
    shards = math.prod(dict(mesh.shape)[a] for a in _axes(spec[2]))
    return spec, PartitionSpec(spec[0], CONTEXT), heads // shards


def _axes(entry) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _ulysses_local(q, k, v, mask, *, scale, implementation):
    """Per-device ulysses: q [B', T/c, N', H] -> all-to-all -> [B', T, N'/c, H] -> attention -> back."""

    def to_heads(x):
        return jax.lax.all_to_all(x, CONTEXT, split_axis=2, concat_axis=1, tiled=True)

    q, k, v = to_heads(q), to_heads(k), to_heads(v)
    if mask is not None:
        # Gathered in shard order, the same order the all-to-all concatenated the keys in.
        mask = jax.lax.all_gather(mask, CONTEXT, axis=1, tiled=True)[:, None, None, :]  # [B', 1, 1, S]
    out = local_attention(q, k, v, mask=mask, scale=scale, implementation=implementation)
    return jax.lax.all_to_all(out, CONTEXT, split_axis=1, concat_axis=2, tiled=True)


def _ring_local(q, k, v, mask, *, size: int, scale):
    """Per-device ring: the local query block against every key/value block as they rotate past."""
    f32 = jnp.float32
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    b, t, n, h = q.shape
    m = jnp.full((b, n, t), -jnp.inf, f32)  # running max of the logits
    denom = jnp.zeros((b, n, t), f32)  # running sum of exp(logits - m)
    o = jnp.zeros((b, t, n, h), f32)  # running sum of exp(logits - m) v
    perm = [(j, (j + 1) % size) for j in range(size)]
    for step in range(size):
        # Issue the next block's transfer before this block's compute so the two can overlap.
        nxt = jax.lax.ppermute((k, v, mask), CONTEXT, perm) if step < size - 1 else None
        s = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=f32) * scale
        if mask is not None:
            s = jnp.where(mask[:, None, None, :], s, -jnp.inf)
        m_new = jnp.maximum(m, s.max(-1))
        # A row whose keys so far are all masked keeps m = -inf; shift by 0 there instead of inf - inf.
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        p = jnp.exp(s - m_safe[..., None])
        corr = jnp.exp(m - m_safe)
        denom = denom * corr + p.sum(-1)
        pv = jnp.einsum("bnts,bsnh->btnh", p.astype(v.dtype), v, preferred_element_type=f32)
        o = o * jnp.moveaxis(corr, 1, 2)[..., None] + pv
        m = m_new
        if nxt is not None:
            k, v, mask = nxt
    out = o / jnp.moveaxis(jnp.maximum(denom, jnp.finfo(f32).tiny), 1, 2)[..., None]
    return out.astype(q.dtype)


def _sharded(qs, ks, vs, masks, *, mesh, mode, scale, implementation, rules):
    """The shard_map over segments whose lengths all divide c; each device concatenates its local slices."""
    c = _context_size(mesh)
    b, _, n, _ = qs[0].shape
    spec, mask_spec, local_heads = _layout(mesh, b, n, rules)
    if mode == "auto":
        mode = "ulysses" if local_heads % c == 0 else "ring"
    if mode == "ulysses" and local_heads % c:
        raise InputError(
            f"ulysses attention splits each device's {local_heads} heads (of {n}, over mesh axes "
            f"{spec[2] or 'none'}) across context={c}, which does not divide them; use mode='ring' or 'auto', "
            f"or a mesh whose context size divides the per-device head count"
        )
    q_lens = [q.shape[1] // c for q in qs]

    def local(qs, ks, vs, masks):
        cat = lambda xs: xs[0] if len(xs) == 1 else jnp.concatenate(xs, axis=1)
        q, k, v = cat(qs), cat(ks), cat(vs)
        mask = None if masks is None else cat(masks)
        if mode == "ulysses":
            out = _ulysses_local(q, k, v, mask, scale=scale, implementation=implementation)
        else:
            out = _ring_local(q, k, v, mask, size=c, scale=scale)
        splits = [sum(q_lens[:i]) for i in range(1, len(q_lens))]
        return tuple(jnp.split(out, splits, axis=1))

    seg = (spec,) * len(qs)
    mask_specs = None if masks is None else (mask_spec,) * len(qs)
    fn = _shard_map(local, mesh=mesh, in_specs=(seg, seg, seg, mask_specs), out_specs=seg)
    return list(fn(tuple(qs), tuple(ks), tuple(vs), None if masks is None else tuple(masks)))


def _check_divisible(mesh: Mesh, *arrays: jax.Array) -> None:
    c = _context_size(mesh)
    for x in arrays:
        if x.shape[1] % c:
            raise InputError(
                f"sequence length {x.shape[1]} is not divisible by the context axis size {c}; call "
                f"jdiff.parallel.context_attention, which pads and masks"
            )


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InputError(f"context attention mode {mode!r} is not one of {', '.join(MODES)}")


def ulysses_attention(
    q: Float[Array, "b t n h"],
    k: Float[Array, "b s n h"],
    v: Float[Array, "b s n h"],
    *,
    mesh: Mesh,
    mask: Bool[Array, "b s"] | None = None,
    scale: float | None = None,
    implementation: str | None = None,
    rules: Rules = DEFAULT_RULES,
) -> Float[Array, "b t n h"]:
    """Ulysses sequence-parallel attention; T and S must be multiples of the context size (on a mesh whose
    context axis is 1, plain attention).

    Args:
        q, k, v: [B, T|S, N, H] global arrays (any layout; they are resharded to the module's layout).
        mesh: the mesh; its `context` axis splits the sequence.
        mask: key padding mask, True where a key may be attended to.
        scale: logits scale; None means 1/sqrt(H).
        implementation: the local attention backend ("cudnn", "xla"; None picks by platform and dtype).
        rules: the rule table giving the batch and head axes.

    Returns:
        [B, T, N, H] laid out as P(batch axes, "context", head axes, None).

    Raises:
        InputError: T or S not a multiple of the context size, or per-device heads not a multiple of it.
    """
    if _context_size(mesh) == 1:
        return context_attention(q, k, v, mesh=mesh, mask=mask, scale=scale, implementation=implementation)
    _check_divisible(mesh, q, k)
    masks = None if mask is None else [jnp.broadcast_to(mask, k.shape[:2])]
    return _sharded(
        [q],
        [k],
        [v],
        masks,
        mesh=mesh,
        mode="ulysses",
        scale=scale,
        implementation=implementation,
        rules=rules,
    )[0]


def ring_attention(
    q: Float[Array, "b t n h"],
    k: Float[Array, "b s n h"],
    v: Float[Array, "b s n h"],
    *,
    mesh: Mesh,
    mask: Bool[Array, "b s"] | None = None,
    scale: float | None = None,
    rules: Rules = DEFAULT_RULES,
) -> Float[Array, "b t n h"]:
    """Ring sequence-parallel attention; T and S must be multiples of the context size. Arguments as for
    `ulysses_attention` (the block kernel is always XLA's, softmax statistics in float32).

    Raises:
        InputError: T or S not a multiple of the context size.
    """
    if _context_size(mesh) == 1:
        return context_attention(q, k, v, mesh=mesh, mask=mask, scale=scale, implementation="xla")
    _check_divisible(mesh, q, k)
    masks = None if mask is None else [jnp.broadcast_to(mask, k.shape[:2])]
    return _sharded(
        [q], [k], [v], masks, mesh=mesh, mode="ring", scale=scale, implementation=None, rules=rules
    )[0]


def context_attention(
    q: Float[Array, "b t n h"],
    k: Float[Array, "b s n h"],
    v: Float[Array, "b s n h"],
    *,
    mesh: Mesh,
    mode: str = "ulysses",
    mask: Bool[Array, "b s"] | None = None,
    scale: float | None = None,
    implementation: str | None = None,
    rules: Rules = DEFAULT_RULES,
) -> Float[Array, "b t n h"]:
    """Sequence-parallel attention for any lengths: pads to multiples of the context size, masks the padded
    keys, strips the padded queries. Without a context axis (size 1) it is plain `local_attention`.

    Args:
        mode: "ulysses", "ring", or "auto" (ulysses when the per-device heads divide the context size).
        Others: as for `ulysses_attention`.

    Returns:
        [B, T, N, H]; when T divides the context size, laid out as P(batch axes, "context", head axes, None).

    Raises:
        InputError: an unknown mode, or mode="ulysses" with heads that do not divide.
    """
    return joint_context_attention(
        [q],
        [k],
        [v],
        mesh=mesh,
        mode=mode,
        masks=[mask],
        scale=scale,
        implementation=implementation,
        rules=rules,
    )[0]


def joint_context_attention(
    qs: Sequence[Float[Array, "b t n h"]],
    ks: Sequence[Float[Array, "b s n h"]],
    vs: Sequence[Float[Array, "b s n h"]],
    *,
    mesh: Mesh,
    mode: str = "ulysses",
    masks: Sequence[Bool[Array, "b s"] | None] | None = None,
    scale: float | None = None,
    implementation: str | None = None,
    rules: Rules = DEFAULT_RULES,
) -> list[Float[Array, "b t n h"]]:
    """Attention of the concatenated queries over the concatenated keys, segment by segment (e.g. text and
    image in FLUX's double-stream blocks) without a global concatenation (see the module docstring).

    Args:
        qs, ks, vs: one [B, T_i, N, H] / [B, S_i, N, H] array per segment (any lengths; each segment is padded
            to a multiple of the context size on its own).
        masks: None, or one key padding mask [B, S_i] (or None) per segment.
        Others: as for `context_attention`.

    Returns:
        One [B, T_i, N, H] output per segment: softmax over all keys of all segments.

    Raises:
        InputError: as for `context_attention`.
    """
    _check_mode(mode)
    masks = list(masks) if masks is not None else [None] * len(qs)
    c = _context_size(mesh)
    if c == 1:
        cat = lambda xs: jnp.concatenate(xs, axis=1)
        mask = None
        if any(m is not None for m in masks):
            mask = cat([_mask(m, k) for m, k in zip(masks, ks, strict=True)])[:, None, None, :]
        out = local_attention(
            cat(qs), cat(ks), cat(vs), mask=mask, scale=scale, implementation=implementation
        )
        return jnp.split(out, [sum(q.shape[1] for q in qs[:i]) for i in range(1, len(qs))], axis=1)

    pad = lambda x: jnp.pad(x, [(0, 0), (0, -x.shape[1] % c)] + [(0, 0)] * (x.ndim - 2))
    padded = any(x.shape[1] % c for x in (*qs, *ks))
    kmasks = None
    if padded or any(m is not None for m in masks):
        # jnp.pad fills with False: the padded keys are masked out.
        kmasks = [pad(_mask(m, k)) for m, k in zip(masks, ks, strict=True)]
    outs = _sharded(
        [pad(q) for q in qs],
        [pad(k) for k in ks],
        [pad(v) for v in vs],
        kmasks,
        mesh=mesh,
        mode=mode,
        scale=scale,
        implementation=implementation,
        rules=rules,
    )
    return [o[:, : q.shape[1]] for o, q in zip(outs, qs, strict=True)]


def _mask(mask: jax.Array | None, k: jax.Array) -> jax.Array:
    """The [B, S] key mask of a segment (all True when None)."""
    if mask is None:
        return jnp.ones(k.shape[:2], bool)
    return jnp.broadcast_to(mask.astype(bool), k.shape[:2])


def cross_context_attention(
    q: Float[Array, "b t n h"],
    k: Float[Array, "b s n h"],
    v: Float[Array, "b s n h"],
    *,
    mesh: Mesh,
    scale: float | None = None,
    implementation: str | None = None,
    rules: Rules = DEFAULT_RULES,
) -> Float[Array, "b t n h"]:
    """Cross-attention from a sequence split over `context` to keys that every context shard holds whole (a
    DiT's text or image tokens): each device attends its own query rows to all keys, with no communication.

    cuDNN's fused attention partitions only when q, k and v share one sharding, so it cannot be handed a
    sequence-split q and whole k/v directly; inside this `shard_map` each device calls it on local arrays.
    Query lengths that do not divide the context size are padded, and the padded rows dropped.

    Returns:
        [B, T, N, H], laid out as P(batch axes, "context", head axes, None) when T divides the context size.
    """
    c = _context_size(mesh)
    if c == 1:
        return local_attention(q, k, v, scale=scale, implementation=implementation)
    t = q.shape[1]
    pad = -t % c
    qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))) if pad else q
    spec, _, _ = _layout(mesh, q.shape[0], q.shape[2], rules)
    kv_spec = PartitionSpec(spec[0], None, spec[2], None)

    def local(q, k, v):
        return local_attention(q, k, v, scale=scale, implementation=implementation)

    out = _shard_map(local, mesh=mesh, in_specs=(spec, kv_spec, kv_spec), out_specs=spec)(qp, k, v)
    return out[:, :t] if pad else out
