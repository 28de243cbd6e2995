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
scipy takes one SVD of the scaled Jacobian and iterates on its singular values; here each
iteration is one Cholesky factorisation of the n×n matrix (written out for n <= 8,
``_linalg``, so that under ``vmap`` it runs in SIMD lanes), and the number of iterations
is fixed (``DAMPING_ITERATIONS``; the updates stop where converged): a data-dependent
loop under ``vmap`` would make every fit wait for the slowest one's search.  A damped
solve that fails (round-off) falls back to the steepest-descent step of length Δ.

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
- ``ftol``: a step with ``ρ > ¼`` and ``F_old − F_new < ftol·F_old``, where (fitfleet's
  addition, shared with ``_common``) every parameter also moved by at most
  ``√ftol·(√ftol + |xⱼ|)``: a long step across a flat valley is not convergence (without
  it NIST's ENSO and MGH09 stop with 3 correct digits, as scipy's trf does);
- ``xtol``: ``‖step‖ < xtol·(xtol + ‖x‖)`` for any step proposed, accepted or not.

Otherwise the fit stops with ``STEP_FAILED`` when a rejected step's radius can no longer
move ``x`` (``Δ·max(d) <= eps·‖x‖``, only reachable with ``xtol = 0``), ``MAX_STEPS``, or
``NONFINITE_JACOBIAN``.  ``success`` is one of the three tests as stated.

