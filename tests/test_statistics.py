"""Statistics that mean what they say (issue 18 §2) and reports (issue 21): undetermined
parameters, practical non-identifiability, multi-start p*, Wald intervals of log_scale
parameters, failed fits, the adaptive profile grid and its verdict, names in the user's
order, and the text summaries.  Against scipy, closed forms or brute force."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so
import scipy.stats as st

import fitfleet as ff
from fitfleet._profile import End, Verdict

TIGHT = dict(ftol=1e-12, xtol=1e-12, gtol=1e-12)
T = np.linspace(0.0, 4.0, 20)
Y = 3.0 * np.exp(-0.7 * T) + 0.01 * np.cos(7 * T)


def summed(p, t, y):
    """(a + b)·e^(−k t): only a + b and k are determined."""
    return (p["a"] + p["b"]) * jnp.exp(-p["k"] * t) - y


# --------------------------------------------------------------------------- 1. undetermined


def test_undetermined_parameters_get_inf_variance_and_a_warning(x64):
    """a and b: inf variance, NaN correlations, (−inf, inf) intervals and a warning
    naming them; k keeps the variance of the model written with c = a + b (scipy; with
    absolute_sigma, as dof = m − n counts every parameter, as scipy's does)."""
    args = (jnp.asarray(T), jnp.asarray(Y))
    res = ff.least_squares(summed, {"a": 1.0, "b": 1.0, "k": 1.0}, args, **TIGHT)
    with pytest.warns(UserWarning, match="could not be estimated for a, b: the data do not determine them"):
        u = ff.uncertainty(res, absolute_sigma=True)
    a, b, k = (res.names.index(name) for name in ("a", "b", "k"))
    assert u.undetermined.tolist() == [True, True, False] and int(u.rank) == 2
    assert np.isinf(u.stderr[a]) and np.isinf(u.stderr[b])
    assert np.all(np.isinf(u.pcov[a])) and np.all(np.isinf(u.pcov[:, b]))
    assert np.isnan(u.corr[a, k]) and np.isnan(u.corr[a, b])
    assert u.ci[a].tolist() == [-np.inf, np.inf]
    _, pcov = so.curve_fit(
        lambda t, c, k: c * np.exp(-k * t), T, Y, p0=[2.0, 1.0], absolute_sigma=True, xtol=1e-15, ftol=1e-15, gtol=1e-15
    )  # fmt: skip
    np.testing.assert_allclose(u.pcov[k, k], pcov[1, 1], rtol=1e-6)
    # Under jit: the same numbers, no warning (nothing can warn inside a trace).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jitted = jax.jit(lambda r: ff.uncertainty(r, absolute_sigma=True))(res)
    np.testing.assert_array_equal(jitted.stderr, u.stderr)


def test_unused_parameter_in_curve_fit_is_inf_where_scipy_is_inf(x64):
    """scipy's lm: the whole pcov inf and a warning; fitfleet: inf for the unused
    parameter only, the others as the fit without it."""
    x = np.linspace(0.0, 3.0, 15)
    y = 2.0 * x + 1.0 + 0.05 * np.sin(5 * x)
    with pytest.warns(so.OptimizeWarning, match="Covariance of the parameters could not be estimated"):
        _, scipy_pcov = so.curve_fit(lambda x, a, b, c: a * x + b, x, y, p0=[1.0, 1.0, 1.0])
    assert np.all(np.isinf(scipy_pcov))
    with pytest.warns(UserWarning, match=r"Covariance of the parameters could not be estimated for p\[2\]"):
        _, pcov = ff.curve_fit(lambda x, a, b, c: a * x + b, x, y, p0=[1.0, 1.0, 1.0], absolute_sigma=True)
    _, reduced = so.curve_fit(lambda x, a, b: a * x + b, x, y, absolute_sigma=True)
    np.testing.assert_allclose(np.asarray(pcov)[:2, :2], reduced, rtol=1e-6)
    assert np.all(np.isinf(np.asarray(pcov)[2])) and np.all(np.isinf(np.asarray(pcov)[:, 2]))


def test_undetermined_flags_in_both_precisions(dtype):
    """Exactly dependent columns are found in float32 too; a determined parameter is not
    flagged by round-off."""
    args = (jnp.asarray(T, dtype), jnp.asarray(Y, dtype))
    res = ff.least_squares(summed, {"a": jnp.asarray(1.0, dtype), "b": jnp.asarray(1.0, dtype), "k": jnp.asarray(1.0, dtype)}, args)
    assert res.success
    with pytest.warns(UserWarning, match="a, b"):
        u = ff.uncertainty(res)
    assert u.undetermined.tolist() == [True, True, False] and np.isfinite(u.stderr[2])
    well = ff.least_squares(lambda p, t, y: p[0] * jnp.exp(-p[1] * t) - y, jnp.ones(2, dtype), args)
    assert not np.any(ff.uncertainty(well).undetermined)


def test_absolute_sigma_decides_whether_the_scale_of_sigma_matters(x64):
    """The fitting guide: with absolute_sigma=False, pcov does not change when sigma is
    multiplied by a constant; with True it scales by the constant squared."""
    decay = lambda p, t, y: p[0] * jnp.exp(-p[1] * t) - y  # noqa: E731
    sigma = 0.01 * (1 + T)
    fits = [ff.least_squares(decay, jnp.array([3.0, 0.7]), (jnp.asarray(T), jnp.asarray(Y)), sigma=c * sigma, **TIGHT) for c in (1.0, 3.0)]
    relative = [ff.covariance(f) for f in fits]
    absolute = [ff.covariance(f, absolute_sigma=True) for f in fits]
    np.testing.assert_allclose(relative[1], relative[0], rtol=1e-8)
    np.testing.assert_allclose(absolute[1], 9 * absolute[0], rtol=1e-8)


# --------------------------------------------------------------------------- 2, 4, 6: a fast rate

T_SPARSE = np.array([1.0, 2.0, 4.0, 8.0, 12.0, 24.0])
NOISE = 0.01


def decay_pair(p, t, y):
    """y = A·(e^(−k1 t) − e^(−k2 t)) with known errors: a fast k2 seen after it has decayed."""
    return (p["A"] * (jnp.exp(-p["k1"] * t) - jnp.exp(-p["k2"] * t)) - y) / NOISE


def fast_decay_fit():
    y = 2.0 * (np.exp(-0.1 * T_SPARSE) - np.exp(-13.0 * T_SPARSE))
    args = (jnp.asarray(T_SPARSE), jnp.asarray(y))
    res = ff.least_squares(decay_pair, {"A": 1.0, "k1": 0.2, "k2": 5.0}, args, log_scale=True)
    assert res.success, res.message
    return res, args, y


def test_practical_non_identifiability_of_a_fast_rate(x64):
    """k2 passes the rank test (its eigenvalue is far above eps·λ_max) but its standard
    error is hundreds of times its value: not identifiable."""
    res, _, _ = fast_decay_fit()
    ident = ff.identifiability(res, absolute_sigma=True)
    k2 = res.names.index("k2")
    assert not np.any(ident.unidentified) and bool(ident.structurally_identifiable)
    u = ff.uncertainty(res, absolute_sigma=True)
    assert float(u.stderr[k2]) > 100 * float(res.params["k2"])
    assert ident.practically_unidentified.tolist() == [i == k2 for i in range(3)]
    assert not bool(ident.identifiable)
    np.testing.assert_allclose(ident.relative_stderr, u.stderr / np.abs(u.estimate), rtol=1e-12)
    # A per-parameter threshold turns the test off where it does not apply.
    assert bool(ff.identifiability(res, absolute_sigma=True, max_rse=[1.0, 1.0, np.inf]).identifiable)
    with pytest.raises(ValueError, match="max_rse"):
        ff.identifiability(res, max_rse=[1.0, 1.0])


def test_a_nan_fit_is_not_identifiable(x64):
    y = np.array([1.0, np.nan, 3.0, 4.0])
    res = ff.least_squares(lambda p, x, y: p[0] * x - y, jnp.ones(1), (jnp.arange(4.0), jnp.asarray(y)))
    ident = ff.identifiability(res, absolute_sigma=True)
    assert not bool(ident.finite) and not bool(ident.identifiable) and ident.unidentified.tolist() == [True]


def test_wald_interval_of_a_log_scale_parameter_is_positive(x64):
    """On log p, mapped back: p·exp(∓q·se/p); the linear interval would go negative."""
    res, _, _ = fast_decay_fit()
    u = ff.uncertainty(res, absolute_sigma=True)
    p, se, z = np.asarray(u.estimate), np.asarray(u.stderr), st.norm.ppf(0.975)
    assert p[2] - z * se[2] < 0  # what the interval on p would say
    np.testing.assert_allclose(u.ci, np.stack([p * np.exp(-z * se / p), p * np.exp(z * se / p)], axis=1), rtol=1e-12)
    assert np.all(np.asarray(u.ci) > 0)
    # A parameter fitted on its own scale keeps the symmetric interval.
    linear = ff.least_squares(decay_pair, res.params, (jnp.asarray(T_SPARSE), jnp.asarray(res.residual * 0)), max_steps=0)
    assert linear.log_scale is None


def test_profile_default_grid_is_finite_and_walks_to_the_threshold(x64):
    """The fast rate: its standard error is ~250 times its value, so the old default grid
    was exactly 0 and inf.  Now: finite positive values within 3 decades, the lower
    end where a refit by scipy (k2 fixed) raises χ² by 3.84, no upper end."""
    res, args, y = fast_decay_fit()
    prof = ff.profile(decay_pair, res, args, index="k2", absolute_sigma=True)
    values, k2 = np.asarray(prof.values), float(res.params["k2"])
    assert np.all(np.isfinite(values)) and np.all(values > 0)
    assert values.min() >= k2 * 1e-3 * (1 - 1e-9) and values.max() <= k2 * 1e3 * (1 + 1e-9)
    lo, hi = np.asarray(prof.ci)
    assert hi == np.inf and 0 < lo < k2
    assert prof.ends.tolist() == [End.CROSSED, End.EXTENT] and int(prof.verdict) == Verdict.OPEN
    assert "practically non-identifiable" in prof.verdict_text and prof.name == "k2"

    def chi2(k2):
        fit = so.least_squares(lambda q: (q[0] * (np.exp(-q[1] * T_SPARSE) - np.exp(-k2 * T_SPARSE)) - y) / NOISE, [2.0, 0.1], xtol=1e-15, ftol=1e-15, gtol=1e-15)
        return 2 * fit.cost

    np.testing.assert_allclose(chi2(lo) - 2 * float(res.cost), st.chi2.ppf(0.95, 1), rtol=0.02)


def line(p, x, y):
    return (p[0] + p[1] * x - y) / 0.3


def test_profile_widens_over_rounds_to_the_exact_interval(x64):
    """One point per side per round: the walk needs several rounds (warm-started from the
    round before) to cross; for a linear model √Δ is linear, so the interval is exact."""
    rng = np.random.default_rng(2)
    x = np.linspace(0, 5, 12)
    y = 1.0 + 0.7 * x + 0.3 * rng.standard_normal(x.size)
    res = ff.least_squares(line, jnp.zeros(2), (jnp.asarray(x), jnp.asarray(y)), **TIGHT)
    prof = ff.profile(line, res, (jnp.asarray(x), jnp.asarray(y)), index=1, n_points=3, absolute_sigma=True)
    assert prof.values.shape[0] > 2  # more than the first round
    X = np.stack([np.ones_like(x), x], axis=1)
    se = 0.3 * np.sqrt(np.linalg.inv(X.T @ X)[1, 1])
    half = st.norm.ppf(0.975) * se
    np.testing.assert_allclose(prof.ci, [float(res.params[1]) - half, float(res.params[1]) + half], rtol=1e-9)
    assert int(prof.verdict) == Verdict.IDENTIFIABLE and bool(prof.identifiable)


def test_profile_verdicts_flat_bound_and_one_sided(x64):
    """Structural (a + b: flat), leaving through a bound, and an optimum on a bound."""
    args = (jnp.asarray(T), jnp.asarray(Y))
    res = ff.least_squares(summed, {"a": 1.0, "b": 1.0, "k": 1.0}, args)
    flat = ff.profile(summed, res, args, index="a", absolute_sigma=True)
    assert int(flat.verdict) == Verdict.FLAT and flat.ci.tolist() == [-np.inf, np.inf]
    assert np.all(np.isfinite(flat.values))
    # A rate bounded above by 0.5: data with a rate of 0.7 put the estimate on the
    # bound (one-sided); data with a rate just below it leave the interval through it.
    x = jnp.asarray(T)
    decay = lambda p, t, y: (p[0] * jnp.exp(-p[1] * t) - y) / 0.01  # noqa: E731
    bounds = ([0.0, 0.0], [10.0, 0.5])
    on = ff.least_squares(decay, jnp.array([1.0, 0.3]), (x, jnp.asarray(Y)), bounds=bounds)
    assert float(on.params[1]) == pytest.approx(0.5, abs=1e-9)
    one_sided = ff.profile(decay, on, (x, jnp.asarray(Y)), index=1, absolute_sigma=True)
    assert int(one_sided.verdict) == Verdict.ONE_SIDED and one_sided.ends.tolist() == [End.CROSSED, End.AT_BOUND]
    assert np.all(np.asarray(one_sided.values) <= 0.5)
    y_near = jnp.asarray(3.0 * np.exp(-0.498 * T) + 0.01 * np.cos(7 * T))
    near = ff.least_squares(decay, jnp.array([1.0, 0.3]), (x, y_near), bounds=bounds)
    se = float(ff.uncertainty(near, absolute_sigma=True).stderr[1])
    assert float(near.params[1]) < 0.5 < float(near.params[1]) + 1.96 * se  # the bound cuts the interval
    through = ff.profile(decay, near, (x, y_near), index=1, absolute_sigma=True)
    assert int(through.verdict) == Verdict.BOUND and through.ends.tolist() == [End.CROSSED, End.BOUND]
    assert float(through.ci[1]) == np.inf and np.max(through.values) <= 0.5


@pytest.mark.slow
def test_profile_of_an_ode_rate_with_an_implicit_solver(x64):
    """The old default grid put a rate at exactly 0 and inf, where the implicit solver's
    linear solve raised (lineax EquinoxRuntimeError) and took the profile down."""
    diffrax = pytest.importorskip("diffrax")
    t = jnp.asarray(T_SPARSE)

    def solve(p, t):
        def rates(_, x, p):
            return jnp.stack([-p["k2"] * x[0], p["k2"] * x[0] - p["k1"] * x[1]])

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(rates), diffrax.Kvaerno5(), t0=0.0, t1=t[-1], dt0=0.01, y0=jnp.array([1.0, 0.0]), args=p,
            saveat=diffrax.SaveAt(ts=t), stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-10),
            max_steps=4096, adjoint=diffrax.ForwardMode(), throw=False,
        )  # fmt: skip
        return p["A"] * sol.ys[:, 1]

    y = solve({"A": 2.0, "k1": 0.1, "k2": 13.0}, t)
    model = lambda p, t, y: (solve(p, t) - y) / NOISE  # noqa: E731
    res = ff.least_squares(model, {"A": 1.0, "k1": 0.2, "k2": 5.0}, (t, y), log_scale=True)
    prof = ff.profile(model, res, (t, y), index="k2", absolute_sigma=True)
    assert np.all(np.isfinite(np.asarray(prof.values))) and int(prof.verdict) == Verdict.OPEN
    closed = ff.profile(decay_pair, fast_decay_fit()[0], (t, y), index="k2", absolute_sigma=True)
    np.testing.assert_allclose(prof.ci[0], closed.ci[0], rtol=1e-3)


