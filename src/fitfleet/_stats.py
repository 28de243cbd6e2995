"""Quantiles of the Student-t, normal and χ²₁ distributions, as Python floats.

scipy is not a runtime dependency.  A confidence level and the degrees of freedom are
known before anything is traced, so these run on the host in double precision (a
program computing them would cost more to compile than they cost to evaluate).

Normal: ``statistics.NormalDist().inv_cdf`` (Wichura's AS241, full double precision).

Student t.  For ``p = min(q, 1 − q) < ½`` the quantile is ``∓t`` where ``t > 0`` solves

    tail(t) = ½ · I_x(ν/2, ½) = p,        x = ν / (ν + t²),

(Abramowitz & Stegun 26.7.1; ``I`` is the regularised incomplete beta function,
evaluated by its continued fraction with Lentz's method, Numerical Recipes §6.4, from
whichever of ``x`` and ``y = 1 − x = t²/(ν + t²)`` keeps it convergent; both are
computed directly, so neither is a rounded ``1 − ...``).  The root is found by Newton's
method on ``tail(t) − p`` (its derivative is minus the t density), safeguarded by
bisection in ``log t`` inside the bracket

    z(p) <= t <= cot(π p)        (for ν >= 1),

the normal quantile (the t has heavier tails) and the Cauchy quantile (ν = 1 has the
heaviest tails).  For ν >= 1000 the Cornish-Fisher series of A&S 26.7.5 (error
O(ν⁻⁵)) is used instead: the continued fraction needs O(√ν) terms there.

Accuracy against ``scipy.stats.t.ppf`` for 1e-12 <= q <= 1 − 1e-12, 1 <= ν <= 1e6:
relative 1e-10 (tested).
"""

import math
from statistics import NormalDist

LARGE_DF = 1000.0  # from here on, Cornish-Fisher
_STANDARD_NORMAL = NormalDist()


def norm_ppf(q):
    """Standard normal quantile Φ⁻¹(q) (``∓inf`` at 0 and 1, NaN outside)."""
    q = float(q)
    if not 0 < q < 1:
        return -math.inf if q == 0 else math.inf if q == 1 else math.nan
    return _STANDARD_NORMAL.inv_cdf(q)


def chi2_1_ppf(q):
    """Quantile of χ² with one degree of freedom: ``Φ⁻¹((1 + q)/2)²``."""
    return norm_ppf((1 + float(q)) / 2) ** 2


def t_ppf(q, df):
    """Student-t quantile with ``df >= 1`` degrees of freedom (see the module docstring).

    ``df = inf`` gives the normal quantile; ``df < 1`` or NaN gives NaN.

    Example:
        >>> from fitfleet._stats import t_ppf
        >>> round(t_ppf(0.975, 10), 4)
        2.2281
    """
    q, df = float(q), float(df)
    if math.isnan(q) or not df >= 1:
        return math.nan
    p = min(q, 1 - q)
    if p <= 0 or p >= 0.5:
        t = math.inf if p <= 0 else 0.0
    elif math.isinf(df):
        t = -norm_ppf(p)
    elif df >= LARGE_DF:
        t = _cornish_fisher(-norm_ppf(p), df)
    else:
        t = _t_tail_root(p, df)
    return -t if q < 0.5 else t


def _t_tail_root(p, df):
    """``t > 0`` with ``tail(t) = p``, ``0 < p < ½``."""
    log_lo, log_hi = math.log(-norm_ppf(p)), math.log(1 / math.tan(math.pi * p))
    log_hi = max(log_hi, log_lo)  # rounding can put them a hair the wrong way round
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    t = math.exp((log_lo + log_hi) / 2)
    for _ in range(200):
        excess = _t_tail(t, df) - p  # decreasing in t
        if excess == 0:
            return t
        if excess > 0:
            log_lo = math.log(t)
        else:
            log_hi = math.log(t)
        log_density = log_norm - (df + 1) / 2 * math.log1p(t * t / df)
        newton = t + excess * math.exp(min(-log_density, 700.0))  # d tail/dt = −density
        inside = newton > 0 and log_lo < math.log(newton) < log_hi
        following = newton if inside else math.exp((log_lo + log_hi) / 2)
        if abs(following - t) <= 4e-16 * t or log_hi - log_lo <= 4e-16:
            return following
        t = following
    return t


def _t_tail(t, df):
    """``P(T > t) = ½ I_x(ν/2, ½)`` for ``t >= 0``."""
    s = t * t
    return 0.5 * _betainc(df / 2, 0.5, df / (df + s), s / (df + s))


def _betainc(a, b, x, y):
    """Regularised incomplete beta ``I_x(a, b)``, with ``y = 1 − x`` given accurately."""
    if x <= 0:
        return 0.0
    if y <= 0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only below this point
        return 1 - _betainc(b, a, y, x)
    log_front = a * math.log(x) + b * math.log(y) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    return math.exp(log_front) * _beta_fraction(a, b, x) / a


def _beta_fraction(a, b, x, tiny=1e-300):
    """The continued fraction of ``I_x(a, b)`` by Lentz's method (Numerical Recipes 6.4)."""
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)), -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= c * d
        if abs(c * d - 1) <= 1e-16:
            break
    return h


def _cornish_fisher(z, df):
    """Abramowitz & Stegun 26.7.5: t ≈ z + g₁/ν + g₂/ν² + g₃/ν³ + g₄/ν⁴, error O(ν⁻⁵)."""
    z2 = z * z
    g1 = (z2 + 1) * z / 4
    g2 = ((5 * z2 + 16) * z2 + 3) * z / 96
    g3 = (((3 * z2 + 19) * z2 + 17) * z2 - 15) * z / 384
    g4 = ((((79 * z2 + 776) * z2 + 1482) * z2 - 1920) * z2 - 945) * z / 92160
    return z + (g1 + (g2 + (g3 + g4 / df) / df) / df) / df
