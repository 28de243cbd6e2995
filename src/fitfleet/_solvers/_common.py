"""The state every solver carries, and the stopping tests they share.

Stopping tests (scipy's meaning, written out; ``F`` is the cost ½‖r‖², ``p`` the flat
parameter vector, ``δ`` the proposed step, ``g = Jᵀr``):

- ``gtol``: ``max_j |g_j| / (‖J_j‖ · ‖r‖) <= gtol`` at an accepted point, the cosine of
  the angle between the residual and each Jacobian column (MINPACK's test, used by
  scipy's ``method="lm"``).  It is invariant to the scale of parameters and data; a
  zero residual counts as converged.
- ``ftol``: ``F_old - F_new <= ftol · F_old + fatol`` for an accepted step whose
  actual reduction agreed with the model's prediction (ratio > 1/4); ``fatol``
  (default 0, scipy's test) is an absolute part in cost units.
- ``ftol`` also requires every parameter to have settled:
  ``|δ_j| <= √ftol · (√ftol + |p_j|)``.  At a quadratic minimum a relative cost change
  of ε goes with a relative parameter change of √ε; a step much larger than that while
  the cost barely moves means a flat valley is being crossed, not that the fit is done.
  A step whose predicted and actual changes of the cost are both within the cost's
  round-off (``below_round_off``) counts as settled (unless ``ftol = 0``): the cost can
  no longer tell its ends apart, so no further step can be judged.  At a minimum where
  the Jacobian vanishes and the residual does not (``x² + 5`` at 0), the model has no
  curvature, the cosine below stays 1, and steps at the cost's resolution (√eps, above
  the settled bound near ``p = 0``) otherwise went on until ``max_steps``.
  ``settle=False`` (``Tolerances.settle``) drops this requirement: scipy's test.  So
  does ``ftol = 0 < fatol``: √ftol is no scale then.
- ``xtol``: ``‖δ‖ <= xtol · (xtol + ‖p‖)`` for the proposed step, accepted or not: a
  step that small cannot change the answer at the requested precision.  Only a full
  step counts: Gauss-Newton's direction (not the line search's fraction of it), or a
  Levenberg-Marquardt step the trust region did not cut short (damping 0); a step
  shortened to fit a small radius says nothing about the distance to the minimum, and
  LM stops instead once the radius itself is that small.

A tolerance of 0 disables its test (``gtol = 0`` still stops at an exactly stationary
point).  A positive tolerance below the machine epsilon of the parameters' dtype acts
as that epsilon, as in scipy, so float32 fits with the default tolerances stop cleanly.
"""

import dataclasses
from typing import Any

import equinox as eqx
import jax.numpy as jnp

from .._losses import loss_curvature
from .._status import Status


class State(eqx.Module):
    """Solver state shared by all methods; ``inner`` holds a method's own variables."""

    params: Any  # flat parameter vector p
    residual: Any
    cost: Any
    jac: Any  # (m, n), or None: never formed (first-order methods), or not carried (a batch)
    grad: Any  # Jᵀr
    status: Any
    n_steps: Any
    n_fev: Any
    n_jev: Any
    inner: Any
    history: Any = None  # a _result.History, kept by the driver (``_driver.step``), not the solver


class Tolerances(eqx.Module):
    """Arrays, so that changing or vmapping a tolerance never recompiles."""

    ftol: Any
    xtol: Any
    gtol: Any
    settle: Any  # bool: ftol also asks the parameters to have settled (module docstring)
    fatol: Any  # the ftol test's absolute part, in cost units
    max_steps: Any

    def at_precision(self, dtype):
        """Positive tolerances raised to at least the dtype's epsilon; 0 stays 0."""
        eps = jnp.finfo(dtype).eps
        clamp = lambda t: jnp.where(t > 0, jnp.maximum(t, eps), 0).astype(dtype)  # noqa: E731
        return Tolerances(clamp(self.ftol), clamp(self.xtol), clamp(self.gtol), self.settle, self.fatol.astype(dtype), self.max_steps)


ROUND_OFF = 2  # safety factor on the estimated round-off of the computed cost


def below_round_off(reduction, predicted, cost, jtj, params):
    """True where a step is too small for the computed cost to judge.

    The computed cost carries round-off from the residual's own evaluation: each rᵢ is
    a difference of model and data terms, wrong by about eps times their size, which is
    of the order of ``(Jp)ᵢ``.  So ``F`` is uncertain by about
    ``eps·(F + ‖r‖·‖Dp‖)`` with ``D = diag(‖J_j‖)``.  Near an optimum the predicted and
    the actual reduction of a step fall below that.  Such a step, if it did not raise
    the cost by more than the round-off, is taken as agreeing with the model: the
    iteration then reaches the Gauss-Newton fixed point, limited by the accuracy of
    ``Jᵀr`` (about cond(J)·eps), instead of stalling at the cost's resolution (√eps).
    """
    scaled_params_norm = jnp.linalg.norm(jnp.sqrt(jnp.diagonal(jtj)) * params)
    eps = jnp.finfo(cost.dtype).eps
    noise = ROUND_OFF * eps * (cost + jnp.sqrt(2 * cost) * scaled_params_norm)
    return (predicted <= noise) & (reduction >= -noise)


