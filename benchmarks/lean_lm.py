"""Prototypes of a lean batched Levenberg-Marquardt step (issue 19), for measurement only.

fitfleet's LM step finds its damping by Moré's search: a ``while_loop`` of up to 10
Cholesky factorisations (``levenberg_marquardt.trust_region_damping``).  Under ``vmap``
that loop runs every fit until the slowest fit's search has converged, and on a GPU each
of its iterations is a few kernels and a predicate read by the host.  The variants here
replace only that search; the rest of the step (the scaling, the radius, the gain ratio,
the stopping tests) is the solver's own:

- ``unrolled-K``: the same search, unrolled to K factorisations (no loop); a fit whose
  search has not converged after K takes the last step tried, cut back to the radius if
  it is longer.  Where the search converges within K the steps are the solver's own.
- ``unrolled-K+loop``: the same search exactly (the same iterates), its first K
  iterations unrolled (each behind a ``lax.cond``: a select under ``vmap``) and a
  ``while_loop`` for the rest, which under ``vmap`` makes no trip once every fit's search
  has converged;
- ``spectral``: the same search (Moré's iteration), on one eigendecomposition of the
  scaled ``JᵀJ`` per step, where each iterate costs O(n): all iterations unrolled, no loop
  (adopted: ``levenberg_marquardt.spectral_damping``, the accelerator path's search);
- ``one``: one factorisation per step, at the damping the previous step ended with (0:
  Gauss-Newton first while the previous step was one), cut back to the radius if longer;
  the next step starts from the damping Hebden's iterate gives.

``use(variant)`` swaps the search in for the block (module attribute; clear JAX's and
fitfleet's caches around it so that programs are traced again).
"""

import contextlib

import jax
import jax.numpy as jnp

from fitfleet._status import Status
from fitfleet._linalg import cholesky, solve_lower, solve_upper_transposed
from fitfleet._solvers import levenberg_marquardt as lm

VARIANTS = ("current", "spectral", "unrolled-1+loop", "unrolled-2+loop", "unrolled-2", "unrolled-3", "unrolled-4", "one")


def unrolled_damping(A, b, radius, damping_guess, search=True, iterations=3, newton_first=True):
    """``lm.trust_region_damping`` with ``iterations`` factorisations, unrolled."""
    eye = jnp.eye(A.shape[0], dtype=A.dtype)
    upper = jnp.linalg.norm(b) / radius
    guess = jnp.where(damping_guess > 0, jnp.minimum(damping_guess, upper), 1e-3 * upper)
    zero = jnp.zeros_like(upper)
    lower = zero
    damping = zero if newton_first else jnp.where(damping_guess > 0, guess, zero)
    done = ~jnp.asarray(search)
    out_damping, out_y = zero, jnp.zeros_like(b)
    short_norm = zero
    y = norm = None
    for i in range(iterations):
        L = cholesky(A + damping * eye)
        y = -solve_upper_transposed(L, solve_lower(L, b))
        norm = jnp.linalg.norm(y)
        ok = jnp.isfinite(norm)
        short = ok & (norm < radius)
        newton_fits = (damping == 0) & (norm <= (1 + lm.RADIUS_RTOL) * radius)
        flat = short & (norm <= (1 + lm.PLATEAU_RTOL) * short_norm)
        converged = ok & (newton_fits | (jnp.abs(norm - radius) <= lm.RADIUS_RTOL * radius) | flat)
        out_damping = jnp.where(done, out_damping, damping)
        out_y = jnp.where(done, out_y, y)
        done = done | converged
        upper = jnp.where(short, damping, upper)
        lower = jnp.where(short, lower, damping)
        q_norm = jnp.linalg.norm(solve_lower(L, y))
        hebden = damping + (norm / q_norm) ** 2 * (norm - radius) / radius
        safe = jnp.maximum(jnp.sqrt(lower * upper), lower + 1e-3 * (upper - lower))
        hebden = jnp.where(ok & (hebden > lower) & (hebden < upper), hebden, safe)
        damping = jnp.where((i == 0) & newton_first, jnp.clip(guess, lower, upper), hebden)
        short_norm = jnp.where(short, norm, 0)
    # Not converged: the last step tried, no longer than the radius; the next search
    # starts from the damping Hebden's iterate gives.
    cut = y * jnp.minimum(1, radius / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny))
    out_y = jnp.where(done, out_y, cut)
    out_damping = jnp.where(done, out_damping, jnp.maximum(damping, jnp.finfo(norm.dtype).tiny))
    return out_damping, out_y


