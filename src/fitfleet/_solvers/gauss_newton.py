"""Gauss-Newton with a backtracking (Armijo) line search.

At an accepted point the Gauss-Newton direction solves the normal equations

    JᵀJ δ = -Jᵀr

in the Jacobi-scaled variables (``JᵀJ`` divided by its diagonal's square roots on both
sides), with no damping.  Where ``JᵀJ`` is singular (a parameter the residual does not
depend on at this point, an amplitude at 0 leaving its rate's column empty; or columns
that depend on each other), the dependent directions are left out of the step and the
normal equations are solved in the others (``_linalg.solve_semidefinite``: a Cholesky
factorisation that drops a pivot below ``10·n·eps``), still a descent direction.  Each step
then tries ``p + α δ`` starting from α = 1 and accepts it when the cost decreases
sufficiently (Armijo's condition, c = 1e-4):

    F(p + α δ) <= F(p) + c · α · gᵀδ,        g = Jᵀr,

so every accepted step decreases the cost (or, at the Gauss-Newton fixed point, changes
it by less than the round-off of F: ``_common.below_round_off``).  A rejected trial halves α for the next step;
one loop step is one residual evaluation, so under vmap fits in a line search and fits
taking full steps advance in lockstep.  The Jacobian and the next direction are computed
only at accepted points.

Bounds and ``log_scale``: the fit runs in internal variables ``u`` with ``p = T(u)``
elementwise (``_bounds``), and ``JᵀJ`` above carries the bounds' curvature term
``diag(max(g_p ⊙ T''(u), 0))`` (``_common.linearize``): at an active bound ``T' → 0``
takes the parameter's column out of ``JᵀJ`` and the plain Gauss-Newton step would blow
up; the term is what holds ``u`` there.  Near a bound the transform is curved on a scale
of about one unit of ``u`` (``√(u² + 1)``, ``sin u``, ``exp u``), and the model, linear in
``u``, holds only that far: a start on a lower bound has a Jacobian column shrunk by
``T'(u) ≈ 0``, and the full step would carry the parameter to 1e6, where the model no
longer depends on it.  So the direction is shortened (never turned) until no bounded or
log-scaled entry moves by more than its reach,

    |δ_j| <= max(|u_j|, 1),

which an unbounded parameter does not have: where no parameter is transformed, the step
is exactly Gauss-Newton's.

A direction that is not finite or not a descent direction (the gradient vanishes in
every direction kept) stops the fit with ``STEP_FAILED``, and so does a line search that
shrinks the step to round-off without decreasing the cost; Levenberg-Marquardt's
damping is the cure for such problems.
Stopping tests: see ``_common``; they judge full steps: ``xtol`` applies to the
direction δ (not the line search's α·δ) and ``ftol`` only to steps with α = 1.  The
step itself does not depend on the parameters' units; ``x_scale`` as numbers sets the
units of the ``xtol`` test, ``‖δ/x_scale‖ <= xtol·(xtol + ‖p/x_scale‖)``.

Reference: J. Nocedal & S. Wright, "Numerical Optimization", 2nd ed., §3.1 and §10.3.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._linalg import solve_semidefinite
from .._status import Status
from ._common import (
    State,
    advance,
    Tolerances,
    below_round_off,
    counter,
    keep_linearization,
    linearize,
    linearize_like,
    without_jacobian,
    start_status,
    step_status,
)

ARMIJO = 1e-4


class _Inner(eqx.Module):
    jtj: Any
    direction: Any
    step_length: Any


def _direction(problem, u, lin):
    scale = jnp.sqrt(jnp.diagonal(lin.jtj))
    scale = jnp.where(scale > 0, scale, 1)
    direction = solve_semidefinite(lin.jtj / (scale[:, None] * scale[None, :]), -lin.grad / scale) / scale
    usable = jnp.all(jnp.isfinite(direction)) & (lin.grad @ direction < 0)
    direction = jnp.where(usable, direction, 0)
    return direction * _within_reach(problem, u, direction), usable


def _within_reach(problem, u, direction):
    """The factor (<= 1) that keeps the step within the reach of each transformed entry
    (see the module docstring): the direction is shortened, never turned."""
    if problem.bounds is None:
        return 1
    b = problem.bounds
    transformed = jnp.isfinite(b.lower) | jnp.isfinite(b.upper) | b.log
    tiny = jnp.finfo(u.dtype).tiny
    factors = jnp.where(transformed, jnp.maximum(jnp.abs(u), 1) / jnp.maximum(jnp.abs(direction), tiny), 1)
    return jnp.minimum(1, jnp.min(factors))


class GaussNewton(eqx.Module):
    """Gauss-Newton with backtracking (see the module docstring for the algorithm)."""

    tol: Tolerances
    x_scale: Any = None  # None: plain norms in the xtol test; else the units x_scale
    forms_jacobian = True  # the solvers' contract (``fitfleet._solvers``)

    def thin(self, state):  # the solvers' contract: a batch carries JᵀJ and Jᵀr only
        return without_jacobian(state)

    def vectorised(self):  # the solvers' contract: the step has no loop
        return self

    def init(self, problem, p):
        lin = linearize(problem, p)
        cost = problem.cost(lin.residual)
        direction, usable = _direction(problem, p, lin)
        status = start_status(cost, lin.jac, lin.cosine, self.tol)
        status = jnp.where((status == Status.RUNNING) & ~usable, Status.STEP_FAILED, status)
        inner = _Inner(lin.jtj, direction, jnp.asarray(1, p.dtype))
        return State(p, lin.residual, cost, lin.jac, lin.grad, status, counter(), counter(1), counter(1), inner)

    def step(self, problem, state):
        s = state.inner
        step = s.step_length * s.direction
        trial = problem.move(state.params, step)
        trial_residual = problem.residual(trial)
        trial_cost = problem.cost(trial_residual)
        reduction = state.cost - trial_cost
        slope = state.grad @ step  # < 0 for a descent direction
        predicted = -slope - 0.5 * step @ (s.jtj @ step)  # Gauss-Newton model reduction
        at_round_off = below_round_off(reduction, predicted, state.cost, s.jtj, state.params)
        armijo = (reduction >= -ARMIJO * slope) & (reduction > 0)
        accepted = jnp.isfinite(trial_cost) & (armijo | at_round_off)

        params = jnp.where(accepted, trial, state.params)

        def at_new_point():  # at trial (= params where accepted): see levenberg_marquardt
            lin = linearize_like(problem, trial, state, residual=trial_residual)
            return lin, *_direction(problem, trial, lin)

        lin, direction, usable = jax.lax.cond(
            accepted,
            at_new_point,
            lambda: (keep_linearization(state, s.jtj), s.direction, jnp.asarray(True)),
        )
        ratio = jnp.where(at_round_off, 1, reduction / jnp.where(predicted > 0, predicted, jnp.inf))
        status = step_status(
            accepted=accepted,
            jac_finite=lin.jac_finite,
            cosine=lin.cosine,
            reduction=reduction,
            cost_old=state.cost,
            ratio=ratio,
            step=s.direction if self.x_scale is None else s.direction / self.x_scale,
            params=state.params if self.x_scale is None else state.params / self.x_scale,
            tol=self.tol,
        )
        # Convergence is judged on full Gauss-Newton steps: a step shortened by the line
        # search says nothing about the distance to the minimum.
        full_step = s.step_length == 1
        status = jnp.where((status == Status.FTOL) & ~full_step, Status.RUNNING, status)
        eps = jnp.finfo(step.dtype).eps
        search_collapsed = ~accepted & (jnp.linalg.norm(step) <= eps * (eps + jnp.linalg.norm(state.params)))
        status = jnp.where((status == Status.RUNNING) & (~usable | search_collapsed), Status.STEP_FAILED, status)
        inner = _Inner(lin.jtj, direction, jnp.where(accepted, 1, s.step_length / 2).astype(s.step_length.dtype))
        return advance(problem, state, params=params, lin=lin, n_jev=accepted, status=status, inner=inner)
