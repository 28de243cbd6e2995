"""Derivatives of fitted parameters with respect to the data (issue #5).

References, none of them computed by the code under test: the closed form of linear
least squares; central finite differences of refits at tight tolerance; the unrolled
derivative of the iterations.
"""

import jax
import jax.numpy as jnp
import nist
import numpy as np
import pytest

import fitfleet as ff
from fitfleet import _implicit

# Tolerances at round-off, for references that need the exact optimum.  A fit that
# stalls at round-off may report STEP_FAILED at the optimum; "keep" still differentiates
# it, and the comparison with the reference is what checks the derivative.
TIGHT = dict(ftol=1e-15, xtol=1e-15, gtol=1e-15, grad_on_failure="keep")


def float_tolerances(dtype):
    """The default tolerances in float64; above round-off in float32."""
    tol = 1e-8 if dtype == "float64" else 1e-6
    return dict(ftol=tol, xtol=tol, gtol=tol)


def linear(p, X, y):
    return X @ p - y


def sum_model(p, x, y):
    return (p[0] + p[1]) * x - y


def michaelis_menten(p, S, v):
    return p[0] * S / (p[1] + S) - v


def gaussian_peak(p, x, y):
    return p[0] * jnp.exp(-0.5 * ((x - p[1]) / p[2]) ** 2) + p[3] - y


