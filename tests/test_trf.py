"""``method="trf"``: the trust-region reflective method, against scipy's
``least_squares(method="trf")`` (the same algorithm), NIST's certified values, and
finite differences.

The first section ports the parts of scipy's own ``optimize/tests/test_least_squares.py``
(``TestTRF``, ``BoundsMixin``, ``LossFunctionMixin`` and the regression tests) that
concern bounds, ``x_scale`` and losses, with exact Jacobians on both sides; the optima
are compared with scipy's, not only checked for optimality.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so

import fitfleet as ff
import mgh
import nist
from conftest import count_compilations
from fitfleet._solvers._curvature import secant_update as _secant_update

# scipy's first-order optimality for trf: ‖v·g‖∞, v the distance to the bound the
# negative gradient points at (1 where that bound is infinite or g = 0).


def optimality(x, g, lb, ub):
    x, g = np.asarray(x, float), np.asarray(g, float)
    lb, ub = np.broadcast_to(lb, x.shape), np.broadcast_to(ub, x.shape)
    v = np.ones_like(x)
    v = np.where((g < 0) & np.isfinite(ub), ub - x, v)
    v = np.where((g > 0) & np.isfinite(lb), x - lb, v)
    return float(np.max(np.abs(g * v)))


def scipy_trf(fun, x0, args=(), **kw):
    """scipy's trf on a jax residual, with its exact Jacobian."""
    f = jax.jit(lambda p: fun(p, *args))
    J = jax.jit(jax.jacfwd(lambda p: fun(p, *args)))
    return so.least_squares(lambda p: np.asarray(f(p)), np.asarray(x0, float), jac=lambda p: np.asarray(J(p)), **kw)


# ------------------------------------------------------- scipy's tests, ported


def fun_trivial(x):
    return (x - 0.0) ** 2 + 5.0


def fun_2d_trivial(x):
    return x


def fun_rosenbrock(x):
    return jnp.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])


@pytest.mark.parametrize("bounds, x_opt", [((-1.0, 3.0), 0.0), ((0.5, 3.0), 0.5)])
def test_in_bounds(x64, bounds, x_opt):
    res = ff.least_squares(fun_trivial, jnp.array([2.0]), method="trf", bounds=bounds)
    ref = scipy_trf(fun_trivial, [2.0], bounds=bounds)
    assert bounds[0] <= float(res.params[0]) <= bounds[1] and res.success
    # A quartic minimum: both stop about 1e-4 from it (scipy's own test's tolerance).
    np.testing.assert_allclose(res.params, x_opt, atol=1e-4)
    np.testing.assert_allclose(res.params, ref.x, atol=1e-4)
    np.testing.assert_allclose(res.cost, ref.cost, rtol=1e-8)


@pytest.mark.parametrize(
    "bounds, x_opt",
    [((0.5, [2.0, 2.0]), [0.5, 0.5]), (([0.3, 0.2], 3.0), [0.3, 0.2]), (([-1, 0.5], [1.0, 3.0]), [0.0, 0.5])],
)
def test_bounds_shape(x64, bounds, x_opt):
    res = ff.least_squares(fun_2d_trivial, jnp.ones(2), method="trf", bounds=bounds)
    np.testing.assert_allclose(res.params, x_opt, atol=1e-5)
    np.testing.assert_allclose(res.params, scipy_trf(fun_2d_trivial, np.ones(2), bounds=bounds).x, atol=1e-7)


ROSENBROCK_BOUNDS = [
    ([-2.0, 1.0], ([-np.inf, -1.5], np.inf)),
    ([2.0, 2.0], ([-np.inf, 1.5], np.inf)),
    ([-2.0, 2.0], ([-np.inf, 1.5], np.inf)),
    ([0.0, 2.0], ([-np.inf, 1.5], [1.0, np.inf])),
    ([2.0, 2.0], ([1.0, 1.5], [3.0, 3.0])),
    ([-1.2, 1.0], ([-50.0, 0.0], [0.5, 100])),
]


