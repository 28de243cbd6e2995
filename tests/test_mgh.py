"""Levenberg-Marquardt on the Moré–Garbow–Hillstrom test set (``tests/mgh.py``): all 35
least-squares problems of MGH 1981 (47 with their sizes), from the paper's standard
starting points, in float64.

The reference is the paper's minimum f* of f = ‖r‖² (a zero-residual problem counts as
solved below ``ZERO``), or one of the other stationary values it lists (Freudenstein-Roth's
local minimum, where every method we know of goes from x0); where the paper gives no
f*, the minimum scipy's MINPACK ``lm`` finds.  The paper rounds to six digits.
``benchmarks/mgh.py`` adds the harder starts 10·x0 and 100·x0 and the other methods.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import fitfleet as ff
import mgh

PAPER_RTOL = 1e-5  # f* is given to six significant digits
ZERO = 1e-20  # f below this solves a zero-residual problem


def _reference_minima(prob):
    if prob.f_star is not None:
        return (prob.f_star, *prob.f_other)
    fun, jac = jax.jit(prob.fun), jax.jit(jax.jacfwd(prob.fun))
    tight = dict(ftol=1e-15, xtol=1e-15, gtol=1e-15)
    ref = scipy.optimize.least_squares(lambda p: np.asarray(fun(p)), prob.start(1), lambda p: np.asarray(jac(p)), method="lm", **tight)
    return (2 * ref.cost, *prob.f_other)


@pytest.mark.parametrize("prob", mgh.PROBLEMS, ids=[p.name for p in mgh.PROBLEMS])
def test_lm_reaches_the_minimum_from_the_standard_start(x64, prob):
    res = ff.least_squares(prob.fun, jnp.asarray(prob.start(1), jnp.float64))
    f = 2 * float(res.cost)
    minima = _reference_minima(prob)
    assert any(f <= ZERO if f_ref == 0 else abs(f - f_ref) <= PAPER_RTOL * f_ref for f_ref in minima), (
        f"f = {f:.6g} ({res.message}, {int(res.n_steps)} steps); known minima {minima}"
    )
    assert res.success, res.message


@pytest.mark.parametrize("name", sorted(mgh._MINPACK_INITIAL_NORM))
def test_residuals_match_minpack_at_its_starting_points(x64, name):
    """The definitions: ‖r(factor·x0)‖ as MINPACK's reference run prints it."""
    prob = mgh.get(name)
    for factor, norm in mgh._MINPACK_INITIAL_NORM[name].items():
        np.testing.assert_allclose(np.linalg.norm(prob.fun(jnp.asarray(prob.start(factor)))), norm, rtol=1e-7)


@pytest.mark.parametrize("name", sorted(mgh._KNOWN_MINIMIZERS))
def test_residuals_vanish_at_the_minimizers_the_paper_states(x64, name):
    x, value = mgh._KNOWN_MINIMIZERS[name]
    assert abs(mgh.get(name).sum_of_squares(np.asarray(x)) - value) <= 1e-12 * max(1.0, value)