def mm_data(dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    S = np.linspace(0.2, 30.0, 16)
    v = 29.0 * S / (6.0 + S) + 0.4 * rng.normal(size=S.size)
    return jnp.asarray(S, dtype), jnp.asarray(v, dtype)


def peak_data():
    rng = np.random.default_rng(1)
    x = np.linspace(-5.0, 5.0, 30)
    y = 3.0 * np.exp(-0.5 * ((x - 0.4) / 1.2) ** 2) + 0.5 + 0.05 * rng.normal(size=x.size)
    return jnp.asarray(x), jnp.asarray(y)


def central_differences(fit, y, h):
    """d fit / dy by central differences; every refit in one vmapped call."""
    E = h * jnp.eye(y.size, dtype=y.dtype)
    both = jax.jit(jax.vmap(fit))(jnp.concatenate([y + E, y - E]))
    return ((both[: y.size] - both[y.size :]) / (2 * h)).T


def assert_rows_close(actual, expected, rtol, floor=0.0):
    """Each parameter's row, relative to that row's largest entry (parameters differ in
    scale by orders of magnitude on NIST problems), or to ``floor`` (per row) if larger."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = np.maximum(np.max(np.abs(expected), axis=-1), floor)[..., None]
    scale = np.where(scale > 0, scale, 1)
    np.testing.assert_array_less(np.abs(actual - expected) / scale, rtol)


# ------------------------------------------------------------------ (a) closed form


def test_linear_least_squares_closed_form(dtype):
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(25, 3)), dtype)
    y = jnp.asarray(rng.normal(size=25), dtype)
    sigma = jnp.asarray(rng.uniform(0.5, 2.0, size=25), dtype)

    def fitted(y, sigma, X):
        return ff.least_squares(linear, jnp.zeros(3, dtype), (X, y), sigma=sigma, **float_tolerances(dtype)).params

    def closed_form(y, sigma, X):
        return jnp.linalg.lstsq(X / sigma[:, None], y / sigma)[0]

    rtol = 1e-6 if dtype == "float64" else 1e-3
    W = np.diag(1 / np.asarray(sigma, np.float64))
    dp_dy = np.linalg.pinv(W @ np.asarray(X, np.float64)) @ W  # (XᵀW²X)⁻¹XᵀW²
    reverse = jax.jit(jax.jacrev(fitted, argnums=(0, 1, 2)))(y, sigma, X)
    assert_rows_close(reverse[0], dp_dy, rtol)
    assert_rows_close(jax.jit(jax.jacfwd(fitted))(y, sigma, X), dp_dy, rtol)
    # sigma and the design matrix: against JAX's derivative of the closed form.
    theirs = jax.jacrev(closed_form, argnums=(1, 2))(y, sigma, X)
    for ours, ref in zip(reverse[1:], theirs):
        assert_rows_close(ours.reshape(3, -1), ref.reshape(3, -1), rtol)


def test_unidentifiable_parameters_get_finite_derivatives(x64):
    # Only p0 + p1 is determined: H is singular.  The combination gets its closed-form
    # derivative and the dependent parameter (the later one) a zero one.
    x = jnp.linspace(0.0, 1.0, 10)
    y = 2.0 * x + 0.1 * jnp.sin(7 * x)

    def fitted(y):
        return ff.least_squares(sum_model, jnp.array([0.3, 0.1]), (x, y)).params

    J = jax.jacrev(fitted)(y)
    d_sum = np.asarray(x) / np.sum(np.asarray(x) ** 2)
    np.testing.assert_allclose(J[0] + J[1], d_sum, rtol=1e-8)
    np.testing.assert_array_equal(J[1], 0.0)


# ------------------------------------------------------------ (b) finite differences


def _fd_case(fun, x0, x, y, scale, options=None, check=None):
    options = {**TIGHT, **(options or {})}
    fit = lambda y: ff.least_squares(fun, jnp.asarray(x0), (x, y), **options).params  # noqa: E731
    return fit, jnp.asarray(y), scale, check


def _mm_case(options=None, outlier=False, check=None):
    S, v = mm_data()
    v = v.at[4].add(6.0) if outlier else v
    # The step is set by the scale over which the residual is nonlinear: the data for
    # the model, f_scale for a robust loss.
    scale = (options or {}).get("f_scale", float(jnp.max(jnp.abs(v))))
    return _fd_case(michaelis_menten, [10.0, 10.0], S, v, scale, options, check)


def _peak_case():
    x, y = peak_data()
    return _fd_case(gaussian_peak, [2.0, 0.0, 1.0, 0.0], x, y, float(jnp.max(jnp.abs(y))))


def _misra1a_case():
    prob = nist.load("Misra1a")

    def check(params, J):
        np.testing.assert_allclose(params, prob.certified, rtol=1e-6)

    return _fd_case(prob.residual(), prob.start1, jnp.asarray(prob.x), prob.y, float(np.max(prob.y)), check=check)


def _pinned(params, J):
    np.testing.assert_allclose(params[0], 27.0, rtol=1e-8)  # on its bound...
    np.testing.assert_allclose(J[0], 0.0, atol=1e-6)  # ...and stays there


CASES = {
    "michaelis-menten": lambda: _mm_case(),
    "gaussian-peak": _peak_case,
    "misra1a": _misra1a_case,
    "bounds-inactive": lambda: _mm_case({"bounds": ([1.0, 0.5], [100.0, 50.0])}),
    "bounds-active": lambda: _mm_case({"bounds": ([0.0, 0.0], [27.0, 50.0])}, check=_pinned),
    "log-scale": lambda: _mm_case({"log_scale": True}),
    "cauchy-loss": lambda: _mm_case({"loss": "cauchy", "f_scale": 0.5}, outlier=True),
    "soft-l1-loss": lambda: _mm_case({"loss": "soft_l1", "f_scale": 0.5}, outlier=True),
}


# In the default run: a plain fit, an active bound and a robust loss; the rest are slow.
DEFAULT_CASES = {"michaelis-menten", "bounds-active", "soft-l1-loss"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c in DEFAULT_CASES else pytest.mark.slow) for c in CASES])
def test_matches_central_differences(x64, case):
    fit, y, scale, check = CASES[case]()
    params, vjp = jax.vjp(fit, y)
    J = jax.vmap(vjp)(jnp.eye(params.size, dtype=y.dtype))[0]
    # Truncation error ~(h/scale)², refit noise ~δ/h with δ ~1e-9·|p|: h = 1e-3·scale
    # puts both near 1e-6, well inside the 1e-4 tolerance.
    differences = central_differences(fit, y, 1e-3 * scale)
    # Sensitivities below an elasticity (dp/p)/(dy/|y|) of 1e-6 are refit noise (a
    # parameter pinned on its bound has none at all).
    floor = 1e-6 * np.abs(np.asarray(params)) / float(jnp.max(jnp.abs(y)))
    assert_rows_close(J, differences, 1e-4, floor)
    if check is not None:
        check(params, J)


def test_second_derivative_matches_differences_of_the_gradient(x64):
    fit, v, scale, _ = _mm_case()
    rate = lambda v: fit(v)[1]  # noqa: E731
    hessian = jax.jit(jax.hessian(rate))(v)
    assert_rows_close(hessian, central_differences(jax.grad(rate), v, 1e-3 * scale), 1e-4)


# -------------------------------------------------------------------- (c) unrolled


def test_matches_unrolled_derivative_under_vmap(x64):
    S, v = mm_data()
    V = jnp.stack([v, 1.2 * v, v.at[3].add(4.0)])

    def jacobians(adjoint):
        def fit(v):
            return ff.least_squares(michaelis_menten, jnp.array([10.0, 10.0]), (S, v), adjoint=adjoint, **TIGHT).params

        return jax.jit(jax.vmap(jax.jacrev(fit)))(V)

    implicit, unrolled = jacobians("implicit"), jacobians("unroll")
    for i in range(len(V)):
        assert_rows_close(implicit[i], unrolled[i], 1e-6)


def test_unroll_is_reverse_mode_only():
    S, v = mm_data("float32")
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jacfwd(lambda v: ff.least_squares(michaelis_menten, jnp.array([10.0, 10.0]), (S, v), adjoint="unroll").params)(v)


# ------------------------------------------------------------------ transformations


def test_jvp_and_vjp_agree(x64):
    S, v = mm_data()
    sigma = 0.3 + 0.02 * S

    def fit(v, sigma):
        return ff.least_squares(
            michaelis_menten, jnp.array([10.0, 10.0]), (S, v), sigma=sigma, loss="soft_l1", bounds=(0.0, 100.0)
        ).params

    rng = np.random.default_rng(3)
    tangents = (jnp.asarray(rng.normal(size=v.size)), jnp.asarray(rng.normal(size=v.size)))
    cotangent = jnp.asarray(rng.normal(size=2))
    jvp = jax.jvp(fit, (v, sigma), tangents)[1]
    vjp = jax.vjp(fit, v, sigma)[1](cotangent)
    forward = float(cotangent @ jvp)
    reverse = float(sum(jnp.vdot(a, b) for a, b in zip(vjp, tangents)))
    assert forward == pytest.approx(reverse, rel=1e-10)


def _mm_loss(v, S, target):
    p = ff.least_squares(michaelis_menten, jnp.array([10.0, 10.0], v.dtype), (S, v), **float_tolerances(v.dtype)).params
    return jnp.sum((p - target) ** 2)


def test_grad_of_vmapped_batch_equals_per_sample_grads(dtype):
    S, v = mm_data(dtype)
    V = jnp.stack([v, 0.8 * v, 1.3 * v, v + jnp.sin(S)])
    target = jnp.asarray([30.0, 6.0], dtype)
    batched = jax.jit(jax.grad(lambda V: jnp.sum(jax.vmap(_mm_loss, (0, None, None))(V, S, target))))(V)
    single = jax.jit(jax.grad(_mm_loss))
    rtol = 1e-10 if dtype == "float64" else 1e-4
    for i in range(len(V)):
        np.testing.assert_allclose(batched[i], single(V[i], S, target), rtol=rtol, atol=rtol * float(jnp.max(jnp.abs(batched[i]))))


def test_jit_of_vmap_and_its_grad():
    S, v = mm_data("float32")
    V = jnp.stack([v, 1.1 * v])
    params = jax.jit(
        jax.vmap(lambda y: ff.least_squares(michaelis_menten, jnp.array([10.0, 10.0]), (S, y), **float_tolerances("float32")).params)
    )
    p = params(V)
    np.testing.assert_allclose(p[1], p[0] * jnp.array([1.1, 1.0]), rtol=1e-4)
    grads = jax.jit(jax.grad(lambda V: jnp.sum(params(V)[:, 0])))(V)
    # p0 is homogeneous of degree 1 in the data (p1 of degree 0): Euler, ∇p0 · v = p0.
    np.testing.assert_allclose(jnp.sum(grads * V, axis=1), p[:, 0], rtol=1e-4)


def test_gradient_with_respect_to_x0_is_zero(x64):
    S, v = mm_data()
    grad = jax.grad(lambda x0: ff.least_squares(michaelis_menten, x0, (S, v)).params[1])(jnp.array([10.0, 10.0]))
    np.testing.assert_array_equal(grad, 0.0)


def test_other_result_fields_are_differentiated_consistently(x64):
    S, v = mm_data()

    def fit(v):
        res = ff.least_squares(michaelis_menten, jnp.array([10.0, 10.0]), (S, v), **TIGHT)
        return res.params, res.residual, res.cost, res.jac

    (p, r, _, _), (dp, dr, dcost, dJ) = jax.jit(lambda v: (fit(v), jax.jacfwd(fit)(v)))(v)
    # Envelope theorem: at the optimum d cost/dy is the partial derivative, -r.
    np.testing.assert_allclose(dcost, -r, atol=1e-9)
    # The residual and Jacobian move with the parameters (chain rule) and the data.
    J_p = jax.jacfwd(michaelis_menten)(p, S, v)
    np.testing.assert_allclose(dr, J_p @ dp - jnp.eye(v.size), atol=1e-10)
    d2r = jax.jacfwd(jax.jacfwd(michaelis_menten))(p, S, v)
    np.testing.assert_allclose(dJ, jnp.einsum("mnk,kj->mnj", d2r, dp), atol=1e-10)
    # Reverse mode agrees with forward mode on every field.
    for forward, reverse in zip((dp, dr, dcost, dJ), jax.jit(jax.jacrev(fit))(v)):
        np.testing.assert_allclose(reverse, forward, atol=1e-10)


# ------------------------------------------------------------------------ failures


@pytest.mark.parametrize(
    "adjoint, on_failure",
    [("implicit", "nan"), ("implicit", "zero"), ("implicit", "keep"), pytest.param("unroll", "nan", marks=pytest.mark.slow)],
)
def test_failed_fit_gradients_follow_grad_on_failure(x64, adjoint, on_failure):
    S, v = mm_data()

    def rate_and_cost(v):
        res = ff.least_squares(
            michaelis_menten, jnp.array([10.0, 10.0]), (S, v), max_steps=2, adjoint=adjoint, grad_on_failure=on_failure
        )
        return res.params[1] + res.cost, res.status

    grad, status = jax.grad(rate_and_cost, has_aux=True)(v)
    assert ff.Status(int(status)) == ff.Status.MAX_STEPS
    if on_failure == "nan":
        assert np.all(np.isnan(grad))
    elif on_failure == "zero":
        np.testing.assert_array_equal(grad, 0.0)
    else:
        assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_failed_fit_in_a_batch_has_nan_forward_derivative_alone(x64):
    S, v = mm_data()

    def rate(v, max_steps):
        return ff.least_squares(michaelis_menten, jnp.array([10.0, 10.0]), (S, v), max_steps=max_steps).params[1]

    J = jax.vmap(jax.jacfwd(rate), in_axes=(None, 0))(v, jnp.asarray([2, 500]))
    assert np.all(np.isnan(J[0])) and np.all(np.isfinite(J[1]))


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="adjoint"):
        ff.least_squares(lambda p: p - 1.0, jnp.zeros(1), adjoint="backprop")
    with pytest.raises(ValueError, match="grad_on_failure"):
        ff.least_squares(lambda p: p - 1.0, jnp.zeros(1), grad_on_failure="ignore")


# ------------------------------------------------------------------------ the cost


def test_an_undifferentiated_fit_does_no_implicit_work(monkeypatch):
    solves = []
    real_solve = _implicit._solve_symmetric
    monkeypatch.setattr(_implicit, "_solve_symmetric", lambda H, b: solves.append(1) or real_solve(H, b))
    S, v = mm_data("float32")

    def rate(v):  # a fresh function: nothing cached from other tests
        return ff.least_squares(lambda p, S, v: p[0] * S / (p[1] + S) - v, jnp.array([10.0, 10.0]), (S, v)).params[1]

    jax.jit(rate).lower(v)
    assert not solves  # the derivative rule is not even traced...
    jax.jit(jax.grad(rate)).lower(v)
    assert solves  # ...until something is differentiated


# ----------------------------------------------------------------------- fit_batch


def test_grad_through_fit_batch_equals_per_fit_grads(x64):
    S, v = mm_data()
    V = jnp.stack([v, 0.9 * v, v.at[2].add(1.0)])
    x0 = jnp.tile(jnp.array([10.0, 10.0]), (3, 1))

    def batch_rates(V):
        return jnp.sum(ff.fit_batch(michaelis_menten, x0, (S, V), shared_args=(0,)).params[:, 1])

    def rate(v):
        return ff.least_squares(michaelis_menten, x0[0], (S, v)).params[1]

    batched = jax.grad(batch_rates)(V)
    single = jax.jit(jax.grad(rate))
    for i in range(len(V)):
        np.testing.assert_allclose(batched[i], single(V[i]), rtol=1e-8)
