"""Uncertainty outputs against NIST's certified standard deviations, scipy's curve_fit
and closed forms; the Student-t quantile against scipy.stats."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize as so
import scipy.stats as st

import fitfleet as ff
import nist
from fitfleet._stats import chi2_1_ppf, norm_ppf, t_ppf

NIST_TIGHT = dict(ftol=1e-15, xtol=1e-15, gtol=1e-15, max_steps=10_000)
TIGHT = dict(ftol=1e-12, xtol=1e-12, gtol=1e-12)


# --------------------------------------------------------------------------- Student t


def test_t_ppf_matches_scipy():
    q = np.array([1e-12, 1e-6, 0.001, 0.025, 0.05, 0.3, 0.5, 0.6, 0.95, 0.975, 0.999, 1 - 1e-6, 1 - 1e-12])
    df = np.array([1, 1.5, 2, 3, 4.5, 9, 30, 49, 50, 120, 999, 1000, 1e4, 1e6])
    got = np.array([[t_ppf(a, d) for a in q] for d in df])
    np.testing.assert_allclose(got, st.t.ppf(q[None, :], df[:, None]), rtol=1e-10, atol=1e-300)
    assert t_ppf(0.0, 5) == -np.inf and t_ppf(1.0, 5) == np.inf
    assert t_ppf(0.975, np.inf) == pytest.approx(st.norm.ppf(0.975), rel=1e-14)
    assert np.isnan(t_ppf(0.975, 0.5)) and np.isnan(t_ppf(0.3, np.nan))  # df < 1 is outside the supported range
    assert norm_ppf(0.975) == pytest.approx(st.norm.ppf(0.975), rel=1e-15)
    assert chi2_1_ppf(0.95) == pytest.approx(st.chi2.ppf(0.95, 1), rel=1e-13)


# --------------------------------------------------------------------------- NIST


@pytest.mark.parametrize("name", nist.NAMES)
def test_nist_standard_errors_match_certified(x64, name):
    """NIST's certified standard deviations are s·√diag((JᵀJ)⁻¹) with s² = RSS/(n − p),
    the covariance convention of ``uncertainty``.  Start 2, tight tolerances, float64.

    Two factors are checked separately: √diag((JᵀJ)⁻¹) = certified_sd / certified
    residual sd, and s.  The standard errors as a whole must match to 4 significant
    digits wherever our RSS does; for Lanczos1 (certified RSS 1.4e-25) the float64
    residual is rounding noise, so only its (JᵀJ)⁻¹ factor is comparable.
    """
    prob = nist.load(name)
    res = ff.least_squares(prob.residual(), jnp.asarray(prob.start2), (prob.x, prob.y), **NIST_TIGHT)
    fit_lre = nist.lre(res.params, prob.certified)
    if fit_lre < 4:
        pytest.skip(f"the fit itself reached only LRE {fit_lre:.1f} < 4 ({res.message})")
    u = ff.uncertainty(res)
    assert u.dof == prob.n_obs - prob.n_params
    assert int(u.rank) == prob.n_params
    unscaled = np.asarray(u.stderr) / float(u.residual_sd)
    certified_unscaled = prob.certified_sd / prob.certified_residual_sd
    np.testing.assert_allclose(unscaled, certified_unscaled, rtol=5e-5)
    rss_lre = nist.lre(float(u.rss), prob.certified_rss)
    if rss_lre >= 4:
        np.testing.assert_allclose(u.stderr, prob.certified_sd, rtol=5e-5)
        # NIST's residual sd is √(RSS/(n − p)), also for Rat43 whose file prints dof 9 for n − p = 11.
        np.testing.assert_allclose(u.residual_sd, prob.certified_residual_sd, rtol=5e-5)
    else:
        assert name == "Lanczos1", f"RSS LRE only {rss_lre:.1f}"


# --------------------------------------------------------------------------- vs curve_fit


def decay(p, t, y):
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y


def decay_f(t, a, k, c):
    return a * np.exp(-k * t) + c


def decay_jac(t, a, k, c):
    e = np.exp(-k * t)
    return np.stack([e, -a * t * e, np.ones_like(t)], axis=1)


T = np.linspace(0.0, 4.0, 25)


def random_problem(rng):
    truth = np.array([rng.uniform(0.5, 3), rng.uniform(0.3, 2), rng.uniform(-1, 1)])
    sigma = rng.uniform(0.01, 0.1, T.size)
    y = decay_f(T, *truth) + sigma * rng.standard_normal(T.size)
    return truth, y, sigma


@pytest.mark.parametrize("weights", ["none", "sigma", "covariance"])
def test_pcov_matches_scipy_curve_fit_on_random_problems(x64, weights):
    rng = np.random.default_rng(0 if weights == "none" else 1 if weights == "sigma" else 2)
    for _ in range(4):
        truth, y, sigma = random_problem(rng)
        s = {"none": None, "sigma": sigma, "covariance": np.diag(sigma**2) + 0.3 * np.outer(sigma, sigma)}[weights]
        res = ff.least_squares(decay, jnp.asarray(truth), (jnp.asarray(T), jnp.asarray(y)), sigma=s, **TIGHT)
        assert res.success, res.message
        for absolute_sigma in (False, True):
            popt, pcov = so.curve_fit(
                decay_f, T, y, p0=truth, sigma=s, absolute_sigma=absolute_sigma, jac=decay_jac,
                ftol=1e-15, xtol=1e-15, gtol=1e-15,
            )  # fmt: skip
            np.testing.assert_allclose(res.params, popt, rtol=1e-7)
            u = ff.uncertainty(res, absolute_sigma=absolute_sigma)
            np.testing.assert_allclose(u.pcov, pcov, rtol=1e-6)
            np.testing.assert_allclose(ff.covariance(res, absolute_sigma), pcov, rtol=1e-6)


def test_rank_deficient_pcov_keeps_the_determined_block_of_scipys_pseudo_inverse(x64):
    """Two parameters the data cannot tell apart (y = (a + b)·x + c): the pseudo-inverse
    drops the null direction a − b, as scipy's trf branch of curve_fit does; c keeps its
    variance from it, while a and b, undetermined, get inf (scipy's convention for a
    covariance that cannot be estimated) where scipy's trf reports finite numbers."""
    x = np.linspace(0.0, 1.0, 12)
    y = 3.0 * x + 0.5 + 0.01 * np.cos(9 * x)

    def line2(p, x, y):
        return (p[0] + p[1]) * x + p[2] - y

    res = ff.least_squares(line2, jnp.array([1.0, 1.0, 0.0]), (jnp.asarray(x), jnp.asarray(y)), **TIGHT)
    with pytest.warns(UserWarning, match=r"could not be estimated for p\[0\], p\[1\]"):
        u = ff.uncertainty(res)
    assert int(u.rank) == 2 and u.undetermined.tolist() == [True, True, False]
    _, pcov = so.curve_fit(
        lambda x, a, b, c: (a + b) * x + c, x, y, p0=np.asarray(res.params), method="trf",
        jac=lambda x, a, b, c: np.stack([x, x, np.ones_like(x)], axis=1),
    )  # fmt: skip
    np.testing.assert_allclose(u.pcov[2, 2], pcov[2, 2], rtol=1e-6)
    assert np.all(np.isinf(u.pcov[:2])) and np.all(np.isinf(u.pcov[:, :2]))


