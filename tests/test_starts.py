"""Levenberg-Marquardt from poor starts, against scipy on the same problems.

Each case was a failure of an earlier version (see ``benchmarks/starts.py`` for the
measurement over many starts):

- Michaelis-Menten from starts far below the optimum: the trust region's scaling made
  the half-saturation constant, whose column is small while V is small, cheap to move,
  and the first steps crossed the model's poles at ``K = −S_k`` into a local minimum.
- ``x² + 5`` (scipy's own ``fun_trivial``): at the minimum the Jacobian vanishes while
  the residual does not, the MINPACK cosine is 1 for any nonzero ``J``, and the fit
  wandered at the cost's resolution until ``max_steps``.
- A damped cosine from ``x0 = 0``: the frequency and phase columns are exactly zero on
  the set ``ω = φ = 0``, which no method with the exact Jacobian leaves (a saddle; the
  stationarity that ``success`` reports is true).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import curve_fit as scipy_curve_fit
from scipy.optimize import least_squares as scipy_least_squares

import fitfleet as ff


def _michaelis_menten_data():
    rng = np.random.default_rng(0)
    S = np.linspace(0.1, 30, 20)
    return S, 29 * S / (6 + S) + rng.normal(0, 0.5, 20)


def _scipy(fun, x0, method, **options):
    """scipy's least_squares on the same JAX residual, with its exact Jacobian."""
    f = jax.jit(fun)
    J = jax.jit(jax.jacfwd(fun))
    return scipy_least_squares(
        lambda p: np.asarray(f(p)), np.asarray(x0, float), jac=lambda p: np.asarray(J(p)), method=method, **options
    )


@pytest.mark.parametrize("x0", [(1.0, 1.0), (1.0, 0.1), (0.5, 2.0), (1.0, 3.0)])
def test_michaelis_menten_from_low_starts_reaches_scipys_optimum(x64, x0):
    S, v = _michaelis_menten_data()
    fun = lambda p: p[0] * S / (p[1] + S) - v  # noqa: E731
    best = min(_scipy(fun, x0, method).cost for method in ("lm", "trf"))
    res = ff.least_squares(fun, jnp.asarray(x0))
    assert res.success, res.message
    assert float(res.cost) <= best * (1 + 1e-6)
    assert float(res.params[1]) > 0  # not between two poles K = −S_k


def test_curve_fit_default_start_michaelis_menten_matches_scipy(x64):
    S, v = _michaelis_menten_data()
    model = lambda S, vmax, km: vmax * S / (km + S)  # noqa: E731
    expected, _ = scipy_curve_fit(model, S, v)  # p0 = ones, as fitfleet's default
    popt, _ = ff.curve_fit(model, S, v)
    np.testing.assert_allclose(np.asarray(popt), expected, rtol=1e-5)


@pytest.mark.parametrize("loss", ["linear", "soft_l1", "huber", "cauchy", "arctan"])
def test_zero_jacobian_minimum_stops_with_success(dtype, loss):
    """scipy's ``fun_trivial``: the minimum x = 0 has J = 0 and r = 5."""
    fun = lambda x: x**2 + 5.0  # noqa: E731
    res = ff.least_squares(fun, jnp.asarray(2.0, dtype), loss=loss)
    expected = scipy_least_squares(fun, 2.0, loss=loss, method="trf")
    assert res.success, res.message
    assert int(res.n_steps) <= 30  # the cost's resolution is reached within a few steps
    # x is determined to about the square root of the cost's precision
    assert abs(float(res.params)) <= 10 * float(np.sqrt(np.finfo(dtype).eps))
    np.testing.assert_allclose(float(res.cost), expected.cost, rtol=10 * np.finfo(dtype).eps)


def test_damped_cosine_from_zero_stops_where_scipy_with_exact_jacobian_stops(x64):
    """On ω = φ = 0 both columns vanish identically, so no exact-Jacobian method moves
    them: scipy's lm and trf stop at the same point.  It is stationary (gradient zero to
    round-off, so success is true) but a saddle (the Hessian has a negative eigenvalue);
    scipy leaves it only with finite differences, whose error breaks the symmetry."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 10, 30)
    y = np.exp(-0.1 * t) * np.cos(2 * t) + 0.15 * rng.standard_normal(t.size)
    fun = lambda p: p[0] * jnp.exp(-p[1] * t) * jnp.cos(p[2] * t + p[3]) - y  # noqa: E731
    res = ff.least_squares(fun, jnp.zeros(4))
    for method in ("lm", "trf"):
        expected = _scipy(fun, np.zeros(4), method)
        np.testing.assert_allclose(float(res.cost), expected.cost, rtol=1e-6)
    assert res.success
    assert float(res.params[2]) == 0 and float(res.params[3]) == 0
    cost = lambda p: 0.5 * jnp.sum(fun(p) ** 2)  # noqa: E731
    assert float(jnp.max(jnp.abs(jax.grad(cost)(res.params)))) < 1e-4
    assert np.linalg.eigvalsh(np.asarray(jax.hessian(cost)(res.params)))[0] < -1e-3
    # from a start off that set, the same fit finds the damped oscillation
    off = ff.least_squares(fun, jnp.asarray([0.0, 0.0, 1.5, 0.0]))
    assert float(off.cost) < 0.2 * float(res.cost)


def _scipy_robust_example(seed):
    """The data of scipy's robust-regression example (``least_squares`` docstring)."""
    t = np.linspace(0, 10, 15)
    g = np.random.default_rng(seed)
    error = 0.1 * g.standard_normal(t.size)
    error[g.integers(0, t.size, 3)] *= 10
    return t, 0.5 + 2.0 * np.exp(-1.0 * t) + error


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cauchy_loss_from_ones_reaches_scipy_trf(x64, seed):
    """From x0 = ones every point is far in the loss's tails.  The reweighted model
    (√ρ'·J) fitted them by flattening the exponential and slid to a = ±1e4 (max_steps);
    the loss's exact curvature, as in scipy's trf, finds the fit."""
    t, y = _scipy_robust_example(seed)
    fun = lambda p: p[0] + p[1] * jnp.exp(p[2] * t) - y  # noqa: E731
    expected = _scipy(fun, np.ones(3), "trf", loss="cauchy", f_scale=0.1)
    res = ff.least_squares(fun, jnp.ones(3), loss="cauchy", f_scale=0.1)
    assert res.success, res.message
    assert float(res.cost) <= expected.cost * (1 + 1e-6)
    np.testing.assert_allclose(np.asarray(res.params), expected.x, rtol=1e-3)  # both at default tolerances


@pytest.mark.parametrize("rate0", [0.5, 1.0])
def test_tiny_amplitude_start_matches_scipy_trf(x64, rate0):
    """An amplitude of 1e-8 leaves the rate's column tiny but not zero: with scaling by
    column norms alone the rate could take any step (it went to 4e7, a plateau; scipy's
    ``lm`` ends in the valley A → −∞), the floor of the scale holds it to its own size."""
    t = np.linspace(0.1, 6, 25)
    for seed in range(3):
        y = 2 * np.exp(-0.7 * t) + 0.3 + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
        fun = lambda p: p[0] * jnp.exp(-p[1] * t) + p[2] - y  # noqa: E731
        x0 = np.array([1e-8, rate0, 0.0])
        expected = _scipy(fun, x0, "trf")
        res = ff.least_squares(fun, jnp.asarray(x0))
        assert res.success, res.message
        np.testing.assert_allclose(float(res.cost), expected.cost, rtol=1e-6)
