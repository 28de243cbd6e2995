"""Levenberg-Marquardt as a trust-region method, with Marquardt's diagonal scaling.

Each step minimises the Gauss-Newton model of the cost ``F = ½‖r‖²`` in a scaled ball,

    min_δ  gᵀδ + ½ δᵀJᵀJδ    subject to  ‖Dδ‖ <= radius,      g = Jᵀr,

whose solution is the damped Gauss-Newton step (Moré 1978, the algorithm of MINPACK's
``lmder`` and of scipy's ``trf`` without bounds):

    (JᵀJ + damping · D²) δ = -g,    damping >= 0,  damping · (‖Dδ‖ - radius) = 0.

Scaling.  ``D_j = max(M_j, √(2F)/max(|u_j|, 1))`` with ``M_j`` the largest ``‖J_j‖``
met at any iterate.  ``M`` is MINPACK's choice: it makes the method invariant to the
units of each parameter, and because it never shrinks, a parameter whose influence fades
(a saturating exponential, a vanishing amplitude) cannot take an unbounded step and
"evaporate".  But a column measures a parameter's influence at the current point, and
from a poor start that can be misleadingly small: Michaelis-Menten's ``K`` column is
proportional to ``V``, so at a start with ``V`` thirty times too small ``K`` was cheap to
move, and the first damped steps carried it across the model's poles ``K = −S_k`` into
a local minimum (MINPACK's ``lmder`` with the same first radius, ``factor = 1``, does
the same; its default ``factor = 100`` takes the undamped step there, and leaps into far
regions on NIST problems).  The floor prices moving a parameter by its own size (by one
unit below 1: internal variables of bounds are angles) at no less than the residual's
norm, so a radius of ``‖r‖`` moves no parameter by more than its own size, as scipy's
``trf`` with its default ``x_scale = 1`` and first radius ``‖x₀‖`` does; it falls with the
cost, so at a small-residual optimum ``D = M``.  It also bounds the step of a parameter
whose column starts negligible (a rate whose amplitude starts at 0), which would
otherwise be unbounded (MINPACK's ``lm`` has that weakness).  The linear algebra
happens in the scaled variables ``y = Dδ``, where ``D⁻¹JᵀJD⁻¹`` has a diagonal of at
most 1.  With bounds (internal variables ``u``, ``p = T(u)``), a start near a bound has
a column shrunk by the transform's small slope there, which would allow a huge first
step in ``u`` (a rate starting on its bound 0 was sent to 2e6, a plateau); so ``M``
starts at the column norms the parameters would have away from their bounds,
``‖J_j‖·max|T'|/|T'(u₀)|`` (``Problem.pinning``).  The model's matrix also carries the
bounds' curvature term ``diag(max(g_p ⊙ T''(u), 0))`` (``_common.linearize``), without
which a parameter converging onto an active bound creeps there, a constant fraction per
step; that term is not a column norm and stays out of ``D`` (pinned, it made ``D`` and
the first radius up to 1e7 times too large where the data pull a parameter against its
bound), so with it the scaled diagonal may exceed 1.  With a robust loss the columns are
those of ``√ρ'·J`` and the model's matrix is the loss's exact Gauss-Newton curvature
(``_losses``): where that curvature vanishes the step is the trust region's to bound.
``x_scale`` given as numbers replaces all of this by the fixed ``D = 1/x_scale``
(MINPACK's ``mode = 2`` with ``diag = 1/x_scale``, as scipy's ``lm`` runs it).

The damping.  If the Gauss-Newton step (damping 0) lies inside the ball it is taken.
Otherwise the damping solving ``‖Dδ(damping)‖ = radius`` is found to 10% by Hebden's
Newton iteration on ``1/‖Dδ‖ − 1/radius`` with Moré's bracketing safeguards, warm
started from the previous step's damping (Moré 1978, §5; one Cholesky per iteration).
It also stops where ``‖Dδ‖`` stays short of the radius and no longer grows as the
damping falls (the "hard case", a direction of no curvature and no slope, in which a
longer step would gain nothing).  The same iteration runs on one eigendecomposition
``D⁻¹JᵀJD⁻¹ = V diag(s) Vᵀ`` in the batch engine's accelerator path (``vectorised``,
:func:`spectral_damping`): with ``c = Vᵀ(D⁻¹g)``, ``‖Dδ(λ)‖² = Σ c²/(s + λ)²`` and
Hebden's derivative ``Σ c²/(s + λ)³`` cost O(n) per iterate, so all iterations are
unrolled and a step has no loop (under ``vmap`` a loop runs every fit's search as long
as the slowest one's, and on a GPU each trip costs kernel launches).  Its iterates are
the Cholesky search's to round-off; on NIST, MGH and the bounds suite it solved the
same problems (``benchmarks/lean_accuracy.py``).  The fit alone and the CPU engine keep
the Cholesky loop: an unrolled Cholesky runs in SIMD lanes across a block of fits,
where LAPACK's ``syevd`` is called once per fit (measured in ``benchmarks/accelerator.py``).

The radius (scipy ``trf``'s rule).  With the gain ratio

    ρ = (F(p) − F(p + δ)) / (−gᵀδ − ½ δᵀJᵀJδ),

the radius becomes ``¼‖Dδ‖`` when ρ < ¼ and doubles when ρ > ¾ and the step reached the
boundary.  The step is accepted when ρ > 1e-4; a non-finite trial residual counts as
ρ = −∞.  A step too small for the computed cost to judge (predicted and actual
reduction within the cost's round-off, ``_common.below_round_off``) counts as ρ = 1, so
the iteration reaches the Gauss-Newton fixed point instead of stalling at the cost's
resolution.  The first radius is ``‖D·max(|u₀|, 1)‖``: a step may at first change the
parameters by about their own size (by about one unit where smaller than one), a
conservative start that keeps hard problems from leaping into a far, flat region (a
first radius of ``‖r₀‖``, which caps each parameter's first step at its own size, lost
NIST runs), yet never a vanishing radius for a start at or near zero.

Reasoning about the step through a radius rather than updating the damping directly
(Nielsen's rule, say) is what makes the step length, not only its direction, respond
to how well the model predicted the last step.

The Jacobian is evaluated once per accepted point, never at a rejected trial point.
(Under ``vmap`` both branches of that choice run: then ``J`` is evaluated at every
trial point, and XLA computes the trial residual once for both, so a batched step costs
one fused evaluation of ``(r, J)``.)
Stopping tests: see ``_common``.  The ``xtol`` test on the step counts Gauss-Newton
steps only (damping 0): a step the trust region cut short says nothing about the
distance to the minimum (on MGH's Brown almost-linear function a step of relative size
1e-9 took the cost from 6e18 to 1e5, and the fit would have stopped there).  The test
also holds when the radius itself falls to ``radius <= xtol · ‖D p‖`` (MINPACK's form
of it), which ends a fit whose steps stay short, every one rejected or cut.  With
``xtol = 0`` such a fit stops with ``STEP_FAILED`` once the radius is below
``eps · (‖D p‖ + ‖r‖)``, where no representable step can change the cost.  ``ftol`` and
``xtol`` do not count after a trial point with a non-finite residual, since the last
accepted point: the fit stops with ``NONFINITE_RESIDUAL`` (as trf, whose docstring says why).

References: K. Levenberg (1944); D. Marquardt (1963); J. J. Moré, "The Levenberg-Marquardt
algorithm: implementation and theory", Lecture Notes in Mathematics 630 (1978);
M. A. Branch, T. F. Coleman, Y. Li, "A subspace, interior, and conjugate gradient method
for large-scale bound-constrained minimization problems", SIAM J. Sci. Comput. 21 (1999)
(scipy's ``trf``); J. Nocedal & S. Wright, "Numerical Optimization" (2006), §4.3.
"""

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._linalg import cholesky, solve_lower, solve_upper_transposed
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
    unless_blocked,
)

