"""Quantiles of the Student-t, normal and χ²₁ distributions in ``jax.numpy``.

scipy is not a runtime dependency, and these must trace under ``jit``/``vmap``.

Student t.  For ``q < ½`` the quantile is ``-t`` where ``t > 0`` solves

    tail(t) = ½ · I_x(ν/2, ½) = q,        x = ν / (ν + t²),

(Abramowitz & Stegun 26.7.1; ``I`` is the regularised incomplete beta function,
``jax.scipy.special.betainc``).  Evaluating the tail through ``x`` keeps its relative
accuracy far out in the tail, where ``x`` is small.  The root is found by bisection on
``log t`` inside the bracket

    z(q) <= t <= cot(π q)        (for ν >= 1),

the normal quantile (the t has heavier tails) and the Cauchy quantile (ν = 1 has the
heaviest tails).  Each bisection step halves the bracket in ``log t``, so
``BISECTION_STEPS`` = 80 steps reach the float64 rounding level even for q = 1e-12,
where the bracket spans a factor of 1e11.  Near the centre (tail > 1/4) the comparison
uses the complement ``1 − 2·tail = I_y(½, ν/2)`` with ``y = t²/(ν + t²)``, since
``x = 1 − y`` rounds to 1 there for large ν.

For large ν (>= 1000 in float64, >= 50 in float32) ``betainc``'s continued fraction
loses digits, and the Cornish-Fisher series of A&S 26.7.5 (error O(ν⁻⁵)) is used instead.

Accuracy against ``scipy.stats.t.ppf`` for 1e-12 <= q <= 1 − 1e-12, 1 <= ν <= 1e6:
relative 1e-10 in float64 (1e-12 for 1e-6 < q < 1 − 1e-6), 1e-4 in float32 (1e-5).
"""

import jax
import jax.numpy as jnp
from jax.scipy.special import betainc, ndtri

BISECTION_STEPS = 80


def norm_ppf(q):
    """Standard normal quantile Φ⁻¹(q)."""
    return ndtri(q)


def chi2_1_ppf(q):
    """Quantile of χ² with one degree of freedom: ``Φ⁻¹((1 + q)/2)²``."""
    return ndtri((1 + q) / 2) ** 2


def t_ppf(q, df):
    """Student-t quantile with ``df >= 1`` degrees of freedom (see the module docstring).

    ``q`` and ``df`` broadcast; both may be traced.  ``df = inf`` gives the normal
    quantile; ``df < 1`` gives NaN.

    Example:
        >>> from fitfleet._stats import t_ppf
        >>> round(float(t_ppf(0.975, 10.0)), 4)
        2.2281
    """
    q, df = _promote(q, df)
    p = jnp.minimum(q, 1 - q)  # the tail probability, <= 1/2
    inner = (p > 0) & (p < 0.5)
    p_safe = jnp.where(inner, p, 0.25)
    df_safe = jnp.where(jnp.isfinite(df), df, 1)
    z = -ndtri(p_safe)
    log_lo = jnp.log(z)
    log_hi = jnp.log(1 / jnp.tan(jnp.pi * p_safe))
    # Rounding can put the Cauchy bound a hair under the normal one when both are tight.
    log_hi = jnp.maximum(log_hi, log_lo)

    # Near the centre (p > 1/4) the tail is compared through the complement
    # 1 - 2·tail = I_y(½, ν/2), y = t²/(ν + t²): x = 1 - y would round to 1 there.
    centre = p_safe > 0.25
    half = jnp.asarray(0.5, p.dtype)

    def too_small(log_t):
        t2 = jnp.exp(2 * log_t)
        x = jnp.where(centre, t2, df_safe) / (df_safe + t2)
        a, b = jnp.where(centre, half, df_safe / 2), jnp.where(centre, df_safe / 2, half)
        i = betainc(a, b, x)
        return jnp.where(centre, i < 1 - 2 * p_safe, i > 2 * p_safe)

    def bisect(_, bracket):
        lo, hi = bracket
        mid = (lo + hi) / 2
        grow = too_small(mid)
        return jnp.where(grow, mid, lo), jnp.where(grow, hi, mid)

    lo, hi = jax.lax.fori_loop(0, BISECTION_STEPS, bisect, (log_lo, log_hi))
    t = jnp.exp((lo + hi) / 2)
    t = jnp.where(df >= _large_df(p.dtype), _cornish_fisher(z, df_safe), t)
    t = jnp.where(jnp.isfinite(df), t, z)
    t = jnp.where(p == 0.5, 0, t)
    t = jnp.where(p == 0, jnp.inf, t)
    t = jnp.where(jnp.isnan(p) | ~(df >= 1), jnp.nan, t)
    return jnp.where(q < 0.5, -t, t)


def _promote(q, df):
    q = jnp.asarray(q)
    if not jnp.issubdtype(q.dtype, jnp.floating):
        q = q.astype(jnp.result_type(float))
    df = jnp.asarray(df, q.dtype)
    return jnp.broadcast_arrays(q, df)


def _large_df(dtype):
    """Above this ``df`` the Cornish-Fisher series is more accurate than ``betainc``
    (whose continued fraction loses digits for large ν, badly so in float32)."""
    return 1000.0 if jnp.finfo(dtype).bits == 64 else 50.0


def _cornish_fisher(z, df):
    """Abramowitz & Stegun 26.7.5: t ≈ z + g₁/ν + g₂/ν² + g₃/ν³ + g₄/ν⁴, error O(ν⁻⁵)."""
    z2 = z * z
    g1 = (z2 + 1) * z / 4
    g2 = ((5 * z2 + 16) * z2 + 3) * z / 96
    g3 = (((3 * z2 + 19) * z2 + 17) * z2 - 15) * z / 384
    g4 = ((((79 * z2 + 776) * z2 + 1482) * z2 - 1920) * z2 - 945) * z / 92160
    return z + (g1 + (g2 + (g3 + g4 / df) / df) / df) / df
