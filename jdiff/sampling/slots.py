"""Step-level continuous batching: the denoising loop over a fixed set of batch slots, k steps at a time.

`sample()` (`loop.py`) runs one request's steps in one `lax.scan`; here a *bucket* of S slots runs as one
compiled *chunk* of k steps (`run_chunk`, a `lax.scan` of length k), and the host writes a new request into a
free slot between chunks (`insert`) and reads a finished one out (`Slots.x[s]`) while the others go on. Each
slot carries its own sample, solver state, step index, number of steps, schedule (padded to the bucket's
`max_steps`), noise key, conditioning (the family's pytree) and an active flag; every step calls the model once
on all S slots with each slot's own timestep, then runs the solver step per slot (`jax.vmap` over the slot axis,
each slot at its own step index). A slot that is inactive, or done with its steps, still goes through the model
(shapes never change) but its sample, state and step index are kept as they were (`jnp.where`).

Byte-identical batching: a request's result must not depend on its neighbours, its slot or how many requests
run. What makes it hold:
- Shapes are fixed per bucket (S slots, max_steps schedule rows, k steps per chunk): the same compiled program
  runs whatever the load, so XLA never picks another kernel, tiling or reduction order for a request because
  the batch changed size. Idle slots compute anyway; that is the cost (a bucket of S slots costs S rows per
  step with one request in it), unless the model runs slot by slot (`serial`, below).
- Rows never mix: every op of the denoisers is per row (attention and normalisation within a sample), the
  solver is elementwise, and the mask is a select. With fixed shapes, row s's bytes depend only on row s's
  inputs -- provided the backend computes every row of a matmul the same way whatever its position. That is
  checked on CPU by `tests/pipelines/test_slots.py` (a request gives the same bytes in every slot, alone or
  with others, joining at any chunk; it holds on XLA CPU for the tiny FLUX.1, Qwen-Image, Z-Image, FLUX.2
  and Wan models); a backend whose GEMM treated edge rows differently would fail it (not yet run on a GPU).
- A model may pick per slot between computations (Wan2.2's two experts, `model_fn`'s `run`): each choice
  is computed for all rows in its own `lax.cond` and each row selects its own, so a row's bytes do not depend
  on which branches ran for the others.
- With `serial` (`run_chunk`), every model call has batch 1 whatever the other slots hold, so the row
  question does not arise; idle slots are skipped (`lax.cond`), which removes the idle cost.
- Every step of a chunk is the same loop body (the scan is a while loop, not unrolled), so a request that
  joins at another point of a chunk sees the same program for each of its steps; a request's k-step
  alignment does not matter.
- Per-step noise comes from the slot's key folded with its own step index (`noise.step_noise`), as in
  `sample()`.

Outputs are close to (not bytewise equal to) `sample()`'s for the same request: the plain loop computes some
per-step values for all steps at once and runs at the request's own batch size, which XLA may round
differently (~1e-6 relative in float32).

Solvers: those whose step does not read the number of steps from the schedule's shape (`SLOT_STEPS`: flow
matching Euler, Euler, Euler ancestral, DDIM), or reads it from `aux["num_steps"]` where present (UniPC), and
that call the model once per step. DPM-Solver, LCM, PNDM and Heun use the static step count in their
final-step rules, which padding would break; their models keep request-level batching. Under `jax.vmap` a
solver's `lax.switch` over orders (UniPC) computes every branch and selects: cheap, elementwise work.

Axis letters: S slots, N the bucket's max_steps, X a sample's shape (without batch axis).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from jdiff.sampling import ddim, euler, flow_match, unipc
from jdiff.sampling.noise import step_noise
from jdiff.sampling.sampler import Sampler, Schedule

# Solver steps that read nothing from the schedule's length, so a schedule padded to max_steps steps is safe.
SLOT_STEPS = frozenset(
    {flow_match.euler_step, euler.euler_step, euler.ancestral_step, ddim.ddim_step, unipc.unipc_step}
)


def supports(sampler: Sampler) -> str | None:
    """None where `sampler` can run in slots, else why not (for messages and the server's routing)."""
    if sampler.model_calls != 1:
        return "its solver calls the model twice per step"
    if sampler.step not in SLOT_STEPS:
        return f"its solver's step ({sampler.step.__name__}) depends on the number of steps"
    return None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Slots:
    """A bucket's device state; every leaf has the slot axis first (one slot's values: no slot axis).

    Attributes:
        x: [S, *X] each slot's sample (float32).
        state: the solver's carry per slot.
        schedule: each slot's schedule, padded to N steps (`pad_schedule`).
        step: [S] int32, the next step to run.
        steps: [S] int32, the request's number of steps (step == steps: done).
        keys: [S, 2] uint32 noise keys (`noise.noise_keys`), for solvers adding noise while sampling.
        cond: the family's per-slot conditioning (text embeddings, guidance scale, ...).
        active: [S] bool; inactive slots are computed but never advanced.
        pred: [S, *X] the current prediction of the final sample, for previews: for flow-matching models
            x - sigma * v at the last step run (the data estimate), else the sample itself.
    """

    x: Array
    state: Any
    schedule: Schedule
    step: Array
    steps: Array
    keys: Array
    cond: Any
    active: Array
    pred: Array


def pad_schedule(schedule: Schedule, max_steps: int) -> Schedule:
    """`schedule` (numpy, n steps) with its per-step arrays padded to `max_steps` steps by repeating their last
    value (never read: a slot stops at its own n), and n itself as `aux["num_steps"]` (UniPC's final-order rule
    reads it). Leaves with n or n + 1 leading values are per-step."""
    n = schedule.num_steps
    if n > max_steps:
        raise ValueError(f"{n} steps exceed the slots' max_steps {max_steps}")

    def pad(a):
        a = np.asarray(a)
        if a.ndim and a.shape[0] in (n, n + 1):
            extra = max_steps - n
            return np.concatenate([a, np.repeat(a[-1:], extra, axis=0)])
        return a

    padded = jax.tree.map(pad, schedule)
    return dataclasses.replace(padded, aux={**padded.aux, "num_steps": np.int32(n)})


def slot(sampler: Sampler, cfg, x: Array, schedule: Schedule, steps, keys, cond: Any) -> Slots:
    """One slot's values (no slot axis) for a request starting from noise `x` [*X] (standard normal):
    `schedule` padded to the bucket's N (`pad_schedule`), its `steps`, its [2] noise key and conditioning.
    Traced or eager; the bucket's `insert` writes it."""
    schedule = jax.tree.map(jnp.asarray, schedule)
    x = (x * schedule.init_noise_sigma).astype(jnp.float32)
    return Slots(
        x=x,
        state=sampler.init(cfg, schedule, x),
        schedule=schedule,
        step=jnp.int32(0),
        steps=jnp.asarray(steps, jnp.int32),
        keys=jnp.asarray(keys, jnp.uint32),
        cond=cond,
        active=jnp.bool_(True),
        pred=x,
    )


def empty(one: Slots, size: int) -> Slots:
    """A bucket of `size` inactive slots shaped like the slot `one` (its values copied, so idle slots compute
    on finite numbers)."""
    full = jax.tree.map(lambda a: jnp.broadcast_to(a, (size, *jnp.shape(a))), one)
    return dataclasses.replace(full, active=jnp.zeros((size,), bool))


def insert(slots: Slots, index: Array, one: Slots) -> Slots:
    """`slots` with slot `index` (a traced int32: one program for every slot) replaced by `one`."""
    return jax.tree.map(lambda a, b: a.at[index].set(b.astype(a.dtype)), slots, one)


def release(slots: Slots, index: Array) -> Slots:
    """`slots` with slot `index` inactive (a cancelled request stops advancing)."""
    return dataclasses.replace(slots, active=slots.active.at[index].set(False))


def run_chunk(
    sampler: Sampler,
    cfg,
    model_fn: Callable[[Array, Array, Any, Array], Array],
    slots: Slots,
    k: int,
    serial: bool = False,
) -> Slots:
    """k denoising steps over every slot: one model call per step on all slots, the solver per slot.

    Args:
        sampler: a table row that `supports` slots.
        cfg: its config (static).
        model_fn: `model_fn(x, t, cond, run)`: the model output [S, *X] for inputs x [S, *X] at per-slot model
            timesteps t [S] with the slots' conditioning; `run` [S] says which slots advance (the others'
            outputs are discarded: a model may skip work no running slot needs, e.g. an expert).
        slots: the bucket's state.
        k: steps per chunk (static).
        serial: call the model once per slot at batch 1 (`lax.map`), skipping slots that do not run
            (`lax.cond`): idle slots then cost nothing and every call has one shape, so bytes never depend
            on the other slots either; worth it where the model is compute-bound at batch 1 (large images).

    Returns:
        The state after k steps; a slot advances only while active and short of its steps.
    """
    n_max = slots.schedule.timesteps.shape[1]

    def one_step(sch, state, i, x, out, key):
        noise = ()
        if sampler.takes_noise:
            noise = (lambda optional=False: step_noise(key[None], i, x.shape)[0],)
        return sampler.step(cfg, sch, state, i, x, out, *noise)

    def body(s: Slots, _):
        i = jnp.minimum(s.step, n_max - 1)
        t = jnp.take_along_axis(s.schedule.timesteps, i[:, None], axis=1)[:, 0]
        model_in = jax.vmap(lambda sch, i, x: sampler.scale_model_input(cfg, sch, i, x))(s.schedule, i, s.x)
        run = s.active & (s.step < s.steps)
        if serial:
            out = _serial(model_fn, run, model_in, t, s.cond)
        else:
            out = model_fn(model_in, t, s.cond, run)
        x, state = jax.vmap(one_step)(s.schedule, s.state, i, s.x, out, s.keys)
        if sampler.prediction(cfg) == "flow":
            sigma = jnp.take_along_axis(s.schedule.sigmas, i[:, None], axis=1)[:, 0]
            pred = s.x - sigma.reshape(-1, *(1,) * (s.x.ndim - 1)) * out.astype(jnp.float32)
        else:
            pred = x

        def keep(new, old):
            return jnp.where(run.reshape(-1, *(1,) * (new.ndim - 1)), new.astype(old.dtype), old)

        s = dataclasses.replace(
            s,
            x=keep(x, s.x),
            state=jax.tree.map(keep, state, s.state),
            step=s.step + run.astype(jnp.int32),
            pred=keep(pred, s.pred),
        )
        return s, None

    slots, _ = jax.lax.scan(body, slots, None, length=k)
    return slots


def _serial(model_fn, run, x, t, cond):
    """`model_fn` slot by slot at batch 1, zeros for slots that do not run."""

    def one(args):
        go, xs, ts, cs = args
        call = lambda: model_fn(
            xs[None], ts[None], jax.tree.map(lambda a: a[None], cs), jnp.ones((1,), bool)
        )[0]
        shape = jax.eval_shape(call)
        return jax.lax.cond(go, call, lambda: jnp.zeros(shape.shape, shape.dtype))

    return jax.lax.map(one, (run, x, t, cond))


__all__ = [
    "SLOT_STEPS",
    "Slots",
    "empty",
    "insert",
    "pad_schedule",
    "release",
    "run_chunk",
    "slot",
    "supports",
]
