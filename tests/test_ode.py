"""ODE models solved by diffrax: the Jacobian mode that works, per-fit failure of a solve.

The model is a two-step reaction A -> B -> C observed through B, which also has a
closed form, so the ODE fit can be checked against the same fit of the analytic model.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fitfleet as ff
from fitfleet import _problem, _tracing
from fitfleet._engine import host

diffrax = pytest.importorskip("diffrax")

T = np.linspace(0.0, 10.0, 30)
TRUTH = np.array([0.7, 0.3])


def b_closed_form(k, t):
    k1, k2 = k[0], k[1]
    return k1 / (k2 - k1) * (jnp.exp(-k1 * t) - jnp.exp(-k2 * t))


def b_by_ode(k, t, adjoint):
    def rates(_, y, k):
        return jnp.stack([-k[0] * y[0], k[0] * y[0] - k[1] * y[1]])

    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(rates), diffrax.Tsit5(), t0=0.0, t1=t[-1], dt0=0.05, y0=jnp.array([1.0, 0.0]), args=k,
        saveat=diffrax.SaveAt(ts=t), stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12),
        max_steps=2048, adjoint=adjoint, throw=False,  # a failed solve is an infinite residual, not an exception
    )  # fmt: skip
    return solution.ys[:, 1]


def _data():
    t = jnp.asarray(T)
    noise = 0.01 * np.random.default_rng(0).standard_normal(T.size)
    return t, b_closed_form(jnp.asarray(TRUTH), t) + jnp.asarray(noise)


def _reference(t, y):
    res = ff.least_squares(lambda k, t, y: b_closed_form(k, t) - y, jnp.array([0.2, 0.1]), (t, y))
    assert res.success
    return np.asarray(res.params)


@pytest.mark.parametrize("adjoint, mode", [pytest.param("default", "rev", marks=pytest.mark.slow), ("forward", "fwd")])
def test_ode_fit_matches_the_closed_form_fit_in_the_mode_diffrax_supports(x64, adjoint, mode):
    """diffrax's default adjoint is a custom_vjp (no forward mode): "auto" takes reverse
    mode though n <= m; with ForwardMode it takes forward mode."""
    adjoint = diffrax.RecursiveCheckpointAdjoint() if adjoint == "default" else diffrax.ForwardMode()
    t, y = _data()
    residual = lambda k, t, y: b_by_ode(k, t, adjoint) - y  # noqa: E731
    assert _tracing.choose_jacobian(residual, _problem.check(residual, jnp.array([0.2, 0.1]), (t, y), "auto")).jac == mode
    res = ff.least_squares(residual, jnp.array([0.2, 0.1]), (t, y))
    assert res.success, res.message
    np.testing.assert_allclose(res.params, _reference(t, y), rtol=1e-6)
    other = "fwd" if mode == "rev" else "rev"
    with pytest.raises(ValueError, match=f"`jac='{other}'`"):
        ff.least_squares(residual, jnp.array([0.2, 0.1]), (t, y), jac=other)


def test_multistart_on_an_ode_survives_starts_where_the_solver_fails(x64):
    """Starts with rates up to 1e4 make the explicit solver run out of steps: those fits
    get their own status, the others are untouched."""
    t, y = _data()
    residual = lambda k, t, y: b_by_ode(k, t, diffrax.ForwardMode()) - y  # noqa: E731
    ms = ff.multistart(residual, [1e-2, 1e-2], [1e4, 1e4], 32, (t, y), log_scale=True, key=jax.random.key(3))
    status = np.asarray(ms.results.status)
    assert np.any(status == ff.Status.NONFINITE_RESIDUAL)  # the test exercises a failed solve
    assert np.sum(np.asarray(ms.results.success)) >= 8
    # Swapping k1 and k2 changes the amplitude k1/(k2 - k1): the best optimum is unique.
    np.testing.assert_allclose(ms.best.params, _reference(t, y), rtol=1e-6)


@pytest.mark.slow
def test_an_implicit_solver_steps_each_fit_alone_and_equals_the_loop(x64, monkeypatch):
    """An implicit solver's Newton iterations factorise a matrix inside the adaptive
    solve's loop (``_xla.solves_in_loop``), so ``fit_batch`` runs its fits in blocks of
    one (their ODE steps differ), in parts that the threads take in turn (so that one
    slow fit holds up no other); an explicit solver's do not.  Either way a batch's fit
    is the fit alone."""

    def b_implicit(k, t):
        def rates(_, y, k):
            return jnp.stack([-k[0] * y[0], k[0] * y[0] - k[1] * y[1]])

        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(rates), diffrax.Kvaerno3(), t0=0.0, t1=t[-1], dt0=0.05, y0=jnp.array([1.0, 0.0]), args=k,
            saveat=diffrax.SaveAt(ts=t), stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-10),
            max_steps=2048, adjoint=diffrax.ForwardMode(), throw=False,
        )  # fmt: skip
        return solution.ys[:, 1]

    t, y = _data()
    implicit = lambda k, t, y: b_implicit(k, t) - y  # noqa: E731
    explicit = lambda k, t, y: b_by_ode(k, t, diffrax.ForwardMode()) - y  # noqa: E731
    for residual, loops in ((implicit, True), (explicit, False)):
        spec = _tracing.choose_jacobian(residual, _problem.check(residual, jnp.array([0.2, 0.1]), (t, y), "auto"))
        assert spec.solves_in_loop is loops
    starts = jnp.asarray([[0.2, 0.1], [2.0, 0.05], [0.05, 1.5], [0.9, 0.4]])
    parts, run_part = [], host.Engine._run_part
    monkeypatch.setattr(host.Engine, "_run_part", lambda self, *a: parts.append(a[2]) or run_part(self, *a))
    batch = ff.fit_batch(implicit, starts, (t, y), shared_args=True)
    assert parts == [1, 1, 1, 1]  # fits per part (one part per thread would be [2, 2] on two cores)
    for i, x0 in enumerate(starts):
        alone = ff.least_squares(implicit, x0, (t, y))
        assert int(batch.n_steps[i]) == int(alone.n_steps) and int(batch.status[i]) == int(alone.status)
        np.testing.assert_allclose(batch.params[i], alone.params, rtol=1e-10)
    np.testing.assert_allclose(batch.params[0], _reference(t, y), rtol=1e-5)
