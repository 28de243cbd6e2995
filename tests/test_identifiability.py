"""Identifiability (spectrum of JᵀJ) and profile likelihood, on a model with a built-in
structural non-identifiability and on models with closed-form answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so
import scipy.stats as st

import fitfleet as ff
from conftest import count_compilations

T = np.linspace(0.0, 10.0, 30)
NOISE = 0.05
TRUTH = np.array([2.0, 0.5, 3.0, 0.4])  # s, k_tl, k_tx, k: only s·k_tl·k_tx = 3 is identifiable
TIGHT = dict(ftol=1e-14, xtol=1e-14, gtol=1e-14)


def expression(p, t, y):
    """y = s·k_tl·k_tx·(1 − e^(−k t)), residual scaled by the known noise."""
    s, k_tl, k_tx, k = p[0], p[1], p[2], p[3]
    return (s * k_tl * k_tx * (1 - jnp.exp(-k * t)) - y) / NOISE


def expression_np(p, t, y):
    return (p[0] * p[1] * p[2] * (1 - np.exp(-p[3] * t)) - y) / NOISE


def data(seed=0):
    rng = np.random.default_rng(seed)
    return expression_np(TRUTH, T, 0.0) * NOISE + NOISE * rng.standard_normal(T.size)


def fit_expression(dtype="float64", y=None):
    y = data() if y is None else y
    # Default tolerances in float64: on this exactly rank-deficient problem LM's gradient
    # cosine stalls near 1e-7, so ftol=1e-10 runs out of steps (reported to the lead).
    tol = {} if dtype == "float64" else dict(ftol=1e-6, xtol=1e-6, gtol=1e-6)
    x0 = jnp.asarray([1.0, 1.0, 1.0, 1.0], dtype)
    return ff.least_squares(expression, x0, (jnp.asarray(T, dtype), jnp.asarray(y, dtype)), **tol)


# --------------------------------------------------------------------------- spectrum


def test_structural_non_identifiability_in_log_space(dtype):
    res = fit_expression(dtype)
    assert res.success, res.message
    p = np.asarray(res.params, np.float64)
    np.testing.assert_allclose(p[0] * p[1] * p[2], 3.0, rtol=0.05)
    ident = ff.identifiability(res, log_params=True)
    # Two directions (the 2-D level set of log s + log k_tl + log k_tx) are undetermined.
    assert ident.undetermined.tolist() == [False, False, True, True]
    assert ident.unidentified.tolist() == [True, True, True, False]
    assert not bool(ident.identifiable)
    assert float(ident.condition_number) > 1 / (100 * np.finfo(dtype).eps)
    # ... and they span exactly the tangent space of the level set: orthogonal to the
    # product's log-gradient (1, 1, 1, 0) and to the identifiable rate k.
    null = np.asarray(ident.eigenvectors, np.float64)[:, 2:]
    tol = 1e-6 if dtype == "float64" else 1e-3
    np.testing.assert_allclose(np.array([1.0, 1, 1, 0]) @ null, 0, atol=tol)
    np.testing.assert_allclose(null[3], 0, atol=tol)
    # The null weights are those of that 2-D subspace: 2/3 for each of s, k_tl, k_tx.
    np.testing.assert_allclose(ident.null_weight, [2 / 3, 2 / 3, 2 / 3, 0], atol=tol)
    # The nonzero eigenvalues are those of (J diag p)ᵀ(J diag p), computed independently.
    Jlog = np.asarray(res.jac, np.float64) * p
    lam = np.sort(np.linalg.eigvalsh(Jlog.T @ Jlog))[::-1]
    np.testing.assert_allclose(ident.eigenvalues[:2], lam[:2], rtol=1e-4 if dtype == "float32" else 1e-9)
    assert np.all(np.asarray(ident.eigenvalues[2:]) <= float(ident.threshold))


def test_near_zero_eigenvalue_along_the_products_level_set(x64):
    """In the user's (linear) parameters too: moving along an undetermined eigen-direction
    leaves s·k_tl·k_tx unchanged to first order."""
    res = fit_expression()
    ident = ff.identifiability(res)
    s, k_tl, k_tx, _ = np.asarray(res.params)
    grad_product = np.array([k_tl * k_tx, s * k_tx, s * k_tl, 0.0])
    null = np.asarray(ident.eigenvectors)[:, np.asarray(ident.undetermined)]
    assert null.shape[1] == 2
    np.testing.assert_allclose(grad_product @ null, 0, atol=1e-8 * np.linalg.norm(grad_product))
    lam = np.asarray(ident.eigenvalues)
    assert lam[-1] <= 1e-20 * lam[0]  # exactly dependent columns: zero to rounding
    np.testing.assert_allclose(ident.stiff, np.asarray(ident.eigenvectors)[:, 0])
    np.testing.assert_allclose(ident.sloppy, np.asarray(ident.eigenvectors)[:, -1])


def well_posed(p, t, y):
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y


def test_well_posed_model_is_identifiable_and_matches_numpy(x64):
    t = np.linspace(0, 4, 20)
    y = 2.0 * np.exp(-1.3 * t) + 0.5 + 0.01 * np.cos(5 * t)
    res = ff.least_squares(well_posed, jnp.array([1.0, 1.0, 0.0]), (jnp.asarray(t), jnp.asarray(y)), **TIGHT)
    J = np.asarray(res.jac)
    for log_params in (False, True):
        ident = ff.identifiability(res, log_params=log_params)
        Jx = J * np.asarray(res.params) if log_params else J
        lam, vec = np.linalg.eigh(Jx.T @ Jx)
        np.testing.assert_allclose(ident.eigenvalues, lam[::-1], rtol=1e-9)
        np.testing.assert_allclose(np.abs(ident.eigenvectors), np.abs(vec[:, ::-1]), atol=1e-8)
        np.testing.assert_allclose(ident.condition_number, np.linalg.cond(Jx) ** 2, rtol=1e-8)
        assert bool(ident.identifiable) and not np.any(ident.unidentified)


def test_identifiability_of_batched_results_and_under_jit(x64):
    ys = jnp.asarray(np.stack([data(1), data(2)]))
    batch = jax.vmap(lambda y: ff.least_squares(expression, jnp.ones(4), (jnp.asarray(T), y)))(ys)
    ident = jax.jit(lambda r: ff.identifiability(r, log_params=True))(batch)
    assert ident.eigenvalues.shape == (2, 4) and ident.unidentified.shape == (2, 4)
    for i in range(2):
        single = ff.identifiability(jax.tree_util.tree_map(lambda a: a[i], batch), log_params=True)
        np.testing.assert_allclose(ident.eigenvalues[i][:2], single.eigenvalues[:2], rtol=1e-10)
        assert ident.unidentified[i].tolist() == [True, True, True, False]


def test_bad_identifiability_options():
    res = ff.least_squares(lambda p: p - 1.0, jnp.zeros(2))
    with pytest.raises(TypeError, match="log_params"):
        ff.identifiability(res, log_params="yes")
    with pytest.raises(ValueError, match="rtol"):
        ff.identifiability(res, rtol=-1.0)


# --------------------------------------------------------------------------- profile likelihood


def test_profile_of_a_non_identifiable_parameter_is_flat(x64):
    res = fit_expression()
    s_hat = float(res.params[0])
    grid = s_hat * np.geomspace(0.25, 4.0, 9)
    prof = ff.profile(expression, res, (jnp.asarray(T), jnp.asarray(data())), index=0, grid=grid, absolute_sigma=True)
    assert np.all(np.asarray(prof.success))
    np.testing.assert_allclose(prof.statistic, 0, atol=1e-6)  # Δχ² flat: k_tl·k_tx compensates
    assert prof.ci.tolist() == [-np.inf, np.inf]  # unbounded within the grid
    # The refits keep the identifiable product and put the profiled value in place.
    p = np.asarray(prof.params)
    np.testing.assert_allclose(p[:, 0], np.sort(grid))
    np.testing.assert_allclose(p[:, 0] * p[:, 1] * p[:, 2], s_hat * float(res.params[1] * res.params[2]), rtol=1e-6)


def test_profile_of_an_identifiable_rate_gives_the_likelihood_ratio_interval(x64):
    """The ends of the interval are where an independent refit (scipy, k fixed) raises
    χ² by χ²₁(0.95) = 3.84 above its minimum."""
    y = data()
    res = fit_expression(y=y)
    prof = ff.profile(expression, res, (jnp.asarray(T), jnp.asarray(y)), index=3, absolute_sigma=True, n_points=31)
    lo, hi = np.asarray(prof.ci)
    k_hat = float(res.params[3])
    assert lo < k_hat < hi and np.isfinite([lo, hi]).all()
    np.testing.assert_allclose(prof.threshold, st.chi2.ppf(0.95, 1), rtol=1e-10)
    chi2_min = 2 * float(res.cost)

    def chi2_at(k):
        # s is unidentifiable: fix it too and fit the product through k_tl (same profile).
        fit = so.least_squares(lambda q: expression_np([1.0, q[0], q[1], k], T, y), [1.0, 1.0], xtol=1e-15, ftol=1e-15, gtol=1e-15)
        return 2 * fit.cost

    for end in (lo, hi):
        np.testing.assert_allclose(chi2_at(end) - chi2_min, st.chi2.ppf(0.95, 1), rtol=2e-3)
    # Close to the Wald interval for this nearly linear direction, as a sanity check.
    with pytest.warns(UserWarning, match=r"for p\[0\], p\[1\], p\[2\]"):  # s, k_tl, k_tx: undetermined
        se = float(ff.uncertainty(res, absolute_sigma=True).stderr[3])
    np.testing.assert_allclose([lo, hi], [k_hat - 1.96 * se, k_hat + 1.96 * se], rtol=0.05)


def test_profile_compiles_once_for_new_data_and_tolerances(x64):
    """A profile is one compiled program: new data of the same shape, or new tolerances,
    reuse it (and the answers are the new problem's, not the old one's)."""
    y = data()
    res = fit_expression(y=y)
    args = (jnp.asarray(T), jnp.asarray(y))
    first = ff.profile(expression, res, args, index=3, absolute_sigma=True)
    y2 = data(seed=5)
    res2, args2 = fit_expression(y=y2), (jnp.asarray(T), jnp.asarray(y2))
    with count_compilations() as names:
        second = ff.profile(expression, res2, args2, index=3, absolute_sigma=True, ftol=1e-10, gtol=1e-9)
        jax.block_until_ready(second)
    assert names == []
    assert not np.allclose(second.ci, first.ci)
    np.testing.assert_allclose(second.ci, ff.profile(expression, res2, args2, index=3, absolute_sigma=True).ci, rtol=1e-6)


def looped_decay(p, t, y):
    """``p[0] e^(−|p[1]| t) − y``, the rate found by Newton's iteration for √(p[1]²) in a
    ``while_loop`` whose trip count depends on ``p``, as an ODE solve's does."""

    def body(carry):
        i, z = carry
        return i + 1, 0.5 * (z + p[1] ** 2 / z)

    def cond(carry):
        i, z = carry
        return (i < 60) & (jnp.abs(z * z - p[1] ** 2) > 1e-15 * p[1] ** 2)

    _, rate = jax.lax.while_loop(cond, body, (0, jnp.abs(p[1]) + 1.0))
    return (p[0] * jnp.exp(-rate * t) - y) / NOISE


