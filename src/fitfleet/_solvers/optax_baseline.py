"""First-order baselines: any optax ``GradientTransformation`` on the cost ½‖r‖².

Each step computes the cost and its gradient ``g = Jᵀr`` by one reverse-mode pass (no
Jacobian is formed), asks the optax transformation for an update ``u`` and moves to
``p + u``.  There is no acceptance test: gradient methods take every step, which is why
they are baselines here, not recommendations; Gauss-Newton-type methods use the
curvature ``JᵀJ`` that least squares gives for free.

Stopping tests, adapted to a method without a Jacobian:
- ``gtol``: ``‖g‖∞ <= gtol`` (absolute; the MINPACK cosine needs the Jacobian);
- ``ftol``: ``0 <= F_old - F_new <= ftol · F_old + fatol`` (a step that raised the cost proves
  nothing);
- ``xtol``: ``‖u‖ <= xtol · (xtol + ‖p‖)``.
A test that holds at a cost above the starting cost ends the fit with ``DIVERGED``, not a
success: a learning rate too large can throw the iterate far away, where the cost is
huge but flat, and every test then holds.  A non-finite cost at an iterate stops the fit
with ``NONFINITE_RESIDUAL`` and keeps the last finite iterate.  The Jacobian of the final
point is evaluated once, for the Result.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from .._status import Status
from ._common import State, Tolerances, counter


class OptaxSolver(eqx.Module):
    """An optax transformation behind fitfleet's interface.

    ``method="adam"``/``"sgd"`` build one from ``learning_rate`` inside the trace, so the
    learning rate is an array (vmappable, no recompile when it changes).  A user's own
    ``GradientTransformation`` is static: reuse the same object to avoid recompiling.
    """

    tol: Tolerances
    learning_rate: Any
    name: str = eqx.field(static=True)
    transform: Any = eqx.field(static=True, default=None)
    forms_jacobian = False  # the solvers' contract (``fitfleet._solvers``): steps see gradients only

    def thin(self, state):  # the solvers' contract: nothing to drop
        return state

    def vectorised(self):  # the solvers' contract: the step has no loop
        return self

    def _optimiser(self):
        if self.transform is not None:
            return self.transform
        return {"adam": optax.adam, "sgd": optax.sgd}[self.name](self.learning_rate)

    def init(self, problem, p):
        r, cost, grad = problem.residual_cost_grad(p)
        status = jnp.where(jnp.isfinite(cost), Status.RUNNING, Status.NONFINITE_RESIDUAL)
        status = jnp.where((status == Status.RUNNING) & (jnp.max(jnp.abs(grad)) <= self.tol.at_precision(p.dtype).gtol), Status.GTOL, status)
        inner = (self._optimiser().init(p), cost)  # the optimiser's state, the starting cost
        return State(p, r, cost, None, grad, status.astype(jnp.int32), counter(), counter(1), counter(0), inner)

    def step(self, problem, state):
        opt_state, start_cost = state.inner
        updates, opt_state = self._optimiser().update(state.grad, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        r, cost, grad = problem.residual_cost_grad(params)
        finite = jnp.isfinite(cost) & jnp.all(jnp.isfinite(grad))
        tol = self.tol.at_precision(params.dtype)
        conditions = [
            (~finite, Status.NONFINITE_RESIDUAL),
            (jnp.max(jnp.abs(grad)) <= tol.gtol, Status.GTOL),
            ((state.cost >= cost) & (state.cost - cost <= tol.ftol * state.cost + tol.fatol), Status.FTOL),
            (jnp.linalg.norm(updates) <= tol.xtol * (tol.xtol + jnp.linalg.norm(params)), Status.XTOL),
        ]
        status = jnp.asarray(Status.RUNNING, jnp.int32)
        for condition, code in reversed(conditions):
            status = jnp.where(condition, jnp.int32(code), status)
        status = jnp.where((status != Status.RUNNING) & finite & (cost > start_cost), jnp.int32(Status.DIVERGED), status)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        return State(
            params=keep(params, state.params),
            residual=keep(r, state.residual),
            cost=keep(cost, state.cost),
            jac=None,
            grad=keep(grad, state.grad),
            status=status,
            n_steps=state.n_steps + 1,
            n_fev=state.n_fev + 1,
            n_jev=state.n_jev,
            inner=(jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), opt_state, state.inner[0]), start_cost),
        )