# --------------------------------------------------------------------------- 5. failed fits


def test_uncertainty_of_a_failed_fit_is_nan_with_one_warning_per_batch(x64):
    decay = lambda p, t, y: p[0] * jnp.exp(-p[1] * t) - y  # noqa: E731
    args = (jnp.asarray(T), jnp.asarray(Y))
    optimum = ff.least_squares(decay, jnp.array([3.0, 0.7]), args).params
    x0 = jnp.stack([jnp.array([1.0, 0.1]), jnp.array([1.0, 0.1]), optimum])
    batch = ff.fit_batch(decay, x0, args, shared_args=True, max_steps=2)
    failed = ~np.asarray(batch.success)
    assert failed.sum() >= 1 and not failed.all()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        u = ff.uncertainty(batch)
    assert len(caught) == 1 and f"{failed.sum()} of 3 fits did not succeed" in str(caught[0].message)
    assert np.all(np.isnan(np.asarray(u.stderr)[failed])) and np.all(np.isfinite(np.asarray(u.stderr)[~failed]))
    with pytest.warns(UserWarning, match="covariances of a failed fit are NaN"):
        assert np.all(np.isnan(np.asarray(ff.covariance(batch))[failed]))
    one = jax.tree_util.tree_map(lambda a: a[int(np.flatnonzero(failed)[0])], batch)
    text = one.summary()
    assert "FAILED" in text and "uncertainties are NaN" in text