def unrolled_then_loop(A, b, radius, damping_guess, search=True, unrolled=2):
    """The solver's own search, exactly (the same iterates), its first ``unrolled``
    iterations unrolled, each behind a ``lax.cond`` (a fit alone skips what it does not
    need; under ``vmap`` each becomes a select, no loop), and a ``while_loop`` for the
    rest, which under ``vmap`` makes no trip when every fit's search has converged."""
    eye = jnp.eye(A.shape[0], dtype=A.dtype)
    upper = jnp.linalg.norm(b) / radius
    guess = jnp.where(damping_guess > 0, jnp.minimum(damping_guess, upper), 1e-3 * upper)

    def body(carry):  # lm.trust_region_damping's
        i, damping, lower, upper, _, _, _, short_norm = carry
        L = cholesky(A + damping * eye)
        y = -solve_upper_transposed(L, solve_lower(L, b))
        norm = jnp.linalg.norm(y)
        ok = jnp.isfinite(norm)
        short = ok & (norm < radius)
        newton_fits = (damping == 0) & (norm <= (1 + lm.RADIUS_RTOL) * radius)
        flat = short & (norm <= (1 + lm.PLATEAU_RTOL) * short_norm)
        converged = ok & (newton_fits | (jnp.abs(norm - radius) <= lm.RADIUS_RTOL * radius) | flat)
        upper = jnp.where(short, damping, upper)
        lower = jnp.where(short, lower, damping)
        q_norm = jnp.linalg.norm(solve_lower(L, y))
        hebden = damping + (norm / q_norm) ** 2 * (norm - radius) / radius
        safe = jnp.maximum(jnp.sqrt(lower * upper), lower + 1e-3 * (upper - lower))
        hebden = jnp.where(ok & (hebden > lower) & (hebden < upper), hebden, safe)
        following = jnp.where(i == 0, jnp.clip(guess, lower, upper), hebden)
        return i + 1, following, lower, upper, converged, damping, y, jnp.where(short, norm, 0)

    zero = jnp.zeros_like(upper)
    carry = (jnp.int32(0), zero, zero, upper, ~jnp.asarray(search), zero, jnp.zeros_like(b), zero)
    running = lambda c: (c[0] < lm.MAX_DAMPING_ITERATIONS) & ~c[4]  # noqa: E731
    for _ in range(unrolled):
        carry = jax.lax.cond(running(carry), body, lambda c: c, carry)
    return jax.lax.while_loop(running, body, carry)[5:7]


def damping_search(variant):
    if variant == "spectral":
        return lm.spectral_damping  # adopted: LevenbergMarquardt.vectorised()
    if variant == "current":
        return lm.trust_region_damping
    if variant.endswith("+loop"):
        k = int(variant.split("-")[1].split("+")[0])
        return lambda A, b, radius, guess, search=True: unrolled_then_loop(A, b, radius, guess, search, k)
    if variant == "one":
        return lambda A, b, radius, guess, search=True: unrolled_damping(A, b, radius, guess, search, 1, newton_first=False)
    k = int(variant.split("-")[1])
    return lambda A, b, radius, guess, search=True: unrolled_damping(A, b, radius, guess, search, k)


@contextlib.contextmanager
def use(variant):
    """fitfleet's LM with the damping search of ``variant`` inside the block."""
    original = lm.trust_region_damping
    lm.trust_region_damping = damping_search(variant)
    try:
        yield
    finally:
        lm.trust_region_damping = original


def fresh():
    """Forget every traced program (a variant is a module attribute, not a cache key)."""
    import fitfleet as ff

    ff.clear_caches()
    jax.clear_caches()


def search_iterations(A, b, radius, damping_guess, search=True):
    """How many factorisations the solver's own search (``current``) takes: the loop of
    ``lm.trust_region_damping``, counting."""
    eye = jnp.eye(A.shape[0], dtype=A.dtype)
    upper = jnp.linalg.norm(b) / radius
    guess = jnp.where(damping_guess > 0, jnp.minimum(damping_guess, upper), 1e-3 * upper)

    def body(carry):
        i, damping, lower, upper, _, short_norm = carry
        L = cholesky(A + damping * eye)
        y = -solve_upper_transposed(L, solve_lower(L, b))
        norm = jnp.linalg.norm(y)
        ok = jnp.isfinite(norm)
        short = ok & (norm < radius)
        newton_fits = (damping == 0) & (norm <= (1 + lm.RADIUS_RTOL) * radius)
        flat = short & (norm <= (1 + lm.PLATEAU_RTOL) * short_norm)
        converged = ok & (newton_fits | (jnp.abs(norm - radius) <= lm.RADIUS_RTOL * radius) | flat)
        upper = jnp.where(short, damping, upper)
        lower = jnp.where(short, lower, damping)
        q_norm = jnp.linalg.norm(solve_lower(L, y))
        hebden = damping + (norm / q_norm) ** 2 * (norm - radius) / radius
        safe = jnp.maximum(jnp.sqrt(lower * upper), lower + 1e-3 * (upper - lower))
        hebden = jnp.where(ok & (hebden > lower) & (hebden < upper), hebden, safe)
        following = jnp.where(i == 0, jnp.clip(guess, lower, upper), hebden)
        return i + 1, following, lower, upper, converged, jnp.where(short, norm, 0)

    zero = jnp.zeros_like(upper)
    init = (jnp.int32(0), zero, zero, upper, ~jnp.asarray(search), zero)
    running = lambda c: (c[0] < lm.MAX_DAMPING_ITERATIONS) & ~c[4]  # noqa: E731
    return jax.lax.while_loop(running, body, init)[0]


def search_statistics(states):
    """(per step, the most factorisations any running fit's search took: the trips of
    the vmapped loop; mean factorisations per running fit and step) for a list of
    batched LM states along a trajectory."""
    trips, per_fit = [], []
    for state in states:
        s = state.inner
        d = jax.vmap(lm.metric)(s.scale, state.cost, state.params)
        A = s.jtj / (d[:, :, None] * d[:, None, :])
        b = state.grad / d
        running = state.status == Status.RUNNING
        count = jax.vmap(search_iterations)(A, b, s.radius, s.damping, running)
        if bool(jnp.any(running)):
            trips.append(int(jnp.max(count)))
            per_fit.append(float(jnp.sum(count) / jnp.sum(running)))
    return trips, (sum(per_fit) / len(per_fit) if per_fit else 0.0)
