"""The Moré–Garbow–Hillstrom nonlinear least-squares test problems, for fitfleet.

Source: J. J. Moré, B. S. Garbow and K. E. Hillstrom, "Testing unconstrained
optimization software", ACM Transactions on Mathematical Software 7(1):17-41,
1981 ("MGH"). All 35 problems of the paper's collection are sums of squares
f(x) = Σ f_i(x)² with m >= n, and all are here, with the dimensions most test
drivers use (several problems appear at more than one size). For the 18 problems
it shares with the paper, MINPACK's test driver (``ssqfcn``/``initpt``, Argonne,
March 1980) uses the same definitions, data and starts. Problem ``number`` is the
paper's numbering.

Each problem is an :class:`MGHProblem` with

- ``fun(p)``: the residual vector (f_1, …, f_m) written in ``jax.numpy``; it follows
  the dtype of ``p`` (float32 or float64) and never touches JAX's global config;
- ``n``, ``m``, ``x0`` (the paper's standard starting point);
- ``f_star``: the paper's reported minimum of f = ‖r‖² (the *sum* of squares, not
  fitfleet's ½‖r‖²) where it gives one for these dimensions, else ``None``;
  ``f_other``: other stationary values the paper lists (local minima, or values
  approached as parameters run off to infinity).

Starting points: besides the standard x0, the paper recommends
starting from 10·x0 and 100·x0, the standard harder variants; ``start(factor)``
returns them. As in MINPACK's ``initpt``, a problem whose standard start is the
origin (Watson) uses factor·(1, …, 1) instead of factor·0.

Checks (``python tests/mgh.py``): f(x0) against the initial residual norms that
MINPACK's reference run (lmder driver output) prints for its 18 problems (at
factors 1, 10 and 100), and against hand-computed values for the others; and f*
against a tight scipy ``least_squares(method="lm")`` run from x0.

This is a plain module, not a package: pytest puts ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax.numpy as jnp
import numpy as np

__all__ = ["MGHProblem", "PROBLEMS", "get"]


def _prep(p):
    p = jnp.asarray(p)
    if not jnp.issubdtype(p.dtype, jnp.inexact):
        p = p.astype(jnp.result_type(float))
    return p


def _c(values, p):
    """A float64 numpy constant as an array of p's dtype."""
    return jnp.asarray(np.asarray(values, dtype=np.float64), dtype=p.dtype)


def _idx(start, stop, p):
    """start, start+1, ..., stop (inclusive) as floats of p's dtype."""
    return jnp.arange(start, stop + 1).astype(p.dtype)


# --------------------------------------------------------------------------
# Data (MGH 1981; identical to MINPACK's ssqfcn).
# --------------------------------------------------------------------------

_BARD_Y = [0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39]
_GAUSSIAN_Y = [0.0009, 0.0044, 0.0175, 0.0540, 0.1295, 0.2420, 0.3521, 0.3989,
               0.3521, 0.2420, 0.1295, 0.0540, 0.0175, 0.0044, 0.0009]
_MEYER_Y = [34780.0, 28610.0, 23650.0, 19630.0, 16370.0, 13720.0, 11540.0, 9744.0,
            8261.0, 7030.0, 6005.0, 5147.0, 4427.0, 3820.0, 3307.0, 2872.0]
_KOWALIK_U = [4.0, 2.0, 1.0, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625]
_KOWALIK_Y = [0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235, 0.0246]
_OSBORNE1_Y = [0.844, 0.908, 0.932, 0.936, 0.925, 0.908, 0.881, 0.850, 0.818, 0.784, 0.751,
               0.718, 0.685, 0.658, 0.628, 0.603, 0.580, 0.558, 0.538, 0.522, 0.506, 0.490,
               0.478, 0.467, 0.457, 0.448, 0.438, 0.431, 0.424, 0.420, 0.414, 0.411, 0.406]
