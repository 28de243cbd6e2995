"""``ff.curve_fit`` and ``ff.curve_fit_batch`` against ``scipy.optimize.curve_fit``.

The models are module-level functions, so each configuration compiles once.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so
import scipy.stats as st

import fitfleet as ff

X = np.linspace(0.0, 4.0, 30)
SCIPY_TIGHT = dict(ftol=1e-15, xtol=1e-15, gtol=1e-15)
TIGHT = dict(ftol=1e-13, xtol=1e-13, gtol=1e-13)


def decay(x, a, k, c):
    return a * jnp.exp(-k * x) + c


def decay_np(x, a, k, c):
    return a * np.exp(-k * x) + c


def decay_jac_np(x, a, k, c):
    e = np.exp(-k * x)
    return np.stack([e, -a * x * e, np.ones_like(x)], axis=1)


def decay_jac(x, a, k, c):
    e = jnp.exp(-k * x)
    return jnp.stack([e, -a * x * e, jnp.ones_like(x)], axis=1)


def sample(seed):
    rng = np.random.default_rng(seed)
    truth = np.array([rng.uniform(1, 3), rng.uniform(0.5, 2), rng.uniform(-0.5, 0.5)])
    sigma = rng.uniform(0.02, 0.1, X.size)
    y = decay_np(X, *truth) + sigma * rng.standard_normal(X.size)
    return truth, y, sigma


def scipy_fit(y, **kw):
    kw.setdefault("jac", decay_jac_np)
    return so.curve_fit(decay_np, X, y, **SCIPY_TIGHT, **kw)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("weights", ["none", "scalar", "sigma", "covariance"])
@pytest.mark.parametrize("absolute_sigma", [False, True])
def test_matches_scipy(x64, seed, weights, absolute_sigma):
    truth, y, sigma = sample(seed)
    s = {"none": None, "scalar": 0.05, "sigma": sigma, "covariance": np.diag(sigma**2) + 0.2 * np.outer(sigma, sigma)}[weights]
    p0 = truth * 0.7
    popt, pcov = ff.curve_fit(decay, X, y, p0=p0, sigma=s, absolute_sigma=absolute_sigma, **TIGHT)
    # scipy's wrapped Jacobian cannot take a scalar sigma: give it the broadcast one.
    s_ref = np.full(X.size, s) if weights == "scalar" else s
    ref_popt, ref_pcov = scipy_fit(y, p0=p0, sigma=s_ref, absolute_sigma=absolute_sigma)
    np.testing.assert_allclose(popt, ref_popt, rtol=1e-7)
    np.testing.assert_allclose(pcov, ref_pcov, rtol=1e-6)


def test_default_p0_and_method_follow_scipy(x64):
    """p0 defaults to ones (from f's signature); all scipy method names are accepted."""
    _, y, _ = sample(3)
    ref_popt, ref_pcov = scipy_fit(y)
    for method in (None, "lm", "trf", "dogbox"):
        popt, pcov = ff.curve_fit(decay, X, y, method=method)
        # Default tolerances (1e-8) against scipy's tight fit.
        np.testing.assert_allclose(popt, ref_popt, rtol=1e-5)
        np.testing.assert_allclose(pcov, ref_pcov, rtol=2e-3)


def test_bounds_match_scipy_trf_with_an_active_bound(x64):
    truth, y, _ = sample(4)
    bounds = ([0.0, 0.0, -1.0], [10.0, 0.6 * truth[1], 1.0])
    popt, pcov = ff.curve_fit(decay, X, y, bounds=bounds, **TIGHT)
    ref_popt, ref_pcov = scipy_fit(y, bounds=bounds)  # p0 default: the middle of the box, as here
    assert np.isclose(ref_popt[1], bounds[1][1])  # on the bound
    assert float(popt[1]) <= bounds[1][1]
    np.testing.assert_allclose(popt, ref_popt, rtol=1e-6, atol=1e-9)
    # The covariance is computed in the user's parameters: same as scipy's, bound or not.
    np.testing.assert_allclose(pcov, ref_pcov, rtol=1e-4)


def test_bounds_object_with_lb_ub_and_default_start(x64):
    _, y, _ = sample(5)
    lb, ub = np.array([0.0, 0.0, -2.0]), np.array([np.inf, 5.0, 2.0])
    popt, _ = ff.curve_fit(decay, X, y, bounds=so.Bounds(lb, ub), **TIGHT)
    ref_popt, _ = scipy_fit(y, bounds=so.Bounds(lb, ub))
    np.testing.assert_allclose(popt, ref_popt, rtol=1e-6)


def test_user_jacobian_and_full_output(x64):
    truth, y, _ = sample(6)
    popt, pcov, info, mesg, ier = ff.curve_fit(decay, X, y, p0=truth, jac=decay_jac, full_output=True, **TIGHT)
    ref = scipy_fit(y, p0=truth, full_output=True)
    np.testing.assert_allclose(popt, ref[0], rtol=1e-7)
    np.testing.assert_allclose(pcov, ref[1], rtol=1e-6)
    np.testing.assert_allclose(info["fvec"], ref[2]["fvec"], rtol=1e-6, atol=1e-12)
    assert int(ier) in (1, 2, 3) and isinstance(mesg, str) and info["result"].success
    assert int(info["nfev"]) >= int(info["nit"]) >= 1


def test_robust_loss_matches_scipy(x64):
    truth, y, _ = sample(7)
    y = y.copy()
    y[::5] += 1.5
    kw = dict(p0=truth, loss="cauchy", f_scale=0.1)
    popt, pcov = ff.curve_fit(decay, X, y, ftol=1e-15, xtol=1e-15, gtol=1e-15, **kw)
    ref_popt, ref_pcov = scipy_fit(y, method="trf", **kw)
    np.testing.assert_allclose(popt, ref_popt, rtol=1e-6)  # IRLS converges linearly
    np.testing.assert_allclose(pcov, ref_pcov, rtol=1e-5)


def test_failure_raises_like_scipy_and_ier_reports_it(x64):
    _, y, _ = sample(8)
    with pytest.raises(RuntimeError, match="Optimal parameters not found: max_steps"):
        ff.curve_fit(decay, X, y, maxfev=1)
    # Under jit nothing can raise: the status comes back in ier.
    out = jax.jit(lambda y: ff.curve_fit(decay, jnp.asarray(X), y, maxfev=1, full_output=True))(jnp.asarray(y))
    assert int(out[4]) == 0 and out[3] is None


def test_under_jit_and_vmap(x64):
    samples = [sample(s) for s in (9, 10)]
    ys = jnp.asarray(np.stack([s[1] for s in samples]))
    fit = jax.jit(jax.vmap(lambda y: ff.curve_fit(decay, jnp.asarray(X), y, p0=jnp.ones(3), **TIGHT)))
    popt, pcov = fit(ys)
    for i, (_, y, _) in enumerate(samples):
        ref_popt, ref_pcov = scipy_fit(y, p0=np.ones(3))
        np.testing.assert_allclose(popt[i], ref_popt, rtol=1e-7)
        np.testing.assert_allclose(pcov[i], ref_pcov, rtol=1e-6)


def test_float32(dtype):
    truth, y, sigma = sample(11)
    popt, pcov, info, _, _ = ff.curve_fit(decay, X.astype(dtype), y.astype(dtype), p0=truth.astype(dtype), sigma=sigma, full_output=True)
    assert popt.dtype == dtype and pcov.dtype == dtype
    u = ff.uncertainty(info["result"], level=0.9)
    assert u.ci.dtype == dtype
    half = st.t.ppf(0.95, X.size - 3) * np.sqrt(np.diag(np.asarray(pcov, np.float64)))
    np.testing.assert_allclose(np.asarray(u.ci[:, 1], np.float64) - np.asarray(popt, np.float64), half, rtol=1e-4)
    ref_popt, ref_pcov = scipy_fit(y, p0=truth, sigma=sigma)
    # Default tolerances against scipy's tight fit.
    np.testing.assert_allclose(np.asarray(popt, np.float64), ref_popt, rtol=1e-4 if dtype == "float32" else 1e-5)
    np.testing.assert_allclose(np.asarray(pcov, np.float64), ref_pcov, rtol=2e-3 if dtype == "float32" else 1e-4)


def test_indeterminate_covariance_is_inf_with_a_warning(x64):
    x, y = np.array([0.0, 1.0, 2.0]), np.array([1.0, 0.5, 0.3])
    with pytest.warns(UserWarning, match="could not be estimated"):
        _, pcov = ff.curve_fit(decay, x, y, p0=[1.0, 1.0, 0.0])
    assert np.all(np.isinf(pcov))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, pcov = ff.curve_fit(decay, x, y, p0=[1.0, 1.0, 0.0], absolute_sigma=True)
    assert np.all(np.isfinite(pcov))


@pytest.mark.parametrize(
    "call, error, text",
    [
        (dict(ydata=np.full(30, np.nan)), ValueError, "infs or NaNs"),
        (dict(nan_policy="propagate"), ValueError, "nan_policy"),
        (dict(method="powell"), ValueError, "`method` must be one of"),
        (dict(x_scale="auto"), ValueError, "x_scale"),
        (dict(tr_solver="lsmr"), TypeError, "unsupported keyword argument 'tr_solver'"),
        (dict(args=(1,)), ValueError, "'args' is not a supported"),
        (dict(sigma=np.ones(7)), ValueError, "`sigma` has incorrect shape"),
        (dict(f=lambda x, *p: x), ValueError, "Unable to determine number of fit parameters"),
        (dict(bounds=(0.0, 1.0, 2.0)), ValueError, "`bounds` must be a pair"),
        (dict(p0=[5.0, 1.0, 0.0], bounds=(0.0, 2.0)), ValueError, "outside `bounds`"),
        (dict(jac="magic"), ValueError, "`jac` must be"),
        (dict(loss="l1"), ValueError, "`loss` must be one of"),
    ],
)
def test_bad_arguments_are_clear_errors(call, error, text):
    kwargs = dict(f=decay, xdata=X, ydata=np.ones(30))
    kwargs.update(call)
    with pytest.raises(error, match=text):
        ff.curve_fit(**kwargs)


# --------------------------------------------------------------------------- batches


def test_batch_matches_row_by_row_scipy(x64):
    samples = [sample(s) for s in range(12, 16)]
    ys = np.stack([s[1] for s in samples])
    sigmas = np.stack([s[2] for s in samples])
    p0s = np.stack([s[0] for s in samples]) * 0.8
    popt, pcov, info, mesg, ier = ff.curve_fit_batch(decay, X, ys, p0=p0s, sigma=sigmas, full_output=True, **TIGHT)
    assert popt.shape == (4, 3) and pcov.shape == (4, 3, 3) and ier.shape == (4,) and len(mesg) == 4
    for i in range(4):
        ref_popt, ref_pcov = scipy_fit(ys[i], p0=p0s[i], sigma=sigmas[i])
        np.testing.assert_allclose(popt[i], ref_popt, rtol=1e-7)
        np.testing.assert_allclose(pcov[i], ref_pcov, rtol=1e-6)


def test_batch_with_shared_sigma_bounds_and_per_row_xdata(x64):
    samples = [sample(s) for s in range(16, 19)]
    xs = np.stack([X, 0.5 * X, 2.0 * X])
    ys = np.stack([decay_np(xs[i], *s[0]) + 0.01 * np.sin(7 * X) for i, s in enumerate(samples)])
    bounds = ([0.0, 0.0, -1.0], [10.0, 5.0, 1.0])
    popt, pcov = ff.curve_fit_batch(decay, xs, ys, sigma=0.01 * np.ones(30), absolute_sigma=True, bounds=bounds, batch_xdata=True, **TIGHT)
    for i in range(3):
        ref_popt, ref_pcov = so.curve_fit(
            decay_np, xs[i], ys[i], sigma=0.01 * np.ones(30), absolute_sigma=True, bounds=bounds,
            jac=decay_jac_np, **SCIPY_TIGHT,
        )  # fmt: skip
        np.testing.assert_allclose(popt[i], ref_popt, rtol=1e-6)
        np.testing.assert_allclose(pcov[i], ref_pcov, rtol=1e-5)


def test_batch_failed_row_does_not_raise(x64):
    _, y, _ = sample(19)
    ys = np.stack([y, np.full_like(y, np.nan)])
    with pytest.raises(ValueError, match="infs or NaNs"):
        ff.curve_fit_batch(decay, X, ys)
    popt, pcov, _, mesg, ier = ff.curve_fit_batch(decay, X, ys, check_finite=False, full_output=True)
    assert int(ier[0]) in (1, 2, 3) and int(ier[1]) == -1
    assert "not finite" in mesg[1]


def test_batch_needs_a_batch_axis():
    with pytest.raises(ValueError, match="leading batch axis"):
        ff.curve_fit_batch(decay, X, np.ones(30))
