"""Solvers: each is an ``equinox.Module`` with ``init(problem, p) -> State`` and
``step(problem, state) -> State``; the loop around them lives in ``_driver``."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._problem import check_tolerance
from ._common import State, Tolerances
from .gauss_newton import GaussNewton
from .levenberg_marquardt import LevenbergMarquardt
from .optax_baseline import OptaxSolver

METHODS = ("lm", "gn", "adam", "sgd")
DEFAULT_LEARNING_RATE = {"adam": 1e-3, "sgd": 1e-3}


def make_solver(
    method, *, n_params, ftol, xtol, gtol, max_steps, learning_rate, initial_damping,
    differentiable=False, batched=False,
):  # fmt: skip
    """Validate the options and build the solver; hyper-parameters become arrays.

    ``differentiable``: the steps themselves carry gradients (``adjoint="unroll"``).
    ``batched``: the batch engine's mode (see ``LevenbergMarquardt.batched``).
    """
    for name, value in (("ftol", ftol), ("xtol", xtol), ("gtol", gtol)):
        check_tolerance(name, value)
    is_optax = isinstance(method, optax.GradientTransformation)
    if not is_optax and method not in METHODS:
        raise ValueError(
            f"`method` must be one of {METHODS} or an optax.GradientTransformation; got {method!r}."
        )
    if max_steps is None:
        max_steps = 100 * (n_params + 1) if method in ("lm", "gn") else 10_000
    check_tolerance("max_steps", max_steps)
    if isinstance(max_steps, float) and not float(max_steps).is_integer():
        raise TypeError(f"`max_steps` must be a whole number; got {max_steps!r}.")
    real = jnp.result_type(float)
    tol = Tolerances(
        ftol=_hyper(ftol, real),
        xtol=_hyper(xtol, real),
        gtol=_hyper(gtol, real),
        max_steps=_hyper(max_steps, jnp.int32),
    )
    if method == "lm":
        check_tolerance("initial_damping", initial_damping)
        return LevenbergMarquardt(
            tol=tol,
            initial_damping=_hyper(initial_damping, real),
            differentiable=differentiable,
            batched=batched,
        )
    if method == "gn":
        return GaussNewton(tol=tol)
    if is_optax:
        return OptaxSolver(tol=tol, learning_rate=None, name="optax", transform=method)
    if learning_rate is None:
        learning_rate = DEFAULT_LEARNING_RATE[method]
    check_tolerance("learning_rate", learning_rate)
    return OptaxSolver(tol=tol, learning_rate=_hyper(learning_rate, real), name=method)


def _hyper(value, dtype):
    """A hyper-parameter as an array of one dtype whatever the Python type of the value,
    so a new value never recompiles; numpy for a concrete value (no eager JAX operation
    to dispatch on every call), a JAX array or tracer otherwise."""
    if isinstance(value, (jax.Array, jax.core.Tracer)):
        return jnp.asarray(value, dtype)
    return np.asarray(value, dtype)


__all__ = ["METHODS", "GaussNewton", "LevenbergMarquardt", "OptaxSolver", "State", "Tolerances", "make_solver"]