References: M. A. Branch, T. F. Coleman, Y. Li, "A subspace, interior, and conjugate
gradient method for large-scale bound-constrained minimization problems", SIAM J. Sci.
Comput. 21 (1999) 1-23; T. F. Coleman, Y. Li, "An interior trust region approach for
nonlinear minimization subject to bounds", SIAM J. Optim. 6 (1996) 418-445;
J. J. Moré, "The Levenberg-Marquardt algorithm: implementation and theory", Lecture
Notes in Mathematics 630 (1978); scipy's ``scipy/optimize/_lsq/trf.py`` and
``common.py`` (N. Mayorov, 2015), which this follows step by step; B. Triggs et al.,
"Bundle adjustment — a modern synthesis" (2000), §4.3 (the loss scaling).
"""

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._linalg import UNROLL_MAX, cholesky, solve_lower, solve_semidefinite, solve_upper_transposed
from .._status import Status
from ._common import State, Tolerances, advance, below_round_off, counter, keep_linearization, linearize
from ._reflective import coleman_li, quadratic, scaled_gradient_norm, select_step, strictly_feasible

STEP_BACK = 0.995  # θ = max(STEP_BACK, 1 − ‖v·g‖∞): the least fraction of a step to a bound taken
RADIUS_RTOL = 0.01  # the damping search ends at |‖p‖ − Δ| < RADIUS_RTOL·Δ (scipy's rtol)
# scipy iterates up to 10 times; here every fit of a batch pays for every iteration.  With
# 3, 4, 5, 6, 10 iterations trf solved 50, 51, 52, 52, 52 of NIST's 54 runs and 119, 122,
# 118, 118, 117 of MGH's 141 (which runs succeed shifts from one count to the next: the
# hard runs' paths are chaotic); 10 made the 2D-Gaussian batch ~2.5x Levenberg-Marquardt's
# time, 5 about 1.5x.
DAMPING_ITERATIONS = 5
SVD_DAMPING_ITERATIONS = 10  # scipy's, where each costs O(n) (n > UNROLL_MAX)


class _Inner(eqx.Module):
    jtj: Any
    scale_inv: Any  # 1/x_scale; for x_scale="jac" the running max of the column norms
    radius: Any
    damping: Any


class TrustRegionReflective(eqx.Module):
    """Trust-region reflective (see the module docstring for the exact algorithm)."""

    tol: Tolerances
    x_scale: Any  # (n,) array, or None for x_scale="jac"
    differentiable: bool = eqx.field(static=True, default=False)
    # The batch engine's mode, as LevenbergMarquardt.batched: (r, J) at every trial point.
    batched: bool = eqx.field(static=True, default=False)

    def init(self, problem, x):
        lin = linearize(problem, x, exact_loss_curvature=True)
        cost = problem.cost(lin.residual)
        if self.x_scale is None:
            scale_inv = _positive(jnp.sqrt(jnp.diagonal(lin.jtj)))
        else:
            scale_inv = jnp.broadcast_to(1 / jnp.asarray(self.x_scale, x.dtype), x.shape)
        v, dv = coleman_li(x, lin.grad, problem.box())
        v = jnp.where(dv != 0, v * scale_inv, v)
        radius = jnp.linalg.norm(x * scale_inv / jnp.sqrt(v))
        radius = jnp.where((radius > 0) & jnp.isfinite(radius), radius, 1).astype(x.dtype)
        inner = _Inner(jtj=lin.jtj, scale_inv=scale_inv, radius=radius, damping=jnp.zeros((), x.dtype))
        g_norm = scaled_gradient_norm(x, lin.grad, problem.box())
        tol = self.tol.at_precision(x.dtype)
        status = jnp.where(_gtol_met(g_norm, tol), Status.GTOL, Status.RUNNING)
        status = jnp.where(lin.jac_finite, status, Status.NONFINITE_JACOBIAN)
        status = jnp.where(jnp.isfinite(cost), status, Status.NONFINITE_RESIDUAL).astype(jnp.int32)
        jac = None if self.batched and not _needs_jac(x) else lin.jac
        return State(x, lin.residual, cost, jac, lin.grad, status, counter(), counter(1), counter(1), inner)

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
        A_h = s.jtj * (d[:, None] * d[None, :]) + jnp.diag(diag_h)
        theta = jnp.maximum(STEP_BACK, 1 - g_norm)

        running = state.status == Status.RUNNING
        if _needs_jac(x):  # scipy's solver exactly: one SVD of the scaled Jacobian
            r_model, J_model = problem.model(state.residual, state.jac, True)
            # The model's diagonal terms besides J̃ᵀJ̃: log_scale's curvature and diag_h.
            extra = jnp.maximum(jnp.diagonal(s.jtj) - jnp.sum(J_model**2, 0), 0) * d * d + diag_h
            damping, p_h = trust_region_step_svd(
                *jax.lax.stop_gradient((J_model * d, jnp.sqrt(extra), r_model, s.radius, s.damping)), running
            )
        else:
            damping, p_h = trust_region_step(*jax.lax.stop_gradient((A_h, g_h, s.radius, s.damping)), running)
        if self.differentiable:
            p_h = _damped_step(A_h, g_h, damping, s.radius)
        p = d * p_h
        if box is None:
            step, step_h, predicted = p, p_h, -quadratic(A_h, g_h, p_h)
        else:
            step, step_h, predicted = select_step(x, A_h, g_h, p, p_h, d, s.radius, *box, theta)
        step_finite = jnp.all(jnp.isfinite(step))
        step = jnp.where(step_finite, step, 0)
        trial = x + step if box is None else strictly_feasible(x + step, *box)

        if self.batched:
            trial_lin = linearize(problem, trial, exact_loss_curvature=True, fallback=state.params)
            trial_lin = trial_lin if _needs_jac(x) else dataclasses.replace(trial_lin, jac=None)
            trial_residual = trial_lin.residual
        else:
            trial_residual = problem.residual(trial)
        trial_cost = problem.cost(trial_residual)
        finite = step_finite & jnp.isfinite(trial_cost)
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

        params = jnp.where(accepted, trial, x)
        if self.batched:
            kept = keep_linearization(state, s.jtj)
            lin = jax.tree_util.tree_map(lambda new, old: jnp.where(accepted, new, old), trial_lin, kept)
        else:
            lin = jax.lax.cond(
                accepted,
                lambda: linearize(problem, params, exact_loss_curvature=True),
                lambda: keep_linearization(state, s.jtj),
            )
        scale_inv = s.scale_inv if self.x_scale is not None else jnp.maximum(s.scale_inv, jnp.sqrt(jnp.diagonal(lin.jtj)))

        # scipy's tests, in its order: ftol and xtol judge the trial step, gtol the new point.
        root_ftol = jnp.sqrt(tol.ftol)
        settled = jnp.all(jnp.abs(step) <= root_ftol * (root_ftol + jnp.abs(x)))
        ftol_met = finite & (reduction < tol.ftol * state.cost) & (ratio > 0.25) & settled
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
        inner = _Inner(jtj=lin.jtj, scale_inv=scale_inv, radius=radius.astype(x.dtype), damping=damping.astype(x.dtype))
        n_jev = 1 if self.batched else accepted
        return advance(problem, state, params=params, lin=lin, n_jev=n_jev, status=status, inner=inner)


def _needs_jac(x):
    """Whether the step needs the Jacobian itself (the SVD solver), not only JᵀJ."""
    return x.shape[0] > UNROLL_MAX


def _gtol_met(g_norm, tol):
    """scipy's gtol test, ``‖v·g‖∞ < gtol``; an exactly stationary point meets it too."""
    return (g_norm < tol.gtol) | (g_norm == 0)


