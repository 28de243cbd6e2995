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
- ``one``: one factorisation per step, at the damping the previous step ended with (0:
  Gauss-Newton first while the previous step was one), cut back to the radius if longer;
  the next step starts from the damping Hebden's iterate gives.

``use(variant)`` swaps the search in for the block (module attribute; clear JAX's and
fitfleet's caches around it so that programs are traced again).
"""

import contextlib

import jax
import jax.numpy as jnp

from fitfleet._linalg import cholesky, solve_lower, solve_upper_transposed
from fitfleet._solvers import levenberg_marquardt as lm

VARIANTS = ("current", "unrolled-2", "unrolled-3", "unrolled-4", "one")


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


def damping_search(variant):
    if variant == "current":
        return lm.trust_region_damping
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
