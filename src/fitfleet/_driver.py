"""The one loop every solver runs in, and the conversion of a final state to a Result.

A single fit is ``lax.while_loop(running, step)``.  The batch engine reuses the same
``step`` and ``finish`` to run rounds of a few steps over compacted batches.

Differentiation (see ``_implicit``): with the default implicit adjoint the loop never
sees a gradient, and ``to_result`` attaches the derivative of the optimality condition
to the final state; with ``adjoint.kind == "unroll"`` the loop is a checkpointed,
reverse-differentiable while loop.
"""

import contextlib
import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _implicit
from ._result import History, Result
from ._solvers._common import linearize
from ._status import Status


def finish(solver, state):
    """Stop a fit that is still running once it has used its step budget."""
    out_of_steps = (state.status == Status.RUNNING) & (state.n_steps >= solver.tol.max_steps)
    status = jnp.where(out_of_steps, jnp.int32(Status.MAX_STEPS), state.status)
    return eqx.tree_at(lambda s: s.status, state, status)


class Monitor(eqx.Module):
    """What a fit reports besides its Result: ``history`` rows of its path (0: none)
    and ``verbose`` (2: a line per step, printed by a host callback).  Static: off,
    they cost nothing."""

    history: int = eqx.field(static=True, default=0)
    verbose: int = eqx.field(static=True, default=0)
    progress: bool = eqx.field(static=True, default=False)


QUIET = Monitor()

# The progress bars of the fits running now (``progress=True``), innermost last: the
# per-step host callback updates the last one.  Filled and emptied by ``progress_bar``.
_BARS = []


@contextlib.contextmanager
def progress_bar(monitor, total, what="step"):
    """A tqdm bar for the block, which ``step``'s host callback advances (``progress``)."""
    if not monitor.progress:
        yield None
        return
    try:
        from tqdm.auto import tqdm
    except ImportError as e:
        raise ImportError("progress=True needs tqdm: pip install 'fitfleet[progress]' (or pip install tqdm).") from e
    bar = tqdm(total=total, unit=what, desc="fitfleet")
    _BARS.append(bar)
    try:
        yield bar
    finally:
        _BARS.remove(bar)
        bar.close()


def _advance_bar(n_steps, cost):
    if _BARS:
        bar = _BARS[-1]
        bar.update(int(np.max(n_steps)) - bar.n)
        bar.set_postfix(cost=f"{float(np.min(cost)):.4g}", refresh=False)


def advance_bar_by(n):
    """Host callback: ``n`` more units done on the innermost bar (a profile's refits)."""
    if _BARS:
        _BARS[-1].update(int(np.sum(n)))


def start(solver, problem, p0, monitor=QUIET):
    """The state before the first step (the history's first row recorded)."""
    state = finish(solver, solver.init(problem, p0))
    if not monitor.history:
        return state
    history = History.empty(monitor.history, state.params.shape[0], state.cost.dtype)
    history = history.record(0, problem.to_params(state.params), state.cost, jnp.nan)
    return dataclasses.replace(state, history=history)


def step(solver, problem, state, monitor=QUIET):
    new = finish(solver, solver.step(problem, state))
    if monitor.verbose >= 2:
        jax.debug.callback(_print_step, new.n_steps, new.cost, _damping(new), new.status)
    if monitor.progress:
        jax.debug.callback(_advance_bar, new.n_steps, new.cost)
    if state.history is None:
        return new
    history = state.history.record(new.n_steps, problem.to_params(new.params), new.cost, _damping(new))
    return dataclasses.replace(new, history=history)


def _damping(state):
    """The method's damping, where it has one (Levenberg-Marquardt's λ)."""
    damping = getattr(state.inner, "damping", None)
    return jnp.asarray(jnp.nan, state.cost.dtype) if damping is None else damping.astype(state.cost.dtype)


def _print_step(n_steps, cost, damping, status):
    print(f"step {int(n_steps):5d}  cost {float(cost):.6e}  damping {float(damping):.3e}  status {Status(int(status)).name}")


def run(solver, problem, p0, adjoint=_implicit.IMPLICIT, monitor=QUIET):
    """Iterate ``solver`` from ``p0`` until its status leaves RUNNING."""
    if adjoint.kind == "implicit":
        # Differentiating the loop would be wasted (forward mode) or fail (reverse).
        solver, problem, p0 = _implicit.no_gradient((solver, problem, p0))
    state = start(solver, problem, p0, monitor)
    running = lambda s: s.status == Status.RUNNING  # noqa: E731
    body = lambda s: step(solver, problem, s, monitor)  # noqa: E731
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
        history=state.history,
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
