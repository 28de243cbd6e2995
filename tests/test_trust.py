"""Answers that are right or flagged (issue 18 §1, §3): a success is a promise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fitfleet as ff

S = jnp.linspace(0.1, 30.0, 40)
V = 29.0 * S / (6.0 + S) + 0.5 * jnp.asarray(np.random.default_rng(0).normal(size=40))


def michaelis_menten(p, S, v):
    return p[0] * S / (p[1] + S) - v


def test_a_diverged_first_order_run_is_not_a_success(x64):
    """sgd with learning rate 0.3 from (10, 10) throws Vmax to about -1.6e6 within three
    steps, where the cost is huge and flat: ftol used to report success there."""
    res = ff.least_squares(michaelis_menten, jnp.array([10.0, 10.0]), (S, V), method="sgd", learning_rate=0.3)
    start_cost = float(0.5 * jnp.sum(michaelis_menten(jnp.array([10.0, 10.0]), S, V) ** 2))
    assert float(res.cost) > start_cost  # it did diverge
    assert not bool(res.success)
    assert int(res.status) in (ff.Status.DIVERGED, ff.Status.NONFINITE_RESIDUAL, ff.Status.MAX_STEPS)
    good = ff.least_squares(michaelis_menten, jnp.array([10.0, 10.0]), (S, V), method="adam", learning_rate=0.05, max_steps=20_000)
    assert bool(good.success) and float(good.cost) < 10.0  # a run that converges still succeeds


@pytest.mark.parametrize("method", ["trf", "lm"])
def test_a_fit_stuck_where_the_model_fails_is_not_a_success(method, x64):
    """The residual (p₀ − 2, p₁/10) is defined only for p₀ < 1: every step towards
    p₀ = 2 fails, the radius is cut until the steps are below xtol, and p₁ never gets
    to its optimum 0.  That is not convergence (scipy's trf calls it xtol)."""

    def walled(p, wall):
        return jnp.where(p[0] < wall, jnp.stack([p[0] - 2.0, 0.1 * p[1]]), jnp.nan)

    stuck = ff.least_squares(walled, jnp.array([0.0, 1.0]), (1.0,), method=method)
    assert float(stuck.params[0]) == pytest.approx(1.0, abs=1e-6) and float(stuck.params[1]) > 0.5  # not a minimum
    assert int(stuck.status) == ff.Status.NONFINITE_RESIDUAL and not bool(stuck.success)
    # With the minimum (2, 0) inside the wall, the fit converges, also where its first
    # steps overshoot into the region where the model fails.
    free = ff.least_squares(walled, jnp.array([0.0, 1.0]), (3.0,), method=method)
    assert bool(free.success)
    np.testing.assert_allclose(free.params, [2.0, 0.0], atol=1e-8)

    def cubed(p, wall):  # from p₀ = 1 Gauss-Newton's steps overshoot 2 at first
        return jnp.where(p[0] < wall, jnp.stack([p[0] ** 3 - 8.0, 0.1 * p[1]]), jnp.nan)

    overshoot = ff.least_squares(cubed, jnp.array([1.0, 1.0]), (2.05,), method=method)
    assert bool(overshoot.success) and int(overshoot.n_fev) > int(overshoot.n_jev)  # some trials rejected
    np.testing.assert_allclose(overshoot.params, [2.0, 0.0], atol=1e-6)


def _raising_model():
    """A model whose Jacobian raises at run time where its residual is not finite: a
    linear solve with lineax's default ``throw=True`` inside a custom JVP, the way
    optimistix differentiates the root finds of diffrax's implicit solvers."""
    lineax = pytest.importorskip("lineax")

    @jax.custom_jvp
    def decay(k, t):
        return jnp.exp(-k * t)

    @decay.defjvp
    def decay_jvp(primals, tangents):
        k, t = primals
        value = decay(k, t)
        # = 1, or raises: exp(-10 k) overflows where the residual, exp(-k t) with t <= 3, may not
        operator = lineax.MatrixLinearOperator(jnp.eye(2, dtype=value.dtype) * jnp.exp(-10 * k))
        scale = lineax.linear_solve(operator, jnp.ones(2, value.dtype) * jnp.exp(-10 * k)).value[0]
        return value, -t * value * tangents[0] * scale

    t = jnp.linspace(0.0, 3.0, 10)
    return (lambda k, t, y: decay(k[0], t) - y), t, jnp.exp(-0.7 * t)


def test_a_model_that_raises_gives_a_status_not_an_exception(x64):
    """A start far enough that the model's internal linear solve sees inf: the fit ends
    with MODEL_RAISED at its start instead of killing the caller (issue 18 §3)."""
    fun, t, y = _raising_model()
    good = ff.least_squares(fun, jnp.array([0.3]), (t, y))
    assert good.success and abs(float(good.params[0]) - 0.7) < 1e-6
    # The residual overflows too: the Jacobian is never evaluated there.
    res = ff.least_squares(fun, jnp.array([-800.0]), (t, y))
    assert int(res.status) == ff.Status.NONFINITE_RESIDUAL
    # A finite residual, a raising Jacobian: the fit stops with its own status.
    res = ff.least_squares(fun, jnp.array([-100.0]), (t, y))
    assert int(res.status) == ff.Status.MODEL_RAISED and not bool(res.success)
    np.testing.assert_array_equal(res.params, [-100.0])
    assert "raised" in res.message


@pytest.mark.parametrize("method", ["lm", "gn"])
def test_the_gradient_test_does_not_underflow_for_tiny_residuals(method, dtype):
    """Michaelis-Menten in molar units (rates of 1e-9 M/s): the cosine's denominator
    ‖J_j‖·‖r‖ was computed as √(‖J_j‖²‖r‖²), which underflows to 0 in float32 and read as
    an optimum at the start.  The fit must reach the true parameters, as it does in
    scaled units (and a zero-residual linear problem scaled by 1e-10 / 1e-80 likewise)."""
    S = jnp.array([1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5], dtype)
    v = 3e-9 * S / (8e-6 + S)
    res = ff.least_squares(lambda p, S, v: p[0] * 1e-9 * S / (p[1] * 1e-6 + S) - v, jnp.ones(2, dtype), (S, v), method=method)
    assert bool(res.success) and int(res.n_steps) > 0
    np.testing.assert_allclose(res.params, [3.0, 8.0], rtol=1e-4)
    scale = 1e-10 if dtype == "float32" else 1e-80
    res = ff.least_squares(lambda p: scale * (p - jnp.array([3.0, -2.0], dtype)), jnp.zeros(2, dtype), method=method)
    assert bool(res.success)
    np.testing.assert_allclose(res.params, [3.0, -2.0], rtol=1e-5)