def test_no_degrees_of_freedom_gives_infinite_pcov(x64):
    """As scipy: with m <= n and absolute_sigma=False the scale cannot be estimated."""
    x = jnp.array([0.0, 1.0])
    res = ff.least_squares(lambda p, x: p[0] + p[1] * x - jnp.array([1.0, 3.0]), jnp.zeros(2), (x,))
    u = ff.uncertainty(res)
    assert u.dof == 0 and np.all(np.isinf(u.pcov))
    np.testing.assert_allclose(ff.covariance(res, absolute_sigma=True), [[1.0, -1.0], [-1.0, 2.0]], rtol=1e-8)


def test_robust_pcov_matches_scipy_curve_fit(x64):
    """With a robust loss, scipy's convention: J scaled by √(ρ' + 2zρ''), s² = 2·cost/dof."""
    rng = np.random.default_rng(3)
    truth, y, _ = random_problem(rng)
    y[::6] += 1.0  # outliers
    popt, pcov = so.curve_fit(
        decay_f, T, y, p0=truth, jac=decay_jac, method="trf", loss="soft_l1", f_scale=0.05,
        ftol=1e-15, xtol=1e-15, gtol=1e-15,
    )  # fmt: skip
    # IRLS converges linearly, so ftol must be tight to get as close as scipy.
    res = ff.least_squares(
        decay, jnp.asarray(truth), (jnp.asarray(T), jnp.asarray(y)), loss="soft_l1", f_scale=0.05,
        ftol=1e-15, xtol=1e-15, gtol=1e-15,
    )  # fmt: skip
    np.testing.assert_allclose(res.params, popt, rtol=1e-7)
    np.testing.assert_allclose(ff.covariance(res, loss="soft_l1", f_scale=0.05), pcov, rtol=1e-5)
    # By default, the loss the fit used (the Result records it), also in a batch.
    assert res.loss == "soft_l1" and float(res.f_scale) == 0.05
    np.testing.assert_allclose(ff.covariance(res), pcov, rtol=1e-5)
    np.testing.assert_allclose(ff.uncertainty(res).pcov, pcov, rtol=1e-5)
    batch = ff.fit_batch(
        decay, jnp.stack([jnp.asarray(truth)] * 2), (jnp.asarray(T), jnp.stack([jnp.asarray(y)] * 2)),
        shared_args=(0,), loss="soft_l1", f_scale=0.05, ftol=1e-15, xtol=1e-15, gtol=1e-15,
    )  # fmt: skip
    np.testing.assert_allclose(ff.uncertainty(batch).pcov, np.stack([pcov] * 2), rtol=1e-5)
    # The plain Gaussian covariance differs: the loss down-weights the outliers.
    assert not np.allclose(ff.covariance(res, loss="linear"), pcov, rtol=0.1)


