"""The conversion engine: a plan maps every jdiff parameter to reference tensor(s) and a named transform.

A plan is data. Resolution walks the *targets* (the parameters of the abstract jdiff model, so nothing is
allocated) and, for each, finds the first rule whose anchored regex matches its path; the rule's source
template, expanded with the match groups, names the reference key(s). Parameters of blocks stacked for a scan
over layers carry a leading layer axis: their path is matched with a `{layer}` placeholder after the stack's
prefix, and the sources of every layer are read and stacked. Every problem (missing source, unused source,
shape or dtype mismatch) is collected and raised together, naming both sides.

Paths are dot-joined NNX state paths, e.g. `transformer_blocks.attn.to_q.kernel`; reference keys are the
PyTorch state-dict names, e.g. `transformer_blocks.0.attn.to_q.weight`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from jdiff.errors import ConversionError

Shape = tuple[int, ...]
LAYER = "{layer}"


@dataclass(frozen=True)
class Transform:
    """A named array transform with its shape function, so a dry run can check shapes from headers alone.

    A `grouped` transform merges several sources along their output axis and takes `groups=` (the head
    count, from the rule's `heads`; see `Rule`) in both functions.
    """

    apply: Callable[..., np.ndarray]
    shape: Callable[..., Shape]
    grouped: bool = False


def torch_kernel_perm(ndim: int) -> tuple[int, ...]:
    # Linear [out, in] -> [in, out]; ConvNd [out, in, *spatial] -> [*spatial, in, out].
    if ndim == 2:
        return (1, 0)
    return (*range(2, ndim), 1, 0)


def _interleave(arrays: Sequence[np.ndarray], groups: int) -> np.ndarray:
    """The arrays merged along axis 0, head-major: group g of the result is group g of every array in turn."""
    parts = [np.asarray(a).reshape(groups, a.shape[0] // groups, *a.shape[1:]) for a in arrays]
    merged = np.concatenate(parts, axis=1)
    return merged.reshape(-1, *merged.shape[2:])


def _merged_shape(shapes: Sequence[Shape], groups: int) -> Shape:
    """Axis 0 summed over the sources; () (which no target has) when the sources do not merge."""
    if len({s[1:] for s in shapes}) > 1 or any(s[0] % groups for s in shapes):
        return ()
    return (sum(s[0] for s in shapes), *shapes[0][1:])


def part_columns(sizes: Sequence[int], groups: int) -> list[np.ndarray]:
    """Where each source's outputs land along a merged target's output axis (the `*_heads` transforms): for
    source i of `sizes[i]` outputs, the index array of its columns."""
    width = sum(sizes) // groups
    out, offset = [], 0
    for n in sizes:
        per = n // groups
        out.append((np.arange(groups)[:, None] * width + offset + np.arange(per)[None, :]).reshape(-1))
        offset += per
    return out


TRANSFORMS: dict[str, Transform] = {
    "identity": Transform(lambda x: x, lambda s: s),
    # torch.nn.Linear / ConvNd weight -> flax kernel.
    "torch_kernel": Transform(
        lambda x: np.transpose(x, torch_kernel_perm(x.ndim)),
        lambda s: tuple(s[i] for i in torch_kernel_perm(len(s))),
    ),
    # Several torch.nn.Linear weights [O_i, I] -> one flax kernel [I, sum O_i] whose columns are laid out
    # head-major: for each of the `groups` heads, its rows of every source in turn (q, k, v[, MLP share]). A
    # split of the output axis into contiguous shards (tensor parallelism by heads) then gives each shard
    # its own heads' q, k and v.
    "torch_kernel_heads": Transform(
        lambda *xs, groups: _interleave(xs, groups).T,
        lambda *ss, groups: _merged_shape(ss, groups)[::-1],
        grouped=True,
    ),
    # Their biases [O_i] -> [sum O_i], in the same column order.
    "heads": Transform(
        lambda *xs, groups: _interleave(xs, groups),
        lambda *ss, groups: _merged_shape(ss, groups),
        grouped=True,
    ),
}


@dataclass(frozen=True)
class Rule:
    """Target regex (anchored, matched against the whole path) -> source key template(s) + transform name."""

    target: str
    source: str | tuple[str, ...]
    transform: str = "identity"
    # For a grouped transform: a target path template (the match's groups expanded, like `source`) whose
    # last axis is the head dim H; the head count is then the first source's output size / H.
    heads: str | None = None
    # For a grouped transform: the sources' output sizes relative to each other (FLUX's single blocks: q, k,
    # v, MLP = 1, 1, 1, 4), checked against the sources and used to split the target back (`export`, LoRA
    # loading); None: all equal.
    widths: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {self.transform!r}; known: {sorted(TRANSFORMS)}")
        if TRANSFORMS[self.transform].grouped != (self.heads is not None):
            raise ValueError(
                f"rule {self.target!r}: `heads` goes with a grouped transform, and only with one"
            )
        re.compile(self.target)


def _merged(name: str, sources: tuple[str, str, str], norm: str) -> tuple[Rule, Rule]:
    """Rules for a merged q/k/v projection `name` at any depth, from three torch Linears beside it, with the
    head dim read from the per-head RMS norm `norm` beside it."""
    src = lambda suffix: tuple(rf"\1{s}.{suffix}" for s in sources)
    at = r"((?:.+\.)?)" + re.escape(name)
    return (
        Rule(at + r"\.kernel", src("weight"), "torch_kernel_heads", heads=rf"\1{norm}.scale"),
        Rule(at + r"\.bias", src("bias"), "heads", heads=rf"\1{norm}.scale"),
    )


# The default rules: flax parameter names -> torch parameter names. Family plans put their own rules first.
# `merged_qkv` / `merged_added_qkv`: the q/k/v projections of an attention (its image and text streams; the
# diffusers names) merged at load into one linear (jdiff.layers.merged).
DEFAULT_RULES: tuple[Rule, ...] = (
    *_merged("merged_qkv", ("to_q", "to_k", "to_v"), "norm_q"),
    *_merged("merged_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj"), "norm_added_q"),
    Rule(r"(.+)\.kernel", r"\1.weight", "torch_kernel"),
    Rule(r"(.+)\.scale", r"\1.weight"),
    Rule(r"(.+)\.embedding", r"\1.weight"),
    Rule(r"(.+)\.bias", r"\1.bias"),
)


@dataclass(frozen=True)
class Plan:
    """How one reference component maps onto one jdiff module.

    Attributes:
        rules: tried in order, before DEFAULT_RULES; the first whose target regex matches wins.
        stacked: path prefixes of blocks stacked for a scan over layers (leading axis = layer).
        ignore: anchored regexes of reference keys that are deliberately unused (buffers, unused heads).
        keep_fp32: anchored regexes of target paths kept in float32 whatever the dtype policy.
        keep_fp32_with_fp16: kept in float32 only under a float16 policy: transformers'
            `_keep_in_fp32_modules`, which bfloat16 (float32's exponent range) does not need.
        optional_prefix: a prefix that source keys may lack (rules name keys with it). transformers 5 saves
            `CLIPTextModel` without the `text_model.` level that released checkpoints carry, and loads both.
        source_aliases: (anchored regex, replacement) pairs renaming source keys to the names the rules use,
            for checkpoints saved under another layout than the rules name (the first matching pair wins; a
            key both present and aliased keeps its own name). transformers 5 nests multimodal models as
            `model.language_model.*` / `model.visual.*` where earlier exports wrote `model.*` / `visual.*`.
        lora_aliases: (anchored regex, replacement) pairs renaming the module names of LoRA files trained on
            another layout (e.g. the original Wan repository's `blocks.0.self_attn.q`) to the reference's
            module names (`blocks.0.attn1.to_q`); kohya's underscored forms are derived
            (`jdiff.pipelines.lora`).
    """

    rules: tuple[Rule, ...] = ()
    stacked: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    keep_fp32: tuple[str, ...] = ()
    keep_fp32_with_fp16: tuple[str, ...] = ()
    optional_prefix: str = ""
    source_aliases: tuple[tuple[str, str], ...] = ()
    lora_aliases: tuple[tuple[str, str], ...] = ()
    _all_rules: tuple[Rule, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_all_rules", tuple(self.rules) + DEFAULT_RULES)
        for pattern, _ in self.source_aliases:
            re.compile(pattern)

    def is_ignored(self, key: str) -> bool:
        return any(re.fullmatch(p, key) for p in self.ignore)

    def target_dtype(self, path: str, dtype) -> np.dtype:
        keep = self.keep_fp32 + (self.keep_fp32_with_fp16 if np.dtype(dtype) == np.float16 else ())
        return np.dtype(np.float32) if any(re.fullmatch(p, path) for p in keep) else np.dtype(dtype)


@dataclass(frozen=True)
class Assignment:
    """One resolved target: which source keys (per layer, if stacked) and which transform fill it."""

    target: str
    sources: tuple[tuple[str, ...], ...]  # [layer][source]; one entry when not stacked
    transform: str
    stacked: bool
    shape: Shape
    groups: int = 1  # a grouped transform's head count


class Match(NamedTuple):
    """How a target path resolves: its rule, the source key templates (`{layer}` for stacked layers), whether
    it is stacked, and for a grouped rule the target path whose last axis is the head dim."""

    rule: Rule
    sources: tuple[str, ...]
    stacked: bool
    heads: str | None


def _template_path(plan: Plan, path: str) -> tuple[str, bool]:
    for prefix in plan.stacked:
        if path.startswith(prefix + "."):
            return f"{prefix}.{LAYER}.{path[len(prefix) + 1 :]}", True
    return path, False


def _match(plan: Plan, path: str) -> Match | None:
    templ, stacked = _template_path(plan, path)
    for rule in plan._all_rules:
        m = re.fullmatch(rule.target, templ)
        if m:
            srcs = rule.source if isinstance(rule.source, tuple) else (rule.source,)
            heads = None if rule.heads is None else m.expand(rule.heads).replace(f".{LAYER}", "")
            return Match(rule, tuple(m.expand(s) for s in srcs), stacked, heads)
    return None


def match(plan: Plan, path: str) -> Match | None:
    """The rule a target path resolves by (see `Match`); None when no rule matches. LoRA loading reads which
    torch module(s) a kernel is."""
    return _match(plan, path)


def merged_parts(plan: Plan, path: str, shapes: Mapping[str, Shape]) -> list[tuple[str, np.ndarray]] | None:
    """For a target merged from several sources by a grouped rule: each source key template with the indices
    of its entries along the target's merged axis (the kernel's last), given the targets' `shapes` (for the
    head dim and the target's size). None for any other target.

    Raises:
        ValueError: the head-dim target is missing or does not divide the sizes (a jdiff bug).
    """
    m = _match(plan, path)
    if m is None or not TRANSFORMS[m.rule.transform].grouped:
        return None
    widths = m.rule.widths or (1,) * len(m.sources)
    total = shapes[path][-1]
    if m.heads not in shapes or total % sum(widths):
        raise ValueError(f"{path!r}: cannot split {total} outputs by {widths} with heads from {m.heads!r}")
    sizes = [total // sum(widths) * w for w in widths]
    groups = sizes[0] // shapes[m.heads][-1]
    return list(zip(m.sources, part_columns(sizes, groups), strict=True))


def _groups(rule: Rule, heads: str, targets: Mapping[str, Shape], keys: Sequence[str], sources) -> int | str:
    """A grouped rule's head count for these source keys (one layer's), or what is wrong."""
    shapes = [tuple(sources[k]) for k in keys]
    if heads not in targets:
        return f"its head dim comes from target {heads!r}, which the model lacks"
    h, sizes = targets[heads][-1], [s[0] for s in shapes]
    widths = rule.widths or (1,) * len(sizes)
    if len(widths) != len(sizes) or any(
        n * widths[0] != sizes[0] * w for n, w in zip(sizes, widths, strict=True)
    ):
        return f"sources {list(keys)} have output sizes {sizes}, not in the ratio {list(widths)}"
    if sizes[0] % h:
        return f"output size {sizes[0]} of {keys[0]!r} is not a multiple of the head dim {h}"
    return sizes[0] // h


def resolve(
    plan: Plan,
    targets: Mapping[str, Shape],
    sources: Mapping[str, Shape],
    *,
    component: str,
) -> list[Assignment]:
    """Resolves every target to its source keys, checking shapes; reads no tensor data.

    Args:
        plan: the family's plan.
        targets: jdiff parameter path -> shape (from the abstract model).
        sources: reference key -> shape (from safetensors headers).
        component: a name for error messages.

    Returns:
        One assignment per target.

    Raises:
        ConversionError: listing every missing, unexpected or mis-shaped key.
    """
    problems: list[str] = []
    used: set[str] = set()
    out: list[Assignment] = []
    # Rule key -> actual key, for sources saved without the optional prefix.
    actual = {k: k for k in sources}
    if plan.optional_prefix:
        actual.update(
            {plan.optional_prefix + k: k for k in sources if not k.startswith(plan.optional_prefix)}
        )
    # A missing key is named as this file would hold it: without the optional prefix when the file lacks it.
    bare = bool(plan.optional_prefix) and not any(k.startswith(plan.optional_prefix) for k in sources)

    def as_saved(key: str) -> str:
        return key.removeprefix(plan.optional_prefix) if bare else key

    for k in sources:
        for pattern, replacement in plan.source_aliases:
            m = re.fullmatch(pattern, k)
            if m:
                actual.setdefault(m.expand(replacement), k)
                break
    for path, shape in targets.items():
        matched = _match(plan, path)
        if matched is None:
            problems.append(f"no rule maps target {path!r}")
            continue
        rule, expanded, stacked, heads = matched
        layers = range(shape[0]) if stacked else [None]
        per_layer = tuple(tuple(s.replace(LAYER, str(i)) for s in expanded) for i in layers)
        missing = [k for keys in per_layer for k in keys if k not in actual]
        used.update(actual[k] for keys in per_layer for k in keys if k in actual)
        if missing:
            more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
            problems.append(f"missing source key {as_saved(missing[0])!r}{more} for target {path!r}")
            continue
        per_layer = tuple(tuple(actual[k] for k in keys) for keys in per_layer)
        tf = TRANSFORMS[rule.transform]
        if not per_layer:  # an empty stack (e.g. a config with zero single blocks): nothing to read
            out.append(Assignment(path, (), rule.transform, stacked, tuple(shape)))
            continue
        kw = {}
        if tf.grouped:
            found = {_groups(rule, heads, targets, keys, sources) for keys in per_layer}
            wrong = sorted(g for g in found if isinstance(g, str))
            if wrong or len(found) > 1:
                problems.append(f"target {path!r}: {wrong[0] if wrong else f'head counts {sorted(found)}'}")
                continue
            kw["groups"] = found.pop()
        layer_shapes = {tf.shape(*(tuple(sources[k]) for k in keys), **kw) for keys in per_layer}
        got = next(iter(layer_shapes))
        if stacked:
            got = (len(per_layer), *got)
        if len(layer_shapes) > 1 or tuple(got) != tuple(shape):
            problems.append(
                f"shape mismatch for target {path!r}: expects {tuple(shape)}, source "
                f"{per_layer[0][0]!r} gives {sorted(layer_shapes)} after {rule.transform!r}"
                + (f" stacked over {len(per_layer)} layers" if stacked else "")
            )
            continue
        out.append(Assignment(path, per_layer, rule.transform, stacked, tuple(shape), **kw))
    unexpected = sorted(k for k in sources if k not in used and not plan.is_ignored(k))
    problems.extend(f"unexpected source key {k!r} (no target uses it)" for k in unexpected)
    if problems:
        raise ConversionError(component, problems)
    return out


def _source_index(transform: str, index: tuple, ndim: int) -> tuple | None:
    """The source slice that yields target slice `index` under `transform`; None when it has no such map."""
    if transform == "identity":
        return index
    if transform == "torch_kernel":
        perm = torch_kernel_perm(ndim)  # target axis j is source axis perm[j]
        src = [slice(None)] * ndim
        for j, k in enumerate(perm):
            src[k] = index[j]
        return tuple(src)
    return None


def _grouped_source_index(
    assignment: Assignment, read: Callable[[str], np.ndarray], inner: tuple
) -> tuple[list[tuple], int] | None:
    """For a grouped transform: the slice of each source (of the first layer's shapes) and the head count that
    yield target slice `inner`, when that slice spans whole heads along the merged axis; None otherwise."""
    keys = assignment.sources[0]
    sizes = [read(k).shape[0] for k in keys]
    total, groups = sum(sizes), assignment.groups
    start, stop, step = inner[-1].indices(total)
    width = total // groups
    if step != 1 or start % width or stop % width or stop <= start:
        return None
    g0, g1 = start // width, stop // width
    rest = inner[:-1]  # the kernel's input axis: the torch weight's second
    index = [(slice(g0 * n // groups, g1 * n // groups), *rest) for n in sizes]
    return index, g1 - g0


def materialize_slice(
    assignment: Assignment, read: Callable[[str], np.ndarray], index: tuple[slice, ...]
) -> np.ndarray:
    """The target slice `index` of an assignment, reading only the matching slices of the sources.

    `read(key)` should return a lazily-read (memory-mapped) array: only the indexed bytes are then touched.
    Merged projections (grouped transforms) read slices when the target slice spans whole heads (a split by
    heads over the tensor axis, any split of the input axis); other slices of them, and transforms without an
    index map, fall back to materialising the whole target.
    """
    index = tuple(index) + (slice(None),) * (len(assignment.shape) - len(index))
    ndim = len(assignment.shape) - (1 if assignment.stacked else 0)
    inner = index[1:] if assignment.stacked else index
    if assignment.stacked and not assignment.sources:
        return materialize(assignment, read)[index]
    tf = TRANSFORMS[assignment.transform]
    layers = range(len(assignment.sources))[index[0]] if assignment.stacked else [0]
    if tf.grouped:
        found = _grouped_source_index(assignment, read, inner)
        if found is None:
            return materialize(assignment, read)[index]
        srcs, groups = found
        parts = [
            np.ascontiguousarray(
                tf.apply(
                    *(read(k)[i] for k, i in zip(assignment.sources[j], srcs, strict=True)), groups=groups
                )
            )
            for j in layers
        ]
        return np.stack(parts) if assignment.stacked else parts[0]
    src = _source_index(assignment.transform, inner, ndim)
    if src is None:
        return materialize(assignment, read)[index]
    parts = [np.ascontiguousarray(tf.apply(read(assignment.sources[i][0])[src])) for i in layers]
    return np.stack(parts) if assignment.stacked else parts[0]


def materialize(assignment: Assignment, read: Callable[[str], np.ndarray]) -> np.ndarray:
    """Reads and transforms the source tensors of one assignment (stacking layers when needed)."""
    tf = TRANSFORMS[assignment.transform]
    if assignment.stacked and not assignment.sources:
        return np.zeros(assignment.shape, np.float32)
    kw = {"groups": assignment.groups} if tf.grouped else {}
    arrays = [tf.apply(*(read(k) for k in keys), **kw) for keys in assignment.sources]
    return np.stack(arrays) if assignment.stacked else arrays[0]


# Inverses of the transforms that have one, for writing jdiff parameters back in the reference layout; a
# grouped transform's sources are first taken apart (`merged_parts`), then each goes through its inverse.
_INVERSE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "torch_kernel": lambda x: np.transpose(x, np.argsort(torch_kernel_perm(x.ndim))),
    "torch_kernel_heads": lambda x: x.T,
    "heads": lambda x: x,
}


def export(plan: Plan, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference state dict (key -> array) for jdiff parameters (path -> array): the plan run backwards.

    Raises:
        ValueError: a parameter no rule maps, or one whose transform has no inverse.
    """
    out: dict[str, np.ndarray] = {}
    shapes = {p: tuple(np.shape(v)) for p, v in params.items()}
    for path, value in params.items():
        matched = _match(plan, path)
        if matched is None:
            raise ValueError(f"no rule maps {path!r}")
        rule, keys, stacked, _ = matched
        merged = merged_parts(plan, path, shapes)
        if (len(keys) > 1 and merged is None) or rule.transform not in _INVERSE:
            raise ValueError(f"{path!r} uses {rule.transform!r} over {len(keys)} source(s): not invertible")
        inverse = _INVERSE[rule.transform]
        value = np.asarray(value)
        for key, columns in merged or [(keys[0], None)]:
            part = value if columns is None else np.take(value, columns, axis=-1)
            if stacked:
                out.update({key.replace(LAYER, str(i)): inverse(part[i]) for i in range(part.shape[0])})
            else:
                out[key] = inverse(part)
    return out