def _positive(scale):
    return jnp.where(scale > 0, scale, 1)


# ------------------------------------------------------------- the trust-region step


def _damped_step(A, b, damping, radius):
    """``p = −(A + λI)⁻¹b``, scaled to length ``radius`` where ``λ > 0``, differentiably."""
    n = b.shape[-1]
    scale = _positive(jnp.sqrt(jnp.diagonal(A)))
    newton = solve_semidefinite(A / (scale[:, None] * scale[None, :]), -b / scale) / scale
    L = cholesky(A + jnp.where(damping > 0, damping, 1) * jnp.eye(n, dtype=A.dtype))
    damped = -solve_upper_transposed(L, solve_lower(L, b))
    damped = damped * (radius / jnp.linalg.norm(damped))
    return jnp.where(damping > 0, damped, newton)


def trust_region_step(A, b, radius, damping, search=True):
    """scipy's ``solve_lsq_trust_region`` on the normal matrix: ``(λ, p)`` for
    ``min bᵀp + ½pᵀAp`` s.t. ``‖p‖ <= radius`` (see the module docstring).

    A fixed number of iterations, so that under ``vmap`` no fit waits for another's
    search; ``search=False`` (a finished fit) returns a zero step.
    """
    n = b.shape[-1]
    search = jnp.asarray(search)
    eye = jnp.eye(n, dtype=A.dtype)
    eps = jnp.finfo(A.dtype).eps
    # The Gauss-Newton step, and whether A is (numerically) of full rank.
    scale = _positive(jnp.sqrt(jnp.diagonal(A)))
    L0 = cholesky(A / (scale[:, None] * scale[None, :]), drop_below=10 * n * eps)
    full_rank = jnp.all(jnp.diagonal(L0) > 0)
    newton = -solve_upper_transposed(L0, solve_lower(L0, b / scale)) / scale
    newton_norm = jnp.linalg.norm(newton)
    full_rank = full_rank & jnp.isfinite(newton_norm)
    newton_fits = full_rank & (newton_norm <= radius)

    upper = jnp.linalg.norm(b) / radius
    # φ(λ) = ‖p(λ)‖ − radius; φ'(λ) = −‖L⁻¹p‖²/‖p‖ with LLᵀ = A + λI.
    q_norm = jnp.linalg.norm(solve_lower(L0, newton / scale))
    lower = jnp.where(full_rank, (newton_norm - radius) * newton_norm / jnp.where(q_norm > 0, q_norm, 1) ** 2, 0)
    lower = jnp.where(jnp.isfinite(lower), jnp.maximum(lower, 0), 0)
    reset = lambda lo, up: jnp.maximum(1e-3 * up, jnp.sqrt(lo * up))  # noqa: E731
    damping = jnp.where(~full_rank & (damping == 0), reset(lower, upper), damping)

    def body(_, carry):
        damping, lower, upper, done, found, p = carry
        damping = jnp.where((damping < lower) | (damping > upper), reset(lower, upper), damping)
        L = cholesky(A + damping * eye)
        y = -solve_upper_transposed(L, solve_lower(L, b))
        norm = jnp.linalg.norm(y)
        ok = jnp.isfinite(norm) & (norm > 0)
        phi = norm - radius
        slope = -jnp.linalg.norm(solve_lower(L, y)) ** 2 / jnp.where(ok, norm, 1)
        ratio = phi / jnp.where(ok & (slope != 0), slope, -1)
        new_upper = jnp.where(ok & (phi < 0), damping, upper)
        new_lower = jnp.where(ok, jnp.maximum(lower, damping - ratio), jnp.maximum(lower, damping))
        following = jnp.where(ok, damping - (phi + radius) * ratio / radius, reset(new_lower, new_upper))
        converged = ok & (jnp.abs(phi) < RADIUS_RTOL * radius)
        keep = done
        out = (
            jnp.where(keep, carry[0], following),
            jnp.where(keep, lower, new_lower),
            jnp.where(keep, upper, new_upper),
            done | converged,
            jnp.where(keep | ~ok, found, damping),
            jnp.where(keep | ~ok, p, y),
        )
        return out

    init = (damping, lower, upper, newton_fits | ~search, jnp.zeros_like(damping), jnp.zeros_like(b))
    _, _, _, _, found, p = jax.lax.fori_loop(0, DAMPING_ITERATIONS, body, init, unroll=True)
    p_norm = jnp.linalg.norm(p)
    # No damped solve succeeded (round-off at a huge condition number): the steepest
    # descent step of length radius, the limit of λ → ∞.
    b_norm = jnp.linalg.norm(b)
    steepest = -b * (radius / jnp.where(b_norm > 0, b_norm, 1))
    p = jnp.where(p_norm > 0, p * (radius / jnp.where(p_norm > 0, p_norm, 1)), steepest)
    p = jnp.where(newton_fits, newton, p)
    p = jnp.where(search, p, 0)
    return jnp.where(newton_fits, 0, found).astype(A.dtype), p