# --------------------------------------------------------------------------- the other outputs


def test_linear_model_outputs_match_closed_forms(x64):
    """Ordinary least squares, where every output has a closed form (and t intervals
    are exact): compare with numpy and scipy.stats."""
    rng = np.random.default_rng(4)
    x = np.linspace(-1, 1, 15)
    X = np.stack([np.ones_like(x), x, x**2], axis=1)
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.standard_normal(x.size)
    res = ff.least_squares(lambda p, X, y: X @ p - y, jnp.zeros(3), (jnp.asarray(X), jnp.asarray(y)), **TIGHT)
    beta, rss, *_ = np.linalg.lstsq(X, y, rcond=None)
    m, n = X.shape
    s2 = rss[0] / (m - n)
    pcov = s2 * np.linalg.inv(X.T @ X)
    se = np.sqrt(np.diag(pcov))
    u = ff.uncertainty(res, level=0.9)
    np.testing.assert_allclose(u.pcov, pcov, rtol=1e-9, atol=1e-15)  # x ⟂ 1, x² on this grid
    np.testing.assert_allclose(u.stderr, se, rtol=1e-9)
    np.testing.assert_allclose(u.corr, pcov / np.outer(se, se), rtol=1e-9, atol=1e-12)
    q = st.t.ppf(0.95, m - n)
    np.testing.assert_allclose(u.ci, np.stack([beta - q * se, beta + q * se], axis=1), rtol=1e-9)
    np.testing.assert_allclose(u.residual_sd, np.sqrt(s2), rtol=1e-9)
    np.testing.assert_allclose(u.rms, np.sqrt(rss[0] / m), rtol=1e-9)
    # AIC/BIC: -2 ln L at the ML variance rss/m, without its constant m(1 + ln 2π).
    sd_ml = np.sqrt(rss[0] / m)
    minus_2_loglik = -2 * np.sum(st.norm.logpdf(y - X @ beta, scale=sd_ml)) - m * (1 + np.log(2 * np.pi))
    np.testing.assert_allclose(u.aic, minus_2_loglik + 2 * n, rtol=1e-9)
    np.testing.assert_allclose(u.bic, minus_2_loglik + n * np.log(m), rtol=1e-9)
    # With absolute_sigma the interval uses the normal quantile and pcov is unscaled.
    ua = ff.uncertainty(res, absolute_sigma=True, level=0.9)
    se_abs = np.sqrt(np.diag(np.linalg.inv(X.T @ X)))
    np.testing.assert_allclose(ua.ci[:, 1] - beta, st.norm.ppf(0.95) * se_abs, rtol=1e-9)


