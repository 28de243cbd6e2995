"""The traced side of the engine: one fit's pieces, and the CPU path's programs.

Every program takes ``(statics, blocks, mesh, *arrays)``: ``statics`` is the model
(``fun``, the solver, the problem's shared template, which args are batched, whether
sigma is, the ``_driver.Monitor``: what a fit records besides its Result), ``blocks``
the static block sizes, ``mesh`` None or the devices to ``shard_map`` over.  The state
between programs is packed (``packing``).

The solver state in a batch is the solver's ``thin`` state (the solvers' contract,
``fitfleet._solvers``): as a rule no Jacobian, only ``JᵀJ`` and ``Jᵀr`` travel, and the
Result evaluates ``J`` once, at the solution.
"""

import dataclasses
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from .. import _driver, _problem, _xla
from .._status import Status
from . import runtime
from .packing import fit_state_shape, pack, signature, unpack

SHRINK = 4  # a block's loop stops once at most 1/SHRINK of its fits still run

_STEPS = runtime.cache()  # one fit's step, jitted per model


# --------------------------------------------------------------------------- one fit


def member(template, mask, sigma_batched, data):
    """The Spec of one fit from the shared template and that fit's slice of the data."""
    x0, batched_args, sigma = data
    it = iter(batched_args)
    args = tuple(next(it) if b else a for a, b in zip(template.args, mask))
    if not sigma_batched:
        return dataclasses.replace(template, x0=x0, args=args)
    given, factor = sigma
    return dataclasses.replace(template, x0=x0, args=args, sigma=given if factor is None else factor, sigma_given=given)


def _problem_of(statics, data):
    fun, solver, template, mask, sigma_batched, monitor = statics
    return _problem.make_problem(fun, member(template, mask, sigma_batched, data))


def init_one(statics, data):
    """One fit's first state, as thin as its solver allows."""
    solver, monitor = statics[1], statics[5]
    problem, u0 = _problem_of(statics, data)
    return solver.thin(_driver.start(solver, problem, u0, monitor))


def _step_one(statics, data, state):
    """One step of one fit."""
    problem, _ = _problem_of(statics, data)
    return _driver.step(statics[1], problem, state, statics[5])


def result_one(statics, data, state):
    fun, solver, template, mask, sigma_batched, monitor = statics
    spec = member(template, mask, sigma_batched, data)
    problem, _ = _problem.make_problem(fun, spec)
    return _driver.to_result(problem, state, spec=spec, jac_dropped=solver.forms_jacobian)


def batched_step(statics):
    """``_step_one`` vmapped, for a batch ``(data, state)``; a finished fit keeps its
    state.  The step is jitted once per model, so the programs that vmap it at several
    block sizes trace it once (JAX vmaps its jaxpr).

    Under ``vmap`` every fit of the batch computes a step, and a finished fit's own
    point may be the slowest of all to evaluate: where a fit failed, an ODE solve that
    fails only at its step budget, which the whole batch would wait for at every step
    (12 Crauste starts, 4 of them failing at their start: 402 s in one batch, 42 s one
    at a time).  So a finished fit steps from a running fit's state (the first one's)
    instead of its own, and the result is dropped."""
    arrays, static = eqx.partition(statics, eqx.is_array)
    key = signature(static)
    step = _STEPS.get(key)  # one lookup: another thread may clear the cache meanwhile
    if step is None:
        step = runtime.remember(_STEPS, key, jax.jit(lambda a, d, s: _step_one(eqx.combine(a, static), d, s)))
    vstep = jax.vmap(functools.partial(step, arrays))

    def stepped(data, state):
        running = state.status == Status.RUNNING
        if running.shape == (1,):
            # A block of one steps unbatched: under vmap, even of one lane, every loop
            # inside the step (an ODE solve's) would carry its state through a select
            # at each of its iterations.  Measured on 12 Bruno starts (Rodas5P, one
            # thread): 3.1 s of CPU under vmap, 2.3 s without, as much as a loop of
            # ``least_squares`` calls.
            first = lambda tree: jax.tree_util.tree_map(lambda a: a[0], tree)  # noqa: E731
            new = jax.tree_util.tree_map(lambda a: a[None], step(arrays, first(data), first(state)))
            return jax.tree_util.tree_map(lambda a, b: jnp.where(running, a, b), new, state)
        lanes = lambda a: jnp.reshape(running, running.shape + (1,) * (a.ndim - 1))  # noqa: E731
        source = jnp.argmax(running)
        shadowed = jax.tree_util.tree_map(lambda a: jnp.where(lanes(a), a, a[source]), state)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(lanes(a), a, b), vstep(data, shadowed), state)

    return stepped


