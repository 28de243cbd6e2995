"""scipy habits (issue 18 §4): each is scipy's behaviour or a clear error."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import fitfleet as ff

X = np.linspace(0.0, 4.0, 25)
Y = 2.5 * np.exp(-1.3 * X) + 0.3 + 0.02 * np.sin(7 * X)


def model(x, a, k, c):
    return a * jnp.exp(-k * x) + c


def np_model(x, a, k, c):
    return a * np.exp(-k * x) + c


def test_nan_policy_raise_and_omit_follow_scipy(x64):
    y = Y.copy()
    y[[3, 11]] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ff.curve_fit(model, X, y, p0=[1.0, 1.0, 0.0], nan_policy="raise")
    with pytest.raises(ValueError):
        scipy.optimize.curve_fit(np_model, X, y, p0=[1.0, 1.0, 0.0], nan_policy="raise")
    popt, pcov = ff.curve_fit(model, X, y, p0=[1.0, 1.0, 0.0], nan_policy="omit")
    ref, ref_cov = scipy.optimize.curve_fit(np_model, X, y, p0=[1.0, 1.0, 0.0], nan_policy="omit")
    np.testing.assert_allclose(popt, ref, rtol=1e-6)
    np.testing.assert_allclose(pcov, ref_cov, rtol=1e-4)
    with pytest.raises(ValueError, match="nan_policy"):
        ff.curve_fit(model, X, Y, p0=[1.0, 1.0, 0.0], nan_policy="propagate")


def test_errors_name_p0_and_too_many_parameters_fail_up_front():
    with pytest.raises(ValueError, match="`p0`"):
        ff.curve_fit(model, X, Y, p0=[1.0, 5.0, 0.0], bounds=(0.0, 2.0))
    with pytest.raises(ValueError, match="`p0`"):
        ff.curve_fit(model, X, Y, p0=[1.0 + 1j, 1.0, 0.0])

    calls = []

    def counted(x, *p):
        calls.append(1)
        return sum(p) * x

    with pytest.raises(TypeError, match="must not exceed the number of data points"):
        ff.curve_fit(counted, X[:2], Y[:2], p0=np.ones(3))
    with pytest.raises(TypeError, match="must not exceed"):
        scipy.optimize.curve_fit(lambda x, *p: sum(p) * x, X[:2], Y[:2], p0=np.ones(3))
    assert not calls  # nothing was traced


def test_full_output_has_minpacks_fjac_ipvt_qtf(x64):
    """The same R (up to the signs of its rows), permutation and Qᵀr as MINPACK's at
    the same solution, and the covariance scipy builds from them."""
    popt, pcov, info, _, ier = ff.curve_fit(model, X, Y, p0=[1.0, 1.0, 0.0], full_output=True)
    ref = scipy.optimize.leastsq(lambda p: np_model(X, *p) - Y, np.asarray(popt), full_output=True, xtol=1e-15, ftol=1e-15)
    ref_info = ref[2]
    n = 3
    np.testing.assert_array_equal(info["ipvt"], ref_info["ipvt"])
    R, R_ref = np.triu(np.asarray(info["fjac"]).T[:n]), np.triu(ref_info["fjac"].T[:n])
    np.testing.assert_allclose(np.abs(R), np.abs(R_ref), rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(np.abs(info["qtf"]), np.abs(ref_info["qtf"]), atol=1e-6 * np.linalg.norm(info["fvec"]))  # ~0 at an optimum
    inverse = np.linalg.inv(R)
    inverse[np.asarray(info["ipvt"])] = inverse.copy()  # scipy's leastsq builds cov_x this way
    np.testing.assert_allclose(inverse @ inverse.T, ref[1], rtol=1e-6)
    batch = ff.curve_fit_batch(model, X, np.stack([Y, Y]), p0=[1.0, 1.0, 0.0], full_output=True)
    np.testing.assert_array_equal(batch[2]["ipvt"][1], info["ipvt"])


def test_least_squares_takes_kwargs_and_a_callable_loss(x64):
    """scipy's ``kwargs`` go to fun; a callable loss in scipy's form (rows rho, rho',
    rho'') or as rho alone gives scipy's fit with the same loss."""

    def residual(p, x, *, y, offset):
        return p[0] * jnp.exp(-p[1] * x) + p[2] + offset - y

    res = ff.least_squares(residual, jnp.array([1.0, 1.0, 0.0]), (X,), kwargs={"y": Y, "offset": 0.1})
    np.testing.assert_allclose(res.params[2], ff.least_squares(lambda p, x, y: model(x, *p) - y, jnp.array([1.0, 1.0, 0.0]), (X, Y)).params[2] - 0.1, atol=1e-8)

    def scipy_form(z):
        return jnp.stack([jnp.log1p(z), 1 / (1 + z), -1 / (1 + z) ** 2])  # cauchy

    y = Y.copy()
    y[5] += 3.0  # an outlier
    fun = lambda p, x, y: model(x, *p) - y  # noqa: E731
    named = ff.least_squares(fun, jnp.array([1.0, 1.0, 0.0]), (X, y), loss="cauchy", f_scale=0.1)
    for loss in (scipy_form, jnp.log1p):
        res = ff.least_squares(fun, jnp.array([1.0, 1.0, 0.0]), (X, y), loss=loss, f_scale=0.1)
        np.testing.assert_allclose(res.params, named.params, rtol=1e-7)
        np.testing.assert_allclose(ff.uncertainty(res).stderr, ff.uncertainty(named).stderr, rtol=1e-6)
    ref = scipy.optimize.least_squares(lambda p: np_model(X, *p) - y, [1.0, 1.0, 0.0], loss="cauchy", f_scale=0.1, xtol=1e-14, ftol=1e-14, gtol=1e-14)
    np.testing.assert_allclose(named.params, ref.x, rtol=1e-6)
    with pytest.raises(ValueError, match="`loss`"):
        ff.least_squares(fun, jnp.array([1.0, 1.0, 0.0]), (X, y), loss="l1")