_OSBORNE2_Y = [1.366, 1.191, 1.112, 1.013, 0.991, 0.885, 0.831, 0.847, 0.786, 0.725, 0.746,
               0.679, 0.608, 0.655, 0.616, 0.606, 0.602, 0.626, 0.651, 0.724, 0.649, 0.649,
               0.694, 0.644, 0.624, 0.661, 0.612, 0.558, 0.533, 0.495, 0.500, 0.423, 0.395,
               0.375, 0.372, 0.391, 0.396, 0.405, 0.428, 0.429, 0.523, 0.562, 0.607, 0.653,
               0.672, 0.708, 0.633, 0.668, 0.645, 0.632, 0.591, 0.559, 0.597, 0.625, 0.739,
               0.710, 0.729, 0.720, 0.636, 0.581, 0.428, 0.292, 0.162, 0.098, 0.054]


# --------------------------------------------------------------------------
# Residuals. p[0] is the paper's x_1; i runs 1..m as in the paper.
# --------------------------------------------------------------------------


def rosenbrock(p):  # 1
    x = _prep(p)
    return jnp.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])


def freudenstein_roth(p):  # 2
    x = _prep(p)
    x1, x2 = x[0], x[1]
    return jnp.stack([
        -13 + x1 + ((5 - x2) * x2 - 2) * x2,
        -29 + x1 + ((x2 + 1) * x2 - 14) * x2,
    ])


def powell_badly_scaled(p):  # 3
    x = _prep(p)
    return jnp.stack([1e4 * x[0] * x[1] - 1, jnp.exp(-x[0]) + jnp.exp(-x[1]) - 1.0001])


def brown_badly_scaled(p):  # 4
    x = _prep(p)
    return jnp.stack([x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2])


def beale(p):  # 5
    x = _prep(p)
    y = _c([1.5, 2.25, 2.625], x)
    i = _idx(1, 3, x)
    return y - x[0] * (1 - x[1] ** i)


def jennrich_sampson(m):  # 6
    def fun(p):
        x = _prep(p)
        i = _idx(1, m, x)
        return 2 + 2 * i - (jnp.exp(i * x[0]) + jnp.exp(i * x[1]))

    return fun


def helical_valley(p):  # 7
    # theta = arctan(x2/x1)/(2 pi) for x1 > 0, + 1/2 for x1 < 0, and (as in MINPACK)
    # sign(1/4, x2) for x1 = 0.
    x = _prep(p)
    x1, x2, x3 = x[0], x[1], x[2]
    safe = jnp.where(x1 == 0, jnp.ones_like(x1), x1)
    base = jnp.arctan(x2 / safe) / (2 * math.pi)
    theta = jnp.where(x1 > 0, base, jnp.where(x1 < 0, base + 0.5, jnp.where(x2 >= 0, 0.25, -0.25)))
    return jnp.stack([10 * (x3 - 10 * theta), 10 * (jnp.sqrt(x1**2 + x2**2) - 1), x3])


def bard(p):  # 8
    x = _prep(p)
    u = _idx(1, 15, x)
    v = 16 - u
    w = jnp.minimum(u, v)
    return _c(_BARD_Y, x) - (x[0] + u / (v * x[1] + w * x[2]))


def gaussian(p):  # 9
    x = _prep(p)
    t = (8 - _idx(1, 15, x)) / 2
    return x[0] * jnp.exp(-x[1] * (t - x[2]) ** 2 / 2) - _c(_GAUSSIAN_Y, x)


def meyer(p):  # 10
    x = _prep(p)
    t = 45 + 5 * _idx(1, 16, x)
    return x[0] * jnp.exp(x[1] / (t + x[2])) - _c(_MEYER_Y, x)


def gulf(m):  # 11
    # t_i = i/100, y_i = 25 + (-50 ln t_i)^(2/3), f_i = exp(-|y_i - x2|^x3 / x1) - t_i.
    # (The paper's typeset "y_i mi x_2" means y_i - x_2.)
    def fun(p):
        x = _prep(p)
        t = _idx(1, m, x) / 100
        y = 25 + (-50 * jnp.log(t)) ** (2 / 3)
        return jnp.exp(-(jnp.abs(y - x[1]) ** x[2]) / x[0]) - t

    return fun


def box_3d(m):  # 12
    def fun(p):
        x = _prep(p)
        t = 0.1 * _idx(1, m, x)
        return jnp.exp(-t * x[0]) - jnp.exp(-t * x[1]) - x[2] * (jnp.exp(-t) - jnp.exp(-10 * t))

    return fun


