"""A small zoo of least-squares test problems.

Each residual is a module-level function written in ``jax.numpy`` (module level so that
every test reuses the same function object and ``least_squares`` compiles it once per
shape).  Data and starts are float64 numpy arrays; tests convert them with
``jnp.asarray`` inside the ``x64`` fixture, or to float32 on purpose.

Where it is known, a problem carries its minimiser and minimum cost from an independent
source: a closed form (linear regression by ``numpy.linalg.lstsq``, Rosenbrock), or the
published value (Jennrich-Sampson, from Moré, Garbow & Hillstrom 1981).  ``jac`` is a
hand-written Jacobian, independent of autodiff.

``sample(kind, rng)`` draws a random well-posed instance (random true parameters,
random noise, a random start near the truth) for comparisons against scipy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    fun: Callable  # fun(params, *args) -> residual
    x0: Any  # start: float64 numpy array (or pytree of them)
    args: tuple  # float64 numpy data
    solution: Any = None  # known minimiser, flat, or None
    cost: float | None = None  # known minimum of ½‖r‖², or None
    jac: Callable | None = None  # analytic jac(params, *args) -> (m, n)
    truth: Any = None  # parameters the data were generated from, if synthetic

    def jnp_args(self, dtype=None):
        return tuple(jnp.asarray(a, dtype) for a in self.args)

    def jnp_x0(self, dtype=None):
        return jnp.asarray(self.x0, dtype)


# --------------------------------------------------------------------------- residuals


def linear(p, X, y):
    return X @ p - y


def linear_jac(p, X, y):
    return X


def michaelis_menten(p, S, v):
    return p[0] * S / (p[1] + S) - v


def michaelis_menten_jac(p, S, v):
    d = p[1] + S
    return jnp.stack([S / d, -p[0] * S / d**2], axis=1)


def exp_decay(p, t, y):
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y


def exp_decay_jac(p, t, y):
    e = jnp.exp(-p[1] * t)
    return jnp.stack([e, -p[0] * t * e, jnp.ones_like(t)], axis=1)


def gaussian_peak(p, x, y):
    z = (x - p[1]) / p[2]
    return p[0] * jnp.exp(-0.5 * z**2) + p[3] - y


def gaussian_peak_jac(p, x, y):
    z = (x - p[1]) / p[2]
    g = jnp.exp(-0.5 * z**2)
    return jnp.stack([g, p[0] * g * z / p[2], p[0] * g * z**2 / p[2], jnp.ones_like(x)], axis=1)


def rosenbrock(p):
    return jnp.stack([10.0 * (p[1] - p[0] ** 2), 1.0 - p[0]])


def rosenbrock_jac(p):
    return jnp.array([[-20.0 * p[0], 10.0], [-1.0, 0.0]], dtype=p.dtype)


def jennrich_sampson(p, i):
    return 2.0 + 2.0 * i - (jnp.exp(i * p[0]) + jnp.exp(i * p[1]))


def jennrich_sampson_jac(p, i):
    return -jnp.stack([i * jnp.exp(i * p[0]), i * jnp.exp(i * p[1])], axis=1)


def two_exponentials_tree(p, t, y):
    """Pytree parameters: ``{"decay": {"amp": (2,), "rate": (2,)}, "offset": ()}``."""
    d = p["decay"]
    model = d["amp"][0] * jnp.exp(-d["rate"][0] * t) + d["amp"][1] * jnp.exp(-d["rate"][1] * t)
    return model + p["offset"] - y


def two_exponentials_flat(p, t, y):
    """The same model on the flat vector ``[amp0, amp1, rate0, rate1, offset]`` (the order
    of ``ravel_pytree`` on the tree version: dict keys sorted)."""
    model = p[0] * jnp.exp(-p[2] * t) + p[1] * jnp.exp(-p[3] * t)
    return model + p[4] - y


def single_exponential(p, t, y):
    """One rate, no amplitude: full Gauss-Newton steps overshoot from a start far above the rate."""
    return jnp.exp(-p[0] * t) - y


def two_exponentials_tree_jac(p, t, y):
    """Analytic Jacobian in the pytree form ``jax.jacfwd`` returns: leaves (m, *leaf.shape)."""
    d = p["decay"]
    e = jnp.exp(-d["rate"][None, :] * t[:, None])  # (m, 2)
    return {
        "decay": {"amp": e, "rate": -d["amp"][None, :] * t[:, None] * e},
        "offset": jnp.ones_like(t),
    }


def two_exponentials_flat_jac(p, t, y):
    e0, e1 = jnp.exp(-p[2] * t), jnp.exp(-p[3] * t)
    return jnp.stack([e0, e1, -p[0] * t * e0, -p[1] * t * e1, jnp.ones_like(t)], axis=1)


def two_exponentials_tree_jac_array(p, t, y):
    """The same Jacobian for tree parameters in array form (m, n), ``ravel_pytree`` order."""
    d = p["decay"]
    flat = jnp.concatenate([d["amp"], d["rate"], jnp.reshape(p["offset"], (1,))])
    return two_exponentials_flat_jac(flat, t, y)


# --------------------------------------------------------------------------- fixed problems


def linear_regression():
    """Quadratic polynomial fit with deterministic 'noise'; closed-form solution."""
    x = np.linspace(-1.0, 1.0, 30)
    X = np.stack([np.ones_like(x), x, x**2], axis=1)
    y = 1.0 + 2.0 * x - x**2 + 0.1 * np.sin(7.0 * x)
    sol, *_ = np.linalg.lstsq(X, y, rcond=None)
    cost = 0.5 * float(np.sum((X @ sol - y) ** 2))
    return Problem("linear", linear, np.zeros(3), (X, y), solution=sol, cost=cost, jac=linear_jac)


def michaelis_menten_exact():
    """Zero-residual Michaelis-Menten: the data are the model at (29, 6)."""
    S = np.linspace(0.1, 30.0, 20)
    v = 29.0 * S / (6.0 + S)
    return Problem(
        "michaelis_menten_exact",
        michaelis_menten,
        np.array([10.0, 10.0]),
        (S, v),
        solution=np.array([29.0, 6.0]),
        cost=0.0,
        jac=michaelis_menten_jac,
        truth=np.array([29.0, 6.0]),
    )


def exp_decay_noisy():
    """Exponential decay with deterministic 'noise' (solution not known in closed form)."""
    t = np.linspace(0.0, 5.0, 40)
    truth = np.array([2.0, 1.0, 0.5])
    y = truth[0] * np.exp(-truth[1] * t) + truth[2] + 0.05 * np.cos(11.0 * t)
    return Problem("exp_decay", exp_decay, np.array([1.0, 2.0, 0.0]), (t, y), jac=exp_decay_jac, truth=truth)


def rosenbrock_problem():
    """Rosenbrock as least squares: zero residual at (1, 1), classic start (-1.2, 1)."""
    return Problem(
        "rosenbrock", rosenbrock, np.array([-1.2, 1.0]), (), solution=np.ones(2), cost=0.0, jac=rosenbrock_jac
    )


def jennrich_sampson_problem():
    """A large-residual problem (MGH #6, m = 10): minimum ½·124.362 at x1 = x2 ≈ 0.2578."""
    i = np.arange(1.0, 11.0)
    return Problem(
        "jennrich_sampson",
        jennrich_sampson,
        np.array([0.3, 0.4]),
        (i,),
        jac=jennrich_sampson_jac,
        solution=np.array([0.2578, 0.2578]),  # published to 4 digits
        cost=0.5 * 124.362,  # published to 6 digits
    )


def two_exponentials():
    t = np.linspace(0.0, 4.0, 30)
    amp, rate, offset = np.array([3.0, 1.0]), np.array([2.5, 0.4]), 0.2
    y = amp[0] * np.exp(-rate[0] * t) + amp[1] * np.exp(-rate[1] * t) + offset + 0.01 * np.sin(9.0 * t)
    x0 = {"decay": {"amp": np.array([2.0, 1.5]), "rate": np.array([3.0, 0.3])}, "offset": np.array(0.0)}
    return Problem("two_exponentials", two_exponentials_tree, x0, (t, y), jac=two_exponentials_tree_jac)


# --------------------------------------------------------------------------- random instances

# kind -> (residual, analytic jac, x grid, low and high of the true parameters)
RANDOM_KINDS = {
    "exp_decay": (exp_decay, exp_decay_jac, np.linspace(0.0, 5.0, 40), [1.0, 0.3, -1.0], [5.0, 3.0, 1.0]),
    "gaussian_peak": (
        gaussian_peak,
        gaussian_peak_jac,
        np.linspace(-4.0, 4.0, 50),
        [1.0, -1.0, 0.4, -0.5],
        [5.0, 1.0, 1.5, 0.5],
    ),
    "michaelis_menten": (michaelis_menten, michaelis_menten_jac, np.linspace(0.1, 30.0, 25), [1.0, 0.5], [50.0, 10.0]),
}


def sample(kind, rng, *, noise=0.05, start_spread=0.25):
    """A random instance: true parameters uniform in the kind's box, Gaussian noise of
    standard deviation ``noise``, start within ±``start_spread`` (relative) of the truth."""
    fun, jac, x, lo, hi = RANDOM_KINDS[kind]
    truth = rng.uniform(lo, hi)
    with jax.enable_x64(True):
        y = np.asarray(fun(jnp.asarray(truth), jnp.asarray(x), 0.0), dtype=np.float64)
    y = y + noise * rng.standard_normal(x.shape)
    x0 = truth * (1.0 + rng.uniform(-start_spread, start_spread, truth.shape))
    return Problem(kind, fun, x0, (x, y), jac=jac, truth=truth)