def trust_region_step_svd(J, rows, r, radius, damping, search=True):
    """scipy's ``solve_lsq_trust_region`` as scipy runs it, for n > ``UNROLL_MAX``: an SVD
    of the scaled Jacobian ``J`` (m, n) stacked on the diagonal ``rows`` (the model's
    terms that are not ``JᵀJ``), whose singular values make each iteration O(n), and
    which keeps the accuracy the normal matrix loses beyond a condition number of ~1e8.
    Returns ``(λ, p)`` as ``trust_region_step``."""
    m, n = J.shape
    search = jnp.asarray(search)
    U, s, Vt = jnp.linalg.svd(jnp.concatenate([J, jnp.diag(rows)]), full_matrices=False)
    suf = s * (U[:m].T @ r)  # Uᵀ[r; 0]
    full_rank = (m >= n) & (s[-1] > jnp.finfo(J.dtype).eps * m * s[0])
    safe_s = jnp.where(s > 0, s, 1)
    newton = -Vt.T @ (suf / safe_s**2)
    newton_fits = full_rank & (jnp.linalg.norm(newton) <= radius)

    def phi(alpha):
        denom = s**2 + alpha
        norm = jnp.linalg.norm(suf / denom)
        return norm - radius, -jnp.sum(suf**2 / denom**3) / jnp.where(norm > 0, norm, 1)

    upper = jnp.linalg.norm(suf) / radius
    phi0, slope0 = phi(jnp.zeros_like(radius))
    lower = jnp.where(full_rank, -phi0 / jnp.where(slope0 != 0, slope0, -1), 0)
    reset = lambda lo, up: jnp.maximum(1e-3 * up, jnp.sqrt(lo * up))  # noqa: E731
    damping = jnp.where(~full_rank & (damping == 0), reset(lower, upper), damping)

    def body(_, carry):
        damping, lower, upper, done = carry
        damping = jnp.where((damping < lower) | (damping > upper), reset(lower, upper), damping)
        value, slope = phi(damping)
        ratio = value / jnp.where(slope != 0, slope, -1)
        new = (damping - (value + radius) * ratio / radius, jnp.maximum(lower, damping - ratio),
               jnp.where(value < 0, damping, upper))  # fmt: skip
        keep = lambda old, updated: jnp.where(done, old, updated)  # noqa: E731
        converged = jnp.abs(value) < RADIUS_RTOL * radius
        return keep(carry[0], new[0]), keep(lower, new[1]), keep(upper, new[2]), done | converged

    init = (damping, lower, upper, newton_fits | ~search)
    damping = jax.lax.fori_loop(0, SVD_DAMPING_ITERATIONS, body, init)[0]
    p = -Vt.T @ (suf / (s**2 + damping))
    p = p * (radius / jnp.maximum(jnp.linalg.norm(p), jnp.finfo(J.dtype).tiny))
    p = jnp.where(newton_fits, newton, p)
    return jnp.where(newton_fits, 0, damping).astype(J.dtype), jnp.where(search, p, 0)
