"""Gauss-Newton with a backtracking (Armijo) line search.

At an accepted point the Gauss-Newton direction solves the normal equations

    JᵀJ δ = -Jᵀr

(in the Jacobi-scaled variables of ``_linalg.solve_scaled``, with no damping).  Each step
then tries ``p + α δ`` starting from α = 1 and accepts it when the cost decreases
sufficiently (Armijo's condition, c = 1e-4):

    F(p + α δ) <= F(p) + c · α · gᵀδ,        g = Jᵀr,

so every accepted step decreases the cost.  A rejected trial halves α for the next step;
one loop step is one residual evaluation, so under vmap fits in a line search and fits
taking full steps advance in lockstep.  The Jacobian and the next direction are computed
only at accepted points.

A direction that is not finite (a singular JᵀJ: a parameter the residual does not depend
on, or an exactly rank-deficient Jacobian) or not a descent direction stops the fit with
``STEP_FAILED``; Levenberg-Marquardt's damping is the cure for such problems.
Stopping tests: see ``_common``.

Reference: J. Nocedal & S. Wright, "Numerical Optimization", 2nd ed., §3.1 and §10.3.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._linalg import solve_scaled
from .._status import Status
from ._common import State, Tolerances, counter, keep_linearization, linearize, start_status, step_status

ARMIJO = 1e-4


class _Inner(eqx.Module):
    jtj: Any
    direction: Any
    step_length: Any


def _direction(lin):
    scale = jnp.sqrt(jnp.diagonal(lin.jtj))
    scale = jnp.where(scale > 0, scale, 1)
    direction = solve_scaled(lin.jtj, -lin.grad, scale, 0)
    usable = jnp.all(jnp.isfinite(direction)) & (lin.grad @ direction < 0)
    return jnp.where(usable, direction, 0), usable


class GaussNewton(eqx.Module):
    """Gauss-Newton with backtracking (see the module docstring for the algorithm)."""

    tol: Tolerances

    def init(self, problem, p):
        lin = linearize(problem, p)
        cost = problem.cost(lin.residual)
        direction, usable = _direction(lin)
        status = start_status(cost, lin.jac, lin.cosine, self.tol)
        status = jnp.where((status == Status.RUNNING) & ~usable, Status.STEP_FAILED, status)
        inner = _Inner(lin.jtj, direction, jnp.asarray(1, p.dtype))
        return State(p, lin.residual, cost, lin.jac, lin.grad, status, counter(), counter(1), counter(1), inner)

    def step(self, problem, state):
        s = state.inner
        step = s.step_length * s.direction
        trial = state.params + step
        trial_cost = problem.cost(problem.residual(trial))
        reduction = state.cost - trial_cost
        slope = state.grad @ step  # < 0 for a descent direction
        accepted = jnp.isfinite(trial_cost) & (reduction >= -ARMIJO * slope) & (reduction > 0)

        params = jnp.where(accepted, trial, state.params)

        def at_new_point():
            lin = linearize(problem, params)
            return lin, *_direction(lin)

        lin, direction, usable = jax.lax.cond(
            accepted,
            at_new_point,
            lambda: (keep_linearization(state, s.jtj), s.direction, jnp.asarray(True)),
        )
        predicted = -slope - 0.5 * step @ (s.jtj @ step)  # Gauss-Newton model reduction
        ratio = reduction / jnp.where(predicted > 0, predicted, jnp.inf)
        status = step_status(
            accepted=accepted,
            jac_finite=lin.jac_finite,
            cosine=lin.cosine,
            reduction=reduction,
            cost_old=state.cost,
            ratio=ratio,
            step=step,
            params=state.params,
            tol=self.tol,
        )
        status = jnp.where((status == Status.RUNNING) & ~usable, Status.STEP_FAILED, status)
        inner = _Inner(lin.jtj, direction, jnp.where(accepted, 1, s.step_length / 2).astype(s.step_length.dtype))
        return State(
            params=params,
            residual=lin.residual,
            cost=problem.cost(lin.residual),
            jac=lin.jac,
            grad=lin.grad,
            status=status,
            n_steps=state.n_steps + 1,
            n_fev=state.n_fev + 1,
            n_jev=state.n_jev + accepted,
            inner=inner,
        )