ACCEPT_RATIO = 1e-4
RADIUS_RTOL = 0.1  # Moré's tolerance on ‖Dδ‖ = radius
MAX_DAMPING_ITERATIONS = 10
PLATEAU_RTOL = 1e-3  # the damping search ends where ‖y‖ grows less than this as λ falls


class _Inner(eqx.Module):
    jtj: Any
    scale: Any  # M: running max of the column norms of J (D = metric(M, F, u))
    radius: Any
    damping: Any
    blocked: Any  # a trial point since the last accepted one had a non-finite residual


class LevenbergMarquardt(eqx.Module):
    """Levenberg-Marquardt (see the module docstring for the exact algorithm)."""

    tol: Tolerances
    initial_damping: Any
    # adjoint="unroll": re-solve for the step with gradients flowing through J and r.
    differentiable: bool = eqx.field(static=True, default=False)
    # The damping search: "cholesky" (a loop of factorisations) or "spectral" (one
    # eigendecomposition, no loop: ``vectorised``); see the module docstring.
    search: str = eqx.field(static=True, default="cholesky")
    x_scale: Any = None  # None: D from the Jacobian's columns; else the fixed D = 1/x_scale
    forms_jacobian = True  # the solvers' contract (``fitfleet._solvers``)

    def thin(self, state):  # the solvers' contract: a batch carries JᵀJ and Jᵀr only
        return without_jacobian(state)

    def vectorised(self):  # the solvers' contract: no loop inside the step
        return dataclasses.replace(self, search="spectral")

    def _metric(self, scale, cost, u):
        return scale if self.x_scale is not None else metric(scale, cost, u)

    def init(self, problem, p):
        lin = linearize(problem, p, exact_loss_curvature=True)
        cost = problem.cost(lin.residual)
        if self.x_scale is None:
            scale = jnp.sqrt(lin.col_norm_sq) * problem.pinning(p)
        else:
            scale = jnp.broadcast_to(1 / jnp.asarray(self.x_scale, p.dtype), p.shape)
        radius = jnp.linalg.norm(self._metric(scale, cost, p) * jnp.maximum(jnp.abs(p), 1))
        inner = _Inner(
            jtj=lin.jtj,
            scale=scale,
            radius=radius,
            damping=jnp.asarray(self.initial_damping, p.dtype),
            blocked=jnp.zeros((), bool),
        )
        status = start_status(cost, lin.jac, lin.cosine, self.tol)
        return State(p, lin.residual, cost, lin.jac, lin.grad, status, counter(), counter(1), counter(1), inner)

    def step(self, problem, state):
        s = state.inner
        d = self._metric(s.scale, state.cost, state.params)
        A, b = s.jtj / (d[:, None] * d[None, :]), state.grad / d
        # The damping is a choice, not a function to differentiate: it is searched without
        # gradients; only adjoint="unroll" needs the step itself differentiable.
        # A finished fit's step is discarded; under vmap it must not keep the search going.
        running = state.status == Status.RUNNING
        search = spectral_damping if self.search == "spectral" else trust_region_damping
        damping, scaled_step = search(*jax.lax.stop_gradient((A, b, s.radius, s.damping)), running)
        if self.differentiable:
            L = cholesky(A + damping * jnp.eye(A.shape[0], dtype=A.dtype))
            scaled_step = -solve_upper_transposed(L, solve_lower(L, b))
        # A damped solve that failed (round-off at a huge condition number) falls back to
        # the steepest-descent step of length radius, the limit of damping → ∞.
        steepest = -b * (s.radius / jnp.maximum(jnp.linalg.norm(b), jnp.finfo(b.dtype).tiny))
        scaled_step = jnp.where(jnp.all(jnp.isfinite(scaled_step)), scaled_step, steepest)
        step_finite = jnp.all(jnp.isfinite(scaled_step))
        scaled_step = jnp.where(step_finite, scaled_step, 0)
        step = scaled_step / d

        trial = problem.move(state.params, step)
        trial_residual = problem.residual(trial)
        trial_cost = problem.cost(trial_residual)
        reduction = state.cost - trial_cost
        predicted = -(state.grad @ step) - 0.5 * step @ (s.jtj @ step)
        valid = step_finite & jnp.isfinite(trial_cost) & (predicted > 0)
        blocked = s.blocked | (step_finite & ~jnp.isfinite(trial_cost))
        ratio = jnp.where(valid, reduction / jnp.where(valid, predicted, 1), -jnp.inf)
        round_off = valid & below_round_off(reduction, predicted, state.cost, s.jtj, state.params)
        ratio = jnp.where(round_off, 1, ratio)
        accepted = ratio > ACCEPT_RATIO

        step_norm = jnp.linalg.norm(scaled_step)
        on_boundary = step_norm > 0.95 * s.radius
        radius = jnp.where(ratio < 0.25, 0.25 * step_norm, jnp.where((ratio > 0.75) & on_boundary, 2 * s.radius, s.radius))

        params = jnp.where(accepted, trial, state.params)
        # At ``trial`` (= params where accepted), so that under vmap, where both branches
        # run, the trial residual above and the one that comes with J are one computation
        # (and a Jacobian that may raise is evaluated at the old point where the trial's
        # residual is not finite).
        lin = jax.lax.cond(
            accepted,
            lambda: linearize_like(
                problem, trial, state, exact_loss_curvature=True, fallback=state.params, residual=trial_residual
            ),
            lambda: keep_linearization(state, s.jtj),
        )
        scale = s.scale if self.x_scale is not None else jnp.maximum(s.scale, jnp.sqrt(lin.col_norm_sq))
        inner = _Inner(jtj=lin.jtj, scale=scale, radius=radius, damping=damping, blocked=blocked & ~accepted)

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
            full_step=damping == 0,
            round_off=round_off,
        )
        scaled_params_norm = jnp.linalg.norm(self._metric(scale, problem.cost(lin.residual), params) * params)
        xtol = self.tol.at_precision(radius.dtype).xtol
        eps = jnp.finfo(radius.dtype).eps
        collapsed = ~(radius > eps * (scaled_params_norm + jnp.linalg.norm(lin.residual)))  # NaN too
        status = jnp.where((status == Status.RUNNING) & (radius <= xtol * scaled_params_norm), Status.XTOL, status)
        status = jnp.where((status == Status.RUNNING) & collapsed, Status.STEP_FAILED, status)
        status = unless_blocked(status, blocked)
        return advance(problem, state, params=params, lin=lin, n_jev=accepted, status=status, inner=inner)


