"""Weights (sigma), bounds / log_scale and robust losses of ``least_squares``, against
scipy's ``least_squares`` (``trf``) and ``curve_fit`` and against closed forms.

Residual functions live at module level, so each configuration compiles once and the
random instances reuse it (new data of the same shape never recompiles).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so

import fitfleet as ff

TIGHT = dict(ftol=1e-12, xtol=1e-12, gtol=1e-12)
SCIPY_TIGHT = dict(ftol=1e-15, xtol=1e-15, gtol=1e-15)
T = np.linspace(0.0, 5.0, 40)


def decay(p, t, y):
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y


def decay_np(p, t, y):
    return p[0] * np.exp(-p[1] * t) + p[2] - y


def decay_jac_np(p, t, y):
    e = np.exp(-p[1] * t)
    return np.stack([e, -p[0] * t * e, np.ones_like(t)], axis=1)


def decay_tree(p, t, y):
    return p["amp"] * jnp.exp(-p["rate"] * t) + p["offset"] - y


def sample(seed, noise=0.05):
    rng = np.random.default_rng(seed)
    truth = np.array([rng.uniform(1.0, 3.0), rng.uniform(0.5, 2.0), rng.uniform(-0.5, 0.5)])
    sigma = rng.uniform(0.02, 0.2, T.size)
    y = decay_np(truth, T, 0.0) + noise * rng.standard_normal(T.size) * sigma / 0.1
    return truth, y, sigma


def scipy_ls(y, x0, *, weight=1.0, **kw):
    """scipy's fit of ``decay`` to ``y`` (residual times ``weight``), exact Jacobian."""
    return so.least_squares(
        lambda p: weight * decay_np(p, T, y), x0, jac=lambda p: np.reshape(weight, (-1, 1)) * decay_jac_np(p, T, y),
        **SCIPY_TIGHT, **kw,
    )


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("seed", range(3))
def test_per_point_sigma_matches_scipy_curve_fit(x64, seed):
    truth, y, sigma = sample(seed)
    res = ff.least_squares(decay, jnp.asarray(truth), (jnp.asarray(T), jnp.asarray(y)), sigma=sigma, **TIGHT)
    assert res.success, res.message
    popt, _ = so.curve_fit(
        lambda t, a, k, c: decay_np([a, k, c], t, 0.0), T, y, p0=truth, sigma=sigma,
        jac=lambda t, a, k, c: decay_jac_np([a, k, c], t, 0.0), **SCIPY_TIGHT,
    )  # fmt: skip
    np.testing.assert_allclose(res.params, popt, rtol=1e-8)
    # The Result reports the whitened residual: cost = ½χ².
    chi2 = np.sum((decay_np(popt, T, y) / sigma) ** 2)
    np.testing.assert_allclose(2 * float(res.cost), chi2, rtol=1e-10)
    np.testing.assert_allclose(res.residual, decay_np(np.asarray(res.params), T, y) / sigma, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(res.jac, decay_jac_np(np.asarray(res.params), T, y) / sigma[:, None], rtol=1e-8)


def _ar1_covariance(sigma, rho):
    """A dense covariance: AR(1) correlation between neighbouring points."""
    idx = np.arange(sigma.size)
    return rho ** np.abs(idx[:, None] - idx[None, :]) * np.outer(sigma, sigma)


def test_covariance_sigma_matches_scipy_curve_fit(x64):
    truth, y, sigma = sample(3)
    cov = _ar1_covariance(sigma, 0.6)
    res = ff.least_squares(decay, jnp.asarray(truth), (jnp.asarray(T), jnp.asarray(y)), sigma=cov, **TIGHT)
    assert res.success, res.message
    popt, _ = so.curve_fit(
        lambda t, a, k, c: decay_np([a, k, c], t, 0.0), T, y, p0=truth, sigma=cov,
        jac=lambda t, a, k, c: decay_jac_np([a, k, c], t, 0.0), **SCIPY_TIGHT,
    )  # fmt: skip
    np.testing.assert_allclose(res.params, popt, rtol=1e-8)
    r = decay_np(popt, T, y)
    np.testing.assert_allclose(2 * float(res.cost), r @ np.linalg.solve(cov, r), rtol=1e-9)


def test_diagonal_covariance_equals_per_point_sigma(x64):
    truth, y, sigma = sample(4)
    args = (jnp.asarray(T), jnp.asarray(y))
    a = ff.least_squares(decay, jnp.asarray(truth), args, sigma=sigma, **TIGHT)
    b = ff.least_squares(decay, jnp.asarray(truth), args, sigma=np.diag(sigma**2), **TIGHT)
    np.testing.assert_allclose(a.params, b.params, rtol=1e-10)
    np.testing.assert_allclose(a.residual, b.residual, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.jac, b.jac, rtol=1e-9, atol=1e-12)


def test_sigma_and_bounds_under_jit_and_vmap(x64):
    """Per-fit sigma (traced) and shared bounds through jit(vmap): each fit equals the
    single fit with its own sigma, and scipy's trf."""
    samples = [sample(s) for s in (5, 6, 7)]
    ys = jnp.asarray(np.stack([s[1] for s in samples]))
    sigmas = jnp.asarray(np.stack([s[2] for s in samples]))
    t = jnp.asarray(T)
    x0 = np.array([1.0, 0.3, 0.0])
    lb, ub = np.array([0.0, 0.0, -1.0]), np.array([10.0, 0.6, 1.0])  # the rate's bound is active
    fit = jax.jit(jax.vmap(lambda y, s: ff.least_squares(decay, jnp.asarray(x0), (t, y), sigma=s, bounds=(lb, ub), **TIGHT)))
    batched = fit(ys, sigmas)
    for i, (_, y, sigma) in enumerate(samples):
        ref = scipy_ls(y, x0, weight=1 / sigma, bounds=(lb, ub), method="trf")
        assert ref.active_mask[1] == 1
        np.testing.assert_allclose(batched.params[i], ref.x, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(batched.cost[i], ref.cost, rtol=1e-9)


@pytest.mark.parametrize(
    "sigma, text",
    [(np.ones(5), "one standard deviation per residual"), (-np.ones(40), "positive"),
     (-np.eye(40), "positive definite")],
)  # fmt: skip
def test_bad_sigma_is_a_clear_error(sigma, text):
    with pytest.raises(ValueError, match=text):
        ff.least_squares(decay, jnp.ones(3), (jnp.asarray(T), jnp.asarray(T)), sigma=sigma)


# --------------------------------------------------------------------------- bounds


def _cut_bounds(truth):
    """Bounds whose upper limit on the rate sits below the best fit: an active bound."""
    return np.array([0.0, 0.0, -1.0]), np.array([10.0, 0.7 * truth[1], 1.0])


@pytest.mark.parametrize("seed", range(4))
def test_active_bound_matches_scipy_trf(x64, seed):
    truth, y, _ = sample(seed)
    lb, ub = _cut_bounds(truth)
    x0 = np.array([1.0, 0.3 * truth[1], 0.0])
    ref = scipy_ls(y, x0, bounds=(lb, ub), method="trf")
    assert ref.active_mask[1] == 1  # the optimum really is on the upper bound of the rate
    res = ff.least_squares(decay, jnp.asarray(x0), (jnp.asarray(T), jnp.asarray(y)), bounds=(lb, ub), **TIGHT)
    assert res.success, res.message
    p = np.asarray(res.params)
    assert np.all(p >= lb) and np.all(p <= ub)
    np.testing.assert_allclose(p, ref.x, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(float(res.cost), ref.cost, rtol=1e-10)


def test_active_bound_with_gauss_newton_matches_scipy_trf(x64):
    truth, y, _ = sample(0)
    lb, ub = _cut_bounds(truth)
    x0 = np.array([1.0, 0.3 * truth[1], 0.0])
    ref = scipy_ls(y, x0, bounds=(lb, ub), method="trf")
    res = ff.least_squares(decay, jnp.asarray(x0), (jnp.asarray(T), jnp.asarray(y)), bounds=(lb, ub), method="gn", **TIGHT)
    np.testing.assert_allclose(float(res.cost), ref.cost, rtol=1e-6)


@pytest.mark.parametrize("method, dtype", [("lm", "float32"), ("lm", "float64"), ("gn", "float64"), ("adam", "float32")])
def test_every_method_stays_feasible(method, dtype):
    """Every iterate lies inside the bounds, so the result does too, even when the
    unconstrained optimum is far outside them and the fit does not converge."""
    truth, y, _ = sample(1)
    lb, ub = _cut_bounds(truth)
    lb[0], ub[0] = 0.5, 1.0  # the amplitude's optimum (~2) is outside too
    with jax.enable_x64(dtype == "float64"):
        _check_feasible_fit(method, dtype, y, np.array([0.75, 0.3 * truth[1], 0.0]), lb, ub)


def _check_feasible_fit(method, dtype, y, x0, lb, ub):
    x0 = jnp.asarray(x0, dtype)
    res = ff.least_squares(
        decay, x0, (jnp.asarray(T, dtype), jnp.asarray(y, dtype)), bounds=(lb, ub), method=method,
        max_steps=300, learning_rate=0.05 if method == "adam" else None, **(TIGHT if dtype == "float64" else {}),
    )  # fmt: skip
    p = np.asarray(res.params, np.float64)
    assert np.all(np.isfinite(p))
    assert np.all(p >= lb.astype(dtype)) and np.all(p <= ub.astype(dtype)), p
    start_cost = 0.5 * np.sum(decay_np(np.asarray(x0, np.float64), T, y) ** 2)
    assert float(res.cost) < start_cost
    if method == "lm":
        ref = scipy_ls(y, np.asarray(x0, np.float64), bounds=(lb, ub), method="trf")
        assert ref.active_mask[0] == 1  # the amplitude ends on its upper bound
        if dtype == "float64":
            np.testing.assert_allclose(p, ref.x, rtol=1e-5, atol=1e-6)
        else:
            # A float32 cost carries round-off of ~1e-6 relative here (_common's
            # below_round_off estimate); along this fit's flattest direction a cost
            # change that small moves the rate by ~1e-3. So compare costs, in float64.
            np.testing.assert_allclose(p[0], ref.x[0])
            assert 0.5 * np.sum(decay_np(p, T, y) ** 2) <= ref.cost * (1 + 2e-6)


def test_traced_start_in_the_middle_of_the_box(x64):
    """Regression: under jit the middle of a two-sided box (scipy's default start) must
    map to internal u = 0 exactly; a rounding-level u used to shrink LM's first trust
    radius (‖D u₀‖) to ~1e-16 and stop the fit at its start with a false FTOL."""
    truth, y, _ = sample(0)
    lb, ub = np.array([0.0, 0.0, -1.0]), np.array([10.0, 5.0, 1.0])
    fit = jax.jit(lambda x0: ff.least_squares(decay, x0, (jnp.asarray(T), jnp.asarray(y)), bounds=(lb, ub), **TIGHT))
    res = fit(jnp.asarray((lb + ub) / 2))
    assert res.success, res.message
    np.testing.assert_allclose(res.params, scipy_ls(y, truth).x, rtol=1e-6)


def test_start_just_off_the_middle_of_the_box(x64):
    """The middle of a box is internal u = 0: the first trust radius must not vanish there."""
    truth, y, _ = sample(0)
    lb, ub = np.array([0.0, 0.0, -1.0]), np.array([10.0, 5.0, 1.0])
    res = ff.least_squares(decay, jnp.asarray((lb + ub) / 2 + 1e-12), (jnp.asarray(T), jnp.asarray(y)), bounds=(lb, ub))
    np.testing.assert_allclose(res.params, scipy_ls(y, truth).x, rtol=1e-4)


def test_pytree_bounds_match_flat_bounds(x64):
    truth, y, _ = sample(2)
    lb, ub = _cut_bounds(truth)
    args = (jnp.asarray(T), jnp.asarray(y))
    x0 = {"amp": jnp.asarray(1.0), "offset": jnp.asarray(0.0), "rate": jnp.asarray(0.3 * truth[1])}
    tree_bounds = ({"amp": lb[0], "offset": lb[2], "rate": lb[1]}, {"amp": ub[0], "offset": ub[2], "rate": ub[1]})
    tree = ff.least_squares(decay_tree, x0, args, bounds=tree_bounds, **TIGHT)
    flat = ff.least_squares(decay, jnp.asarray([1.0, 0.3 * truth[1], 0.0]), args, bounds=(lb, ub), **TIGHT)
    got = np.array([tree.params["amp"], tree.params["rate"], tree.params["offset"]])
    np.testing.assert_allclose(got, flat.params, rtol=1e-8)
    assert float(tree.params["rate"]) <= ub[1]
    # Result.jac is in ravel_pytree order of the user's tree (amp, offset, rate), not internal u.
    J = np.asarray(tree.jac)
    np.testing.assert_allclose(J[:, [0, 2, 1]], decay_jac_np(got, T, y), rtol=1e-8, atol=1e-12)
    # Uncertainty outputs follow the same order.
    order = [0, 2, 1]
    np.testing.assert_allclose(ff.uncertainty(tree).pcov, np.asarray(ff.uncertainty(flat).pcov)[np.ix_(order, order)], rtol=1e-6)


def rates(p, t, y):
    """Sum of three decays whose rates span six decades: 1e-3, 1, 1e3 per unit time."""
    k = p[3:]
    return jnp.sum(p[:3, None] * jnp.exp(-k[:, None] * t[None, :]), axis=0) - y


def rates_np(p, t, y):
    return np.sum(p[:3, None] * np.exp(-p[3:, None] * t[None, :]), axis=0) - y


def rates_jac_np(p, t, y):
    e = np.exp(-p[3:, None] * t[None, :])  # (3, m)
    return np.concatenate([e, -p[:3, None] * t[None, :] * e]).T


def test_log_scale_fits_rates_spanning_decades(x64):
    t = np.geomspace(1e-5, 1e4, 60)
    truth = np.array([1.0, 2.0, 0.5, 1e-3, 1.0, 1e3])
    y = rates_np(truth, t, 0.0) * (1 + 0.01 * np.sin(np.arange(60.0)))
    x0 = np.array([0.7, 1.5, 0.8, 3e-3, 0.3, 3e2])
    log = np.array([False, False, False, True, True, True])
    res = ff.least_squares(rates, jnp.asarray(x0), (jnp.asarray(t), jnp.asarray(y)), log_scale=log, **TIGHT)
    assert res.success, res.message
    assert np.all(np.asarray(res.params)[3:] > 0)
    ref = so.least_squares(rates_np, x0, jac=rates_jac_np, args=(t, y), x_scale="jac", **SCIPY_TIGHT)
    np.testing.assert_allclose(float(res.cost), ref.cost, rtol=1e-8)
    np.testing.assert_allclose(res.params, ref.x, rtol=1e-6)


def test_log_scale_with_bounds_on_the_parameter(x64):
    """Bounds on a log_scale parameter bound p itself (not log p), and can be active."""
    truth, y, _ = sample(0)
    lb, ub = _cut_bounds(truth)
    lb[1] = 0.0  # on a log-scale parameter a lower bound of 0 just restates positivity
    x0 = np.array([1.0, 0.3 * truth[1], 0.0])
    log = np.array([False, True, False])
    res = ff.least_squares(
        decay, jnp.asarray(x0), (jnp.asarray(T), jnp.asarray(y)), bounds=(lb, ub), log_scale=log, **TIGHT
    )  # fmt: skip
    ref = scipy_ls(y, x0, bounds=(lb, ub), method="trf")
    np.testing.assert_allclose(res.params, ref.x, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(
    "x0, options, text",
    [
        ([1.0, 3.0, 0.0], dict(bounds=([0, 0, -1], [10, 2, 1])), "outside `bounds` at flat index \\[1\\]"),
        ([-1.0, 1.0, 0.0], dict(bounds=(0.0, np.inf)), "outside `bounds` at flat index \\[0\\]"),
        ([1.0, -1.0, 0.0], dict(log_scale=[False, True, False]), "positive where log_scale"),
        ([1.0, 1.0, 0.0], dict(bounds=([0, 2, -1], [10, 1, 1])), "strictly below"),
        ([1.0, 1.0, 0.0], dict(bounds=([0, -1, -1], [10, 2, 1]), log_scale=[False, True, False]), "log_scale"),
        ([1.0, 1.0, 0.0], dict(bounds=([0, -np.inf, -1], [10, 0, 1]), log_scale=[False, True, False]), "log_scale"),
        ([1.0, 1.0, 0.0], dict(bounds=(0.0,)), "pair"),
        ([1.0, 1.0, 0.0], dict(bounds=([0, 0], [1, 1])), "2 entries for 3 parameters"),
    ],
)
def test_bad_bounds_are_clear_errors(x0, options, text):
    with pytest.raises(ValueError, match=text):
        ff.least_squares(decay, jnp.asarray(x0), (jnp.asarray(T), jnp.asarray(T)), **options)


def _fit_from_the_bound():
    truth, y, _ = sample(3)
    lb, ub = np.array([0.0, 0.0, -1.0]), np.array([10.0, 5.0, 1.0])
    x0 = np.array([1.0, 5.0, 0.0])  # starts on the rate's upper bound; the optimum is inside
    res = ff.least_squares(decay, jnp.asarray(x0), (jnp.asarray(T), jnp.asarray(y)), bounds=(lb, ub), **TIGHT)
    return res, scipy_ls(y, truth)


def test_start_on_the_bound_is_moved_inside_and_leaves_it(x64):
    res, ref = _fit_from_the_bound()
    assert res.success, res.message
    np.testing.assert_allclose(res.params, ref.x, rtol=1e-5)


def test_start_on_the_bound_reaches_xtol_like_an_unbounded_fit(x64):
    """From a start on a bound, dp/du is tiny there and the first step in u is huge
    (the rate's angle went to -1.3e7); the angle must come back to [-π, π], or the
    relative test ‖δu‖ <= xtol·‖u‖ stops the fit early (it used to, at 3e-7)."""
    truth, y, _ = sample(3)
    lb, ub = np.array([0.0, 0.0, -1.0]), np.array([10.0, 5.0, 1.0])
    x0 = jnp.asarray([1.0, 5.0, 0.0])
    only_xtol = dict(ftol=0, xtol=1e-12, gtol=0)
    args = (jnp.asarray(T), jnp.asarray(y))
    bounded = ff.least_squares(decay, x0, args, bounds=(lb, ub), **only_xtol)
    free = ff.least_squares(decay, x0, args, **only_xtol)
    assert int(bounded.status) == int(free.status) == ff.Status.XTOL
    np.testing.assert_allclose(bounded.params, free.params, rtol=1e-10)


ON_A_BOUND = {  # (lower, upper, x0): the rate starts on a bound, its optimum is inside
    "two-sided": ([0.0, 0.0, -1.0], [10.0, 5.0, 1.0], [1.0, 5.0, 0.0]),
    "lower": ([0.0, 0.0, -np.inf], [np.inf] * 3, [1.0, 0.0, 0.0]),
    "upper": ([-np.inf] * 3, [np.inf, 5.0, np.inf], [1.0, 5.0, 0.0]),
}


@pytest.mark.parametrize(
    "method, side",
    [(method, side) for method in ("lm", "gn") for side in ("two-sided", "lower", "upper")],
)
@pytest.mark.parametrize("loss", ["linear", "soft_l1", "cauchy"])
def test_start_on_the_bound_with_default_tolerances_matches_scipy(x64, method, side, loss):
    """The defects a user saw: from a start on a bound, with default tolerances, fits
    stopped on xtol up to 8% above scipy's cost (two-sided: the angle's first step went
    to -1e7), or on gtol at a plateau 50% above it (one-sided: the first step put the
    rate at 2e6, where the model no longer depends on it)."""
    lb, ub, x0 = (np.array(v) for v in ON_A_BOUND[side])
    for seed in range(3):
        _, y = outlier_sample(seed)
        ref = scipy_ls(y, x0, loss=loss, f_scale=0.1, method="trf", bounds=(lb, ub))
        res = ff.least_squares(
            decay, jnp.asarray(x0), (jnp.asarray(T), jnp.asarray(y)), method=method, bounds=(lb, ub), loss=loss, f_scale=0.1
        )
        assert res.success, res.message
        np.testing.assert_allclose(float(res.cost), ref.cost, rtol=1e-6)


ACTIVE = {  # (lower, upper, x0): the rate's unconstrained optimum (about 0.9) lies
    # beyond a bound, so the fit ends on it; starts on that bound or inside
    "two-sided, upper": ([0, 0, -1], [10, 0.5, 1], [1, 0.5, 0]),
    "two-sided, lower": ([0, 1.5, -1], [10, 5, 1], [1, 1.5, 0]),
    "one-sided, lower": ([0, 1.5, -np.inf], [np.inf] * 3, [1, 1.5, 0]),
    "one-sided, upper": ([0, 0, -np.inf], [np.inf, 0.5, np.inf], [1, 0.5, 0]),
    "two-sided, upper, from inside": ([0, 0, -1], [10, 0.5, 1], [1, 0.3, 0]),
}


@pytest.mark.parametrize("method", ["lm", "gn"])
@pytest.mark.parametrize("case", list(ACTIVE))
def test_active_bound_matches_scipy(x64, method, case):
    """Without the bounds' curvature in its model, LM crept onto an active bound (400
    steps without converging from a one-sided bound) or stopped on xtol short of it."""
    lb, ub, x0 = (np.array(v, float) for v in ACTIVE[case])
    for seed in range(2):
        for loss in ("linear", "soft_l1"):
            _, y = outlier_sample(seed)
            ref = scipy_ls(y, x0, loss=loss, f_scale=0.1, method="trf", bounds=(lb, ub))
            res = ff.least_squares(
                decay, jnp.asarray(x0), (jnp.asarray(T), jnp.asarray(y)), method=method, bounds=(lb, ub), loss=loss,
                f_scale=0.1, **TIGHT,
            )  # fmt: skip
            assert res.success, (seed, loss, res.message)
            assert int(res.n_steps) <= 60, (seed, loss, int(res.n_steps))
            np.testing.assert_allclose(float(res.cost), ref.cost, rtol=1e-6)
            np.testing.assert_allclose(res.params, ref.x, rtol=1e-4, atol=1e-6)


def test_starts_on_bounds_the_data_pull_against_match_scipy(x64):
    """Rate and offset start on their lower bound 0 while the data pull the offset
    further down (its true value is 0 or just above).  LM's first radius was made of
    the pinned diagonal of JᵀJ, bounds' curvature included, which the pinning factor
    (about 1e7 on the bound) blew up: the first step sent the rate to 3e5, a plateau
    where the model no longer depends on it.  (Gauss-Newton cannot start here: at a
    rate of 0 the amplitude's and the offset's columns coincide.)"""
    rng = np.random.default_rng(7)
    n = 24
    truth = np.column_stack([rng.uniform(0.5, 3.0, n), rng.uniform(0.3, 3.0, n), rng.choice([0.0, 0.05], n)])
    y = truth[:, :1] * np.exp(-truth[:, 1:2] * T) + truth[:, 2:] + 0.01 * rng.normal(size=(n, T.size))
    x0 = np.column_stack([rng.uniform(0.2, 5.0, n), np.zeros(n), np.zeros(n)])
    lb, ub = np.zeros(3), np.full(3, np.inf)
    res = ff.fit_batch(decay, jnp.asarray(x0), (jnp.asarray(T), jnp.asarray(y)), shared_args=(0,), bounds=(lb, ub))
    for i in range(n):
        ref = scipy_ls(y[i], x0[i] + 1e-10, method="trf", bounds=(lb, ub))
        assert bool(res.success[i]), (i, int(res.status[i]))
        np.testing.assert_allclose(float(res.cost[i]), ref.cost, rtol=1e-6, err_msg=f"fit {i}")


# Unbounded from (0, 0, 0) the sign of the amplitude is a coin toss: trf itself ends in
# the valley A -> -inf there.
@pytest.mark.parametrize("bounded, rate0", [(True, 0.0), (True, 0.5), (False, 0.5)])
def test_amplitude_starting_at_zero_matches_scipy(x64, bounded, rate0):
    """An amplitude of 0 (or 100·eps, a start moved off its bound) leaves the rate's
    column negligible, and MINPACK's scaling then lets the rate take any step: it went
    to 1e13, a plateau (scipy's ``lm`` fails the same way; ``trf`` does not)."""
    lb, ub = (np.zeros(3), np.full(3, np.inf)) if bounded else (-np.inf, np.inf)
    for seed in range(3):
        _, y, _ = sample(seed, noise=0.01)
        x0 = np.array([0.0, rate0, 0.0])
        ref = scipy_ls(y, x0 + 1e-10, method="trf", bounds=(lb, ub))
        res = ff.least_squares(decay, jnp.asarray(x0), (jnp.asarray(T), jnp.asarray(y)), bounds=(lb, ub) if bounded else None)
        assert res.success, (seed, res.message)
        np.testing.assert_allclose(float(res.cost), ref.cost, rtol=1e-6)


def test_one_sided_transform_near_its_bound_is_exact(x64):
    """``√(u² + 1) − 1`` computed as written is exactly 0 for |u| < 1e-8: an iterate landed
    on its bound, where a model such as ``K**n`` has a non-finite derivative; and a start
    just off its bound came back from ``u`` a relative 1e-3 away."""
    from fitfleet._bounds import make_bounds

    b = make_bounds((np.array([0.0, 1.0]), np.array([np.inf, np.inf])), np.array([False, False]), np.float64)
    p = b.to_params(jnp.array([1e-9, 1e-9]))
    np.testing.assert_allclose(p, [5e-19, 1.0], rtol=1e-12)
    assert p[0] > 0
    start = jnp.array([3e-14, 2.5])
    np.testing.assert_allclose(b.to_params(b.to_internal(start)), start, rtol=1e-12)


def test_wrapped_angle_is_the_same_point(x64):
    from fitfleet._bounds import make_bounds

    b = make_bounds((np.array([0.0, 1.0, -np.inf]), np.array([5.0, np.inf, np.inf])), np.array([False, True, False]), np.float64)
    u = jnp.asarray([[-1.3e7, 40.0, 9.0], [7.0, -3.0, -9.0], [3.0, 0.5, 1e9]])
    w = jax.vmap(b.wrapped)(u)
    assert np.all(np.abs(w[:, 0]) <= np.pi) and np.array_equal(w[:, 1:], u[:, 1:])  # one-sided: untouched
    assert w[2, 0] == u[2, 0]  # already in [-π, π]: exactly unchanged
    np.testing.assert_allclose(jax.vmap(b.to_params)(w), jax.vmap(b.to_params)(u), rtol=1e-8)
    for d_w, d_u in zip(jax.vmap(b.derivatives)(w), jax.vmap(b.derivatives)(u)):  # T' and T''
        np.testing.assert_allclose(d_w, d_u, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------- robust losses


def outlier_sample(seed):
    truth, y, _ = sample(seed)
    rng = np.random.default_rng(100 + seed)
    y = y.copy()
    idx = rng.choice(T.size, 6, replace=False)
    y[idx] += rng.choice([-1, 1], 6) * rng.uniform(1.0, 3.0, 6)  # gross outliers
    return truth, y


@pytest.mark.parametrize("loss", ["soft_l1", "huber", "cauchy", "arctan", "linear"])
@pytest.mark.parametrize("f_scale", [0.1, 1.0])
def test_robust_loss_matches_scipy_trf(x64, loss, f_scale):
    """Same optimum as scipy's trf, to 1e-6 relative in cost.  Robust losses are not
    convex, so both start at the truth, inside the basin of the robust optimum."""
    for seed in range(2):
        truth, y = outlier_sample(seed)
        ref = scipy_ls(y, truth, loss=loss, f_scale=f_scale, method="trf")
        res = ff.least_squares(decay, jnp.asarray(truth), (jnp.asarray(T), jnp.asarray(y)), loss=loss, f_scale=f_scale, **TIGHT)
        assert res.success, res.message
        np.testing.assert_allclose(float(res.cost), ref.cost, rtol=1e-6)
        np.testing.assert_allclose(res.params, ref.x, rtol=1e-4, atol=1e-6)
        assert float(res.cost) <= ref.cost * (1 + 1e-9)  # never a worse minimum than scipy's


def test_robust_loss_resists_outliers(x64):
    """The point of a robust loss: with gross outliers the soft_l1 fit lands much closer
    to the truth than ordinary least squares does."""
    truth, y = outlier_sample(0)
    args = (jnp.asarray(T), jnp.asarray(y))
    plain = ff.least_squares(decay, jnp.asarray(truth), args, **TIGHT)
    robust = ff.least_squares(decay, jnp.asarray(truth), args, loss="soft_l1", f_scale=0.1, **TIGHT)
    err = lambda p: np.max(np.abs(np.asarray(p) - truth) / np.abs(truth))  # noqa: E731
    assert err(robust.params) < 0.3 * err(plain.params)


def test_robust_loss_with_sigma_matches_scipy(x64):
    """The loss applies to the whitened residual r/σ, as scipy's curve_fit does."""
    truth, y = outlier_sample(1)
    _, _, sigma = sample(1)
    ref = scipy_ls(y, truth, weight=1 / sigma, loss="cauchy", f_scale=2.0, method="trf")
    res = ff.least_squares(
        decay, jnp.asarray(truth), (jnp.asarray(T), jnp.asarray(y)), sigma=sigma, loss="cauchy", f_scale=2.0, **TIGHT
    )  # fmt: skip
    np.testing.assert_allclose(float(res.cost), ref.cost, rtol=1e-6)


def test_robust_loss_in_float32(dtype):
    truth, y = outlier_sample(0)
    ref = scipy_ls(y, truth, loss="huber", f_scale=0.1, method="trf")
    tol = dict(ftol=1e-6, xtol=1e-6, gtol=1e-6) if dtype == "float32" else TIGHT
    res = ff.least_squares(
        decay, jnp.asarray(truth, dtype), (jnp.asarray(T, dtype), jnp.asarray(y, dtype)), loss="huber", f_scale=0.1, **tol
    )  # fmt: skip
    assert res.params.dtype == dtype
    np.testing.assert_allclose(float(res.cost), ref.cost, rtol=1e-4 if dtype == "float32" else 1e-8)


@pytest.mark.parametrize("options, text", [(dict(loss="l1"), "`loss` must be one of"), (dict(f_scale=0.0), "f_scale")])
def test_bad_loss_options_are_clear_errors(options, text):
    with pytest.raises(ValueError, match=text):
        ff.least_squares(decay, jnp.ones(3), (jnp.asarray(T), jnp.asarray(T)), **options)
