"""trf's two additions to scipy's step, both about the residuals' own curvature.

The notation is ``trust_region_reflective``'s: ``p̂`` the step in the hat variables,
``d`` the scaling, ``Â`` the model's matrix in them, ``Δ`` the radius.

Geodesic acceleration (Transtrum & Sethna 2012; fitfleet's addition, ``acceleration``,
for unbounded least squares).  Across a curved valley the straight step ``p`` leaves
the valley floor: the actual reduction falls short of the model's (ρ ≈ 0.6 on NIST's MGH17 and
Bennett5 from start 1), the radius never grows, and scipy's trf crawls for 340-990
evaluations.  The step is corrected to second order along the path
``x(t) = x + tp + ½t²a``, with ``a`` chosen so that the residual's own curvature along
``p``, ``r_pp``, is cancelled in the Jacobian's range:

    â = −(Â + λI)⁻¹ (d ⊙ Jᵀr_pp),     step = p + ½ d ⊙ â,

solved with the factorisation that gave ``p̂`` (its λ; ``_trust_region``).
``r_pp`` is a one-sided difference along ``p`` with the Jacobian's directional derivative,
``2(r(x + hp) − r(x) − hJp)/h²``, ``h = eps^⅙`` (``acceleration_step``): one more
residual evaluation per step (not a trial point: not counted in ``n_fev``), and a batch
carries ``J`` from step to step.  (A central difference needs no ``J`` but two: a Rat43
step then cost 1.6–1.8× Levenberg-Marquardt's, 1.3–1.5× with one.)  The corrected step
is used where ``2‖â‖ <= α‖p̂‖`` (``ACCELERATION_MAX``; a larger correction means the
second-order path is no longer trustworthy) and where the difference stands above the
residual's round-off (near a zero-residual fit it does not, and a correction made of
round-off cost Gauss-Newton's quadratic convergence: MGH's Brown badly scaled stopped at
cost 1e-10).  The model's value at ``p`` remains the predicted reduction and ``‖p̂‖``
sets the radius, so the ratio measures how well the path realises what the model
promised.

It applies with the linear loss, by default without bounds (``log_scale`` is part of
the residual); otherwise the step is scipy's.  With a robust loss the cost is not a sum
of squares, and the geometry behind ``a`` does not hold (on scipy's robust-regression
example it led arctan and cauchy fits to other local minima).  With bounds the
Coleman-Li scaling ``d(x)`` changes along the path, which the correction ignores; on
``benchmarks/bounds.py`` it sent 6 of 480 fits to another local minimum, 5 of them
worse (exponentials running off to amplitude 1e3, rate 1e2), taking trf from 477 to
473.  So with bounds it is off unless ``acceleration=True``, and then it corrects the
steps ``p`` that stay inside the box (a step that meets a bound is the reflective one
above; the corrected step is moved inside like any trial point): MGH17 from start 1
in the box ±1e3 takes 294 steps to the certified values, where scipy's step runs out of
its 600.  On ``benchmarks/petab.py``'s multi-starts (300 starts each) it cut Crauste's
steps by a third (42,724 → 28,547, the same 4 successes) but cost the others steps
(Perelson +27%, Boehm +14%, Armistead +23%) or successes (Bruno 191 → 182).  Those
fits converge in a few dozen steps; Crauste's steps are spent by the fits that crawl
along a curved valley for hundreds (radius cycling 2e-4 → 8e-4 in log10 units).  So
``acceleration=k`` corrects the steps from step ``k`` on only, and ``fitfleet.petab``
sets ``k`` to a tenth of its step budget (``ACCELERATION_FROM``).  A step it does not
correct evaluates nothing more (a ``cond``; under ``vmap`` both branches run).
Measured without bounds: NIST from 52 to 54/54 runs at LRE >= 4 (MGH17 start 1 in ~160
steps instead of ~995, Bennett5 in ~70 instead of ~650), MGH from 119 to 126 of 141 runs
at the best cost (``benchmarks/results/mgh.md``).

Structured secant model (Dennis, Gay & Welsch 1981, NL2SOL; fitfleet's addition,
``secant``, with the linear loss; by default only without bounds, see below).  The
cost's Hessian is ``JᵀJ + Σ rᵢ∇²rᵢ``; Gauss-Newton keeps the first term only, which is
poor where the residuals are large, far from a fit.  There the model's valley is
narrower than the cost's, the steps zig-zag across it with ρ just above ¼, the radius
never grows, and the fit crawls (NIST's Thurber from a box of starts: 93 of 1,024 fits
ran out of steps, as scipy's trf does on such starts).  An estimate ``S`` of the second term is learnt
from the steps: after an accepted step ``s`` with gradient change ``y``, with
``y♯ = y − J₊ᵀJ₊s`` (what the new ``JᵀJ`` does not explain; Dennis, Gay & Welsch use
``(J₊ − J)ᵀr₊``, which needs the old Jacobian; the two agree to first order),

    S ← τS,  τ = min(1, |sᵀy♯|/|sᵀSs|)              (NL2SOL's sizing),
    S ← S + (wyᵀ + ywᵀ)/yᵀs − (wᵀs) yyᵀ/(yᵀs)²,     w = y♯ − Ss,

the symmetric update closest to ``S`` with ``Ss = y♯`` (only the sizing where ``yᵀs <= 0``).
The next step's model is NL2SOL's choice (``S`` starts at 0, so the first steps are
Gauss-Newton's): the other of ``JᵀJ`` and ``JᵀJ + S`` takes over where it predicted the
trial's reduction ``SWITCH_FACTOR`` (in ``trust_region_reflective``) times better, unless the trial grew the radius (without
this hysteresis the models alternated along Rat42's curved valleys, ``ρ ≈ 1.03`` then a
rejected Gauss-Newton step, and 8 of ``benchmarks/batch.py``'s 1,024 starts ran out of
steps; none now).  Unlike NL2SOL, a failed trial of ``JᵀJ + S`` (``ρ < ¼``) hands the next
step to Gauss-Newton: ``S`` is an estimate, and where it is wrong (learnt across a
singularity: a Hill curve's ``K`` on its bound 0 gave entries of 1e15) the radius would
otherwise shrink to nothing.  The augmented model may be indefinite; the damping search
then settles on a λ above its most negative eigenvalue (a factorisation of ``Â + λI``
fails below it, which raises the search's lower bound).  For
``n > UNROLL_MAX`` the Gauss-Newton steps keep the SVD, and the augmented ones, whose
model has no square root to stack on ``J``, factorise the n×n model as for small n.
Near a zero- or small-residual fit ``S`` is small and the two models nearly agree.
Measured: NIST still 54/54 runs at LRE >= 4, mean LRE 6.89 → 7.66 (Chwirut, large
residuals: 6.0 → 8.2; ENSO, 9 parameters: 4.5 → 5.4); MGH 126 → 128 of 141 runs at the
best cost; Thurber's 1,024 starts in ``fit_batch``: 122 → 34 steps a fit.  With bounds
it is off unless ``secant=True``: on ``benchmarks/bounds.py``'s fits (small residuals
at the optimum) it took as many steps (9,122 against 8,692) and ended 2 of 480 fits at
other local minima (3 of another 480); where the residuals stay large at the fit (a
likelihood whose σ is estimated) it is what lets Boehm's multi-start leave its valleys
(``fitfleet.petab`` turns it on there).

References: ``trust_region_reflective``'s (Transtrum & Sethna 2012; Dennis, Gay & Welsch
1981).
"""