def test_a_model_with_loops_refits_by_fit_batch_as_one_program_does(x64, capfd):
    """A model with loops of its own is profiled round by round through fit_batch (its
    vmapped loops inside the walk's loop compile slowly; ``fitfleet._profile``): the
    same grid, Δ, interval and verdict as the one program it is under ``jit``, and the
    progress bar counts its refits."""
    t = jnp.linspace(0.0, 4.0, 25)
    y = 2.0 * jnp.exp(-0.7 * t) + NOISE * jnp.sin(11 * t)
    res = ff.least_squares(looped_decay, jnp.array([1.0, 1.0]), (t, y))
    assert res.success and abs(float(res.params[1]) - 0.7) < 0.05
    with count_compilations() as names:
        prof = ff.profile(looped_decay, res, (t, y), index=1, absolute_sigma=True, progress=True)
    assert names and "jit(_profile)" not in names  # fit_batch's programs, not the one program
    assert f"{prof.values.shape[0] + 1}/" in capfd.readouterr().err
    one = jax.jit(lambda r: ff.profile(looped_decay, r, (t, y), index=1, absolute_sigma=True))(res)
    used = ~np.isnan(np.asarray(one.values))
    np.testing.assert_allclose(prof.values, np.asarray(one.values)[used], rtol=1e-12)
    np.testing.assert_allclose(prof.statistic, np.asarray(one.statistic)[used], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(prof.ci, one.ci, rtol=1e-8)
    assert int(prof.verdict) == int(one.verdict) == ff._profile.Verdict.IDENTIFIABLE


def line(p, x, y):
    return p[0] + p[1] * x - y


def test_profile_of_linear_models_matches_closed_forms_under_vmap(x64):
    """For a linear model the profile is exactly quadratic: with known errors the
    interval is p̂ ± z·se; with the error scale profiled too it is
    p̂ ± √(RSS·(e^(q/m) − 1)·[(XᵀX)⁻¹]_ii), q = χ²₁(level).  Two data sets at once,
    through jax.vmap of fit and profile (default grid included)."""
    rng = np.random.default_rng(8)
    x = np.linspace(0, 5, 12)
    ys = np.stack([1.0 + 0.7 * x, 2.0 - 0.4 * x]) + 0.3 * rng.standard_normal((2, x.size))
    X = np.stack([np.ones_like(x), x], axis=1)
    c11 = np.linalg.inv(X.T @ X)[1, 1]
    q, m = st.chi2.ppf(0.9, 1), x.size
    fits = jax.vmap(lambda y: ff.least_squares(line, jnp.zeros(2), (jnp.asarray(x), y), **TIGHT))(jnp.asarray(ys))
    unit = jnp.linspace(-1.0, 1.0, 21)

    def profiles(res, y):
        args = (jnp.asarray(x), y)
        known = ff.profile(line, res, args, index=1, absolute_sigma=True, level=0.9)
        width = 4 * jnp.sqrt(2 * res.cost / (m - 2) * c11)
        unknown = ff.profile(line, res, args, index=1, grid=res.params[1] + width * unit, level=0.9)
        return known, unknown

    known, unknown = jax.vmap(profiles)(fits, jnp.asarray(ys))
    for i, y in enumerate(ys):
        beta, rss, *_ = np.linalg.lstsq(X, y, rcond=None)
        half = np.sqrt(q * c11)  # σ = 1: the residual is already "whitened"
        np.testing.assert_allclose(known.ci[i], [beta[1] - half, beta[1] + half], rtol=1e-9)
        g = np.asarray(unknown.values[i])
        np.testing.assert_allclose(unknown.statistic[i], m * np.log(1 + (g - beta[1]) ** 2 / (c11 * rss[0])), rtol=1e-7, atol=1e-9)
        half = np.sqrt(rss[0] * (np.exp(q / m) - 1) * c11)
        np.testing.assert_allclose(unknown.ci[i], [beta[1] - half, beta[1] + half], rtol=1e-4)


def test_profile_from_starting_parameters_with_bounds_and_log_scale(x64):
    """Given parameters instead of a Result, profile fits first; bounds and log_scale
    apply to the refits, and the default grid stays inside the bounds."""
    t = np.linspace(0, 4, 20)
    y = 2.0 * np.exp(-1.3 * t) + 0.5 + 0.05 * np.cos(5 * t)
    args = (jnp.asarray(t), jnp.asarray(y))
    bounds = (np.array([0.0, 0.0, 0.0]), np.array([10.0, 1.2, 2.0]))  # the rate's bound is active
    prof = ff.profile(well_posed, jnp.array([1.0, 1.0, 0.1]), args, index=0, bounds=bounds, log_scale=[True, False, False])
    assert np.all(np.asarray(prof.params)[:, 1] <= 1.2)
    assert np.all(np.asarray(prof.values) > 0)
    ref = so.least_squares(lambda p: p[0] * np.exp(-p[1] * t) + p[2] - y, [1.0, 1.0, 0.1], bounds=bounds, xtol=1e-15, ftol=1e-15, gtol=1e-15)
    np.testing.assert_allclose(prof.estimate, ref.x[0], rtol=1e-6)
    np.testing.assert_allclose(prof.cost_min, ref.cost, rtol=1e-8)


@pytest.mark.parametrize(
    "options, error, text",
    [
        (dict(index=5), ValueError, "`index` must be a parameter name or an int in \\[0, 2\\)"),
        (dict(grid=[[1.0]]), ValueError, "1-D"),
        (dict(grid=[np.nan]), ValueError, "finite"),
        (dict(level=0.0), ValueError, "level"),
        (dict(jac=lambda p, x, y: None), TypeError, "automatic differentiation"),
        (dict(n_points=2), ValueError, "n_points"),
    ],
)
def test_bad_profile_options(options, error, text):
    x = jnp.linspace(0, 1, 5)
    res = ff.least_squares(line, jnp.zeros(2), (x, 2 * x))
    options.setdefault("index", 1)
    with pytest.raises(error, match=text):
        ff.profile(line, res, (x, 2 * x), **options)
