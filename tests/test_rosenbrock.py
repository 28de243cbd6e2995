"""fitfleet.petab.Rodas5P (``petab/_rosenbrock.py``) against analytic solutions, scipy's
Radau on a stiff problem, and finite differences of its own discrete solve."""

import numpy as np
import pytest

diffrax = pytest.importorskip("diffrax")
pytest.importorskip("petab")
scipy_integrate = pytest.importorskip("scipy.integrate")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from fitfleet.petab import Rodas5P  # noqa: E402


def _riccati(t, y, a):
    """y' = -2 a t y²: y = 1 / (1 + a t²) from y(0) = 1 (depends on t: exercises ∂f/∂t)."""
    return -2 * a * t * y**2


def _robertson(t, y, k, xp=jnp):
    a, b, c = y
    return xp.stack([-k[0] * a + k[2] * b * c, k[0] * a - k[1] * b * b - k[2] * b * c, k[1] * b * b])


def _solve(vf, y0, args, t1, ts=None, rtol=None, dt0=None, adjoint=None):
    controller = diffrax.ConstantStepSize() if rtol is None else diffrax.PIDController(rtol=rtol, atol=rtol * 1e-3)
    saveat = diffrax.SaveAt(t1=True) if ts is None else diffrax.SaveAt(ts=ts)
    return diffrax.diffeqsolve(
        diffrax.ODETerm(vf), Rodas5P(), 0.0, t1, dt0, y0, args, saveat=saveat, stepsize_controller=controller,
        adjoint=adjoint or diffrax.RecursiveCheckpointAdjoint(), max_steps=100_000,
    )  # fmt: skip


def test_fifth_order_at_fixed_steps(x64):
    """Halving the step divides the error by 2⁵ (measured 31-35)."""
    errors = [abs(float(_solve(_riccati, jnp.array([1.0]), 1.0, 2.0, dt0=2.0 / n).ys[-1, 0]) - 0.2) for n in (10, 20, 40, 80)]
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 2**5 * 0.75) & (ratios < 2**5 * 1.25)), ratios


def test_stiff_robertson_matches_scipy_radau(x64):
    """Robertson's kinetics (rates 0.04, 3e7, 1e4) to t = 4e4: Rodas5P at rtol 1e-8
    against scipy's Radau at rtol 1e-12 (measured 1e-7 relative), in far fewer steps
    than diffrax's Kvaerno5 at the same tolerance (measured 212 against 1,746)."""
    k = np.array([0.04, 3e7, 1e4])
    ts = np.array([0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 4e4])
    ref = scipy_integrate.solve_ivp(
        lambda t, y: _robertson(t, y, k, xp=np), (0, ts[-1]), [1.0, 0.0, 0.0], "Radau", t_eval=ts, rtol=1e-12, atol=1e-16
    ).y.T  # fmt: skip
    sol = _solve(_robertson, jnp.array([1.0, 0.0, 0.0]), jnp.asarray(k), ts[-1], ts=jnp.asarray(ts), rtol=1e-8)
    np.testing.assert_allclose(sol.ys, ref, rtol=1e-6, atol=1e-14)
    controller = diffrax.PIDController(rtol=1e-8, atol=1e-11)
    kvaerno = diffrax.diffeqsolve(
        diffrax.ODETerm(_robertson), diffrax.Kvaerno5(), 0.0, ts[-1], None, jnp.array([1.0, 0.0, 0.0]), jnp.asarray(k),
        stepsize_controller=controller, max_steps=100_000,
    )  # fmt: skip
    assert int(sol.stats["num_steps"]) < int(kvaerno.stats["num_steps"]) / 3


def _van_der_pol(t, y, mu, xp=jnp):
    return xp.stack([y[1], mu * ((1 - y[0] ** 2) * y[1] - y[0])])