import jax
import jax.numpy as jnp

ACCELERATION_MAX = 0.75  # α: the acceleration is used where 2‖â‖ <= α‖p̂‖ (Transtrum & Sethna's)


def secant_update(S, s, y, jtj):
    """Dennis, Gay & Welsch's update of ``S`` (NL2SOL) after the step ``s`` with gradient
    change ``y``: sized by ``τ = min(1, |sᵀy♯|/|sᵀSs|)``, then the symmetric secant
    update closest to ``τS`` in the metric of ``y`` with ``S⁺s = y♯``, where
    ``y♯ = y − J₊ᵀJ₊s`` is the part of ``y`` that ``J₊ᵀJ₊`` does not explain.  Where
    ``yᵀs <= 0`` (no curvature to learn from) or round-off made the update non-finite,
    ``τS`` only."""
    y_sharp = y - matvec(jtj, s)
    Ss = matvec(S, s)
    sSs = jnp.sum(s * Ss)
    tau = jnp.where(sSs != 0, jnp.minimum(1, jnp.abs(jnp.sum(s * y_sharp)) / jnp.where(sSs != 0, jnp.abs(sSs), 1)), 1)
    S = tau * S
    w = y_sharp - tau * Ss
    ys = jnp.sum(y * s)
    safe = jnp.where(ys > 0, ys, 1)
    new = S + (jnp.outer(w, y) + jnp.outer(y, w)) / safe - jnp.sum(w * s) * jnp.outer(y, y) / safe**2
    return jnp.where((ys > 0) & jnp.all(jnp.isfinite(new)), new, S)


