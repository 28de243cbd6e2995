"""Trust-region reflective (TRF): scipy's ``least_squares(method="trf")``, in JAX.

The problem is ``min F(x) = ½ Σᵢ ρ(rᵢ(x)²)`` subject to ``l <= x <= u`` (each bound
possibly infinite), with ``x`` the parameters (``log p`` for a ``log_scale`` one, whose
bounds then bound ``log p``).  The bounds are the method's own: every iterate is strictly
inside the box (no change of variables, ``_bounds.Bounds.box``).

The model.  At an accepted point, ``g = J̃ᵀr̃ = ∇F`` and ``B = J̃ᵀJ̃`` with ``(r̃, J̃)``
the residual and Jacobian scaled for the loss as scipy does, by its second-order weight
``√max(ρ' + 2ρ''z, eps)`` (``_losses``: unlike Levenberg-Marquardt's majorising ``√ρ'``,
this is what lets a fit from a poor start escape a region dominated by outliers).

Coleman-Li scaling (Branch, Coleman & Li 1999, §2; scipy's ``CL_scaling_vector``).  Let

    vⱼ = uⱼ − xⱼ  if gⱼ < 0 and uⱼ < ∞,     vⱼ = xⱼ − lⱼ  if gⱼ > 0 and lⱼ > −∞,     else 1,

the distance to the bound the negative gradient points at.  First-order optimality is
``v ⊙ g = 0`` (a free parameter has ``gⱼ = 0``, one held by a bound has ``vⱼ = 0`` and
``gⱼ`` pushing outward), and ``‖v ⊙ g‖∞`` is the method's optimality measure.  With
``x_scale = s`` (positive numbers, or for ``"jac"`` the inverse running maximum of the
column norms of ``J̃``), the hat variables are ``x = x̂ ⊙ d`` with

    d = s ⊙ √v',    v'ⱼ = vⱼ/sⱼ where vⱼ is a distance, else 1,

and the model of the cost in them, with Newton's correction for ``v``'s own slope
``dvⱼ/dxⱼ ∈ {−1, 0, 1}``,

    m(p̂) = ĝᵀp̂ + ½ p̂ᵀ(D B D + diag(g ⊙ dv ⊙ s)) p̂,     ĝ = d ⊙ g,   D = diag(d).

The step is the model's minimum in the ball ``‖p̂‖ <= Δ``: near a bound ``dⱼ → 0``, so
the region is flattened against the bound and no step can cross it by much.  Without
bounds ``v = 1``, ``d = s``, and the method is a Levenberg-Marquardt trust region in the
variables ``x/s`` (scipy's trf without bounds).

The trust-region subproblem (scipy's ``solve_lsq_trust_region``, Moré 1978).  Its
solution is ``p̂(λ) = −(Â + λI)⁻¹ĝ`` with ``λ = 0`` if the Newton step fits in the ball
(and ``Â`` has full rank: a Cholesky factorisation of ``Â`` scaled to unit diagonal keeps
every pivot above ``10·n·eps``), else the λ with ``‖p̂(λ)‖ = Δ``.  That λ is found by
Newton's iteration on ``φ(λ) = ‖p̂(λ)‖ − Δ``, ``φ'(λ) = −‖L⁻¹p̂‖²/‖p̂‖`` (``LLᵀ = Â + λI``),
with Moré's safeguards ``λ ∈ [λ_lo, λ_up]``, ``λ_up = ‖ĝ‖/Δ``, ``λ_lo = −φ(0)/φ'(0)`` (0
for a rank-deficient ``Â``), warm-started from the previous step's λ times
``Δ_old/Δ_new``; it stops at ``|φ| < 0.01·Δ``, and ``p̂`` is then scaled to length ``Δ``.
(The iteration is written out in ``_trust_region``.)  scipy takes one SVD of the
scaled Jacobian and iterates on its singular values; here each
iteration is one Cholesky factorisation of the n×n matrix (written out for n <= 8,
``_linalg``, so that under ``vmap`` it runs in SIMD lanes), at most
``DAMPING_ITERATIONS`` of them, a converged search keeping its iterate.  So the result
does not depend on how many run: on CPU the loop ends once every search of the block
has converged (near a solution most steps are Newton steps and need none: the
2D-Gaussian batch of ``benchmarks/batch.py`` took 2.1× Levenberg-Marquardt's time with
all five unrolled, 1.5× this way), and the accelerator path (``vectorised``) unrolls
all five, a step without a loop.  A damped solve that fails (round-off) falls back to
the steepest-descent step of length Δ.  With ``subspace="2d"`` (``two_dimensional``) a
step on the region's edge is instead the model's best there within the plane of the
Newton step and ``ĝ`` (Coleman & Li's two-dimensional subspace, as Fides solves it:
``_trust_region.subspace_step``); λ is still searched, for the acceleration's solve.

The reflective step (scipy's ``select_step``).  If ``x + p`` (``p = d ⊙ p̂``) stays in the
box it is the step.  Otherwise three candidates are compared by the model ``m``:

- the step cut where it first meets a bound, times ``θ = max(0.995, 1 − ‖v⊙g‖∞)`` (a
  step back into the interior that vanishes as the fit converges);
- the reflected step: from where the cut step meets the bound, continue along ``p̂``
  with the components that hit the bound negated, to the model's minimum along that
  line between ``(1−θ)``·(the cut's length) and θ times the way to the next bound or
  the trust region's edge;
- the constrained Cauchy step: the model's minimum along ``−ĝ`` within the ball and θ
  times the way to the box's boundary.

The trial point is ``x + step``, moved to the next representable number inside where
round-off put it on a bound.

Geodesic acceleration and the structured secant model (fitfleet's additions,
``acceleration`` and ``secant``): see ``_curvature``, which writes them out.

Radius and acceptance (scipy's ``update_tr_radius``).  With ``ρ`` the ratio of the actual
to the predicted reduction (the model's value at the step; 1 where both are 0), the
radius becomes ``¼‖p̂‖`` when ``ρ < ¼`` and doubles when ``ρ > ¾`` and ``‖p̂‖ > 0.95Δ``.
A step is accepted when it reduces the cost.  A trial point whose residual is not
finite is rejected and the radius becomes ``¼‖p̂‖``.  A step too small for the computed
cost to judge (``_common.below_round_off``) counts as ``ρ = 1`` and is accepted: in
float32 the ratio near a solution is round-off, and the fit would otherwise shrink its
radius to nothing rather than stop (fitfleet's addition, as in its Levenberg-Marquardt).

Stopping tests, scipy's for trf (tolerances below the dtype's eps act as eps; 0
disables a test):

- ``gtol``: ``‖v ⊙ g‖∞ < gtol`` at an accepted point (absolute: in the units of the
  cost's gradient times the parameters'), or ``g = 0`` exactly;
- ``ftol``: a step with ``ρ > ¼`` and ``F_old − F_new < ftol·F_old + fatol``, where (fitfleet's
  addition, shared with ``_common``) every parameter also moved by at most
  ``√ftol·(√ftol + |xⱼ|)``: a long step across a flat valley is not convergence (without
  it NIST's ENSO and MGH09 stop with 3 correct digits, as scipy's trf does), unless
  ``settle`` is off or ``ftol = 0 < fatol``.  A step whose predicted and actual
  reductions are both within the cost's round-off counts as settled: along a valley
  that is flat to round-off (Rat43's ``b3, b4 → −∞``) the parameters would otherwise
  walk until ``max_steps``;
- ``xtol``: ``‖step‖ < xtol·(xtol + ‖x‖)`` for any step proposed, accepted or not.

``ftol`` and ``xtol`` do not count on a step taken after a trial point whose residual was
not finite, since the last accepted point (fitfleet's addition): there the step is short
because the radius was cut around points where the model cannot be evaluated, not
because the fit converged.  Such a fit stops with ``NONFINITE_RESIDUAL`` (scipy calls it
``xtol``).  On Crauste_CellSystems2017's multi-start, 131 of 142 fits that stopped by
``xtol`` were within 1e-6 of a point where the ODE solve fails, their gradients 1e3-1e7,
and continued from there 117 of them lowered their NLL (by up to 1400).

Otherwise the fit stops with ``STEP_FAILED`` when a rejected step's radius can no longer
move ``x`` (``Δ·max(d) <= eps·‖x‖``, only reachable with ``xtol = 0``), ``MAX_STEPS``, or
``NONFINITE_JACOBIAN``.  ``success`` is one of the three tests as stated.

References: M. A. Branch, T. F. Coleman, Y. Li, "A subspace, interior, and conjugate
gradient method for large-scale bound-constrained minimization problems", SIAM J. Sci.
Comput. 21 (1999) 1-23; T. F. Coleman, Y. Li, "An interior trust region approach for
nonlinear minimization subject to bounds", SIAM J. Optim. 6 (1996) 418-445;
J. J. Moré, "The Levenberg-Marquardt algorithm: implementation and theory", Lecture
Notes in Mathematics 630 (1978); M. K. Transtrum, J. P. Sethna, "Improvements to the
Levenberg-Marquardt algorithm for nonlinear least-squares minimization",
arXiv:1201.5885 (2012), §3 (the acceleration); J. E. Dennis, D. M. Gay, R. E. Welsch, "An
adaptive nonlinear least-squares algorithm", ACM Trans. Math. Softw. 7 (1981) 348-368
(the secant model); scipy's ``scipy/optimize/_lsq/trf.py`` and
``common.py`` (N. Mayorov, 2015), which this follows step by step; B. Triggs et al.,
"Bundle adjustment — a modern synthesis" (2000), §4.3 (the loss scaling).
"""

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._linalg import JACOBI_FIXED_SWEEPS, UNROLL_MAX
from .._status import Status
from ._common import (
    State, Tolerances, advance, below_round_off, counter, keep_linearization, linearize, linearize_like, settled,
    unless_blocked, without_jacobian,
)  # fmt: skip
from ._curvature import accelerated, secant_update
from ._reflective import coleman_li, quadratic, scaled_gradient_norm, select_step, strictly_feasible
from ._trust_region import damped_step, positive, subspace_step, trust_region_step, trust_region_step_svd