def powell_singular(p):  # 13
    x = _prep(p)
    return jnp.stack([
        x[0] + 10 * x[1],
        math.sqrt(5) * (x[2] - x[3]),
        (x[1] - 2 * x[2]) ** 2,
        math.sqrt(10) * (x[0] - x[3]) ** 2,
    ])


def wood(p):  # 14
    x = _prep(p)
    return jnp.stack([
        10 * (x[1] - x[0] ** 2),
        1 - x[0],
        math.sqrt(90) * (x[3] - x[2] ** 2),
        1 - x[2],
        math.sqrt(10) * (x[1] + x[3] - 2),
        (x[1] - x[3]) / math.sqrt(10),
    ])


def kowalik_osborne(p):  # 15
    x = _prep(p)
    u = _c(_KOWALIK_U, x)
    return _c(_KOWALIK_Y, x) - x[0] * (u**2 + u * x[1]) / (u**2 + u * x[2] + x[3])


def brown_dennis(m):  # 16
    def fun(p):
        x = _prep(p)
        t = _idx(1, m, x) / 5
        return (x[0] + t * x[1] - jnp.exp(t)) ** 2 + (x[2] + x[3] * jnp.sin(t) - jnp.cos(t)) ** 2

    return fun


def osborne1(p):  # 17
    x = _prep(p)
    t = 10 * _idx(0, 32, x)
    return _c(_OSBORNE1_Y, x) - (x[0] + x[1] * jnp.exp(-t * x[3]) + x[2] * jnp.exp(-t * x[4]))


def biggs_exp6(m):  # 18
    def fun(p):
        x = _prep(p)
        t = 0.1 * _idx(1, m, x)
        y = jnp.exp(-t) - 5 * jnp.exp(-10 * t) + 3 * jnp.exp(-4 * t)
        return x[2] * jnp.exp(-t * x[0]) - x[3] * jnp.exp(-t * x[1]) + x[5] * jnp.exp(-t * x[4]) - y

    return fun


def osborne2(p):  # 19
    x = _prep(p)
    t = _idx(0, 64, x) / 10
    model = (
        x[0] * jnp.exp(-t * x[4])
        + x[1] * jnp.exp(-((t - x[8]) ** 2) * x[5])
        + x[2] * jnp.exp(-((t - x[9]) ** 2) * x[6])
        + x[3] * jnp.exp(-((t - x[10]) ** 2) * x[7])
    )
    return _c(_OSBORNE2_Y, x) - model


def watson(n):  # 20
    # t_i = i/29, i = 1..29:
    #   f_i = sum_{j=2..n} (j-1) x_j t_i^(j-2) - (sum_{j=1..n} x_j t_i^(j-1))^2 - 1,
    # f_30 = x1, f_31 = x2 - x1^2 - 1.
    t = np.arange(1, 30, dtype=np.float64) / 29
    powers = t[:, None] ** np.arange(n)[None, :]  # (29, n): t^(j-1), j = 1..n
    deriv = np.zeros((29, n))
    deriv[:, 1:] = np.arange(1, n)[None, :] * powers[:, :-1]  # (j-1) t^(j-2)

    def fun(p):
        x = _prep(p)
        s1 = _c(deriv, x) @ x
        s2 = _c(powers, x) @ x
        return jnp.concatenate([s1 - s2**2 - 1, jnp.stack([x[0], x[1] - x[0] ** 2 - 1])])

    return fun


def extended_rosenbrock(p):  # 21
    x = _prep(p)
    odd, even = x[0::2], x[1::2]
    return jnp.stack([10 * (even - odd**2), 1 - odd], axis=1).reshape(-1)


def extended_powell(p):  # 22
    x = _prep(p)
    a, b, c, d = x[0::4], x[1::4], x[2::4], x[3::4]
    return jnp.stack(
        [a + 10 * b, math.sqrt(5) * (c - d), (b - 2 * c) ** 2, math.sqrt(10) * (a - d) ** 2], axis=1
    ).reshape(-1)