# --------------------------------------------------------------------------- 3. multistart p*


def sinus(p, t, y):
    return p[0] * jnp.sin(p[1] * t + p[2]) - y


def test_p_star_counts_every_start_that_reaches_the_best_cost(x64):
    """A sinusoid's phase is defined modulo 2π (and A·sin(θ) = −A·sin(θ + π)): starts end
    at many parameter sets with the best cost.  p* counts them all; the optima list
    them separately.  Checked against the symmetry: a start found the best cost exactly
    when its parameters are a copy of the best's."""
    t = np.linspace(0, 6, 40)
    y = 1.5 * np.sin(1.3 * t + 0.4) + 0.1 * np.cos(7 * t)
    ms = ff.multistart(sinus, [0.1, 0.5, -10.0], [3.0, 2.0, 10.0], 64, (jnp.asarray(t), jnp.asarray(y)))
    p = np.asarray(ms.results.params)
    best = np.asarray(ms.best.params)

    def canonical(q):  # A·sin(ωt + φ) = −A·sin(−ωt − φ) = −A·sin(ωt + φ + π)
        q = np.where(q[..., 1:2] < 0, -q, q)
        return np.stack([np.abs(q[..., 0]), q[..., 1], q[..., 2] + (q[..., 0] < 0) * np.pi], -1)

    p, best = canonical(p), canonical(best)
    shift = (p[:, 2] - best[2]) / (2 * np.pi)
    copies = (np.abs(p[:, 0] - best[0]) < 1e-4) & (np.abs(p[:, 1] - best[1]) < 1e-4) & (np.abs(shift - np.round(shift)) < 1e-4)
    assert ms.n_success == copies.sum() and ms.p_star == copies.mean()
    at_best = [o for o in ms.optima if o.cost - float(ms.best.cost) <= ms.threshold]
    assert len(at_best) > 2 and ms.p_star > 2 * ms.optima[0].fraction  # the old p* was the first optimum's share
    assert ms.threshold == pytest.approx(1e-3 * float(ms.best.cost)) and ms.threshold_rule == "relative"
    assert ms.starts_needed(0.99) == int(np.ceil(np.log(0.01) / np.log1p(-ms.p_star)))
    # A negative log-likelihood: the likelihood-ratio threshold χ²₁(0.95)/2.
    nll = ff._multistart.summarise(ms.results, ms.starts, absolute_sigma=True)
    assert nll.threshold == pytest.approx(st.chi2.ppf(0.95, 1) / 2, rel=1e-12) and nll.threshold_rule == "nll"
    cost = np.asarray(ms.results.cost)
    assert nll.n_success == np.sum(cost - cost[0] <= st.chi2.ppf(0.95, 1) / 2)
    text = ms.summary()
    assert f"best value found   = {ms.n_success} times" in text and f"{len(at_best)} distinct parameter sets" in text


