"""The trust-region subproblem of ``trust_region_reflective`` (scipy's
``solve_lsq_trust_region``; J. J. Moré, "The Levenberg-Marquardt algorithm:
implementation and theory", Lecture Notes in Mathematics 630, 1978): the λ >= 0 and
``p = −(A + λI)⁻¹g`` that minimise ``gᵀp + ½pᵀAp`` within ``‖p‖ <= Δ``.  The method's
docstring states the iteration; here it is written out twice, on the normal matrix
(unrolled Cholesky factorisations for n <= ``_linalg.UNROLL_MAX``; also the secant
model's steps for larger n, by LAPACK's) and on an SVD of the scaled Jacobian (scipy's
way, for larger n; by ``_linalg.svd_jacobi`` up to ``_linalg.JACOBI_MAX`` columns).

``subspace_step`` is the other way to the step (``subspace="2d"``): Coleman & Li's
two-dimensional subspace, Fides's default (Branch, Coleman & Li 1999, §2; Fröhlich &
Sorger 2022).  Where the Newton step ``n = −A⁺g`` leaves the ball, the step is the model's
minimum on the ball's boundary within ``span{n, g}`` (with ``S`` an orthonormal basis of
that plane, ``p = Δ·S(cos t, sin t)`` at the best angle ``t``: ``m(t) = Δ·bᵀu(t) +
½Δ²·u(t)ᵀHu(t)``, ``b = Sᵀg``, ``H = SᵀAS``, found on a grid of ``ANGLES`` angles and then
polished by Newton's iteration on ``m'(t) = 0``).  Far from a fit it turns towards the
gradient sooner than the exact solution: its path from the Newton step at ``Δ = ‖n‖`` to
steepest descent as ``Δ → 0`` is a dogleg's, not the curve of ``(A + λI)⁻¹g``.
"""

import jax
import jax.numpy as jnp

from .._linalg import JACOBI_MAX, cholesky, solve_lower, solve_semidefinite, solve_upper_transposed, svd_jacobi

ANGLES = 32  # the grid on which ``subspace_step`` looks for the best angle, then polished
POLISH = 4  # Newton iterations on m'(t) = 0 from the grid's best angle
RADIUS_RTOL = 0.01  # the damping search ends at |‖p‖ − Δ| < RADIUS_RTOL·Δ (scipy's rtol)
# scipy iterates up to 10 times; here a block of fits iterates as long as its slowest
# search (on CPU; the accelerator path unrolls every iteration).
# Before the geodesic acceleration, 3, 4, 5, 6, 10 iterations solved 50, 51, 52, 52, 52 of
# NIST's 54 runs and 119, 122, 118, 118, 117 of MGH's 141 (which runs succeed shifts from
# one count to the next: the hard runs' paths are chaotic); with it, 3 and 4 solve 52 of
# NIST's runs (MGH09 and MGH10 from start 1 run out of steps), 5 all 54.  10 made the
# 2D-Gaussian batch ~2.5x Levenberg-Marquardt's time, 5 about 1.5x (every iteration unrolled).
DAMPING_ITERATIONS = 5
SVD_DAMPING_ITERATIONS = 10  # scipy's, where each costs O(n) (n > UNROLL_MAX)


def positive(scale):
    return jnp.where(scale > 0, scale, 1)


def _newton(A, b):
    """``−A⁺b`` in the directions where ``A`` is positive definite (``solve_semidefinite``
    on ``A`` scaled to unit diagonal)."""
    scale = positive(jnp.sqrt(jnp.diagonal(A)))
    return solve_semidefinite(A / (scale[:, None] * scale[None, :]), -b / scale) / scale


def damped_step(A, b, damping, radius):
    """``p = −(A + λI)⁻¹b``, scaled to length ``radius`` where ``λ > 0``, differentiably."""
    n = b.shape[-1]
    newton = _newton(A, b)
    L = cholesky(A + jnp.where(damping > 0, damping, 1) * jnp.eye(n, dtype=A.dtype))
    damped = -solve_upper_transposed(L, solve_lower(L, b))
    damped = damped * (radius / jnp.linalg.norm(damped))
    return jnp.where(damping > 0, damped, newton)


def trust_region_step(A, b, radius, damping, search=True, fixed=False):
    """scipy's ``solve_lsq_trust_region`` on the normal matrix: ``(λ, p, solve)`` for
    ``min bᵀp + ½pᵀAp`` s.t. ``‖p‖ <= radius`` (see the module docstring), with
    ``solve(c) = (A + λI)⁻¹c`` by the factorisation that gave ``p`` (non-finite where
    none did).

    At most ``DAMPING_ITERATIONS``; a converged search keeps its iterate, so the result
    does not depend on how many run.  ``fixed=False`` stops once every search is done
    (under ``vmap``, every fit of the block; most steps near a solution are Newton steps
    and need none), ``fixed=True`` runs them all unrolled, a step without a loop (the
    accelerator path).  ``search=False`` (a finished fit) returns a zero step.
    """
    n = b.shape[-1]
    search = jnp.asarray(search)
    eye = jnp.eye(n, dtype=A.dtype)
    eps = jnp.finfo(A.dtype).eps
    # The Gauss-Newton step, and whether A is (numerically) of full rank.
    scale = positive(jnp.sqrt(jnp.diagonal(A)))
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
        damping, lower, upper, done, found, p, factor = carry
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
            jnp.where(keep | ~ok, factor, L),
        )
        return out

    init = (damping, lower, upper, newton_fits | ~search, jnp.zeros_like(damping), jnp.zeros_like(b), jnp.zeros_like(A))
    if fixed:
        _, _, _, _, found, p, factor = jax.lax.fori_loop(0, DAMPING_ITERATIONS, body, init, unroll=True)
    else:
        looping = lambda c: (c[0] < DAMPING_ITERATIONS) & ~c[1][3]  # noqa: E731
        _, (_, _, _, _, found, p, factor) = jax.lax.while_loop(looping, lambda c: (c[0] + 1, body(c[0], c[1])), (0, init))
    p_norm = jnp.linalg.norm(p)
    # No damped solve succeeded (round-off at a huge condition number): the steepest
    # descent step of length radius, the limit of λ → ∞.
    b_norm = jnp.linalg.norm(b)
    steepest = -b * (radius / jnp.where(b_norm > 0, b_norm, 1))
    p = jnp.where(p_norm > 0, p * (radius / jnp.where(p_norm > 0, p_norm, 1)), steepest)
    p = jnp.where(newton_fits, newton, p)
    p = jnp.where(search, p, 0)

    def solve(c):
        damped = solve_upper_transposed(factor, solve_lower(factor, c))
        return jnp.where(newton_fits, solve_upper_transposed(L0, solve_lower(L0, c / scale)) / scale, damped)

    return jnp.where(newton_fits, 0, found).astype(A.dtype), p, solve


