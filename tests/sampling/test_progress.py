"""The progress registry: ticks reach the hook of the request's token only, with one compiled program."""

import threading

import jax
import jax.numpy as jnp
import numpy as np

from jdiff.sampling import progress
from jdiff.sampling.loop import sample
from jdiff.sampling.table import sampler_for

EULER, CFG = sampler_for("FlowMatchEulerDiscreteScheduler", {"shift": 3.0})
X0 = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)


def _model(x, t, _):
    return jnp.sin(x) * t / 1000


def _runner():
    """A jitted loop taking the token as an argument, and its trace count."""
    traces = []

    @jax.jit
    def run(x, sched, token):
        traces.append(1)
        return sample(EULER, CFG, _model, x, sched, progress=token)

    return run, traces


def test_two_requests_on_two_threads_each_get_their_own_ticks():
    run, _ = _runner()
    seen = {3: [], 5: []}
    both_registered = threading.Barrier(2, timeout=120)

    def request(steps):
        with progress.track(seen[steps].append) as token:
            both_registered.wait()  # both hooks live at once: routing, not timing, keeps the ticks apart
            run(X0, EULER.schedule(CFG, steps), np.int32(token)).block_until_ready()
            jax.effects_barrier()
            both_registered.wait()

    threads = [threading.Thread(target=request, args=(n,)) for n in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen[3]) == [0, 1, 2]
    assert sorted(seen[5]) == [0, 1, 2, 3, 4]


def test_a_new_hook_does_not_recompile():
    run, traces = _runner()
    sched = EULER.schedule(CFG, 4)
    first, second = [], []
    for hook in (first.append, second.append):
        with progress.track(hook) as token:
            run(X0, sched, np.int32(token))
            jax.effects_barrier()
    assert len(traces) == 1
    assert sorted(first) == sorted(second) == [0, 1, 2, 3]


def test_unknown_and_finished_tokens_are_no_ops():
    run, _ = _runner()
    sched = EULER.schedule(CFG, 2)
    seen = []
    with progress.track(seen.append) as token:
        want = run(X0, sched, np.int32(token + 1000))  # nobody's token
        jax.effects_barrier()
    assert seen == []
    progress.emit(token, 0)  # a late tick after the request finished
    assert seen == []
    np.testing.assert_array_equal(run(X0, sched, np.int32(token)), want)  # the token changes no numbers


def test_tokens_are_unique_and_not_reused_at_once():
    with progress.track(print) as a, progress.track(print) as b:
        assert a != b
        assert 0 < a < 2**31 and 0 < b < 2**31
    with progress.track(print) as c:  # a late tick for b must not reach the next request
        assert c not in (a, b)


def test_the_callback_is_compiled_in_only_with_a_token():
    sched = EULER.schedule(CFG, 2)
    without = str(jax.make_jaxpr(lambda x, s: sample(EULER, CFG, _model, x, s))(X0, sched))
    with_token = str(
        jax.make_jaxpr(lambda x, s, k: sample(EULER, CFG, _model, x, s, progress=k))(X0, sched, np.int32(1))
    )
    assert "callback" not in without
    assert "callback" in with_token
