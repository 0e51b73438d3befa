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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from jdiff.errors import ConversionError

Shape = tuple[int, ...]
LAYER = "{layer}"


@dataclass(frozen=True)
class Transform:
    """A named array transform with its shape function, so a dry run can check shapes from headers alone."""

    apply: Callable[..., np.ndarray]
    shape: Callable[..., Shape]


def torch_kernel_perm(ndim: int) -> tuple[int, ...]:
    # Linear [out, in] -> [in, out]; ConvNd [out, in, *spatial] -> [*spatial, in, out].
    if ndim == 2:
        return (1, 0)
    return (*range(2, ndim), 1, 0)


TRANSFORMS: dict[str, Transform] = {
    "identity": Transform(lambda x: x, lambda s: s),
    # torch.nn.Linear / ConvNd weight -> flax kernel.
    "torch_kernel": Transform(
        lambda x: np.transpose(x, torch_kernel_perm(x.ndim)),
        lambda s: tuple(s[i] for i in torch_kernel_perm(len(s))),
    ),
}


@dataclass(frozen=True)
class Rule:
    """Target regex (anchored, matched against the whole path) -> source key template(s) + transform name."""

    target: str
    source: str | tuple[str, ...]
    transform: str = "identity"

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {self.transform!r}; known: {sorted(TRANSFORMS)}")
        re.compile(self.target)


# The default rules: flax parameter names -> torch parameter names. Family plans put their own rules first.
DEFAULT_RULES: tuple[Rule, ...] = (
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


def _template_path(plan: Plan, path: str) -> tuple[str, bool]:
    for prefix in plan.stacked:
        if path.startswith(prefix + "."):
            return f"{prefix}.{LAYER}.{path[len(prefix) + 1 :]}", True
    return path, False


def _match(plan: Plan, path: str) -> tuple[Rule, tuple[str, ...], bool] | None:
    """The first rule matching `path`, its expanded source templates (with `{layer}`), and whether stacked."""
    templ, stacked = _template_path(plan, path)
    for rule in plan._all_rules:
        m = re.fullmatch(rule.target, templ)
        if m:
            srcs = rule.source if isinstance(rule.source, tuple) else (rule.source,)
            return rule, tuple(m.expand(s) for s in srcs), stacked
    return None


def match(plan: Plan, path: str) -> tuple[Rule, tuple[str, ...], bool] | None:
    """The rule a target path resolves by, its source key templates (`{layer}` for stacked layers), and
    whether it is stacked; None when no rule matches. LoRA loading reads which torch module a kernel is."""
    return _match(plan, path)


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
        rule, expanded, stacked = matched
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
        layer_shapes = {tf.shape(*(tuple(sources[k]) for k in keys)) for keys in per_layer}
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
        out.append(Assignment(path, per_layer, rule.transform, stacked, tuple(shape)))
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


def materialize_slice(
    assignment: Assignment, read: Callable[[str], np.ndarray], index: tuple[slice, ...]
) -> np.ndarray:
    """The target slice `index` of an assignment, reading only the matching slices of the sources.

    `read(key)` should return a lazily-read (memory-mapped) array: only the indexed bytes are then touched.
    Transforms without an index map (fusions) fall back to materialising the whole target.
    """
    index = tuple(index) + (slice(None),) * (len(assignment.shape) - len(index))
    ndim = len(assignment.shape) - (1 if assignment.stacked else 0)
    inner = index[1:] if assignment.stacked else index
    src = _source_index(assignment.transform, inner, ndim)
    if src is None or (assignment.stacked and not assignment.sources):
        return materialize(assignment, read)[index]
    tf = TRANSFORMS[assignment.transform]
    layers = range(len(assignment.sources))[index[0]] if assignment.stacked else [0]
    parts = [np.ascontiguousarray(tf.apply(read(assignment.sources[i][0])[src])) for i in layers]
    return np.stack(parts) if assignment.stacked else parts[0]


def materialize(assignment: Assignment, read: Callable[[str], np.ndarray]) -> np.ndarray:
    """Reads and transforms the source tensors of one assignment (stacking layers when needed)."""
    tf = TRANSFORMS[assignment.transform]
    if assignment.stacked and not assignment.sources:
        return np.zeros(assignment.shape, np.float32)
    arrays = [tf.apply(*(read(k) for k in keys)) for keys in assignment.sources]
    return np.stack(arrays) if assignment.stacked else arrays[0]


# Inverses of the transforms that have one, for writing jdiff parameters back in the reference layout.
_INVERSE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "torch_kernel": lambda x: np.transpose(x, np.argsort(torch_kernel_perm(x.ndim))),
}


def export(plan: Plan, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference state dict (key -> array) for jdiff parameters (path -> array): the plan run backwards.

    Raises:
        ValueError: a parameter no rule maps, or one whose transform has no inverse (e.g. fused projections).
    """
    out: dict[str, np.ndarray] = {}
    for path, value in params.items():
        matched = _match(plan, path)
        if matched is None:
            raise ValueError(f"no rule maps {path!r}")
        rule, (key, *rest), stacked = matched
        if rest or rule.transform not in _INVERSE:
            raise ValueError(
                f"{path!r} uses {rule.transform!r} over {1 + len(rest)} source(s): not invertible"
            )
        inverse = _INVERSE[rule.transform]
        value = np.asarray(value)
        if stacked:
            out.update({key.replace(LAYER, str(i)): inverse(value[i]) for i in range(value.shape[0])})
        else:
            out[key] = inverse(value)
    return out