@pytest.mark.parametrize("x_scale", [1.0, np.array([1.0, 0.5]), "jac"], ids=["1", "array", "jac"])
@pytest.mark.parametrize("x0, bounds", ROSENBROCK_BOUNDS)
def test_rosenbrock_bounds(x64, x0, bounds, x_scale):
    res = ff.least_squares(fun_rosenbrock, jnp.asarray(x0), method="trf", bounds=bounds, x_scale=x_scale)
    ref = scipy_trf(fun_rosenbrock, x0, bounds=bounds, x_scale=x_scale)
    assert res.success
    assert optimality(res.params, res.grad, *bounds) < 1e-5
    np.testing.assert_allclose(res.params, ref.x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.cost, ref.cost, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("x_scale", [1.0, np.array([1.0, 0.2]), "jac"], ids=["1", "array", "jac"])
def test_rosenbrock_unbounded_is_scipy_trf(x64, x_scale):
    res = ff.least_squares(fun_rosenbrock, jnp.array([-2.0, 1.0]), method="trf", x_scale=x_scale, acceleration=False, secant=False)
    ref = scipy_trf(fun_rosenbrock, [-2.0, 1.0], x_scale=x_scale)
    np.testing.assert_allclose(res.params, [1.0, 1.0])
    # The same algorithm, so about the same path (the last steps may differ: near the
    # solution fitfleet judges a step below the cost's round-off as agreeing with the model).
    assert abs(int(res.n_fev) - ref.nfev) <= 2
    # Rosenbrock's valley is curved: the geodesic acceleration and the secant model
    # (defaults) cross it in fewer steps, to the same point.
    fast = ff.least_squares(fun_rosenbrock, jnp.array([-2.0, 1.0]), method="trf", x_scale=x_scale)
    np.testing.assert_allclose(fast.params, [1.0, 1.0])
    assert fast.success and int(fast.n_steps) < int(res.n_steps)


def test_acceleration_with_log_scale_alone(x64):
    """``log_scale`` without bounds leaves trf's box infinite: the acceleration applies
    (Rat43 from start 1: 17 steps against 20, the same optimum; the secant model off)."""
    problem = nist.load("Rat43")
    fit = lambda **o: ff.least_squares(problem.residual(), jnp.asarray(problem.start1), (problem.x, problem.y), method="trf", log_scale=True, secant=False, **o)  # noqa: E731
    on, off = fit(), fit(acceleration=False)
    assert on.success and off.success
    np.testing.assert_allclose(on.cost, off.cost, rtol=1e-9)
    assert int(on.n_steps) < int(off.n_steps)


@pytest.mark.parametrize(
    "options", [dict(bounds=(-10.0, 10.0)), dict(loss="soft_l1", acceleration=True, secant=True)], ids=["bounds", "loss"]
)
def test_acceleration_is_off_with_bounds_by_default_and_with_a_robust_loss(x64, options):
    """With bounds (unless asked for) or a robust loss (even when asked for) the step is
    scipy's (the trust-region reflective module docstring says why)."""
    fit = lambda **o: ff.least_squares(fun_rosenbrock, jnp.array([-2.0, 1.0]), method="trf", history=True, **o)  # noqa: E731
    on, off = fit(**options), fit(**{**options, "acceleration": False, "secant": False})
    assert int(on.n_steps) == int(off.n_steps)
    np.testing.assert_array_equal(on.history.params, off.history.params)


def test_acceleration_with_bounds_when_asked(x64):
    """``acceleration=True`` with bounds corrects the steps that stay inside the box: MGH17
    from start 1 inside a box that does not bind at the optimum crosses its curved valley
    to the certified values, where scipy's step (the default with bounds) runs out of
    budget."""
    problem = nist.load("MGH17")
    box = (np.full(5, -1e3), np.full(5, 1e3))
    fit = lambda **o: ff.least_squares(problem.residual(), jnp.asarray(problem.start1), (problem.x, problem.y), method="trf", bounds=box, secant=False, **o)  # noqa: E731
    plain, fast = fit(), fit(acceleration=True)
    assert plain.status == ff.Status.MAX_STEPS
    assert fast.success and nist.lre(np.asarray(fast.params), problem.certified) >= 4
    assert int(fast.n_steps) < int(plain.n_steps) // 2


def test_acceleration_from_a_step(x64):
    """``acceleration=k`` leaves the first k steps scipy's and corrects the later ones:
    MGH17 in the box of the test above takes the plain steps to step k, then crosses its
    valley; ``acceleration=0`` is ``True``."""
    problem = nist.load("MGH17")
    box = (np.full(5, -1e3), np.full(5, 1e3))
    fit = lambda a: ff.least_squares(problem.residual(), jnp.asarray(problem.start1), (problem.x, problem.y), method="trf", bounds=box, secant=False, acceleration=a, history=True)  # noqa: E731
    plain, late, zero, on = fit(False), fit(40), fit(0), fit(True)
    rows = lambda res, k: np.asarray(res.history.params)[:k]  # noqa: E731
    np.testing.assert_array_equal(rows(late, 41), rows(plain, 41))
    assert not np.array_equal(rows(late, 60), rows(plain, 60))
    assert late.success and nist.lre(np.asarray(late.params), problem.certified) >= 4
    assert int(late.n_steps) < int(plain.n_steps) // 2
    np.testing.assert_array_equal(np.asarray(zero.params), np.asarray(on.params))
    assert int(zero.n_steps) == int(on.n_steps)


@pytest.mark.parametrize("tols", [(1e-8, 0, 0), (0, 1e-8, 0), (0, 0, 1e-8)], ids=["ftol", "xtol", "gtol"])
def test_convergence_with_only_one_tolerance_enabled(x64, tols):
    ftol, xtol, gtol = tols
    res = ff.least_squares(fun_rosenbrock, jnp.array([-2.0, 1.0]), method="trf", ftol=ftol, xtol=xtol, gtol=gtol)
    assert res.success
    np.testing.assert_allclose(res.params, [1.0, 1.0])


@pytest.mark.parametrize("method", ["trf", "lm", "gn"])
def test_fatol_alone_stops_at_an_absolute_reduction(x64, method):
    """``ftol = 0, fatol = a``: the fit ends at an accepted step (that agreed with its
    model) lowering the cost by at most ``a``: later for a smaller ``a``."""
    problem = nist.load("Misra1a")  # a residual that does not vanish: only the cost test can stop
    fit = lambda a, **o: ff.least_squares(  # noqa: E731
        problem.residual(), jnp.asarray(problem.start1), (problem.x, problem.y), method=method, ftol=0, xtol=0, gtol=0, fatol=a, **o
    )
    res = fit(1e-4, history=True)
    assert int(res.status) == ff.Status.FTOL
    costs = np.asarray(res.history.cost[: int(res.history.length)])
    assert 0 < costs[-2] - costs[-1] <= 1e-4
    tighter, loose = fit(1e-8), fit(1e3)
    assert int(tighter.status) == ff.Status.FTOL and int(tighter.n_steps) >= int(res.n_steps) and float(tighter.cost) <= float(res.cost)
    assert int(loose.status) == ff.Status.FTOL and int(loose.n_steps) < int(res.n_steps)


def broyden_tridiagonal(x):
    f = (3 - x) * x + 1
    f = f.at[1:].add(-x[:-1])
    return f.at[:-1].add(-2 * x[1:])


def broyden_problem(n=100):
    """scipy's ``BroydenTridiagonal`` (its random start and box)."""
    rng = np.random.default_rng(123440)
    x0 = -np.ones(n)
    lb = np.linspace(-2, -1.5, n) + 0.1 * rng.standard_normal(n)
    ub = np.linspace(-0.8, 0.0, n) + 0.1 * rng.standard_normal(n)
    x0 = x0 + 0.1 * rng.standard_normal(n)
    return x0, lb, ub


@pytest.mark.parametrize("which", ["lower", "upper", "both"])
def test_broyden_tridiagonal_with_bounds(x64, which):
    x0, lb, ub = broyden_problem()
    x0 = np.clip(x0, lb + 1e-10, ub - 1e-10)
    bounds = {"lower": (lb, np.inf), "upper": (-np.inf, ub), "both": (lb, ub)}[which]
    res = ff.least_squares(broyden_tridiagonal, jnp.asarray(x0), method="trf", bounds=bounds)
    ref = scipy_trf(broyden_tridiagonal, x0, bounds=bounds)
    assert res.success and optimality(res.params, res.grad, *bounds) < 1e-10
    np.testing.assert_allclose(res.params, ref.x, atol=1e-8)


def test_broyden_tridiagonal_x_scale_jac(x64):
    x0, _, _ = broyden_problem()
    res = ff.least_squares(broyden_tridiagonal, jnp.asarray(x0), method="trf", x_scale="jac")
    assert float(res.cost) < 1e-20


def bvp(x):
    n = int(np.sqrt(x.shape[0]))
    u = jnp.zeros((n + 2, n + 2)).at[1:-1, 1:-1].set(x.reshape(n, n))
    y = u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2] + u[1:-1, 2:] - 4 * x.reshape(n, n) + x.reshape(n, n) ** 3
    return y.ravel()


def test_bvp_within_scipys_evaluation_budget(x64):
    """scipy's test_bvp: 100 parameters, ftol=1e-2, fewer than max_nfev=100 evaluations."""
    res = ff.least_squares(bvp, jnp.ones(100), method="trf", ftol=1e-2, max_nfev=100)
    assert int(res.n_fev) < 100 and float(res.cost) < 0.5 and res.success


LOSSES = ["linear", "soft_l1", "huber", "cauchy", "arctan"]


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_options_and_gradient(x64, loss):
    """scipy's LossFunctionMixin.test_options and test_grad: the minimum of a trivial
    problem, and ``Result.grad`` the true gradient of the robust cost."""
    res = ff.least_squares(fun_trivial, jnp.array([2.0]), method="trf", loss=loss)
    np.testing.assert_allclose(res.params, 0.0, atol=1e-7)
    one = ff.least_squares(fun_trivial, jnp.array([2.0]), method="trf", loss=loss, max_nfev=1)
    x, f = 2.0, 2.0**2 + 5
    rho_prime = {"linear": 1, "soft_l1": (1 + f**2) ** -0.5, "huber": 1 / f, "cauchy": 1 / (1 + f**2), "arctan": 1 / (1 + f**4)}
    np.testing.assert_allclose(one.grad, [2 * x * f * rho_prime[loss]], rtol=1e-12)
    assert one.status == ff.Status.MAX_STEPS and int(one.n_fev) == 1