def subspace_step(A, b, radius, p):
    """The two-dimensional subspace step (module docstring) for ``min bᵀp + ½pᵀAp``
    within ``‖p‖ <= radius``: ``p`` itself (the full step) where the Newton step fits,
    else the boundary minimum over span{Newton step, b}.  Loop-free (under vmap, every
    fit of a block takes the same operations)."""
    newton = _newton(A, b)
    newton_norm = jnp.linalg.norm(newton)
    first = newton / positive(newton_norm)
    across = b - first * (first @ b)  # the gradient's part orthogonal to the Newton step
    across_norm = jnp.linalg.norm(across)
    # Where b is parallel to the Newton step the plane is a line: its second vector is 0.
    second = jnp.where(across_norm > 100 * jnp.finfo(A.dtype).eps * jnp.linalg.norm(b), across / positive(across_norm), 0)
    S = jnp.stack([first, second], axis=1)
    H, c = S.T @ A @ S, S.T @ b
    a, o = (H[0, 0] - H[1, 1]) / 2, H[0, 1]

    # m(t)/Δ = c₀cos t + c₁sin t + (Δ/2)(tr H/2 + a·cos 2t + o·sin 2t), less its constant,
    # and its derivatives.
    def model(t):
        return c[0] * jnp.cos(t) + c[1] * jnp.sin(t) + radius / 2 * (a * jnp.cos(2 * t) + o * jnp.sin(2 * t))

    def slopes(t):
        d1 = -c[0] * jnp.sin(t) + c[1] * jnp.cos(t) + radius * (-a * jnp.sin(2 * t) + o * jnp.cos(2 * t))
        d2 = -c[0] * jnp.cos(t) - c[1] * jnp.sin(t) - 2 * radius * (a * jnp.cos(2 * t) + o * jnp.sin(2 * t))
        return d1, d2

    grid = jnp.arange(ANGLES, dtype=A.dtype) * (2 * jnp.pi / ANGLES)
    t = grid[jnp.argmin(model(grid))]
    for _ in range(POLISH):  # only where it is a descent to a minimum (m'' > 0)
        d1, d2 = slopes(t)
        polished = t - d1 / positive(d2)
        better = (d2 > 0) & (model(polished) <= model(t))
        t = jnp.where(better, polished, t)
    boundary = radius * (S @ jnp.stack([jnp.cos(t), jnp.sin(t)]))
    fits = jnp.isfinite(newton_norm) & (newton_norm <= radius)
    return jnp.where(fits | ~jnp.all(jnp.isfinite(boundary)), p, boundary)


def trust_region_step_svd(J, rows, r, radius, damping, search=True, sweeps=None):
    """scipy's ``solve_lsq_trust_region`` as scipy runs it, for n > ``UNROLL_MAX``: an SVD
    of the scaled Jacobian ``J`` (m, n) stacked on the diagonal ``rows`` (the model's
    terms that are not ``JᵀJ``), whose singular values make each iteration O(n), and
    which keeps the accuracy the normal matrix loses beyond a condition number of ~1e8.
    ``sweeps``: ``svd_jacobi``'s.  Returns ``(λ, p, solve)`` as ``trust_region_step``."""
    m, n = J.shape
    search = jnp.asarray(search)
    s, V, W = _svd(jnp.concatenate([J, jnp.diag(rows)]), sweeps)
    suf = W[:m].T @ r  # s ⊙ Uᵀ[r; 0]
    full_rank = (m >= n) & (jnp.min(s) > jnp.finfo(J.dtype).eps * m * jnp.max(s))
    safe_s = jnp.where(s > 0, s, 1)
    newton = -V @ (suf / safe_s**2)
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
    p = -V @ (suf / (s**2 + damping))
    p = p * (radius / jnp.maximum(jnp.linalg.norm(p), jnp.finfo(J.dtype).tiny))
    p = jnp.where(newton_fits, newton, p)
    found = jnp.where(newton_fits, 0, damping).astype(J.dtype)

    def solve(c):
        return V @ ((V.T @ c) / (s**2 + found))

    return found, jnp.where(search, p, 0), solve


def _svd(A, sweeps):
    """``(s, V, W)``, ``A V = W = U diag(s)``: written out (``_linalg.svd_jacobi``, no
    LAPACK call in a batch's step) up to ``JACOBI_MAX`` columns, LAPACK's beyond."""
    if A.shape[1] <= JACOBI_MAX:
        return svd_jacobi(A, sweeps)
    U, s, Vt = jnp.linalg.svd(A, full_matrices=False)
    return s, Vt.T, U * s