def counter(value=0):
    return jnp.asarray(value, dtype=jnp.int32)


def gradient_cosine(grad, col_norm_sq, residual_norm_sq):
    """``max_j |g_j| / (‖J_j‖ ‖r‖)``, 0 where a column or the residual vanishes (a
    parameter without influence, or a zero residual).  The norms are taken apart: the
    product of their squares underflows for residuals and columns of 1e-10 in float32
    (1e-80 in float64), which read as an optimum at any point."""
    denom = jnp.sqrt(col_norm_sq) * jnp.sqrt(residual_norm_sq)
    safe = jnp.where(denom > 0, denom, 1)
    return jnp.max(jnp.where(denom > 0, jnp.abs(grad) / safe, 0))


def start_status(cost, jac, cosine, tol):
    """Status of a fresh state: a non-finite start, an optimum already, or running."""
    tol = tol.at_precision(cost.dtype)
    status = jnp.where(cosine <= tol.gtol, Status.GTOL, Status.RUNNING)
    if jac is not None:
        status = jnp.where(jnp.all(jnp.isfinite(jac)), status, Status.NONFINITE_JACOBIAN)
    status = jnp.where(jnp.isfinite(cost), status, Status.NONFINITE_RESIDUAL)
    return status.astype(jnp.int32)


def settled(step, params, tol):
    """The ftol test's second half (module docstring): every parameter moved by at most
    ``√ftol·(√ftol + |p_j|)``, or the test does not ask it (``settle`` off, or
    ``ftol = 0 < fatol``)."""
    root_ftol = jnp.sqrt(tol.ftol)
    moved_little = jnp.all(jnp.abs(step) <= root_ftol * (root_ftol + jnp.abs(params)))
    return moved_little | ~tol.settle | ((tol.ftol == 0) & (tol.fatol > 0))


def unless_blocked(status, blocked):
    """``status``, with ``NONFINITE_RESIDUAL`` in place of ``ftol``/``xtol`` where
    ``blocked``: a trial point since the last accepted one had a non-finite residual,
    so the step is short because the radius was cut there, not because the fit
    converged (trf's module docstring)."""
    converged = (status == Status.FTOL) | (status == Status.XTOL)
    return jnp.where(blocked & converged, jnp.int32(Status.NONFINITE_RESIDUAL), status)


def step_status(
    *, accepted, jac_finite, cosine, reduction, cost_old, ratio, step, params, tol, full_step=True, round_off=False
):
    """Status after one proposed step, in priority order (first match wins).

    ``full_step``: False where ``step`` was cut short (by a trust region): a short step
    then says nothing about the distance to the minimum, and the ``xtol`` test is left
    to the solver.  ``round_off``: the step's predicted and actual reductions were both
    below the cost's round-off (it then counts as settled for ``ftol``)."""
    tol = tol.at_precision(params.dtype)
    step_norm = jnp.linalg.norm(step)
    params_norm = jnp.linalg.norm(params)
    relative = lambda t: t * (t + params_norm)  # noqa: E731
    parameters_settled = settled(step, params, tol) | (round_off & (tol.ftol > 0))
    conditions = [
        (accepted & ~jac_finite, Status.NONFINITE_JACOBIAN),
        (accepted & (cosine <= tol.gtol), Status.GTOL),
        (accepted & (ratio > 0.25) & (reduction <= tol.ftol * cost_old + tol.fatol) & parameters_settled, Status.FTOL),
        (full_step & (step_norm <= relative(tol.xtol)), Status.XTOL),
    ]
    status = jnp.asarray(Status.RUNNING, jnp.int32)
    for condition, code in reversed(conditions):
        status = jnp.where(condition, jnp.int32(code), status)
    return status.astype(jnp.int32)


class Linearization(eqx.Module):
    """Residual, Jacobian and the Gauss-Newton model of the cost at one point."""

    residual: Any
    jac: Any
    grad: Any  # the cost's gradient, J̃ᵀr̃
    jtj: Any  # the model's matrix: J̃ᵀJ̃, or Jᵀ diag(ρ' + 2ρ''z) J (exact_loss_curvature)
    cosine: Any  # the gtol statistic
    jac_finite: Any  # J is finite and JᵀJ does not overflow
    # ‖J̃_j‖² (J̃ = √ρ'·J; J for the linear loss), without the bounds' curvature term:
    # the column norms that the gtol cosine and Levenberg-Marquardt's scaling are made
    # of (0 for a point not newly evaluated).
    col_norm_sq: Any