def exponential_fitting(noise, seed=12220903):
    """scipy's ExponentialFittingProblem(1, 0.1, noise): y = a + exp(b x), one outlier."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, 11)
    y = 1 + np.exp(0.1 * x) + noise * rng.standard_normal(11)
    outliers = rng.integers(0, 11, 1)
    y[outliers] += 50 * noise * rng.random(1)
    return x, y


def exp_fit(p, x, y):
    return p[0] + jnp.exp(p[1] * x) - y


@pytest.mark.parametrize("noise", [0.1, 1.0])
def test_robustness(x64, noise):
    x, y = exponential_fitting(noise)
    truth = np.array([1.0, 0.1])
    lsq = ff.least_squares(exp_fit, jnp.zeros(2), (x, y), method="trf")
    for loss in LOSSES[1:]:
        res = ff.least_squares(exp_fit, jnp.zeros(2), (x, y), method="trf", loss=loss, f_scale=noise)
        ref = scipy_trf(exp_fit, np.zeros(2), (x, y), loss=loss, f_scale=noise)
        assert res.success and np.max(np.abs(res.grad)) < 1e-2
        assert np.linalg.norm(res.params - truth) < np.linalg.norm(lsq.params - truth)
        np.testing.assert_allclose(res.cost, ref.cost, rtol=1e-7)
        np.testing.assert_allclose(res.params, ref.x, rtol=1e-4, atol=1e-6)


def test_gh_18793_and_19351(x64):
    """A start near the solution with a bound at 0 and gtol 1e-15: converged by gtol, and
    the scaled gradient really is that small."""
    res = ff.least_squares(lambda x: (x - 1e-12) ** 2, jnp.array([1.1e-12]), method="trf", gtol=1e-15, bounds=(0, np.inf))
    assert res.status == ff.Status.GTOL
    assert optimality(res.params, res.grad, 0.0, np.inf) < 1e-15


GH_19103_Y = np.array(
    [0.0] * 66 + [1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 2, 1, 0, 3, 1, 6, 5, 0, 0, 2, 8, 4, 4,
                  6, 9, 7, 2, 7, 8, 2, 13, 9, 8, 11, 10, 13, 14, 19, 11, 15, 18, 26, 19, 32, 29, 28, 36, 32, 35, 36,
                  43, 52, 32, 58, 56, 52, 67, 53, 72, 88, 77, 95, 94, 84, 86, 101, 107, 108, 118, 96, 115, 138, 137]
)  # fmt: skip


def exponential_wrapped(p, x, y):
    return p[0] * jnp.exp(p[1] * (x - p[2])) - y


def test_gh_19103_start_on_a_bound(x64):
    x = np.arange(GH_19103_Y.size) * 0.1
    bounds = ((0.01, 0, 0), (np.inf, 10, 20.9))
    x0 = np.array([0.01, 1.0, 5.0])  # the first parameter on its lower bound
    res = ff.least_squares(exponential_wrapped, jnp.asarray(x0), (x, GH_19103_Y), method="trf", bounds=bounds)
    ref = scipy_trf(exponential_wrapped, x0, (x, GH_19103_Y), bounds=bounds)
    assert res.success and ref.success
    np.testing.assert_allclose(res.cost, ref.cost, rtol=1e-8)


def test_float32_linear_regression():
    """scipy's gh-12991 in float32: the straight-line fit, against its closed form."""
    rng = np.random.default_rng(1978)
    x = np.linspace(0, 1, 100, dtype=np.float32)
    y = rng.random(size=100, dtype=np.float32)
    res = ff.least_squares(lambda p, x, y: p[0] + p[1] * x - y, jnp.array([-1.0, -1.0], jnp.float32), (x, y), method="trf")
    exact = np.linalg.lstsq(np.stack([np.ones(100), x], 1).astype(float), y.astype(float), rcond=None)[0]
    assert res.params.dtype == jnp.float32 and res.success and int(res.n_fev) > 2
    np.testing.assert_allclose(res.params, exact, atol=1e-5)


# ------------------------------------------------------------- NIST StRD


RUNS = [(name, start) for name in nist.NAMES for start in (1, 2)]
FAST = [("Misra1a", 1), ("Chwirut2", 1), ("DanWood", 1), ("Thurber", 2), ("BoxBOD", 1), ("Rat43", 2)]


@functools.cache
def _nist_lre(name, start):
    problem = nist.load(name)
    x0 = problem.start1 if start == 1 else problem.start2
    with jax.enable_x64(True):
        res = ff.least_squares(problem.residual(), jnp.asarray(x0), (problem.x, problem.y), method="trf")
        return nist.lre(np.asarray(res.params), problem.certified)


@pytest.mark.parametrize("name,start", FAST, ids=[f"{n}-start{s}" for n, s in FAST])
def test_nist_default_settings_reach_lre_4(name, start):
    assert _nist_lre(name, start) >= 4


@pytest.mark.slow
@pytest.mark.parametrize("name,start", RUNS, ids=[f"{n}-start{s}" for n, s in RUNS])
def test_nist_all_default_settings_reach_lre_4(name, start):
    assert _nist_lre(name, start) >= 4


@pytest.mark.parametrize("name,start", [("ENSO", 1), ("ENSO", 2), ("MGH09", 2)])
def test_settle_false_is_scipys_ftol_test(x64, name, start):
    """Without the settled-parameters requirement (and the acceleration and secant) trf is scipy's
    trf evaluation for evaluation: both stop by ftol with 3 correct digits on NIST's
    ENSO and MGH09, where the default (settle=True) goes on to LRE >= 4."""
    problem = nist.load(name)
    x0 = jnp.asarray(problem.start1 if start == 1 else problem.start2)
    fun = jax.jit(lambda p: problem.residual()(p, problem.x, problem.y))
    jac = jax.jit(jax.jacfwd(fun))
    ref = so.least_squares(lambda p: np.asarray(fun(p)), np.asarray(x0), jac=lambda p: np.asarray(jac(p)), method="trf")
    plain = ff.least_squares(problem.residual(), x0, (problem.x, problem.y), method="trf", acceleration=False, secant=False, settle=False)
    assert ref.status == 2 and int(plain.status) == ff.Status.FTOL and int(plain.n_fev) == ref.nfev
    np.testing.assert_allclose(plain.params, ref.x, rtol=1e-5)
    assert nist.lre(ref.x, problem.certified) < 4
    settled = ff.least_squares(problem.residual(), x0, (problem.x, problem.y), method="trf", acceleration=False, secant=False)
    assert settled.success and nist.lre(np.asarray(settled.params), problem.certified) >= 4


@pytest.mark.parametrize("name", ["MGH17", "Bennett5"])
def test_curved_valleys_need_the_acceleration(x64, name):
    """From start 1, MGH17 and Bennett5 cross a curved valley (MGH17: b2 ≈ −b3 from
    ±100 to ∓2, b4 ≈ b5): scipy's trf, and fitfleet's without the acceleration (nor the secant), crawl at a
    ratio near 0.6 with a constant radius and run out of budget (scipy: 991 and 340
    evaluations, Bennett5 at LRE 3.8); with it both reach the certified values."""
    problem = nist.load(name)
    fit = lambda **o: ff.least_squares(problem.residual(), jnp.asarray(problem.start1), (problem.x, problem.y), method="trf", **o)  # noqa: E731
    plain, fast = fit(acceleration=False, secant=False), fit()
    assert plain.status == ff.Status.MAX_STEPS
    assert fast.success and nist.lre(np.asarray(fast.params), problem.certified) >= 4
    assert int(fast.n_steps) < int(plain.n_steps) // 2