def test_multistart_threshold_options_are_checked():
    with pytest.raises(ValueError, match="threshold"):
        ff.multistart(lambda p: p, -1.0, 1.0, 4, threshold=-1.0)
    with pytest.raises(TypeError, match="absolute_sigma"):
        ff.multistart(lambda p: p, -1.0, 1.0, 4, absolute_sigma="yes")


# --------------------------------------------------------------------------- 7, 8. reports

S = np.linspace(0.1, 30.0, 20)
V = 29.0 * S / (6.0 + S) + 0.3 * np.sin(S)


def michaelis_menten(p, S, v):
    return p["vmax"] * S / (p["km"] + S) - v


def test_result_summary_matches_scipy_in_the_users_order(x64):
    res = ff.least_squares(michaelis_menten, {"vmax": 10.0, "km": 10.0}, (S, V), **TIGHT)
    text = res.summary()
    popt, pcov = so.curve_fit(lambda s, vmax, km: vmax * s / (km + s), S, V, p0=[10.0, 10.0])
    se = np.sqrt(np.diag(pcov))
    rss = float(np.sum((popt[0] * S / (popt[1] + S) - V) ** 2))
    lines = text.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("    vmax") or line.startswith("    km")}
    assert text.index("    vmax ") < text.index("    km ")  # the user's order, not JAX's (km < vmax)
    for j, name in enumerate(["vmax", "km"]):
        row = rows[name]
        np.testing.assert_allclose(float(row[1]), popt[j], rtol=1e-3)
        np.testing.assert_allclose(float(row[2]), se[j], rtol=1e-3)
        np.testing.assert_allclose(float(row[3].rstrip("%")), 100 * se[j] / popt[j], rtol=1e-2)
        q = st.t.ppf(0.975, S.size - 2)
        np.testing.assert_allclose([float(row[4]), float(row[5])], [popt[j] - q * se[j], popt[j] + q * se[j]], rtol=1e-3)
    stat = {line.split("=")[0].strip(): line.split("=")[1].split()[0] for line in lines if " = " in line and line.startswith("    ") and "C(" not in line}
    np.testing.assert_allclose(float(stat["chi-square"]), rss, rtol=1e-5)
    np.testing.assert_allclose(float(stat["reduced chi-square"]), rss / 18, rtol=1e-5)
    np.testing.assert_allclose(float(stat["Akaike info crit"]), 20 * np.log(rss / 20) + 4, rtol=1e-5)
    np.testing.assert_allclose(float(stat["Bayesian info crit"]), 20 * np.log(rss / 20) + 2 * np.log(20), rtol=1e-5)
    corr = pcov[0, 1] / (se[0] * se[1])
    assert f"C(vmax, km) = {corr:+.4f}" in text
    assert "[[Warnings]]" not in text
    assert res.summary(min_correlation=0.999).find("[[Correlations]]") == -1
    u_text = ff.uncertainty(res).summary()
    assert u_text.index("vmax") < u_text.index("km")
    with pytest.raises(ValueError, match="single fit"):
        jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), res).summary()