STEP_BACK = 0.995  # θ = max(STEP_BACK, 1 − ‖v·g‖∞): the least fraction of a step to a bound taken
SWITCH_FACTOR = 1.5  # NL2SOL's ``fuzz``: how much better the other model must have predicted a step


class _Inner(eqx.Module):
    jtj: Any
    scale_inv: Any  # 1/x_scale; for x_scale="jac" the running max of the column norms
    radius: Any
    damping: Any
    # Where the secant model applies (``TrustRegionReflective.secant``; else None, nothing carried):
    secant: Any  # S, the structured secant estimate of Σ rᵢ∇²rᵢ (module docstring)
    augmented: Any  # whether the next step's model is JᵀJ + S (the last step it predicted better)
    blocked: Any  # a trial point since the last accepted one had a non-finite residual


class TrustRegionReflective(eqx.Module):
    """Trust-region reflective (see the module docstring for the exact algorithm)."""

    tol: Tolerances
    x_scale: Any  # (n,) array, or None for x_scale="jac"
    acceleration: bool = eqx.field(static=True, default=True)  # where it applies: no box, linear loss
    acceleration_from: int = eqx.field(static=True, default=0)  # the first step it corrects
    secant: bool = eqx.field(static=True, default=True)  # set up by ``_setup.prepare``: linear loss only
    two_dimensional: bool = eqx.field(static=True, default=False)  # ``subspace="2d"``: ``_trust_region.subspace_step``
    # ``vectorised``: a step without loops (every damping iteration unrolled, a fixed
    # number of Jacobi sweeps in the SVD).
    loop_free: bool = eqx.field(static=True, default=False)
    differentiable: bool = eqx.field(static=True, default=False)
    forms_jacobian = True  # the solvers' contract (``fitfleet._solvers``)

    def thin(self, state):  # the solvers' contract: J where the step needs it (SVD, acceleration)
        return state if self.acceleration or _needs_jac(state.params) else without_jacobian(state)

    def vectorised(self):  # the solvers' contract: no loop inside the step
        return dataclasses.replace(self, loop_free=True)

    def init(self, problem, x):
        lin = linearize(problem, x, exact_loss_curvature=True)
        cost = problem.cost(lin.residual)
        if self.x_scale is None:
            scale_inv = positive(jnp.sqrt(jnp.diagonal(lin.jtj)))
        else:
            scale_inv = jnp.broadcast_to(1 / jnp.asarray(self.x_scale, x.dtype), x.shape)
        v, dv = coleman_li(x, lin.grad, problem.box())
        v = jnp.where(dv != 0, v * scale_inv, v)
        radius = jnp.linalg.norm(x * scale_inv / jnp.sqrt(v))
        radius = jnp.where((radius > 0) & jnp.isfinite(radius), radius, 1).astype(x.dtype)
        zero = jnp.zeros((), x.dtype)
        secant, augmented = (jnp.zeros_like(lin.jtj), jnp.zeros((), bool)) if self.secant else (None, None)
        inner = _Inner(lin.jtj, scale_inv, radius, zero, secant, augmented, jnp.zeros((), bool))
        g_norm = scaled_gradient_norm(x, lin.grad, problem.box())
        tol = self.tol.at_precision(x.dtype)
        status = jnp.where(_gtol_met(g_norm, tol), Status.GTOL, Status.RUNNING)
        status = jnp.where(lin.jac_finite, status, Status.NONFINITE_JACOBIAN)
        status = jnp.where(jnp.isfinite(cost), status, Status.NONFINITE_RESIDUAL).astype(jnp.int32)
        return State(x, lin.residual, cost, lin.jac, lin.grad, status, counter(), counter(1), counter(1), inner)

    def step(self, problem, state):
        s = state.inner
        x, g = state.params, state.grad
        box = problem.box()
        tol = self.tol.at_precision(x.dtype)
        v, dv = coleman_li(x, g, box)
        g_norm = jnp.max(jnp.abs(g * v))
        # Coleman-Li scaling on top of x_scale: the hat variables are x = d·x̂.
        scale = 1 / s.scale_inv
        d = jnp.sqrt(jnp.where(dv != 0, v * s.scale_inv, v)) * scale
        g_h = d * g
        diag_h = g * dv * scale  # >= 0: dv has the sign of g where it is not 0
        dd = d[:, None] * d[None, :]
        A_h = s.jtj * dd + jnp.diag(diag_h)  # the Gauss-Newton model
        if self.secant:
            curvature = s.secant * dd  # the secant term in the hat variables
            A_gn, A_h = A_h, jnp.where(s.augmented, A_h + curvature, A_h)
        theta = jnp.maximum(STEP_BACK, 1 - g_norm)

        running = state.status == Status.RUNNING
        if _needs_jac(x):  # scipy's solver exactly: one SVD of the scaled Jacobian
            r_model, J_model = problem.model(state.residual, state.jac, True)
            # The model's diagonal terms besides J̃ᵀJ̃: log_scale's curvature and diag_h.
            extra = jnp.maximum(jnp.diagonal(s.jtj) - jnp.sum(J_model**2, 0), 0) * d * d + diag_h
            damping, p_h, solve = trust_region_step_svd(
                *jax.lax.stop_gradient((J_model * d, jnp.sqrt(extra), r_model, s.radius, s.damping)),
                running & ~s.augmented if self.secant else running, JACOBI_FIXED_SWEEPS if self.loop_free else None,
            )
            if self.secant:  # JᵀJ + S has no square root to stack on J: its steps factorise the n×n model
                damping_s, p_s, solve_s = trust_region_step(
                    *jax.lax.stop_gradient((A_h, g_h, s.radius, s.damping)), running & s.augmented, self.loop_free
                )
                damping, p_h = jnp.where(s.augmented, damping_s, damping), jnp.where(s.augmented, p_s, p_h)
                solve_gn = solve
                solve = lambda c: jnp.where(s.augmented, solve_s(c), solve_gn(c))  # noqa: E731
        else:
            damping, p_h, solve = trust_region_step(
                *jax.lax.stop_gradient((A_h, g_h, s.radius, s.damping)), running, self.loop_free
            )
        if self.differentiable:
            p_h = damped_step(A_h, g_h, damping, s.radius)
        if self.two_dimensional:  # the damping found above still serves the acceleration's solve
            p_h = subspace_step(A_h, g_h, s.radius, p_h)
        p = d * p_h
        if box is None:
            step, step_h, predicted = p, p_h, -quadratic(A_h, g_h, p_h)
        else:
            step, step_h, predicted = select_step(x, A_h, g_h, p, p_h, d, s.radius, *box, theta)
        if self.acceleration and problem.loss == "linear":  # module docstring
            inside = True if box is None else jnp.all((x + p >= box[0]) & (x + p <= box[1]))
            use = running & inside & (state.n_steps >= self.acceleration_from)
            # A cond: a step that is not corrected evaluates nothing more (under vmap both run).
            step = jax.lax.cond(use, lambda: accelerated(problem, state, p_h, d, solve), lambda: step)
        step_finite = jnp.all(jnp.isfinite(step))
        step = jnp.where(step_finite, step, 0)
        trial = x + step if box is None else strictly_feasible(x + step, *box)

        trial_residual = problem.residual(trial)
        trial_cost = problem.cost(trial_residual)
        finite = step_finite & jnp.isfinite(trial_cost)
        blocked = s.blocked | (step_finite & ~finite)
        reduction = state.cost - trial_cost
        ratio = jnp.where(
            predicted > 0,
            reduction / jnp.where(predicted > 0, predicted, 1),
            jnp.where((predicted == 0) & (reduction == 0), 1, 0),
        )
        round_off = finite & below_round_off(reduction, predicted, state.cost, s.jtj, x)
        ratio = jnp.where(round_off, 1, ratio)
        step_h_norm = jnp.linalg.norm(step_h)
        radius = jnp.where(
            ratio < 0.25,
            0.25 * step_h_norm,
            jnp.where((ratio > 0.75) & (step_h_norm > 0.95 * s.radius), 2 * s.radius, s.radius),
        )
        radius = jnp.where(finite, radius, 0.25 * step_h_norm)
        damping = jnp.where(finite & (radius > 0), damping * s.radius / jnp.where(radius > 0, radius, 1), damping)
        accepted = finite & ((reduction > 0) | round_off)
        if self.secant:
            # NL2SOL's choice of the next step's model (module docstring): the other one
            # where it predicted this step clearly better, unless this step grew the radius;
            # never the augmented one just after it failed.
            q_gn = quadratic(A_gn, g_h, step_h)
            q_aug = q_gn + 0.5 * jnp.sum(curvature * jnp.outer(step_h, step_h))
            error_gn, error_aug = jnp.abs(reduction + q_gn), jnp.abs(reduction + q_aug)
            error, other = jnp.where(s.augmented, error_aug, error_gn), jnp.where(s.augmented, error_gn, error_aug)
            switch = (SWITCH_FACTOR * other < error) & ~(radius > s.radius)
            augmented = finite & (s.augmented != switch) & ~(s.augmented & (ratio < 0.25))
        else:
            augmented = s.augmented

        params = jnp.where(accepted, trial, x)
        # At ``trial``, as in levenberg_marquardt: under vmap (r, J) is one evaluation.
        lin = jax.lax.cond(
            accepted,
            lambda: linearize_like(
                problem, trial, state, exact_loss_curvature=True, fallback=state.params, residual=trial_residual
            ),
            lambda: keep_linearization(state, s.jtj),
        )
        scale_inv = s.scale_inv if self.x_scale is not None else jnp.maximum(s.scale_inv, jnp.sqrt(jnp.diagonal(lin.jtj)))

        # scipy's tests, in its order: ftol and xtol judge the trial step, gtol the new point.
        at_rest = settled(step, x, tol) | (round_off & (tol.ftol > 0))  # as _common.step_status
        ftol_met = finite & (reduction < tol.ftol * state.cost + tol.fatol) & (ratio > 0.25) & at_rest
        xtol_met = finite & (jnp.linalg.norm(step) < tol.xtol * (tol.xtol + jnp.linalg.norm(x)))
        new_g_norm = scaled_gradient_norm(params, lin.grad, box)
        eps = jnp.finfo(x.dtype).eps
        collapsed = ~accepted & ~(radius * jnp.max(d) > eps * jnp.linalg.norm(x))  # NaN too
        status = jnp.int32(Status.RUNNING)
        for condition, code in reversed([
            (accepted & ~lin.jac_finite, Status.NONFINITE_JACOBIAN),
            (ftol_met, Status.FTOL),
            (xtol_met, Status.XTOL),
            (accepted & _gtol_met(new_g_norm, tol), Status.GTOL),
            (collapsed, Status.STEP_FAILED),
        ]):  # fmt: skip
            status = jnp.where(condition, jnp.int32(code), status)
        status = unless_blocked(status, blocked)
        S = s.secant
        if self.secant:
            S = jnp.where(accepted, jax.lax.stop_gradient(secant_update(S, params - x, lin.grad - g, lin.jtj)), S)
        inner = _Inner(lin.jtj, scale_inv, radius.astype(x.dtype), damping.astype(x.dtype), S, augmented, blocked & ~accepted)
        return advance(problem, state, params=params, lin=lin, n_jev=accepted, status=status, inner=inner)




def _needs_jac(x):
    """Whether the step needs the Jacobian itself (the SVD solver), not only JᵀJ."""
    return x.shape[0] > UNROLL_MAX


def _gtol_met(g_norm, tol):
    """scipy's gtol test, ``‖v·g‖∞ < gtol``; an exactly stationary point meets it too."""
    return (g_norm < tol.gtol) | (g_norm == 0)