def penalty1(p):  # 23, m = n + 1, a = 1e-5
    x = _prep(p)
    return jnp.concatenate([math.sqrt(1e-5) * (x - 1), jnp.sum(x**2)[None] - 0.25])


def penalty2(n):  # 24, m = 2n, a = 1e-5
    def fun(p):
        x = _prep(p)
        sa = math.sqrt(1e-5)
        i = _idx(2, n, x)
        y = jnp.exp(i / 10) + jnp.exp((i - 1) / 10)
        e = jnp.exp(x / 10)
        middle = sa * (e[1:] + e[:-1] - y)  # i = 2..n
        tail = sa * (e[1:] - math.exp(-0.1))  # i = n+1..2n-1: x_{i-n+1} = x_2..x_n
        weights = n - _idx(1, n, x) + 1
        last = jnp.sum(weights * x**2) - 1
        return jnp.concatenate([(x[0] - 0.2)[None], middle, tail, last[None]])

    return fun


def variably_dimensioned(p):  # 25, m = n + 2
    x = _prep(p)
    j = _idx(1, x.shape[0], x)
    s = jnp.sum(j * (x - 1))
    return jnp.concatenate([x - 1, jnp.stack([s, s**2])])


def trigonometric(p):  # 26, m = n
    x = _prep(p)
    n = x.shape[0]
    i = _idx(1, n, x)
    return n - jnp.sum(jnp.cos(x)) + i * (1 - jnp.cos(x)) - jnp.sin(x)


def brown_almost_linear(p):  # 27, m = n
    x = _prep(p)
    n = x.shape[0]
    return jnp.concatenate([x[:-1] + jnp.sum(x) - (n + 1), (jnp.prod(x) - 1)[None]])


def discrete_boundary_value(p):  # 28, m = n, x_0 = x_{n+1} = 0
    x = _prep(p)
    n = x.shape[0]
    h = 1 / (n + 1)
    t = _idx(1, n, x) * h
    xp = jnp.concatenate([jnp.zeros(1, x.dtype), x, jnp.zeros(1, x.dtype)])
    return 2 * x - xp[:-2] - xp[2:] + h**2 * (x + t + 1) ** 3 / 2


def discrete_integral_equation(p):  # 29, m = n
    x = _prep(p)
    n = x.shape[0]
    h = 1 / (n + 1)
    t = _idx(1, n, x) * h
    c = (x + t + 1) ** 3
    lower = _c(np.tril(np.ones((n, n))), x)  # j <= i
    upper = _c(np.triu(np.ones((n, n)), 1), x)  # j > i
    return x + h * ((1 - t) * (lower @ (t * c)) + t * (upper @ ((1 - t) * c))) / 2


def broyden_tridiagonal(p):  # 30, m = n, x_0 = x_{n+1} = 0
    x = _prep(p)
    xp = jnp.concatenate([jnp.zeros(1, x.dtype), x, jnp.zeros(1, x.dtype)])
    return (3 - 2 * x) * x - xp[:-2] - 2 * xp[2:] + 1


def broyden_banded(p):  # 31, m = n, ml = 5, mu = 1
    x = _prep(p)
    n = x.shape[0]
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    band = ((j != i) & (j >= i - 5) & (j <= i + 1)).astype(np.float64)
    return x * (2 + 5 * x**2) + 1 - _c(band, x) @ (x * (1 + x))


def linear_full_rank(m):  # 32
    def fun(p):
        x = _prep(p)
        n = x.shape[0]
        base = -2 * jnp.sum(x) / m - 1
        return jnp.concatenate([x + base, jnp.full((m - n,), base, x.dtype)])

    return fun


def linear_rank1(m):  # 33
    def fun(p):
        x = _prep(p)
        j = _idx(1, x.shape[0], x)
        return _idx(1, m, x) * jnp.sum(j * x) - 1

    return fun


def linear_rank1_zero(m):  # 34: f_1 = f_m = -1, f_i = (i-1) sum_{j=2..n-1} j x_j - 1
    def fun(p):
        x = _prep(p)
        n = x.shape[0]
        s = jnp.sum(_idx(2, n - 1, x) * x[1 : n - 1])
        mid = _idx(1, m - 2, x) * s - 1  # i = 2..m-1
        minus1 = -jnp.ones(1, x.dtype)
        return jnp.concatenate([minus1, mid, minus1])

    return fun