def accelerated(problem, state, p_h, d, solve):
    """The step ``p = d·p̂`` with the geodesic acceleration added, where it is small
    (module docstring)."""
    x, p = state.params, d * p_h
    h = acceleration_step(x.dtype)
    r_h = problem.residual(x + h * p)
    delta = r_h - state.residual - h * matvec(state.jac, p)  # ≈ ½h²r_pp
    # Near a zero-residual fit δ sinks into the residuals' round-off, and a correction
    # made of round-off would cost Gauss-Newton's quadratic convergence.  That round-off
    # is at least what x's last bits move r by, |J|·|x|·eps (r = x₁ − 10⁶ has it at r = 0):
    # bounded by Σⱼ|xⱼ|‖Jⱼ‖, with ‖r‖ = √(2F) (the linear loss).
    column_norms = jnp.sqrt(jnp.maximum(jnp.diagonal(state.inner.jtj), 0))
    scale = 2 * jnp.sqrt(2 * state.cost) + jnp.sum(jnp.abs(x) * column_norms)
    resolved = jnp.sum(delta**2) > (jnp.finfo(x.dtype).eps * scale) ** 2
    a_h = -solve(d * jnp.sum(state.jac * (2 * delta / h**2)[:, None], axis=0))
    small = resolved & jnp.all(jnp.isfinite(a_h))
    small &= 2 * jnp.linalg.norm(a_h) <= ACCELERATION_MAX * jnp.linalg.norm(p_h)
    return jnp.where(small, p + jax.lax.stop_gradient(0.5 * d * a_h), p)


def acceleration_step(dtype):
    """``h`` of the one-sided difference for ``r_pp``: ``eps^⅙`` (2.5e-3 in float64, 0.07
    in float32).  ``½h²r_pp`` must stand above the residual's round-off while the
    truncation error grows as ``h``; ``eps^⅙`` balances the two for terms of ``r`` up to
    ``eps^-½`` times its curvature, and a residual computed to rtol 1e-8 (an ODE solve)
    still gives ``r_pp`` to ~2e-3.  Measured: NIST 54/54 runs at LRE >= 4 for eps^¼ ...
    eps^0.15 (0.02 lost MGH10 to truncation, eps^⅓ three to round-off); the float32
    2D-Gaussian batch of ``benchmarks/batch.py``: 3.09 steps a fit (eps^¼: 3.38; none: 3.44)."""
    return float(jnp.finfo(dtype).eps) ** (1 / 6)


def matvec(A, v):
    """``A @ v`` as a product and a sum, which XLA fuses (a batched small ``dot`` is a
    kernel of its own)."""
    return jnp.sum(A * v, axis=-1)
