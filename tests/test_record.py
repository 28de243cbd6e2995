"""A Result remembers its problem (issue 18 §2 "Names", "A Result that remembers its
problem"): parameter names in the user's order, bounds, log_scale, sigma, loss; the
entry points share one set of defaults (issue 19 "Layout")."""

import inspect

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import fitfleet as ff
from fitfleet import _setup

S = np.linspace(0.1, 30.0, 20)
V = 29.0 * S / (6.0 + S) + 0.3 * np.sin(S)


def michaelis_menten(p, S, v):
    return p["vmax"] * S / (p["km"] + S) - v


def test_names_follow_the_users_order_not_jaxs(x64):
    """JAX sorts dict keys (km before vmax); repr and names keep the user's order, and
    the flat names still index ``jac``'s columns."""
    res = ff.least_squares(michaelis_menten, {"vmax": 10.0, "km": 10.0}, (S, V))
    assert res.names == ("km", "vmax")  # ravel order: the columns of res.jac
    assert [res.names[i] for i in res.order] == ["vmax", "km"]
    text = repr(res)
    assert text.index("vmax =") < text.index("km =")
    vmax = float(res.params["vmax"])
    assert f"vmax = {vmax:.6g}" in text and "success" in text and ff.Status(int(res.status)).name.lower() in text
    assert str(res) == text


def test_names_of_arrays_and_nested_trees(x64):
    fun = lambda p, t: jnp.concatenate([p["rates"]["k"] * t, p["a"] * jnp.ones(2) - 1.0])  # noqa: E731
    x0 = {"rates": {"k": jnp.ones(2)}, "a": jnp.ones(()) * 2}
    res = ff.least_squares(fun, x0, (jnp.ones(2),))
    assert res.names == ("a", "rates.k[0]", "rates.k[1]")
    assert [res.names[i] for i in res.order] == ["rates.k[0]", "rates.k[1]", "a"]
    plain = ff.least_squares(lambda p: p - 1.0, jnp.zeros(3))
    assert plain.names == ("p[0]", "p[1]", "p[2]")


def test_batch_repr_counts_statuses(x64):
    x0 = np.array([[10.0, 10.0]] * 3)
    y = np.stack([V, V, np.full_like(V, np.nan)])
    res = ff.fit_batch(lambda p, S, v: p[0] * S / (p[1] + S) - v, x0, (S, y), shared_args=(0,))
    text = repr(res)
    assert "Result of 3 fits: 2 succeeded" in text and "1 nonfinite_residual" in text


def test_result_records_bounds_log_scale_sigma_and_loss(x64):
    sigma = np.full(S.size, 0.5)
    res = ff.least_squares(
        michaelis_menten, {"vmax": 10.0, "km": 10.0}, (S, V), sigma=sigma, bounds=({"vmax": 0.0, "km": 0.0}, np.inf),
        log_scale={"vmax": False, "km": True}, loss="soft_l1", f_scale=2.0,
    )  # fmt: skip
    assert res.bounds == ((0.0, 0.0), (np.inf, np.inf))
    assert res.log_scale == (True, False)  # flat (km, vmax) order
    np.testing.assert_array_equal(res.sigma, sigma)
    assert res.loss == "soft_l1" and float(res.f_scale) == 2.0
    plain = ff.least_squares(michaelis_menten, {"vmax": 10.0, "km": 10.0}, (S, V))
    assert plain.bounds is None and plain.log_scale is None and plain.sigma is None


def test_batch_result_records_sigma_per_fit(x64):
    sigma = np.stack([np.full(S.size, 0.5), np.full(S.size, 2.0)])
    res = ff.fit_batch(lambda p, S, v: p[0] * S / (p[1] + S) - v, np.full((2, 2), 10.0), (S, np.stack([V, V])), shared_args=(0,), sigma=sigma)
    np.testing.assert_array_equal(res.sigma, sigma)
    shared = ff.fit_batch(lambda p, S, v: p[0] * S / (p[1] + S) - v, np.full((2, 2), 10.0), (S, np.stack([V, V])), shared_args=(0,), sigma=sigma[0])
    assert shared.sigma.shape == (2, S.size)