# ------------------------------------------------ scipy's robust-regression example


def robust_example(seed):
    """scipy's ``least_squares`` docstring example: y = a + b·exp(c·t), a, b, c = 0.5, 2, −1,
    15 points on [0, 10], noise 0.1, three points with ten times the noise."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 10, 15)
    error = 0.1 * rng.standard_normal(t.size)
    error[rng.integers(0, t.size, 3)] *= 10
    return t, 0.5 + 2.0 * np.exp(-t) + error


def exp_offset(x, t, y):
    return x[0] + x[1] * jnp.exp(x[2] * t) - y


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("loss", LOSSES[1:])
def test_robust_regression_example_from_ones(x64, loss, seed):
    """From x0 = ones (c = +1: the exponential grows, the outliers dominate) every robust
    loss converges to scipy's optimum, as scipy's trf does, in as many evaluations."""
    t, y = robust_example(seed)
    res = ff.least_squares(exp_offset, jnp.ones(3), (t, y), method="trf", loss=loss, f_scale=0.1)
    ref = scipy_trf(exp_offset, np.ones(3), (t, y), loss=loss, f_scale=0.1)
    assert res.success and ref.success
    np.testing.assert_allclose(res.cost, ref.cost, rtol=1e-6)
    np.testing.assert_allclose(res.params, ref.x, rtol=1e-3)
    assert float(res.params[2]) < 0
    assert int(res.n_fev) <= ref.nfev + 2


# ------------------------------------------------------------ a damped cosine


def damped_cosine(p, t, y):
    return p[0] * jnp.exp(-p[1] * t) * jnp.cos(p[2] * t + p[3]) - y


def cosine_data(seed):
    rng = np.random.default_rng(seed)
    truth = np.array([rng.uniform(1, 3), rng.uniform(0.1, 0.5), rng.uniform(0.5, 3), rng.uniform(-1, 1)])
    t = np.linspace(0, 10, 60)
    return truth, t, np.asarray(damped_cosine(truth, t, 0.0)) + 0.1 * rng.standard_normal(t.size)


@pytest.mark.parametrize("seed", [0, 1])
def test_damped_cosine_from_zero_amplitude(x64, seed):
    """From amplitude, rate and phase 0 (frequency 1) trf reaches the optimum a fit from
    the truth finds."""
    truth, t, y = cosine_data(seed)
    best = ff.least_squares(damped_cosine, jnp.asarray(truth), (t, y), method="trf")
    res = ff.least_squares(damped_cosine, jnp.array([0.0, 0.0, 1.0, 0.0]), (t, y), method="trf")
    assert res.success
    np.testing.assert_allclose(res.cost, best.cost, rtol=1e-8)


def test_damped_cosine_from_zero_is_a_saddle(x64):
    """From x0 = 0 the exact Jacobian's frequency and phase columns vanish
    (∂r/∂w = −a·t·e^(−bt)·sin(wt + φ) = 0 at w = φ = 0), and stay 0 along the fit: every
    method with exact derivatives stays on w = φ = 0, scipy's trf too.  (scipy's default
    finite differences leave O(h) in those columns, which is how it escapes.)"""
    _, t, y = cosine_data(0)
    res = ff.least_squares(damped_cosine, jnp.zeros(4), (t, y), method="trf")
    ref = scipy_trf(damped_cosine, np.zeros(4), (t, y))
    np.testing.assert_array_equal(np.asarray(res.params)[2:], 0.0)
    np.testing.assert_allclose(res.cost, ref.cost, rtol=1e-6)


# --------------------------------------------------- batches, jit, precision


def decay(p, t, y):
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y


T = np.linspace(0.0, 5.0, 30)


def decay_data(n, seed, dtype):
    rng = np.random.default_rng(seed)
    truth = np.stack([rng.uniform(1, 3, n), rng.uniform(0.3, 2, n), rng.uniform(-0.5, 0.5, n)], 1)
    y = truth[:, :1] * np.exp(-truth[:, 1:2] * T) + truth[:, 2:] + 0.02 * rng.standard_normal((n, T.size))
    return truth.astype(dtype), y.astype(dtype)


BOX = (np.array([0.0, 0.0, -0.2]), np.array([10.0, 10.0, 0.2]))


def test_vmap_and_fit_batch_equal_the_loop(dtype):
    truth, y = decay_data(6, 0, dtype)
    x0 = np.clip(truth * 2.0, BOX[0] + 0.01, BOX[1] - 0.01).astype(dtype)
    t = jnp.asarray(T, dtype)
    opts = dict(method="trf", bounds=BOX)
    one = [ff.least_squares(decay, jnp.asarray(x0[i]), (t, jnp.asarray(y[i])), **opts) for i in range(6)]
    vm = jax.jit(jax.vmap(lambda p, yy: ff.least_squares(decay, p, (t, yy), **opts)))(jnp.asarray(x0), jnp.asarray(y))
    fb = ff.fit_batch(decay, x0, (t, y), shared_args=(0,), **opts)
    # A float32 cost resolves the parameters to about √eps (3e-4): a fit that ends a
    # round-off step sooner (ftol counts such a step as settled) moves that much.
    tol = 1e-3 if dtype == "float32" else 1e-10
    for i, r in enumerate(one):
        assert r.success and r.params.dtype == jnp.dtype(dtype)
        for batch in (vm, fb):
            np.testing.assert_allclose(batch.params[i], r.params, rtol=tol, atol=tol)
            assert bool(batch.success[i])
            if dtype == "float64":  # in float32 round-off may end a fit a step sooner or later, or by another test
                assert int(batch.status[i]) == int(r.status) and int(batch.n_steps[i]) == int(r.n_steps)
        assert np.all((np.asarray(r.params) >= BOX[0]) & (np.asarray(r.params) <= BOX[1]))
        if dtype == "float64":
            ref = scipy_trf(decay, x0[i], (T, y[i]), bounds=BOX)
            np.testing.assert_allclose(r.cost, ref.cost, rtol=1e-7)


def test_no_recompile_on_new_data_or_options(x64):
    truth, y = decay_data(2, 1, "float64")
    fit = lambda yy, xs, ftol: ff.least_squares(decay, jnp.array([1.0, 1.0, 0.0]), (T, yy), method="trf", bounds=BOX, x_scale=xs, ftol=ftol)  # noqa: E731
    fit(y[0], np.array([1.0, 1.0, 1.0]), 1e-8)
    with count_compilations() as names:
        res = fit(y[1], np.array([2.0, 1.0, 0.5]), 1e-9)
    assert res.success and names == [], names
    batch = lambda yy: ff.fit_batch(decay, np.tile([1.0, 1.0, 0.0], (2, 1)), (T, yy), shared_args=(0,), method="trf", bounds=BOX)  # noqa: E731
    batch(y)
    with count_compilations() as names:
        batch(y[::-1].copy())
    assert names == [], names


def test_log_scale_on_top_of_bounds(x64):
    """A log-scaled parameter's bounds are bounds on log p; the optimum equals the one
    with plain bounds."""
    truth, y = decay_data(1, 2, "float64")
    bounds = (np.array([0.1, 0.05, -1.0]), np.array([10.0, 0.8 * truth[0, 1], 1.0]))  # the rate's bound active
    x0 = jnp.array([1.0, 0.5 * bounds[1][1], 0.0])
    logs = ff.least_squares(decay, x0, (T, y[0]), method="trf", bounds=bounds, log_scale=[True, True, False])
    plain = ff.least_squares(decay, x0, (T, y[0]), method="trf", bounds=bounds)
    assert logs.success and plain.success
    np.testing.assert_allclose(logs.params, plain.params, rtol=1e-6)
    assert float(logs.params[1]) <= bounds[1][1]


# ------------------------------------------------------------ status codes


def test_status_codes(x64):
    t, y = T, decay_data(1, 3, "float64")[1][0]
    bad = ff.least_squares(decay, jnp.array([1.0, np.nan, 0.0]), (t, y), method="trf")
    assert bad.status == ff.Status.NONFINITE_RESIDUAL and int(bad.n_steps) == 0
    short = ff.least_squares(decay, jnp.array([1.0, 5.0, 0.0]), (t, y), method="trf", max_steps=2)
    assert short.status == ff.Status.MAX_STEPS and int(short.n_fev) == 3
    assert int(ff.least_squares(decay, jnp.ones(3), (t, y), method="trf", max_nfev=4).n_fev) == 4

    # A trial point where the residual is not finite is rejected, and the fit goes on.
    def blows_up(p, t, y):
        return jnp.where(p[1] < -0.5, jnp.nan, 1.0) * decay(p, t, y)

    res = ff.least_squares(blows_up, jnp.array([1.0, 0.0, 0.0]), (t, y), method="trf")
    ref = ff.least_squares(decay, jnp.array([1.0, 0.0, 0.0]), (t, y), method="trf")
    assert res.success and np.isfinite(float(res.cost))
    np.testing.assert_allclose(res.cost, ref.cost, rtol=1e-8)


@pytest.mark.parametrize(
    "options, error, text",
    [
        (dict(method="trf", x_scale=-1.0), ValueError, "`x_scale` must be finite and positive"),
        (dict(method="trf", x_scale=np.ones(4)), ValueError, "one entry per flat parameter"),
        (dict(method="trf", x_scale="auto"), ValueError, "`x_scale` must be 'jac'"),
        (dict(method="adam", x_scale=np.ones(3)), ValueError, "applies to methods"),
        (dict(method="trf", max_nfev=0), ValueError, "`max_nfev` must be between 1"),
        (dict(method="trf", max_nfev=5, max_steps=4), ValueError, "not both"),
        (dict(method="trf", acceleration=1.5), TypeError, "`acceleration` must be True, False, None or the step"),
        (dict(method="trf", acceleration=-1), ValueError, "`acceleration` must be between 0"),
        (dict(method="trf", secant="yes"), TypeError, "`secant` must be True, False or None"),
    ],
)
def test_bad_options_raise_before_compiling(x64, options, error, text):
    x0, data = jnp.ones(3), (T, np.zeros(T.size))  # made before counting
    with count_compilations() as names, pytest.raises(error, match=text):
        ff.least_squares(decay, x0, data, **options)
    assert names == []


# ------------------------------------------------- derivatives: the KKT conditions


def _fit_params(y, bounds, adjoint="implicit"):
    return ff.least_squares(decay, jnp.array([1.5, 0.2, 0.0]), (T, y), method="trf", bounds=bounds,
                            ftol=1e-14, xtol=1e-14, gtol=1e-14, adjoint=adjoint).params  # fmt: skip


def test_implicit_derivative_with_an_active_bound(x64):
    """d p*/d y against central differences of refits: the parameter held by its bound
    has derivative 0, the free ones the derivative of the fit with that parameter fixed."""
    truth, y = decay_data(1, 4, "float64")
    y = y[0]
    bounds = (np.array([0.0, 0.0, -1.0]), np.array([10.0, 0.8 * truth[0, 1], 1.0]))
    p = _fit_params(jnp.asarray(y), bounds)
    assert np.isclose(float(p[1]), bounds[1][1], rtol=1e-8)  # the rate is on its bound
    direction = np.random.default_rng(0).standard_normal(T.size)
    _, tangent = jax.jvp(lambda yy: _fit_params(yy, bounds), (jnp.asarray(y),), (jnp.asarray(direction),))
    h = 1e-5
    fd = (np.asarray(_fit_params(jnp.asarray(y + h * direction), bounds)) - np.asarray(_fit_params(jnp.asarray(y - h * direction), bounds))) / (2 * h)
    assert float(tangent[1]) == 0.0
    np.testing.assert_allclose(tangent, fd, rtol=1e-5, atol=1e-7)
    grad = jax.grad(lambda yy: _fit_params(yy, bounds)[0])(jnp.asarray(y))  # reverse mode agrees
    np.testing.assert_allclose(grad @ direction, tangent[0], rtol=1e-8)


def test_implicit_derivative_inside_the_box(x64):
    truth, y = decay_data(1, 5, "float64")
    y = y[0]
    bounds = (np.array([0.0, 0.0, -1.0]), np.array([10.0, 10.0, 1.0]))
    direction = np.random.default_rng(1).standard_normal(T.size)
    _, tangent = jax.jvp(lambda yy: _fit_params(yy, bounds), (jnp.asarray(y),), (jnp.asarray(direction),))
    unbounded = jax.jvp(lambda yy: _fit_params(yy, None), (jnp.asarray(y),), (jnp.asarray(direction),))[1]
    np.testing.assert_allclose(tangent, unbounded, rtol=1e-8)
    h = 1e-5
    fd = (np.asarray(_fit_params(jnp.asarray(y + h * direction), bounds)) - np.asarray(_fit_params(jnp.asarray(y - h * direction), bounds))) / (2 * h)
    np.testing.assert_allclose(tangent, fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bounds", [pytest.param(None, marks=pytest.mark.slow), BOX], ids=["unbounded", "box"])
def test_unrolled_derivative_equals_the_implicit_one(x64, bounds):
    truth, y = decay_data(1, 6, "float64")
    fit = lambda yy, adjoint: _fit_params(yy, bounds, adjoint)[0]  # noqa: E731
    implicit = jax.grad(lambda yy: fit(yy, "implicit"))(jnp.asarray(y[0]))
    unrolled = jax.grad(lambda yy: fit(yy, "unroll"))(jnp.asarray(y[0]))
    np.testing.assert_allclose(unrolled, implicit, rtol=1e-6, atol=1e-9)


def broyden_shifted(x, c):
    return broyden_tridiagonal(x) - c


def test_more_than_eight_parameters_batch_equals_loop_and_scipy(x64):
    """n > 8 takes scipy's SVD solver (the Jacobian is carried in fit_batch's loop too)."""
    n = 10
    x0, lb, ub = broyden_problem(n)
    x0 = np.clip(x0, lb + 1e-3, ub - 1e-3)
    shifts = np.random.default_rng(7).uniform(-0.3, 0.3, (3, n))
    opts = dict(method="trf", bounds=(lb, ub))
    fb = ff.fit_batch(broyden_shifted, np.tile(x0, (3, 1)), (shifts,), **opts)
    with ff.engine_settings(path="accelerator"):  # a fixed number of Jacobi sweeps
        fixed = ff.fit_batch(broyden_shifted, np.tile(x0, (3, 1)), (shifts,), **opts)
    np.testing.assert_allclose(fixed.params, fb.params, rtol=1e-10, atol=1e-12)
    for i, c in enumerate(shifts):
        one = ff.least_squares(broyden_shifted, jnp.asarray(x0), (c,), **opts)
        ref = scipy_trf(broyden_shifted, x0, (c,), bounds=(lb, ub))
        np.testing.assert_allclose(fb.params[i], one.params, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(one.params, ref.x, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(one.cost, ref.cost, rtol=1e-6, atol=1e-14)


def test_damping_search_on_cpu_equals_the_unrolled_one(x64):
    """On CPU a block's damping search ends once every fit's has converged; the
    accelerator path runs all its iterations unrolled.  A converged search keeps its
    iterate, so both give the same fits: Rat43 from far starts (damped steps, the
    acceleration), and with bounds (the reflective step)."""
    prob = nist.load("Rat43")
    lo, hi = prob.start1 / 10, prob.start1 * 10
    starts = np.exp(np.random.default_rng(5).uniform(np.log(lo), np.log(hi), (24, 4)))
    fun, args = prob.residual(), (jnp.asarray(prob.x), jnp.asarray(prob.y))
    for opts in (dict(method="trf"), dict(method="trf", bounds=(lo / 10, hi * 10))):
        cpu = ff.fit_batch(fun, starts, args, shared_args=(0, 1), **opts)
        with ff.engine_settings(path="accelerator"):
            unrolled = ff.fit_batch(fun, starts, args, shared_args=(0, 1), **opts)
        assert int(jnp.max(cpu.n_steps)) > 20  # hard fits: the trust region binds
        np.testing.assert_array_equal(cpu.status, unrolled.status)
        np.testing.assert_array_equal(cpu.n_steps, unrolled.n_steps)
        np.testing.assert_allclose(cpu.params, unrolled.params, rtol=1e-9, atol=1e-12)


def _svd_cases():
    rng = np.random.default_rng(3)
    t = np.linspace(-8, -3, 82)
    independent = rng.normal(size=(40, 4))
    return {
        "random 57x9": rng.normal(size=(57, 9)),
        "Filip's Vandermonde 82x11": np.vander(t, 11, increasing=True),
        "columns 1e-8..1e8": rng.normal(size=(30, 12)) * np.logspace(-8, 8, 12),
        "a zero column": np.c_[rng.normal(size=(20, 5)), np.zeros(20), rng.normal(size=(20, 3))],
        "dependent columns": np.c_[independent, independent @ rng.normal(size=(4, 6))],
        "square 3x3": rng.normal(size=(3, 3)),
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(_svd_cases()))
def test_jacobi_svd_agrees_with_lapack(dtype, case):
    """trf's written-out SVD (``_linalg.svd_jacobi``): singular values as LAPACK's to
    round-off of the largest, ``V`` orthogonal, ``A V = W`` with orthogonal columns of
    norms ``s``; the same under ``vmap``."""
    from fitfleet._linalg import JACOBI_FIXED_SWEEPS, svd_jacobi

    A = _svd_cases()[case]
    with jax.enable_x64(dtype == np.float64):
        Aj = jnp.asarray(A, dtype)
        s, V, W = (np.asarray(a, np.float64) for a in jax.jit(svd_jacobi)(Aj))
        batched = jax.jit(jax.vmap(svd_jacobi))(jnp.stack([Aj, 2 * Aj]))[0]
    eps, n = np.finfo(dtype).eps, A.shape[1]
    reference = np.linalg.svd(np.asarray(Aj, np.float64), compute_uv=False)
    np.testing.assert_allclose(np.sort(s)[::-1], reference, rtol=0, atol=30 * eps * reference[0])
    np.testing.assert_allclose(V.T @ V, np.eye(n), rtol=0, atol=30 * n * eps)
    np.testing.assert_allclose(np.asarray(Aj, np.float64) @ V, W, rtol=0, atol=30 * eps * reference[0])
    np.testing.assert_allclose(W.T @ W, np.diag(s**2), rtol=0, atol=30 * n * eps * reference[0] ** 2)
    np.testing.assert_allclose(np.asarray(batched[1], np.float64), 2 * s, rtol=30 * eps, atol=60 * eps * reference[0])
    with jax.enable_x64(dtype == np.float64):
        fixed = np.asarray(jax.jit(svd_jacobi, static_argnums=1)(Aj, JACOBI_FIXED_SWEEPS)[0], np.float64)
    np.testing.assert_allclose(fixed, s, rtol=0, atol=30 * eps * reference[0])


def test_the_svd_step_calls_no_lapack_kernel():
    """Up to ``JACOBI_MAX`` parameters trf's step has no LAPACK call, whose batched
    kernels jaxlib may split over its thread pool (which would make fit_batch run its
    parts one after the other, ``_xla.lapack_split_ratio``)."""
    from fitfleet._linalg import JACOBI_MAX
    from fitfleet._solvers._trust_region import trust_region_step_svd

    def step(J, r):
        return trust_region_step_svd(J, jnp.zeros(J.shape[1]), r, 1.0, 0.0)[1]

    for n, calls_lapack in [(10, False), (JACOBI_MAX, False), (JACOBI_MAX + 1, True)]:
        text = jax.jit(jax.vmap(step)).lower(jnp.ones((64, 60, n)), jnp.ones((64, 60))).as_text()
        assert ("@lapack_" in text) == calls_lapack, n


# --------------------------------------------------------------------------- x_scale in lm and gn


def exp_decay(p, t, y):
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y


@pytest.mark.parametrize("method", ["lm", "gn"])
def test_x_scale_numbers_are_units(x64, method):
    """x_scale = c is a change of units: fitting p with x_scale=c walks the same path as
    fitting q = p/c (the model evaluated at c·q) with x_scale=1, iterate by iterate."""
    t = jnp.linspace(0, 4, 30)
    y = 3.0 * jnp.exp(-1.3 * t) + 0.5 + 0.01 * jnp.sin(7 * t)
    c = jnp.array([4.0, 0.5, 2.0])
    p0 = jnp.array([40.0, 8.0, 20.0])  # |p0| >= c and |p0/c| >= 1: the first radius agrees too
    a = ff.least_squares(exp_decay, p0, (t, y), method=method, x_scale=c, history=True)
    b = ff.least_squares(lambda q, t, y: exp_decay(c * q, t, y), p0 / c, (t, y), method=method, x_scale=1.0, history=True)
    assert a.success and b.success and int(a.n_steps) == int(b.n_steps)
    n = int(a.history.length)
    np.testing.assert_allclose(a.history.params[:n], c * b.history.params[:n], rtol=1e-9)
    # ... and not the path of the Jacobian's own scaling (lm; gn's steps never depend on it)
    j = ff.least_squares(exp_decay, p0, (t, y), method=method, history=True)
    if method == "lm":
        k = min(n, int(j.history.length))
        assert int(j.n_steps) != int(a.n_steps) or not np.allclose(j.history.params[:k], a.history.params[:k], rtol=1e-6)
    np.testing.assert_allclose(j.params, a.params, rtol=1e-6)


def test_lm_x_scale_agrees_with_scipy_lm(x64):
    t = np.linspace(0, 4, 30)
    y = 3.0 * np.exp(-1.3 * t) + 0.5 + 0.01 * np.sin(7 * t)
    c = np.array([4.0, 0.5, 2.0])
    res = ff.least_squares(exp_decay, jnp.array([1.0, 1.0, 0.0]), (jnp.asarray(t), jnp.asarray(y)), method="lm", x_scale=c)
    ref = so.least_squares(lambda p: np.asarray(exp_decay(p, t, y)), [1.0, 1.0, 0.0], method="lm", x_scale=c)
    assert res.success and ref.success
    np.testing.assert_allclose(res.params, ref.x, rtol=1e-6)


# ------------------------------------------------ the secant model


def test_secant_update_meets_the_secant_equation():
    """Dennis, Gay & Welsch's update: symmetric, ``S⁺s = y − J₊ᵀJ₊s`` exactly, and only
    NL2SOL's sizing (``S`` times at most 1) where ``yᵀs <= 0``."""
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        A = rng.standard_normal((4, 4))
        S, jtj = jnp.asarray(A + A.T), jnp.asarray(A @ A.T)
        s, y = jnp.asarray(rng.standard_normal(4)), jnp.asarray(rng.standard_normal(4))
        y = jnp.where(y @ s > 0, y, -y)
        new = _secant_update(S, s, y, jtj)
        np.testing.assert_allclose(new, new.T, atol=1e-12)
        np.testing.assert_allclose(new @ s, y - jtj @ s, rtol=1e-10, atol=1e-12)
        sized = _secant_update(S, s, -y, jtj)
        factor = float(sized[0, 0] / S[0, 0])
        assert 0 <= factor <= 1
        np.testing.assert_allclose(sized, factor * S, rtol=1e-12)


