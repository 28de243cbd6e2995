"""The one loop every solver runs in, and the conversion of a final state to a Result.

A single fit is ``lax.while_loop(running, step)``.  The batch engine reuses the same
``step`` and ``finish`` to run rounds of a few steps over compacted batches.

Differentiation (see ``_implicit``): with the default implicit adjoint the loop never
sees a gradient, and ``to_result`` attaches the derivative of the optimality condition
to the final state; with ``adjoint.kind == "unroll"`` the loop is a checkpointed,
reverse-differentiable while loop.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from . import _implicit
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


def run(solver, problem, p0, adjoint=_implicit.IMPLICIT):
    """Iterate ``solver`` from ``p0`` until its status leaves RUNNING."""
    if adjoint.kind == "implicit":
        # Differentiating the loop would be wasted (forward mode) or fail (reverse).
        solver, problem, p0 = _implicit.no_gradient((solver, problem, p0))
    state = finish(solver, solver.init(problem, p0))
    running = lambda s: s.status == Status.RUNNING  # noqa: E731
    body = lambda s: step(solver, problem, s)  # noqa: E731
    if adjoint.kind == "unroll":
        return eqx.internal.while_loop(running, body, state, kind="checkpointed", checkpoints=adjoint.checkpoints)
    return jax.lax.while_loop(running, body, state)


def to_result(problem, state, adjoint=_implicit.IMPLICIT, spec=None):
    """The Result in the user's parameters, differentiable as ``adjoint`` says, with
    the record of the problem ``spec`` (a ``_problem.Spec``) describes.

    With bounds the solver's Jacobian is in internal variables, and first-order methods
    never form one: then the Jacobian is evaluated once more, at the solution, in the
    user's parameters, so uncertainties never see the change of variables.
    """
    implicit = adjoint.kind == "implicit"
    # Implicit: the primal values come from the undifferentiated solve; attach() gives
    # them their derivatives.
    primal_problem = _implicit.no_gradient(problem) if implicit else problem
    if implicit:
        state = _implicit.no_gradient(state)
    params = primal_problem.to_params(state.params)
    jac, grad, n_jev = state.jac, state.grad, state.n_jev
    if problem.bounds is not None or jac is None:
        lin = linearize(primal_problem.without_bounds(), params)
        jac, grad, n_jev = lin.jac, lin.grad, n_jev + 1
    fields = (params, state.residual, state.cost, jac, grad)
    if implicit:
        fields = _implicit.attach(state.params, problem, fields[1:])
    params, residual, cost, jac, grad = _implicit.guard(fields, state.status, adjoint.on_failure)
    return Result(
        params=problem.unravel(params),
        cost=cost,
        residual=residual,
        jac=jac,
        grad=grad,
        status=state.status,
        n_steps=state.n_steps,
        n_fev=state.n_fev,
        n_jev=n_jev,
        loss=problem.loss,
        f_scale=problem.f_scale,
        **({} if spec is None else record(spec)),
    )


def record(spec):
    """What a Result remembers of its problem (see ``Result``)."""
    return dict(sigma=spec.sigma_given, names=spec.names, order=spec.order, bounds=spec.box, log_scale=spec.log)


def raised_result(shapes, x0):
    """The Result of a fit whose model raised at run time (``Status.MODEL_RAISED``):
    its start ``x0``, no steps, NaN for what was never computed.  ``shapes``: the
    Result's shapes (``eqx.filter_eval_shape`` of the solve)."""
    fill = lambda s: jnp.full(s.shape, jnp.nan if jnp.issubdtype(s.dtype, jnp.inexact) else 0, s.dtype)  # noqa: E731
    result = jax.tree_util.tree_map(fill, shapes)
    params = jax.tree_util.tree_map(lambda a, s: jnp.asarray(a, s.dtype), x0, shapes.params)
    return eqx.tree_at(lambda r: (r.params, r.status), result, (params, jnp.int32(Status.MODEL_RAISED)))
