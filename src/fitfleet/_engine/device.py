"""The accelerator path: a whole chunk of fits in one program that stays on the device.

On a GPU a step costs about the same for a thousand fits as for one (it is kernel
launches), and every trip to the host costs a synchronisation; what wastes time is
stepping fits that have finished.  So the program

1. initialises every fit (``vmap``);
2. runs *rounds* in a ``while_loop`` until no fit runs.  A round counts the running
   fits, sorts them first (a stable ``argsort`` of their statuses), and picks from a
   static *ladder* of widths (``N, N/4, N/16, ...`` down to ``SMALLEST``) the narrowest
   that holds them all; its branch (``lax.switch``) gathers that many rows, steps them
   with a vmapped ``while_loop`` until no more than the next width's worth still run (to
   the end on the last width), and scatters them back.  The widest branch needs no
   gather.  Each width is a step compiled once, so stragglers end up stepping in a
   narrow batch of their own;
3. builds the Results (``vmap``).

The host launches it once per chunk and reads nothing back: compaction, stragglers and
termination are decided on the device.  The step is the solver's ``vectorised()`` one
(the solvers' contract: no loop inside a step; LM's damping search on one
eigendecomposition instead of a loop of Cholesky factorisations, the same iterates to
round-off).  Every fit takes exactly the steps it would take alone with that step (a
step leaves a finished fit unchanged; a width changes no fit's arithmetic), so the
results equal a plain vmapped loop's to round-off.  Forced on CPU
(``fitfleet.engine_settings(path="accelerator")``) it runs the same program there
(slower than the CPU path: LAPACK's eigendecomposition is called once per fit, where
the CPU path's unrolled Cholesky runs across a block in SIMD lanes).
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._status import Status
from .packing import fit_state_shape, leading, pack, unpack
from .programs import batched_step, init_one, result_one, running_count, sharded

FACTOR = 4  # each width of the ladder is a quarter of the one above
SMALLEST = {"cpu": 4, "accelerator": 1024}  # the narrowest width: below it a step costs no less


def ladder(n, smallest):
    """The widths a chunk of ``n`` fits (per device) steps in, widest first."""
    widths = [n]
    while widths[-1] > smallest:
        widths.append(max(smallest, -(-widths[-1] // FACTOR)))
    return tuple(widths)


def _run(statics, widths, data, valid):
    like = fit_state_shape(init_one, statics, data)
    state = jax.vmap(lambda d: init_one(statics, d))(data)
    # Padding (``valid`` False) starts finished: no round steps it.
    status = jnp.where(valid, state.status, jnp.int32(Status.MAX_STEPS))
    packed = pack(eqx.tree_at(lambda s: s.status, state, status))
    stops = (*widths[1:], 0)
    branches = [_round_at(statics, data, like, width, stop) for width, stop in zip(widths, stops)]

    def one_round(packed):
        running = unpack(packed, like).status == Status.RUNNING
        n_running = jnp.sum(running, dtype=jnp.int32)
        order = jnp.argsort(~running, stable=True).astype(jnp.int32)  # running fits first
        level = sum((n_running <= w).astype(jnp.int32) for w in widths[1:])  # the narrowest width that holds them
        return jax.lax.switch(level, branches, packed, order)

    packed = jax.lax.while_loop(lambda p: running_count(statics, data, p) > 0, one_round, packed)
    return jax.vmap(lambda d, s: result_one(statics, d, s))(data, unpack(packed, like))


def _round_at(statics, data, like, width, stop):
    """A round on the first ``width`` rows of ``order``: step them until at most
    ``stop`` run."""
    vstep = batched_step(statics)

    def iterate(data, packed):
        state = unpack(packed, like)
        state = jax.lax.while_loop(lambda s: jnp.sum(s.status == Status.RUNNING) > stop, lambda s: vstep(data, s), state)
        return pack(state)

    def run(packed, order):
        if width == leading(packed):
            return iterate(data, packed)
        rows = order[:width]
        take = lambda tree: jax.tree_util.tree_map(lambda a: a[rows], tree)  # noqa: E731
        stepped = iterate(take(data), take(packed))
        return tuple(a.at[rows].set(b, unique_indices=True) for a, b in zip(packed, stepped))

    return run


PROGRAM = sharded(_run, 2)