def test_secant_model_walks_a_large_residual_valley():
    """Rat42 (a logistic curve) from (3.3, 1.9, 0.0047): the curve starts nearly flat, the
    residuals are large, and Gauss-Newton steps zig-zag across the valley: scipy's trf and
    fitfleet's without the secant model run out of evaluations with a cost above 1,000.
    With it the fit reaches NIST's certified values, in float64 and float32."""
    problem = nist.load("Rat42")
    x0 = np.array([3.3, 1.9, 0.0047])
    with jax.enable_x64(True):
        fun = jax.jit(lambda p: problem.residual()(p, problem.x, problem.y))
        jac = jax.jit(jax.jacfwd(fun))
        ref = so.least_squares(lambda p: np.asarray(fun(p)), x0, jac=lambda p: np.asarray(jac(p)), method="trf")
        assert ref.status == 0 and ref.cost > 1000
        fit = lambda **o: ff.least_squares(problem.residual(), jnp.asarray(x0), (problem.x, problem.y), method="trf", **o)  # noqa: E731
        plain, secant = fit(secant=False), fit()
        assert plain.status == ff.Status.MAX_STEPS and float(plain.cost) > 1000
        assert secant.success and int(secant.n_steps) < 100
        assert nist.lre(np.asarray(secant.params), problem.certified) >= 4
    single = ff.least_squares(problem.residual(), jnp.asarray(x0, jnp.float32), (jnp.asarray(problem.x, jnp.float32), jnp.asarray(problem.y, jnp.float32)), method="trf")
    assert single.success
    np.testing.assert_allclose(single.params, problem.certified, rtol=1e-4)