def chebyquad(m):  # 35
    # f_i = (1/n) sum_j T_i(x_j) - integral_0^1 T_i, with T_i the Chebyshev polynomial
    # shifted to [0, 1]; the integral is 0 for odd i and -1/(i^2 - 1) for even i.
    def fun(p):
        x = _prep(p)
        y = 2 * x - 1
        t_prev, t_cur = jnp.ones_like(y), y
        out = []
        for i in range(1, m + 1):
            value = jnp.mean(t_cur)
            if i % 2 == 0:
                value = value + 1 / (i**2 - 1)
            out.append(value)
            t_prev, t_cur = t_cur, 2 * y * t_cur - t_prev
        return jnp.stack(out)

    return fun


# --------------------------------------------------------------------------
# The collection.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MGHProblem:
    number: int  # MGH 1981 problem number
    name: str
    fun: Callable  # fun(p) -> residuals, shape (m,)
    n: int
    m: int
    x0: tuple  # the paper's standard starting point
    f_star: float | None  # paper's minimum of ‖r‖² (sum of squares), if reported
    f_other: tuple = ()  # other values the paper lists (local minima, limits at infinity)
    note: str = ""

    def start(self, factor: float = 1.0) -> np.ndarray:
        """factor·x0 in float64 (factor·ones if x0 = 0 and factor != 1, as MINPACK)."""
        x0 = np.asarray(self.x0, dtype=np.float64)
        if factor != 1 and not np.any(x0):
            return np.full_like(x0, float(factor))
        return factor * x0

    def sum_of_squares(self, p) -> float:
        r = np.asarray(self.fun(jnp.asarray(p)), dtype=np.float64)
        return float(r @ r)


def _jt(n):
    return tuple(float(k) for k in range(1, n + 1))


def _grid(n):  # t_j (t_j - 1), t_j = j/(n+1)
    t = np.arange(1, n + 1) / (n + 1)
    return tuple(float(v) for v in t * (t - 1))