def running_count(statics, data, packed):
    status = unpack(packed, fit_state_shape(init_one, statics, data)).status
    return jnp.sum(status == Status.RUNNING, dtype=jnp.int32)


# --------------------------------------------------------------------------- the CPU path


def _iterate(statics, data, state, threshold):
    """Step every running fit until at most ``threshold`` of them are still running."""
    vstep = batched_step(statics)
    return jax.lax.while_loop(lambda s: jnp.sum(s.status == Status.RUNNING) > threshold, lambda s: vstep(data, s), state)


def _init(statics, blocks, data, valid):
    """The initial states; padding (``valid`` False) starts finished, so no round steps it."""
    state = jax.lax.map(functools.partial(init_one, statics), data, batch_size=_lanes(blocks[0]))
    return pack(eqx.tree_at(lambda s: s.status, state, jnp.where(valid, state.status, jnp.int32(Status.MAX_STEPS))))


def _round(statics, blocks, data, packed, stop_at):
    """One round over this device's fits (see ``host``), in stages: in blocks of
    ``blocks[0]``, then, once at most ``blocks[1]`` run, in one block of that size, and so
    on; returns the new (packed) state and how many fits still run.  The last stage, on
    one block, stops at ``stop_at`` running fits (the tail's block), or runs them all to
    the end (0)."""
    for block, stage_stop in zip(blocks, (*blocks[1:], stop_at)):
        packed = _stage(statics, block, data, packed, stage_stop)
    return packed, running_count(statics, data, packed)[None]


def _stage(statics, block, data, packed, stop_at):
    """The running fits, gathered first, in blocks of ``block``, one block after the
    other, each until at most ``block // SHRINK`` of its fits run (``stop_at`` if one
    block holds them all)."""
    like = fit_state_shape(init_one, statics, data)
    running = unpack(packed, like).status == Status.RUNNING
    n_running = jnp.sum(running, dtype=jnp.int32)
    order = jnp.argsort(~running, stable=True).astype(jnp.int32)  # running fits first
    n_blocks = -(-n_running // block)
    threshold = jnp.where(n_blocks > 1, block // SHRINK, stop_at)

    def run_block(i, packed):
        rows = jax.lax.dynamic_slice_in_dim(order, i * block, block)
        take = lambda tree: jax.tree_util.tree_map(lambda a: a[rows], tree)  # noqa: E731
        stepped = pack(_iterate(statics, take(data), unpack(take(packed), like), threshold))
        return tuple(a.at[rows].set(b, unique_indices=True) for a, b in zip(packed, stepped))

    return jax.lax.fori_loop(0, n_blocks, run_block, packed)


def _results(statics, blocks, data, packed):
    like = fit_state_shape(init_one, statics, data)
    one = lambda ds: result_one(statics, ds[0], unpack(ds[1], like))  # noqa: E731
    return jax.lax.map(one, (data, packed), batch_size=_lanes(blocks[0]))


def _lanes(block):
    """``lax.map``'s batch size for blocks of ``block`` fits: none for one (unbatched,
    as ``batched_step`` steps a block of one)."""
    return block if block > 1 else None


def sharded(local, n_batched, n_shared=0):
    """A jitted program over a chunk: ``local`` on one device, or under ``shard_map``
    on each device's share of the batch axis (where a ``mesh`` is given)."""

    def program(statics, blocks, mesh, *arrays):
        f = functools.partial(local, statics, blocks)
        if mesh is not None:
            specs = (PartitionSpec("batch"),) * n_batched + (PartitionSpec(),) * n_shared
            f = jax.shard_map(f, mesh=mesh, in_specs=specs, out_specs=PartitionSpec("batch"), check_vma=False)
        return f(*arrays)

    program.__name__ = local.__name__.lstrip("_")
    return _xla.filter_jit(program)


INIT = sharded(_init, 2)
ROUND = sharded(_round, 2, 1)
RESULTS = sharded(_results, 2)


# --------------------------------------------------------------------------- small helpers


@functools.partial(jax.jit, static_argnums=1)
def split_on_device(tree, n):
    size = jax.tree_util.tree_leaves(tree)[0].shape[0] // n
    return [jax.tree_util.tree_map(lambda a: a[i * size : (i + 1) * size], tree) for i in range(n)]


@functools.partial(jax.jit, static_argnums=1)
def concatenate_on_device(trees, size):
    return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a)[:size], *trees)


@_xla.filter_jit
def take(tree, rows):
    return jax.tree_util.tree_map(lambda a: a[rows], tree)
