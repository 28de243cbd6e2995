"""The one loop every solver runs in, and the conversion of a final state to a Result.

A single fit is ``lax.while_loop(running, step)``.  The batch engine reuses the same
``step`` and ``finish`` to run rounds of a few steps over compacted batches.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from ._result import Result
from ._solvers._common import linearize
from ._status import Status


def finish(solver, state):
    """Stop a fit that is still running once it has used its step budget."""
    out_of_steps = (state.status == Status.RUNNING) & (state.n_steps >= solver.tol.max_steps)
    status = jnp.where(out_of_steps, jnp.int32(Status.MAX_STEPS), state.status)
    return eqx.tree_at(lambda s: s.status, state, status)


def step(solver, problem, state):
    return finish(solver, solver.step(problem, state))


def run(solver, problem, p0):
    """Iterate ``solver`` from ``p0`` until its status leaves RUNNING."""
    state = finish(solver, solver.init(problem, p0))
    return jax.lax.while_loop(
        lambda s: s.status == Status.RUNNING, lambda s: step(solver, problem, s), state
    )


def to_result(problem, state):
    """The Result in the user's parameters.

    With bounds the solver's Jacobian is in internal variables, and first-order methods
    never form one: then the Jacobian is evaluated once more, at the solution, in the
    user's parameters, so uncertainties never see the change of variables.
    """
    params = problem.to_params(state.params)
    jac, grad, n_jev = state.jac, state.grad, state.n_jev
    if problem.bounds is not None or jac is None:
        lin = linearize(problem.without_bounds(), params)
        jac, grad, n_jev = lin.jac, lin.grad, n_jev + 1
    return Result(
        params=problem.unravel(params),
        cost=state.cost,
        residual=state.residual,
        jac=jac,
        grad=grad,
        status=state.status,
        n_steps=state.n_steps,
        n_fev=state.n_fev,
        n_jev=n_jev,
    )