def _build():
    P = MGHProblem
    out = [
        P(1, "Rosenbrock", rosenbrock, 2, 2, (-1.2, 1.0), 0.0),
        P(2, "Freudenstein-Roth", freudenstein_roth, 2, 2, (0.5, -2.0), 0.0, (48.9842,),
          "local minimum 48.9842... at (11.41..., -0.8968...)"),
        P(3, "Powell badly scaled", powell_badly_scaled, 2, 2, (0.0, 1.0), 0.0),
        P(4, "Brown badly scaled", brown_badly_scaled, 2, 3, (1.0, 1.0), 0.0),
        P(5, "Beale", beale, 2, 3, (1.0, 1.0), 0.0),
        P(6, "Jennrich-Sampson", jennrich_sampson(10), 2, 10, (0.3, 0.4), 124.362,
          note="m = 10; minimum at x1 = x2 = 0.2578"),
        P(7, "Helical valley", helical_valley, 3, 3, (-1.0, 0.0, 0.0), 0.0),
        P(8, "Bard", bard, 3, 15, (1.0, 1.0, 1.0), 8.21487e-3, (17.4286,),
          "17.4286... approached at (0.8406..., -inf, -inf)"),
        P(9, "Gaussian", gaussian, 3, 15, (0.4, 1.0, 0.0), 1.12793e-8),
        P(10, "Meyer", meyer, 3, 16, (0.02, 4000.0, 250.0), 87.9458),
        P(11, "Gulf", gulf(99), 3, 99, (5.0, 2.5, 0.15), 0.0,
          note="m = 99 (paper: n <= m <= 100; m = 100 puts y_100 - x2 = 0 at the solution, "
               "where the derivative in x3 of |y - x2|^x3 is 0·log 0); minimum at (50, 25, 1.5), "
               "which is exactly 10·x0"),
        P(12, "Box 3-D", box_3d(10), 3, 10, (0.0, 10.0, 20.0), 0.0,
          note="m = 10; zero at (1, 10, 1), (10, 1, -1) and wherever x1 = x2, x3 = 0"),
        P(13, "Powell singular", powell_singular, 4, 4, (3.0, -1.0, 0.0, 1.0), 0.0),
        P(14, "Wood", wood, 4, 6, (-3.0, -1.0, -3.0, -1.0), 0.0),
        P(15, "Kowalik-Osborne", kowalik_osborne, 4, 11, (0.25, 0.39, 0.415, 0.39), 3.07505e-4,
          (1.02734e-3,), "1.02734e-3 approached at (+inf, -14.07..., -inf, -inf)"),
        P(16, "Brown-Dennis", brown_dennis(20), 4, 20, (25.0, 5.0, -5.0, -1.0), 85822.2,
          note="m = 20"),
        P(17, "Osborne 1", osborne1, 5, 33, (0.5, 1.5, -1.0, 0.01, 0.02), 5.46489e-5),
        P(18, "Biggs EXP6", biggs_exp6(13), 6, 13, (1.0, 2.0, 1.0, 1.0, 1.0, 1.0), 0.0,
          (5.65565e-3,), "m = 13; zero at (1, 10, 1, 5, 4, 3); local minimum 5.65565e-3"),
        P(19, "Osborne 2", osborne2, 11, 65,
          (1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5), 4.01377e-2),
    ]
    for n, fs in ((6, 2.28767e-3), (9, 1.39976e-6), (12, 4.72238e-10)):
        out.append(P(20, f"Watson n={n}", watson(n), n, 31, (0.0,) * n, fs))
    out += [
        P(21, "Extended Rosenbrock n=10", extended_rosenbrock, 10, 10, (-1.2, 1.0) * 5, 0.0),
        P(22, "Extended Powell n=12", extended_powell, 12, 12, (3.0, -1.0, 0.0, 1.0) * 3, 0.0),
        P(23, "Penalty I n=4", penalty1, 4, 5, _jt(4), 2.24997e-5),
        P(23, "Penalty I n=10", penalty1, 10, 11, _jt(10), 7.08765e-5),
        P(24, "Penalty II n=4", penalty2(4), 4, 8, (0.5,) * 4, 9.37629e-6),
        P(24, "Penalty II n=10", penalty2(10), 10, 20, (0.5,) * 10, 2.93660e-4),
        P(25, "Variably dimensioned n=10", variably_dimensioned, 10, 12,
          tuple(1 - j / 10 for j in range(1, 11)), 0.0),
        P(26, "Trigonometric n=10", trigonometric, 10, 10, (0.1,) * 10, 0.0,
          note="the paper reports f = 0; from x0 solvers usually stop at a local minimum 2.79506e-5"),
        P(27, "Brown almost-linear n=10", brown_almost_linear, 10, 10, (0.5,) * 10, 0.0, (1.0,),
          "zero at (a, ..., a, a^(1-n)), n a^n - (n+1) a^(n-1) + 1 = 0; 1 at (0, ..., 0, n+1)"),
        P(27, "Brown almost-linear n=30", brown_almost_linear, 30, 30, (0.5,) * 30, 0.0, (1.0,)),
        P(28, "Discrete boundary value n=10", discrete_boundary_value, 10, 10, _grid(10), 0.0),
        P(29, "Discrete integral equation n=10", discrete_integral_equation, 10, 10, _grid(10), 0.0),
        P(30, "Broyden tridiagonal n=10", broyden_tridiagonal, 10, 10, (-1.0,) * 10, 0.0),
        P(31, "Broyden banded n=10", broyden_banded, 10, 10, (-1.0,) * 10, 0.0),
    ]
    for m in (10, 50):
        out.append(P(32, f"Linear full rank n=5 m={m}", linear_full_rank(m), 5, m, (1.0,) * 5,
                     float(m - 5), note="minimum m - n at x = (-1, ..., -1)"))
    for m in (10, 50):
        out.append(P(33, f"Linear rank 1 n=5 m={m}", linear_rank1(m), 5, m, (1.0,) * 5,
                     m * (m - 1) / (2 * (2 * m + 1)), note="f* = m(m-1)/(2(2m+1))"))
    for m in (10, 50):
        out.append(P(34, f"Linear rank 1 zero cols/rows n=5 m={m}", linear_rank1_zero(m), 5, m,
                     (1.0,) * 5, (m**2 + 3 * m - 6) / (2 * (2 * m - 3)),
                     note="f* = (m^2 + 3m - 6)/(2(2m-3))"))
    for n, m, fs in ((1, 8, None), (7, 7, 0.0), (8, 8, 3.51687e-3), (9, 9, 0.0), (10, 10, 6.50395e-3)):
        out.append(P(35, f"Chebyquad n={n} m={m}", chebyquad(m), n, m,
                     tuple((j + 1) / (n + 1) for j in range(n)), fs,
                     note="paper gives f* only for m = n" if fs is None else ""))
    return tuple(out)