@pytest.mark.parametrize("n_extra", [0, 7], ids=["normal matrix", "SVD path (n > 8)"])
def test_secant_step_is_the_augmented_models_newton_step(n_extra):
    """A step from a state whose model is ``JᵀJ + S`` (``augmented``) is that model's
    Newton step ``−(JᵀJ + S)⁻¹g`` when it fits in the radius, on both of trf's linear
    algebra paths (n > 8 factorises the n×n model instead of taking an SVD of J)."""
    import equinox as eqx

    from fitfleet import _problem
    from fitfleet._setup import prepare

    n = 3 + n_extra
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        A, b = jnp.asarray(rng.standard_normal((2 * n, n))), jnp.asarray(rng.standard_normal(2 * n))
        fun = lambda p, A, b: A @ p - b  # noqa: E731
        x0 = jnp.zeros(n)
        setup = prepare(fun, x0, (A, b), dict(method="trf", acceleration=False, secant=True))
        problem, u0 = _problem.make_problem(fun, setup.spec)
        solver = setup.solver
        state = solver.init(problem, u0)
        M = rng.standard_normal((n, n))
        S = jnp.asarray(M @ M.T)  # positive definite: the augmented step lowers the cost
        state = eqx.tree_at(lambda s: (s.inner.secant, s.inner.augmented, s.inner.radius), state, (S, jnp.asarray(True), jnp.asarray(1e6)))
        new = solver.step(problem, state)
        expected = -np.linalg.solve(np.asarray(A.T @ A + S), np.asarray(state.grad))
        np.testing.assert_allclose(new.params - state.params, expected, rtol=1e-8, atol=1e-12)
        plain = solver.step(problem, eqx.tree_at(lambda s: s.inner.augmented, state, jnp.asarray(False)))
        np.testing.assert_allclose(plain.params, np.linalg.lstsq(np.asarray(A), np.asarray(b), rcond=None)[0], rtol=1e-8)


