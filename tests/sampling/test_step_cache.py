"""Step caching in the loop (`jdiff.sampling.step_cache`) on a toy model in parts, against a plain Python
loop written from the references' rules (diffusers' FirstBlockCache hook, TeaCache4FLUX)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff.sampling import step_cache as sc
from jdiff.sampling.loop import sample
from jdiff.sampling.table import sampler_for

N, B, L, D = 8, 2, 5, 6
RNG = np.random.default_rng(0)
W1, W2 = (RNG.normal(0, 0.6, (D, D)).astype(np.float32) for _ in range(2))
X = RNG.normal(size=(B, L, D)).astype(np.float32) * np.array([1.0, 4.0], np.float32)[:, None, None]
COEFFS = (3.0, 0.0)  # a made-up rescaling polynomial (np.poly1d order)


def _parts(groups: int):
    """A toy model in parts: with groups=2 the batch is [negative; positive], the negative half perturbed by
    the step's `extra` (so its residual changes more than the positive half's)."""

    def embed(x, t, extra):
        h = jnp.concatenate([x * (1 + extra), x]) if groups == 2 else x
        return h, t / 1000

    def first(h, s):
        return h + jnp.tanh(h @ W1) * s

    def rest(h, s):
        return h + jnp.tanh(h @ W2) * (1 - s)

    def final(h, s):
        if groups == 2:
            neg, pos = jnp.split(h, 2)
            return neg + 2.0 * (pos - neg)
        return h

    return sc.CachedModel(
        embed, first, rest, final, probe=lambda h: h, modulated=lambda h, s: h * s, groups=groups
    )


def _setup(groups=1):
    sampler, cfg = sampler_for("FlowMatchEulerDiscreteScheduler", {"shift": 3.0})
    schedule = sampler.schedule(cfg, N)
    x = X
    extra = np.linspace(0, 0.8, N).astype(np.float32) * np.array([1, -1] * (N // 2), np.float32)
    return sampler, cfg, schedule, x, extra, _parts(groups)


def _run(mode, threshold, groups=1, coefficients=sc.IDENTITY):
    sampler, cfg, schedule, x, extra, parts = _setup(groups)
    cache = sc.StepCache(mode, parts, sc.params(threshold, coefficients))
    out, stats = sample(sampler, cfg, None, jnp.asarray(x), schedule, per_step=extra, cache=cache)
    return np.asarray(out), int(stats["skipped"]), np.asarray(stats["reused"])


def _uncached(groups=1):
    sampler, cfg, schedule, x, extra, m = _setup(groups)

    def model_fn(x, t, e):
        h0, s = m.embed(x, t, e)
        return m.final(m.rest(m.first(h0, s), s), s)

    return np.asarray(sample(sampler, cfg, model_fn, jnp.asarray(x), schedule, per_step=extra))


def _reference(mode, threshold, groups=1, coefficients=sc.IDENTITY):
    """The references' rules, one output at a time (an output's CFG halves decide together): each output
    must come out as it does alone, whatever it is batched with."""
    sampler, cfg, schedule, x_all, extra, m = _setup(groups)
    outs, reused = [], []
    for b in range(B):
        x, prev, residual, acc, n_reused = jnp.asarray(x_all[b : b + 1]), None, None, 0.0, 0
        for i in range(N):
            t = schedule.timesteps[i]
            h0, s = m.embed(x, t, extra[i])

            def change(new, old):
                halves = zip(jnp.split(new, groups), jnp.split(old, groups), strict=True)
                return [float(jnp.abs(a - o).mean() / jnp.abs(o).mean()) for a, o in halves]

            if mode == "first_block":
                h1 = m.first(h0, s)
                r = h1 - h0
                skip = prev is not None and threshold > 0 and max(change(r, prev)) < threshold
                if skip:
                    h = h1 + residual
                else:
                    h = m.rest(h1, s)
                    residual, prev = h - h1, r
            else:
                sig = m.modulated(h0, s)
                if i in (0, N - 1):
                    acc, skip = np.zeros(groups), False
                else:
                    acc = acc + np.polyval(coefficients, change(sig, prev))
                    skip = threshold > 0 and bool(np.all(acc < threshold))
                    acc = acc if skip else np.zeros(groups)
                prev = sig
                if skip:
                    h = h0 + residual
                else:
                    h = m.rest(m.first(h0, s), s)
                    residual = h - h0
            n_reused += skip
            x, _ = sampler.step(cfg, schedule, (), i, x, m.final(h, s))
        outs.append(np.asarray(x))
        reused.append(n_reused)
    return np.concatenate(outs), np.array(reused)


@pytest.mark.parametrize("mode", sc.MODES)
def test_threshold_zero_is_exactly_uncached(mode):
    out, skipped, reused = _run(mode, 0.0, coefficients=(-5.0,))  # even with a negative distance
    np.testing.assert_array_equal(out, _uncached())
    assert skipped == 0 and not reused.any()


@pytest.mark.parametrize(("mode", "computed"), [("first_block", 1), ("teacache", 2)])
def test_a_huge_threshold_skips_every_step_it_may(mode, computed):
    _, skipped, reused = _run(mode, 1e9)
    assert skipped == N - computed  # first_block: the first step; teacache: the first and the last
    np.testing.assert_array_equal(reused, N - computed)


@pytest.mark.parametrize(
    ("mode", "threshold", "groups", "coefficients"),
    [
        ("first_block", 0.4, 1, sc.IDENTITY),  # the outputs skip on different steps
        ("first_block", 0.25, 2, sc.IDENTITY),  # ... and different numbers of steps
        ("teacache", 0.8, 1, COEFFS),
        ("teacache", 0.8, 2, COEFFS),
    ],
)
def test_matches_the_reference_rules(mode, threshold, groups, coefficients):
    out, skipped, reused = _run(mode, threshold, groups, coefficients)
    want, want_reused = _reference(mode, threshold, groups, coefficients)
    np.testing.assert_array_equal(reused, want_reused)
    assert 0 < want_reused.sum() < B * (N - 1)  # some steps skipped, not all: the threshold means something
    assert skipped <= want_reused.min()  # the blocks are skipped only when every output skips
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_cfg_halves_share_the_decision():
    """The negative half changes more than the positive one: as CFG pairs, the outputs skip fewer steps than
    their positive rows would as independent outputs (groups=1), since the larger change decides."""
    sampler, cfg, schedule, x, extra, parts = _setup(2)
    alone = sc.CachedModel(**{**parts.__dict__, "groups": 1, "final": lambda h, s: h[B:]})
    reused = {}
    for name, m in (("pair", parts), ("alone", alone)):
        cache = sc.StepCache("first_block", m, sc.params(0.3))
        _, stats = sample(sampler, cfg, None, jnp.asarray(x), schedule, per_step=extra, cache=cache)
        reused[name] = np.asarray(stats["reused"])
    assert reused["pair"].shape == (B,) and reused["alone"].shape == (2 * B,)
    assert (reused["pair"] <= reused["alone"][B:]).all() and (reused["pair"] < reused["alone"][B:]).any()


def test_threshold_is_traced_not_static():
    sampler, cfg, schedule, x, extra, parts = _setup()
    traces = []

    @jax.jit
    def run(params):
        traces.append(1)
        cache = sc.StepCache("first_block", parts, params)
        return sample(sampler, cfg, None, jnp.asarray(x), schedule, per_step=extra, cache=cache)[1]

    counts = [int(run(sc.params(th))["skipped"]) for th in (0.0, 0.25, 1e9)]
    assert len(traces) == 1
    assert counts[0] == 0 < counts[1] < counts[2] == N - 1


def test_two_model_calls_per_step_are_refused():
    sampler, cfg = sampler_for("HeunDiscreteScheduler", {})
    schedule = sampler.schedule(cfg, 3)
    cache = sc.StepCache("first_block", _parts(1), sc.params(0.1))
    with pytest.raises(ValueError, match="one model call per step"):
        sample(sampler, cfg, None, jnp.zeros((B, L, D)), schedule, cache=cache)