PROBLEMS: tuple[MGHProblem, ...] = _build()


def get(name: str) -> MGHProblem:
    for p in PROBLEMS:
        if p.name == name:
            return p
    raise KeyError(name)


# --------------------------------------------------------------------------
# Self-check: python tests/mgh.py
# --------------------------------------------------------------------------

# Initial L2 norms ‖r(factor·x0)‖ printed by MINPACK's lmder driver (reference output
# of its test program) for the problems it shares with MGH, at factors 1, 10, 100.
_MINPACK_INITIAL_NORM = {
    "Linear full rank n=5 m=10": {1: 5.0000000e00},
    "Linear full rank n=5 m=50": {1: 8.0622577e00},
    "Linear rank 1 n=5 m=10": {1: 2.9152187e02},
    "Linear rank 1 n=5 m=50": {1: 3.1016004e03},
    "Linear rank 1 zero cols/rows n=5 m=10": {1: 1.2603968e02},
    "Linear rank 1 zero cols/rows n=5 m=50": {1: 1.7489500e03},
    "Rosenbrock": {1: 4.9193496e00, 10: 1.3400631e03, 100: 1.4300005e05},
    "Helical valley": {1: 5.0000000e01, 10: 1.0295630e02, 100: 9.9126182e02},
    "Powell singular": {1: 1.4662878e01, 10: 1.2709839e03, 100: 1.2688790e05},
    "Freudenstein-Roth": {1: 2.0012496e01, 10: 1.2432834e04, 100: 1.1426455e07},
    "Bard": {1: 6.4561363e00, 10: 3.6141853e01, 100: 3.8411468e02},
    "Kowalik-Osborne": {1: 7.2891510e-02, 10: 2.9793701e00, 100: 2.9959062e01},
    "Meyer": {1: 4.1153467e04, 10: 4.1682169e06},
    "Watson n=6": {1: 5.4772256e00, 10: 6.4331258e03, 100: 6.7425604e05},
    "Watson n=9": {1: 5.4772256e00, 10: 1.2088127e04, 100: 1.2691093e06},
    "Watson n=12": {1: 5.4772256e00, 10: 1.9220759e04, 100: 2.0189180e06},
    "Box 3-D": {1: 3.2111584e01},
    "Jennrich-Sampson": {1: 6.4585650e01},
    "Brown-Dennis": {1: 2.8154384e03, 10: 5.5507335e05, 100: 6.1211252e07},
    "Chebyquad n=1 m=8": {1: 1.8862380e00, 10: 5.3833444e09, 100: 1.1808873e18},
    "Chebyquad n=8 m=8": {1: 1.9651386e-01},
    "Chebyquad n=9 m=9": {1: 1.6994993e-01},
    "Chebyquad n=10 m=10": {1: 1.8374783e-01},
    "Brown almost-linear n=10": {1: 1.6530216e01, 10: 9.7656240e06, 100: 9.7656250e16},
    "Brown almost-linear n=30": {1: 8.3476044e01},
    "Osborne 1": {1: 9.3756402e-01},
    "Osborne 2": {1: 1.4468654e00},
}