def linearize(problem, u, exact_loss_curvature=False, fallback=None, residual=None):
    """The Gauss-Newton model of the cost at the internal point ``u``.

    With a robust loss (``_losses``) the gradient is exact, ``J̃ᵀr̃ = Jᵀ(ρ'·r)``; the
    model's matrix is ``J̃ᵀJ̃`` with ``J̃ = √ρ'·J``, or with ``exact_loss_curvature`` the
    loss's exact Gauss-Newton curvature ``Jᵀ diag(ρ' + 2ρ''z) J`` (scipy's, kept at least
    eps per row).  The column norms and the gtol cosine are those of ``J̃`` and ``r̃ = √ρ'·r``.

    Bounds and ``log_scale`` (``p = T(u)`` elementwise, see ``_bounds``): ``J`` is
    evaluated in ``p`` and mapped by the chain rule, ``J_u = J_p·diag(T'(u))``, so that
    ``g_p = J_pᵀr`` is known even where ``T'(u) = 0``.  The exact Hessian of the cost in
    ``u`` is ``T'ᵀ∇²_pF T' + diag(g_p ⊙ T''(u))``; the model's matrix is

        J_uᵀJ_u + diag(max(g_p ⊙ T''(u), 0)).

    At an active bound ``T' → 0`` takes the parameter's column out of ``J_uᵀJ_u``; the
    added term, positive where the cost pulls ``p`` onto its bound, keeps the model's
    curvature there, so a step lands on the bound instead of creeping towards it (LM)
    or blowing up (Gauss-Newton).  A negative term (the cost pulls ``p`` away from its
    bound) would make the matrix indefinite and is dropped; at an interior optimum
    ``g_p = 0`` and the term vanishes.  ``cosine`` (the gtol statistic) is that of
    ``J_u`` alone.

    ``fallback``: where to evaluate a Jacobian that may raise if ``u``'s residual is not
    finite; ``residual``: ``u``'s residual, where the caller has it (both
    ``Problem.residual_and_jac``).
    """
    if problem.bounds is None:
        r, J = problem.residual_and_jac(u, fallback, residual)
        rm, Jm = problem.model(r, J)
        grad = Jm.T @ rm
        if problem.loss == "linear" or not exact_loss_curvature:
            jtj = Jm.T @ Jm
            col_norm_sq = jnp.diagonal(jtj)
        else:
            jtj = J.T @ (loss_curvature(problem.loss, problem.f_scale, r)[:, None] * J)
            col_norm_sq = jnp.sum(Jm * Jm, axis=0)
        # A non-finite entry of J makes its column's ‖J_j‖² non-finite: checking n values
        # instead of m·n spares a pass over J (a transposing copy under vmap) every step.
        cosine = gradient_cosine(grad, col_norm_sq, jnp.sum(rm * rm))
        return Linearization(r, J, grad, jtj, cosine, jnp.all(jnp.isfinite(col_norm_sq)), col_norm_sq)
    fallback = None if fallback is None else problem.to_params(fallback)
    lin = linearize(problem.without_bounds(), problem.to_params(u), exact_loss_curvature, fallback, residual)
    dp, d2p = problem.bounds.derivatives(u)
    grad = dp * lin.grad
    jtj = lin.jtj * (dp[:, None] * dp[None, :])
    model_residual = problem.model(lin.residual, lin.jac)[0]
    col_norm_sq = lin.col_norm_sq * dp**2
    cosine = gradient_cosine(grad, col_norm_sq, jnp.sum(model_residual**2))
    curvature = jnp.maximum(lin.grad * d2p, 0)
    return Linearization(lin.residual, lin.jac * dp, grad, jtj + jnp.diag(curvature), cosine, lin.jac_finite, col_norm_sq)


def linearize_like(problem, u, state, **options):
    """:func:`linearize` at ``u``, without ``J`` where ``state`` carries none (a batch's
    states: see the solvers' contract in ``fitfleet._solvers``)."""
    lin = linearize(problem, u, **options)
    return lin if state.jac is not None else dataclasses.replace(lin, jac=None)


def without_jacobian(state):
    """``state`` without its ``J``: a batch's state (the solvers' ``thin``)."""
    return dataclasses.replace(state, jac=None)


def keep_linearization(state, jtj):
    """The current point's linearization, unchanged: the rejected-step branch."""
    return Linearization(
        state.residual, state.jac, state.grad, jtj, jnp.asarray(jnp.inf, state.cost.dtype), jnp.asarray(True),
        jnp.zeros_like(state.grad),
    )


def advance(problem, state, *, params, lin, n_jev, status, inner):
    """The state after one step that evaluated one trial point and ``n_jev`` Jacobians."""
    return State(
        params=params,
        residual=lin.residual,
        cost=problem.cost(lin.residual),
        jac=lin.jac,
        grad=lin.grad,
        status=status,
        n_steps=state.n_steps + 1,
        n_fev=state.n_fev + 1,
        n_jev=state.n_jev + n_jev,
        inner=inner,
    )