@pytest.mark.slow  # the stiff Robertson test above is the default run's
@pytest.mark.parametrize(
    "vf, y0, args, t1, atol",
    [(_robertson, [1.0, 0.0, 0.0], [0.04, 3e7, 1e4], 1e11, 1e-14), (_van_der_pol, [2.0, 0.0], 1e6, 2.0, 1e-10)],
    ids=["robertson-1e11", "van-der-pol-1e6"],
)
def test_very_stiff_problems_match_scipy_radau(x64, vf, y0, args, t1, atol):
    """The stage solves by the inverse of I/(hγ) − J (not backward stable, ``step``'s
    comment) keep Rodas5P at rtol 1e-8 within a few rtol of scipy's Radau at 1e-12 where
    that matrix is at its worst: Robertson's kinetics to t = 1e11 (steps up to 7e9
    against rates up to 3e7; a conservation law makes J singular) and van der Pol at
    μ = 1e6 (measured 4e-9 and 3e-8, as with the LU factors)."""
    ts = np.geomspace(1e-3 * t1, t1, 12)
    ref = scipy_integrate.solve_ivp(
        lambda t, y: vf(t, y, np.asarray(args), xp=np), (0, t1), y0, "Radau", t_eval=ts, rtol=1e-12, atol=atol * 1e-2
    ).y.T  # fmt: skip
    controller = diffrax.PIDController(rtol=1e-8, atol=atol)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf), Rodas5P(), 0.0, t1, None, jnp.asarray(y0), jnp.asarray(args), saveat=diffrax.SaveAt(ts=jnp.asarray(ts)),
        stepsize_controller=controller, max_steps=100_000,
    )  # fmt: skip
    assert np.max(np.abs(np.asarray(sol.ys) - ref) / (np.abs(ref) + atol / 1e-8)) < 3e-7


def test_dense_output_between_steps(x64):
    """SaveAt(ts) at 400 times inside the steps: the order-4 dense output against the
    analytic solution."""
    ts = jnp.linspace(0.01, 2.0, 400)
    sol = _solve(_riccati, jnp.array([1.0]), 1.0, 2.0, ts=ts, rtol=1e-10)
    assert int(sol.stats["num_steps"]) < 200  # so most times fall inside a step
    np.testing.assert_allclose(sol.ys[:, 0], 1 / (1 + ts**2), rtol=1e-8)


def test_forward_sensitivities_are_the_derivative_of_the_discrete_solve(x64):
    """At fixed steps the solve is a smooth function of its parameters: forward mode
    (the exact Jacobian's second derivatives, the linear solves' tangents) equals its
    central difference; reverse mode agrees with forward mode; with an adaptive
    controller the sensitivities are the analytic ones."""
    k0 = jnp.array([0.04, 3e1, 1e2])  # Robertson made mildly stiff, so fixed steps are stable

    def end(k, adjoint=diffrax.ForwardMode()):
        return _solve(_robertson, jnp.array([1.0, 0.0, 0.0]), k, 2.0, dt0=0.05, adjoint=adjoint).ys[-1]

    forward = jax.jacfwd(end)(k0)
    reverse = jax.jacrev(lambda k: end(k, diffrax.RecursiveCheckpointAdjoint()))(k0)
    eps = 1e-6 * np.asarray(k0)
    central = np.stack([(end(k0.at[i].add(eps[i])) - end(k0.at[i].add(-eps[i]))) / (2 * eps[i]) for i in range(3)], axis=1)
    np.testing.assert_allclose(forward, central, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(reverse, forward, rtol=1e-12, atol=1e-14)

    ts = jnp.array([0.5, 1.3, 3.0])

    def decay(rate):
        return _solve(lambda t, y, r: -r * y, jnp.array([2.0]), rate, 3.0, ts=ts, rtol=1e-10, adjoint=diffrax.ForwardMode()).ys[:, 0]

    np.testing.assert_allclose(jax.jacfwd(decay)(0.7), -ts * 2 * jnp.exp(-0.7 * ts), rtol=1e-8)


def test_vmap_equals_the_loop(x64):
    """Solves of several parameter sets under vmap (each its own adaptive steps) equal
    the solves one by one."""
    rates = jnp.array([0.5, 1.0, 4.0])

    def end(a):
        return _solve(_riccati, jnp.array([1.0]), a, 2.0, rtol=1e-8).ys[-1, 0]

    batched = jax.vmap(end)(rates)
    np.testing.assert_allclose(batched, [end(a) for a in rates], rtol=1e-12)
    np.testing.assert_allclose(batched, 1 / (1 + rates * 4), rtol=1e-8)


@pytest.mark.parametrize("x64_on", [False, True])
def test_float32(x64_on):
    """A float32 state stays float32 (with x64 on too) and is solved to float32's accuracy."""
    with jax.enable_x64(x64_on):
        single = _solve(_riccati, jnp.array([1.0], jnp.float32), jnp.float32(1.0), jnp.float32(2.0), rtol=1e-5).ys[-1, 0]
    assert single.dtype == jnp.float32 and abs(float(single) - 0.2) < 1e-5


def test_a_state_that_is_not_one_array_is_refused():
    with pytest.raises(TypeError, match="one array"):
        diffrax.diffeqsolve(diffrax.ODETerm(lambda t, y, a: y), Rodas5P(), 0.0, 1.0, 0.1, (jnp.ones(1), jnp.ones(1)))