def test_profile_uses_what_the_result_recorded(x64):
    """Given the Result only, profile refits with the fit's sigma, bounds and log_scale;
    passing them again gives the same profile.  A parameter can be named."""
    sigma = np.full(S.size, 0.4)
    options = dict(sigma=sigma, log_scale={"vmax": False, "km": True})
    res = ff.least_squares(michaelis_menten, {"vmax": 10.0, "km": 10.0}, (S, V), **options)
    recorded = ff.profile(michaelis_menten, res, (S, V), index="km", absolute_sigma=True)
    explicit = ff.profile(michaelis_menten, res, (S, V), index=0, absolute_sigma=True, **options)
    np.testing.assert_allclose(recorded.statistic, explicit.statistic, rtol=1e-9)
    np.testing.assert_allclose(recorded.ci, explicit.ci, rtol=1e-9)
    unweighted = ff.profile(michaelis_menten, res, (S, V), index="km", absolute_sigma=True, sigma=None)
    assert not np.allclose(unweighted.statistic, recorded.statistic)  # sigma mattered
    with pytest.raises(ValueError, match="no parameter named 'Km'"):
        ff.profile(michaelis_menten, res, (S, V), index="Km")


def test_public_defaults_agree_with_the_one_table():
    """least_squares and fit_batch spell their options out; _setup.DEFAULTS is the one
    place a default lives."""
    for entry in (ff.least_squares, ff.fit_batch):
        params = inspect.signature(entry).parameters
        for name, default in _setup.DEFAULTS.items():
            assert params[name].default == default, (entry.__name__, name)


def test_scipy_habits_are_accepted(x64):
    """args as a list, scipy.optimize.Bounds, fit_batch(devices="cpu")."""
    ref = ff.least_squares(michaelis_menten, {"vmax": 10.0, "km": 10.0}, (S, V), bounds=(0.0, 100.0))
    res = ff.least_squares(michaelis_menten, {"vmax": 10.0, "km": 10.0}, [S, V], bounds=scipy.optimize.Bounds(0.0, 100.0))
    np.testing.assert_allclose(res.params["km"], ref.params["km"], rtol=1e-12)
    batch = ff.fit_batch(lambda p, S, v: p[0] * S / (p[1] + S) - v, np.full((2, 2), 10.0), (S, np.stack([V, V])), shared_args=(0,), devices="cpu")
    np.testing.assert_allclose(batch.params[0], [ref.params["vmax"], ref.params["km"]], rtol=1e-8)


@pytest.mark.parametrize(
    "call, error, text",
    [
        (lambda: ff.fit_batch(lambda p, S, v: p[0] * S / (p[1] + S) - v, np.ones(2), (S, np.stack([V] * 5)), shared_args=(0,)), ValueError, "`x0` has a leading axis of 2"),
        (lambda: ff.fit_batch(lambda p, S, v: p - 1, np.ones((2, 2)), (S, V), shared_args=True, devices="tpu-that-is-not-here"), ValueError, "`devices="),
        (lambda: ff.fit_batch(lambda p: p - 1, np.ones((2, 2)), devices=3), ValueError, "`devices`"),
        (lambda: ff.multistart(lambda p: p - 1, 0.0, 1.0, 4, dtype=np.int32), TypeError, "`dtype`"),
        (lambda: ff.fit_batch(lambda p: p - 1, np.ones((2, 2)), progress="yes"), TypeError, "`progress`"),
    ],
    ids=["x0-without-batch-axis", "devices-unknown-platform", "devices-not-devices", "multistart-int-dtype", "progress-string"],
)
def test_batch_input_errors_name_the_argument(call, error, text):
    with pytest.raises(error, match=text):
        call()