def metric(scale, cost, u):
    """The trust region's scaling ``D`` at ``u``: the running max of the column norms,
    floored at ``√(2F)/max(|u_j|, 1)`` (see the module docstring); unit scale for a
    parameter that has never moved a residual that is exactly zero."""
    d = jnp.maximum(scale, jnp.sqrt(2 * cost) / jnp.maximum(jnp.abs(u), 1))
    return jnp.where(d > 0, d, 1)


def trust_region_damping(A, b, radius, damping_guess, search=True):
    """The damping of ``min bᵀy + ½yᵀAy`` s.t. ``‖y‖ <= radius``, A symmetric PSD, and its y.

    Returns ``(λ, y)``, ``λ >= 0``, with ``y`` solving ``(A + λI) y = −b``: the Newton
    step (``λ = 0``) when that fits, else ``‖y‖`` within 10% of ``radius`` (Moré 1978,
    §5), or the last damping tried after ``MAX_DAMPING_ITERATIONS``.  The search also
    ends on a step that stays short of the radius while the damping falls (MINPACK's
    ``lmpar`` test): near a direction of zero curvature and zero slope, ``‖y(λ)‖`` is flat
    until λ is vanishingly small, and the longer step would gain nothing in the model.
    One loop, so the factorisation is traced (and compiled) once.  Call it on
    stop-gradient inputs: the damping is a choice, not something to differentiate.
    ``search=False`` returns at once (a zero step), so that under ``vmap`` fits that
    need no step do not hold the loop.
    """
    eye = jnp.eye(A.shape[0], dtype=A.dtype)
    # At damping ‖b‖/radius the step is already no longer than the radius.
    upper = jnp.linalg.norm(b) / radius
    guess = jnp.where(damping_guess > 0, jnp.minimum(damping_guess, upper), 1e-3 * upper)

    def body(carry):
        i, damping, lower, upper, _, _, _, short_norm = carry
        L = cholesky(A + damping * eye)
        y = -solve_upper_transposed(L, solve_lower(L, b))
        norm = jnp.linalg.norm(y)
        ok = jnp.isfinite(norm)
        short = ok & (norm < radius)
        newton_fits = (damping == 0) & (norm <= (1 + RADIUS_RTOL) * radius)
        flat = short & (norm <= (1 + PLATEAU_RTOL) * short_norm)
        converged = ok & (newton_fits | (jnp.abs(norm - radius) <= RADIUS_RTOL * radius) | flat)
        upper = jnp.where(short, damping, upper)
        lower = jnp.where(short, lower, damping)
        # Hebden's iterate: Newton's on 1/‖y(λ)‖ − 1/radius, with d‖y‖/dλ = −‖L⁻¹y‖²/‖y‖.
        q_norm = jnp.linalg.norm(solve_lower(L, y))
        hebden = damping + (norm / q_norm) ** 2 * (norm - radius) / radius
        safe = jnp.maximum(jnp.sqrt(lower * upper), lower + 1e-3 * (upper - lower))
        hebden = jnp.where(ok & (hebden > lower) & (hebden < upper), hebden, safe)
        following = jnp.where(i == 0, jnp.clip(guess, lower, upper), hebden)
        return i + 1, following, lower, upper, converged, damping, y, jnp.where(short, norm, 0)

    zero = jnp.zeros_like(upper)
    init = (jnp.int32(0), zero, zero, upper, ~jnp.asarray(search), zero, jnp.zeros_like(b), zero)
    running = lambda c: (c[0] < MAX_DAMPING_ITERATIONS) & ~c[4]  # noqa: E731
    return jax.lax.while_loop(running, body, init)[5:7]