def test_secant_model_falls_back_to_gauss_newton_after_a_failed_step():
    """A Hill curve fitted with ``bounds=(0, inf)`` from (4.37, 0, 0), on the bound, with
    ``secant=True``: at K = 0 the residual's curvature is singular, the secant estimate
    learns entries of ~1e15, and its steps fail.  A failed step of the augmented model
    hands the next one to Gauss-Newton (else the radius shrank to nothing and the fit
    stopped by xtol at cost 8.4): the fit reaches scipy's trf optimum."""
    g = np.random.default_rng(1300)
    t = np.linspace(0.1, 6.0, 25)
    hill = lambda p, t: p[0] * t ** p[2] / (p[1] ** p[2] + t ** p[2])  # noqa: E731
    truth = np.array([g.uniform(0.5, 3), g.uniform(0.5, 4), g.uniform(0.5, 4)])
    y = hill(truth, t) + 0.01 * g.standard_normal(t.size)
    x0 = np.where(g.random(3) < 0.5, 0.0, truth * 10 ** g.uniform(-1, 1, 3))
    np.testing.assert_allclose(x0, [4.36985, 0, 0], atol=1e-5)
    bounds = (np.zeros(3), np.full(3, np.inf))
    with jax.enable_x64(True):
        residual = lambda p, t, y: hill(p, t) - y  # noqa: E731
        fit = ff.least_squares(residual, jnp.asarray(x0), (jnp.asarray(t), jnp.asarray(y)), method="trf", bounds=bounds, secant=True)
        ref = scipy_trf(residual, np.clip(x0, 1e-10, None), (t, y), bounds=bounds)
        assert fit.success and ref.success
        np.testing.assert_allclose(float(fit.cost), ref.cost, rtol=1e-6)