def test_batched_and_jitted_uncertainty_match_single_fits(x64):
    rng = np.random.default_rng(5)
    probs = [random_problem(rng) for _ in range(3)]
    ys = jnp.asarray(np.stack([p[1] for p in probs]))
    x0 = jnp.asarray(probs[0][0])
    batch = jax.vmap(lambda y: ff.least_squares(decay, x0, (jnp.asarray(T), y), **TIGHT))(ys)
    u_batch = ff.uncertainty(batch)
    u_jit = jax.jit(lambda r: ff.uncertainty(r, level=0.68))(batch)
    assert u_batch.pcov.shape == (3, 3, 3) and u_batch.aic.shape == (3,)
    for i in range(3):
        single = jax.tree_util.tree_map(lambda a: a[i], batch)
        u = ff.uncertainty(single)
        np.testing.assert_allclose(u_batch.pcov[i], u.pcov, rtol=1e-12)
        np.testing.assert_allclose(u_batch.ci[i], u.ci, rtol=1e-12)
        np.testing.assert_allclose(u_batch.bic[i], u.bic, rtol=1e-12)
        np.testing.assert_allclose(u_jit.stderr[i], u.stderr, rtol=1e-12)
        q68 = st.t.ppf(0.84, u.dof)
        np.testing.assert_allclose(u_jit.ci[i][:, 1] - single.params, q68 * u.stderr, rtol=1e-9)
    # Two leading batch axes work the same way.
    two = jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), batch)
    np.testing.assert_allclose(ff.uncertainty(two).stderr[1], u_batch.stderr, rtol=1e-12)


@pytest.mark.parametrize(
    "options, error, text",
    [
        (dict(level=1.5), ValueError, "`level` must be in \\(0, 1\\)"),
        (dict(absolute_sigma="yes"), TypeError, "absolute_sigma"),
        (dict(loss="l2"), ValueError, "`loss` must be one of"),
        (dict(f_scale=-1.0), ValueError, "f_scale"),
        (dict(rcond=2.0), ValueError, "rcond"),
    ],
)
def test_bad_options_are_clear_errors(options, error, text):
    res = ff.least_squares(lambda p: p - 1.0, jnp.zeros(2))
    with pytest.raises(error, match=text):
        ff.uncertainty(res, **options)


def test_public_names_are_exported_with_examples():
    names = ["uncertainty", "covariance", "Uncertainty", "identifiability", "Identifiability", "profile", "Profile",
             "curve_fit", "curve_fit_batch"]  # fmt: skip
    for name in names:
        assert name in ff.__all__, name
        assert ">>>" in (getattr(ff, name).__doc__ or ""), f"{name} has no runnable example"