def test_data_of_the_wrong_shape_is_refused_as_scipy_refuses_it():
    """A column of data against a row of predictions would broadcast to an (m, m)
    residual and "fit" that: scipy raises, and so does fitfleet, before compiling."""
    calls = []

    def counted(x, a, k, c):
        calls.append(1)
        return model(x, a, k, c)

    for x, y in ((X, Y[:, None]), (X[:, None], Y)):
        with pytest.raises(ValueError, match=r"`ydata` has shape .*\(25, 25\)"):
            ff.curve_fit(counted, x, y, p0=[1.0, 1.0, 0.0])
        with pytest.raises(Exception):  # noqa: B017 (scipy's lm raises minpack's own error)
            scipy.optimize.curve_fit(np_model, x, y, p0=[1.0, 1.0, 0.0])
    assert len(calls) == 2  # one abstract trace each, nothing compiled
    popt, _ = ff.curve_fit(lambda x, c: c, X, Y)  # a scalar model broadcasts to ydata, as in scipy
    np.testing.assert_allclose(popt, [np.mean(Y)], rtol=1e-5)


def test_pandas_data_and_scipys_spellings_are_taken(x64):
    """``df["x"]`` as data, a (2, n) array of bounds, ``jac="2-point"`` and a tolerance of
    None (off) in least_squares: what a scipy script passes runs unchanged."""
    pd = pytest.importorskip("pandas")
    x, y = pd.Series(X), pd.Series(Y)
    popt, pcov = ff.curve_fit(model, x, y, p0=[1.0, 1.0, 0.0])
    ref, ref_cov = scipy.optimize.curve_fit(np_model, X, Y, p0=[1.0, 1.0, 0.0])
    np.testing.assert_allclose(popt, ref, rtol=1e-6)
    np.testing.assert_allclose(pcov, ref_cov, rtol=1e-4)
    fun = lambda p, x, y: model(x, *p) - y  # noqa: E731
    box = np.array([[0.0, 0.0, 0.0], [2.0, 5.0, 5.0]])  # the amplitude's bound is active
    res = ff.least_squares(fun, np.array([1.0, 1.0, 0.1]), (x, y), bounds=box, method="trf", jac="2-point", ftol=None, xtol=1e-12, gtol=1e-12)
    ref = scipy.optimize.least_squares(lambda p: np_model(X, *p) - Y, [1.0, 1.0, 0.1], bounds=box, jac="2-point", ftol=None, xtol=1e-12, gtol=1e-12)
    np.testing.assert_allclose(res.params, ref.x, rtol=1e-6)
    assert res.success and res.params[0] == pytest.approx(2.0)
    np.testing.assert_allclose(ff.curve_fit(model, X, Y, p0=[1.0, 1.0, 0.1], bounds=box, ftol=1e-12, xtol=1e-12, gtol=1e-12)[0], res.params, rtol=1e-6)


def test_grad_of_curve_fit_outside_jit(x64):
    """d popt / d ydata by jax.grad, not under jit (pcov is traced then, the status
    not): for a model linear in its parameters, the least-squares solution's (X⁺)."""
    design = np.stack([np.ones_like(X), X], axis=1)
    grad = jax.grad(lambda y: ff.curve_fit(lambda x, a, b: a + b * x, X, y, p0=jnp.zeros(2))[0][1])(jnp.asarray(Y))
    np.testing.assert_allclose(grad, np.linalg.pinv(design)[1], rtol=1e-6, atol=1e-10)