def test_a_walk_at_the_costs_round_off_stops_by_ftol(x64):
    """From this start Rat43's trf fit runs into a flat valley (b3, b4 → −∞, a step
    function) where the cost is constant to its round-off while the parameters keep
    moving.  A step that small for the cost counts as settled (``_common``), so ftol ends
    the fit where scipy's trf ends it (it used to walk along the valley until max_steps)."""
    problem = nist.load("Rat43")
    x0 = jnp.asarray([632.844222, 0.707074058, 10.8422615, 0.186058116])
    args = (jnp.asarray(problem.x), jnp.asarray(problem.y))
    res = ff.least_squares(problem.residual(), x0, args, method="trf")
    ref = scipy_trf(problem.residual(), x0, args, method="trf")
    assert ref.status == 2 and int(res.status) == ff.Status.FTOL and int(res.n_steps) < 100
    np.testing.assert_allclose(float(res.cost), ref.cost, rtol=1e-8)


@pytest.mark.parametrize("factor", [1, 100])
def test_acceleration_below_round_off_keeps_quadratic_convergence(x64, factor):
    """Brown's badly scaled function has a zero residual at (1e6, 2e-6).  Near it the
    one-sided difference behind the acceleration is round-off; added to the step it
    stopped the fit by xtol at cost ~1e-10.  Dropped there, the Gauss-Newton steps
    converge quadratically to round-off, as scipy's trf does."""
    problem = mgh.get("Brown badly scaled")
    x0 = jnp.asarray(problem.start(factor))
    res = ff.least_squares(problem.fun, x0, method="trf")
    ref = so.least_squares(problem.fun, np.asarray(x0), jac=jax.jacfwd(problem.fun), method="trf")
    assert res.success and ref.cost < 1e-20
    assert float(res.cost) < 1e-20


@pytest.mark.parametrize("x0", [[14.784, 3.3496, 0.019723], [20.803, 3.8155, 0.0085052]])
def test_secant_model_is_kept_along_a_curved_valley(x64, x0):
    """From these starts Rat42's fit follows a long, narrow, curved valley (b2 from −12
    to 2.6).  The augmented model predicts its steps to a few per cent, Gauss-Newton's
    fails them; switching back after each good augmented step (the other model having
    erred a little less on it) rejected every other step, and the fit ran out of steps
    at cost ~2300 (scipy's trf, too, runs out of evaluations there).  NL2SOL's rule keeps
    the model after a step that grew the radius, and switches only for a clearly better
    prediction: the fit reaches NIST's certified values."""
    problem = nist.load("Rat42")
    res = ff.least_squares(problem.residual(), jnp.asarray(x0), (problem.x, problem.y), method="trf")
    ref = scipy_trf(problem.residual(), x0, (problem.x, problem.y), method="trf")
    assert res.success and int(res.n_steps) < 150
    assert nist.lre(np.asarray(res.params), problem.certified) >= 6 and ref.cost > 100 * float(res.cost)


# ------------------------------------------- the two-dimensional subspace step


@pytest.mark.parametrize("n,indefinite", [(3, False), (6, False), (12, False), (6, True)])
def test_subspace_step_is_the_planes_boundary_minimum(n, indefinite):
    """``subspace_step`` against brute force: the model's minimum over a fine grid of the
    circle of radius Δ in span{Newton step, g}, with the plane built by numpy; the Newton
    step where it fits (the full step passed through)."""
    from fitfleet._solvers._trust_region import subspace_step

    rng = np.random.default_rng(n + 10 * indefinite)
    with jax.enable_x64(True):
        for _ in range(5):
            J = rng.normal(size=(n + 4, n)) * np.logspace(0, 3, n)
            A = J.T @ J + (np.diag(rng.normal(size=n)) * 50 if indefinite else 0)
            g = rng.normal(size=n) * 10
            newton = -np.linalg.lstsq(A, g, rcond=None)[0] if not indefinite else None
            if indefinite:  # the Newton step of A's positive definite part, as solve_semidefinite takes it
                from fitfleet._linalg import solve_semidefinite

                s = np.sqrt(np.abs(np.diag(A)))
                newton = np.asarray(solve_semidefinite(jnp.asarray(A / np.outer(s, s)), jnp.asarray(-g / s))) / s
            radius = 0.3 * np.linalg.norm(newton)
            marker = jnp.full(n, 7.0)
            p = np.asarray(subspace_step(jnp.asarray(A), jnp.asarray(g), jnp.asarray(radius), marker))
            u = newton / np.linalg.norm(newton)
            w = g - u * (u @ g)
            S = np.stack([u, w / np.linalg.norm(w)], axis=1)
            t = np.linspace(0, 2 * np.pi, 200_001)
            candidates = radius * (S @ np.stack([np.cos(t), np.sin(t)]))
            values = g @ candidates + 0.5 * np.einsum("it,ij,jt->t", candidates, A, candidates)
            model = g @ p + 0.5 * p @ A @ p
            assert np.linalg.norm(p) == pytest.approx(radius, rel=1e-10)
            assert model <= values.min() + 1e-9 * abs(values.min())
            assert np.linalg.norm(p - S @ (S.T @ p)) <= 1e-9 * radius  # in the plane
            inside = subspace_step(jnp.asarray(A), jnp.asarray(g), jnp.asarray(2 * np.linalg.norm(newton)), marker)
            np.testing.assert_array_equal(inside, marker)  # the full step (here a marker) where Newton's fits


@pytest.mark.parametrize("name,start", FAST, ids=[f"{n}-start{s}" for n, s in FAST])
def test_nist_with_the_subspace_step(x64, name, start):
    problem = nist.load(name)
    x0 = jnp.asarray(problem.start1 if start == 1 else problem.start2)
    res = ff.least_squares(problem.residual(), x0, (problem.x, problem.y), method="trf", subspace="2d")
    assert res.success and nist.lre(np.asarray(res.params), problem.certified) >= 4


def test_subspace_step_with_bounds_batch_equals_loop(x64):
    """With bounds (the reflective step on top of the plane's), in a batch as one by one,
    to the same bounded minimum as the full subproblem."""
    x0 = jnp.array([[-2.0, 0.2], [1.2, 0.4], [-1.5, -0.5], [0.8, -0.9]])
    bounds = (jnp.array([-3.0, -1.0]), jnp.array([1.5, 0.5]))
    fit = lambda x, **k: ff.least_squares(lambda p: fun_rosenbrock(p), x, bounds=bounds, method="trf", subspace="2d", **k)  # noqa: E731
    batch = ff.fit_batch(lambda p: fun_rosenbrock(p), x0, bounds=bounds, method="trf", subspace="2d")
    for i, x in enumerate(x0):
        one, full = fit(x), ff.least_squares(lambda p: fun_rosenbrock(p), x, bounds=bounds, method="trf")
        assert one.success and int(one.n_steps) == int(batch.n_steps[i])
        np.testing.assert_allclose(batch.params[i], one.params, rtol=1e-12)
        np.testing.assert_allclose(one.params, full.params, rtol=1e-6)


def test_subspace_must_be_full_or_2d():
    with pytest.raises(ValueError, match="subspace"):
        ff.least_squares(fun_rosenbrock, jnp.array([1.0, 2.0]), method="trf", subspace="3d")