def test_result_summary_warns_of_what_the_numbers_cannot_say(x64):
    args = (jnp.asarray(T), jnp.asarray(Y))
    res = ff.least_squares(summed, {"k": 1.0, "b": 1.0, "a": 1.0}, args)
    text = res.summary()
    assert "[[Warnings]]" in text and "undetermined by the data (variance inf): b, a" in text
    assert text.index("    k ") < text.index("    b ") < text.index("    a ")  # as written
    fast, _, _ = fast_decay_fit()
    assert "practically non-identifiable: k2" in fast.summary(absolute_sigma=True)
    assert "log scale" in fast.summary()
    on = ff.least_squares(lambda p, t, y: p["k"] - 0.0 * y[0] - 1.0, {"k": 0.0}, args, bounds=({"k": -1.0}, {"k": 0.5}))
    assert float(on.params["k"]) == pytest.approx(0.5) and "on a bound: k;" in on.summary()


# --------------------------------------------------------------------------- 9. promises


def test_every_promise_in_the_fitting_guide_names_tests_that_exist():
    """The guide's table of promises: every line names at least one test, and every test
    it names exists (``file.py::name``, or ``::name`` in the file named before it)."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent
    guide = (root.parent / "docs" / "fitting_guide.md").read_text(encoding="utf-8")
    section = guide.split("## What fitfleet promises about statistics and status", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| promise")]
    assert len(rows) >= 20
    for row in rows:
        promise, tests = row.strip("| ").rsplit(" | ", 1)
        names = re.findall(r"`([\w.]*)::(\w+)`", tests)
        assert names, f"no test for: {promise}"
        current = None
        for file, name in names:
            current = file or current
            source = (root / current).read_text(encoding="utf-8")
            assert re.search(rf"^def {name}\(", source, re.M), f"{current}::{name} (for: {promise}) does not exist"
