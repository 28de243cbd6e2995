"""The ODE example (``examples/boehm.py``): Boehm et al. 2014's STAT5 model, a PEtab
benchmark, against the facts published with it."""

import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import fitfleet as ff

pytest.importorskip("diffrax")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import boehm  # noqa: E402


@pytest.fixture
def problem(x64):
    times, y, nominal = boehm.load()
    return (jnp.asarray(times), jnp.asarray(y)), y, nominal  # float64: x64 is on


def test_transcribed_model_reproduces_the_published_likelihood(problem):
    """The SBML model written out by hand: the NLL at the parameter table's nominal
    values matches the PEtab collection's to the ODE solver's tolerance."""
    args, y, nominal = problem
    cost = 0.5 * float(jnp.sum(boehm.residual(jnp.asarray(nominal), *args) ** 2))
    np.testing.assert_allclose(boehm.nll(cost, y), boehm.NOMINAL_NLL, rtol=1e-8)


def test_fit_reaches_the_literature_optimum_with_two_rates_on_their_bounds(problem):
    args, y, nominal = problem
    res = ff.least_squares(boehm.residual, jnp.asarray(nominal), args, bounds=(boehm.LOWER, boehm.UPPER), log_scale=True)
    assert res.success, res.message
    assert abs(boehm.nll(float(res.cost), y) - boehm.LITERATURE_BEST_NLL) < 1e-4
    log10 = dict(zip(boehm.NAMES, np.log10(np.asarray(res.params))))
    assert log10["k_exp_hetero"] < -4.99 and log10["k_imp_homo"] > 4.99  # practically non-identifiable
    assert all(-4.9 < v < 4.9 for name, v in log10.items() if name not in ("k_exp_hetero", "k_imp_homo"))
