"""Solvers: each is an ``equinox.Module`` with ``init(problem, p) -> State`` and
``step(problem, state) -> State``; the loop around them lives in ``_driver``."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._common import State, Tolerances
from .gauss_newton import GaussNewton
from .levenberg_marquardt import LevenbergMarquardt
from .optax_baseline import OptaxSolver
from .trust_region_reflective import TrustRegionReflective

METHODS = ("lm", "gn", "trf", "adam", "sgd")
NEWTON_METHODS = ("lm", "gn", "trf")


def make_solver(
    method, *, ftol, xtol, gtol, max_steps, learning_rate, initial_damping, x_scale="jac", differentiable=False,
    batched=False,
):  # fmt: skip
    """Build the solver from checked options (``_setup.prepare``); hyper-parameters
    become arrays, so a new value, or a vmapped one, never recompiles.

    ``x_scale``: ``"jac"`` or positive numbers (``_validate.x_scale``).

    ``differentiable``: the steps themselves carry gradients (``adjoint="unroll"``).
    ``batched``: the batch engine's mode (see ``LevenbergMarquardt.batched``).
    """
    real = jnp.result_type(float)
    tol = Tolerances(
        ftol=_hyper(ftol, real),
        xtol=_hyper(xtol, real),
        gtol=_hyper(gtol, real),
        max_steps=_hyper(max_steps, jnp.int32),
    )
    scale = None if isinstance(x_scale, str) else _hyper(x_scale, real)
    if method == "lm":
        return LevenbergMarquardt(
            tol=tol, initial_damping=_hyper(initial_damping, real), differentiable=differentiable, batched=batched,
            x_scale=scale,
        )  # fmt: skip
    if method == "gn":
        return GaussNewton(tol=tol, x_scale=scale)
    if method == "trf":
        return TrustRegionReflective(
            tol=tol,
            x_scale=scale,
            differentiable=differentiable,
            batched=batched,
        )
    if isinstance(method, optax.GradientTransformation):
        return OptaxSolver(tol=tol, learning_rate=None, name="optax", transform=method)
    return OptaxSolver(tol=tol, learning_rate=_hyper(learning_rate, real), name=method)


def _hyper(value, dtype):
    """A hyper-parameter as an array of one dtype whatever the Python type of the value,
    so a new value never recompiles; numpy for a concrete value (no eager JAX operation
    to dispatch on every call), a JAX array or tracer otherwise."""
    if isinstance(value, (jax.Array, jax.core.Tracer)):
        return jnp.asarray(value, dtype)
    return np.asarray(value, dtype)


__all__ = [
    "METHODS", "GaussNewton", "LevenbergMarquardt", "OptaxSolver", "State", "Tolerances", "TrustRegionReflective",
    "make_solver",
]  # fmt: skip
