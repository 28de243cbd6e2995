"""Levenberg-Marquardt with Marquardt's diagonal scaling and Nielsen's damping update.

Each step solves the damped, scaled normal equations

    (JᵀJ + damping · D²) δ = -Jᵀr,        D² = diag(max over past iterates of JᵀJ),

the scaling of MINPACK's ``lmder`` (Moré 1978): ``D`` grows with the columns of ``J`` and
never shrinks, which makes the method invariant to the units of each parameter.  The
solve is done in the scaled variables ``Dδ`` by Cholesky (``_linalg.solve_scaled``).

Acceptance.  With the cost ``F = ½‖r‖²``, the gain ratio is

    ρ = (F(p) - F(p + δ)) / (½‖Jδ‖² + damping · ‖Dδ‖²),

the actual reduction over the reduction predicted by the Gauss-Newton model.  The step
is accepted when ρ > 1e-4 (MINPACK's threshold); a non-finite trial residual or step
counts as ρ = -∞.

Damping update (Nielsen 1999; Madsen, Nielsen & Tingleff 2004, eq. 3.16).  On
acceptance ``damping *= max(1/3, 1 - (2ρ - 1)³)`` and ``ν = 2``; on rejection
``damping *= ν`` and ``ν *= 2``.  The update is smooth in ρ, so a good step relaxes
the damping in proportion to how good it was, instead of the jumps of Marquardt's
original ×10/÷10 rule, and repeated rejections grow the damping super-exponentially,
so a stalled fit reaches the ``xtol`` test in a few steps.  The initial damping is
``initial_damping`` (τ = 1e-3 by default) in scaled units, where diag(JᵀJ)/D² = 1.

The Jacobian is evaluated once per accepted point, never at a rejected trial point.
Stopping tests: see ``_common``; additionally the fit stops with ``STEP_FAILED`` when
the damping exceeds 1/eps², where no representable step can decrease the cost.

References: K. Levenberg (1944); D. Marquardt (1963); J. J. Moré, "The Levenberg-Marquardt
algorithm: implementation and theory" (1978); H. B. Nielsen, "Damping parameter in
Marquardt's method", IMM-REP-1999-05; K. Madsen, H. B. Nielsen, O. Tingleff, "Methods for
non-linear least squares problems" (2004).
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._linalg import solve_scaled
from .._status import Status
from ._common import State, Tolerances, counter, keep_linearization, linearize, start_status, step_status

ACCEPT_RATIO = 1e-4


class _Inner(eqx.Module):
    jtj: Any
    scale: Any  # D: running max of the column norms of J
    damping: Any
    nu: Any


class LevenbergMarquardt(eqx.Module):
    """Levenberg-Marquardt (see the module docstring for the exact algorithm)."""

    tol: Tolerances
    initial_damping: Any

    def init(self, problem, p):
        lin = linearize(problem, p)
        cost = problem.cost(lin.residual)
        inner = _Inner(
            jtj=lin.jtj,
            scale=jnp.sqrt(jnp.diagonal(lin.jtj)),
            damping=jnp.asarray(self.initial_damping, p.dtype),
            nu=jnp.asarray(2, p.dtype),
        )
        status = start_status(cost, lin.jac, lin.cosine, self.tol)
        return State(p, lin.residual, cost, lin.jac, lin.grad, status, counter(), counter(1), counter(1), inner)

    def step(self, problem, state):
        s = state.inner
        # A column that has never moved the residual gets unit scale rather than 0/0.
        scale = jnp.where(s.scale > 0, s.scale, 1)
        step = solve_scaled(s.jtj, -state.grad, scale, s.damping)
        step_finite = jnp.all(jnp.isfinite(step))
        step = jnp.where(step_finite, step, 0)

        trial = state.params + step
        trial_cost = problem.cost(problem.residual(trial))
        reduction = state.cost - trial_cost
        predicted = 0.5 * step @ (s.jtj @ step) + s.damping * jnp.sum((scale * step) ** 2)
        valid = step_finite & jnp.isfinite(trial_cost) & (predicted > 0)
        ratio = jnp.where(valid, reduction / jnp.where(valid, predicted, 1), -jnp.inf)
        accepted = ratio > ACCEPT_RATIO

        params = jnp.where(accepted, trial, state.params)
        # Under vmap this cond becomes a select; alone it skips the Jacobian on rejection.
        lin = jax.lax.cond(
            accepted, lambda: linearize(problem, params), lambda: keep_linearization(state, s.jtj)
        )
        damping = jnp.where(
            accepted, s.damping * jnp.maximum(1 / 3, 1 - (2 * ratio - 1) ** 3), s.damping * s.nu
        )
        inner = _Inner(
            jtj=lin.jtj,
            scale=jnp.maximum(s.scale, jnp.sqrt(jnp.diagonal(lin.jtj))),
            damping=damping,
            nu=jnp.where(accepted, 2, 2 * s.nu).astype(s.nu.dtype),
        )

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
        no_step_can_help = ~(damping <= 1 / jnp.finfo(damping.dtype).eps ** 2)  # NaN too
        status = jnp.where((status == Status.RUNNING) & no_step_can_help, Status.STEP_FAILED, status)
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