def spectral_damping(A, b, radius, damping_guess, search=True):
    """:func:`trust_region_damping`'s search (the same iterates, tests and safeguards) on
    one eigendecomposition ``A = V diag(s) Vᵀ`` instead of a Cholesky factorisation per
    iterate: with ``c = Vᵀb``, ``‖y(λ)‖² = Σ c²/(s + λ)²`` and ``‖L⁻¹y‖² = Σ c²/(s + λ)³``
    cost O(n) each, so all ``MAX_DAMPING_ITERATIONS`` are unrolled (a converged search
    keeps its damping): one factorisation per step and no loop, which under ``vmap``
    would run every fit's search as long as the slowest one's.  Eigenvalues that
    round-off made negative count as 0 (a Cholesky factorisation would fail there too)."""
    s, V = jnp.linalg.eigh(A)
    s = jnp.maximum(s, 0)
    c = V.T @ b
    upper = jnp.linalg.norm(b) / radius
    guess = jnp.where(damping_guess > 0, jnp.minimum(damping_guess, upper), 1e-3 * upper)
    damping = lower = short_norm = found = jnp.zeros_like(upper)
    done = ~jnp.asarray(search)
    for i in range(MAX_DAMPING_ITERATIONS):
        w = c / (s + damping)
        norm = jnp.sqrt(jnp.sum(w * w))
        ok = jnp.isfinite(norm)
        short = ok & (norm < radius)
        newton_fits = (damping == 0) & (norm <= (1 + RADIUS_RTOL) * radius)
        flat = short & (norm <= (1 + PLATEAU_RTOL) * short_norm)
        converged = ok & (newton_fits | (jnp.abs(norm - radius) <= RADIUS_RTOL * radius) | flat)
        found = jnp.where(done, found, damping)  # a search not converged ends at its last iterate
        done = done | converged
        upper = jnp.where(short, damping, upper)
        lower = jnp.where(short, lower, damping)
        q_norm = jnp.sqrt(jnp.sum(w * w / (s + damping)))
        hebden = damping + (norm / q_norm) ** 2 * (norm - radius) / radius
        safe = jnp.maximum(jnp.sqrt(lower * upper), lower + 1e-3 * (upper - lower))
        hebden = jnp.where(ok & (hebden > lower) & (hebden < upper), hebden, safe)
        damping = jnp.where(i == 0, jnp.clip(guess, lower, upper), hebden)
        short_norm = jnp.where(short, norm, 0)
    return found, -(V @ (c / (s + found)))