# f(x0) = ‖r(x0)‖² worked out by hand for the problems MINPACK's driver lacks.
_HAND_F0 = {
    "Powell badly scaled": 1.0 + (math.exp(-1.0) - 1e-4) ** 2,
    "Brown badly scaled": (1 - 1e6) ** 2 + (1 - 2e-6) ** 2 + 1.0,
    "Beale": 1.5**2 + 2.25**2 + 2.625**2,
    "Wood": 19192.0,
    "Extended Rosenbrock n=10": 5 * 24.2,
    "Extended Powell n=12": 3 * 215.0,
    "Penalty I n=4": 1e-5 * 14 + (30 - 0.25) ** 2,
    "Penalty I n=10": 1e-5 * 285 + (385 - 0.25) ** 2,
    "Variably dimensioned n=10": 3.85 + 38.5**2 + 38.5**4,
    "Broyden tridiagonal n=10": 2.0**2 + 8 * 1.0**2 + 3.0**2,  # f_1 = -2, f_2..9 = -1, f_10 = -3
}


# Minimizers the paper states, where f must vanish (or equal the stated value).
_KNOWN_MINIMIZERS = {
    "Rosenbrock": ((1.0, 1.0), 0.0),
    "Freudenstein-Roth": ((5.0, 4.0), 0.0),
    "Brown badly scaled": ((1e6, 2e-6), 0.0),
    "Beale": ((3.0, 0.5), 0.0),
    "Gulf": ((50.0, 25.0, 1.5), 0.0),
    "Box 3-D": ((1.0, 10.0, 1.0), 0.0),
    "Wood": ((1.0, 1.0, 1.0, 1.0), 0.0),
    "Biggs EXP6": ((1.0, 10.0, 1.0, 5.0, 4.0, 3.0), 0.0),
    "Variably dimensioned n=10": ((1.0,) * 10, 0.0),
    "Linear full rank n=5 m=10": ((-1.0,) * 5, 5.0),
}


def _selfcheck():  # pragma: no cover - a script
    import jax
    from scipy.optimize import least_squares

    jax.config.update("jax_enable_x64", True)  # this script only
    bad = 0
    for name, (x, value) in _KNOWN_MINIMIZERS.items():
        got = get(name).sum_of_squares(np.asarray(x))
        if abs(got - value) > 1e-12 * max(1.0, value):
            print(f"MISMATCH minimizer {name}: f = {got:.6e}, expected {value}")
            bad += 1
    for prob in PROBLEMS:
        r0 = np.asarray(prob.fun(jnp.asarray(prob.start(1))))
        assert r0.shape == (prob.m,), (prob.name, r0.shape)
        r32 = np.asarray(prob.fun(jnp.asarray(prob.start(1), jnp.float32)))
        assert r32.dtype == np.float32
        for factor, norm in _MINPACK_INITIAL_NORM.get(prob.name, {}).items():
            got = float(np.linalg.norm(np.asarray(prob.fun(jnp.asarray(prob.start(factor))))))
            if abs(got - norm) > 1e-7 * norm:
                print(f"MISMATCH f(x0) {prob.name} factor {factor}: {got:.8e} vs MINPACK {norm:.8e}")
                bad += 1
        if prob.name in _HAND_F0:
            f0 = prob.sum_of_squares(prob.start(1))
            print(f"  hand f(x0) {prob.name}: {f0:.10g} vs {_HAND_F0[prob.name]:.10g}")
        f = jax.jit(prob.fun)
        J = jax.jit(jax.jacfwd(prob.fun))
        res = least_squares(lambda x: np.asarray(f(x)), prob.start(1), jac=lambda x: np.asarray(J(x)),
                            method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=100_000)
        fmin = 2 * res.cost
        ok = prob.f_star is None or (
            abs(fmin - prob.f_star) <= 1e-5 * prob.f_star if prob.f_star > 0 else fmin <= 1e-20
        )
        hit_other = any(abs(fmin - v) <= 1e-5 * v for v in prob.f_other)
        tag = "ok" if ok else ("other stationary value" if hit_other else "DIFFERENT")
        print(f"{prob.name:42} f(x0) {prob.sum_of_squares(prob.start(1)):.6e}  scipy lm f {fmin:.6e}"
              f"  paper {prob.f_star}  {tag}")
    print("mismatches (f(x0) against MINPACK, stated minimizers):", bad)


if __name__ == "__main__":
    _selfcheck()
