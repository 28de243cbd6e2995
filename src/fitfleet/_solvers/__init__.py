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
from .trust_region_reflective import TrustRegionReflective

METHODS = ("lm", "gn", "trf", "adam", "sgd")
NEWTON_METHODS = ("lm", "gn", "trf")
DEFAULT_LEARNING_RATE = {"adam": 1e-3, "sgd": 1e-3}


def make_solver(
    method, *, n_params, ftol, xtol, gtol, max_steps, learning_rate, initial_damping,
    x_scale=None, differentiable=False, batched=False,
):  # fmt: skip
    """Validate the options and build the solver; hyper-parameters become arrays.

    ``x_scale``: None (the method's default), ``"jac"``, or positive numbers (a scalar or
    one per flat parameter), for ``"trf"``; ``"lm"`` and ``"gn"`` take None or ``"jac"``
    (what they do anyway).

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
    x_scale = _check_x_scale(x_scale, method, n_params)
    if max_steps is None:
        max_steps = 100 * (n_params + 1) if method in NEWTON_METHODS else 10_000
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
    if method == "trf":
        return TrustRegionReflective(
            tol=tol,
            x_scale=None if isinstance(x_scale, str) else _hyper(x_scale, real),
            differentiable=differentiable,
            batched=batched,
        )
    if is_optax:
        return OptaxSolver(tol=tol, learning_rate=None, name="optax", transform=method)
    if learning_rate is None:
        learning_rate = DEFAULT_LEARNING_RATE[method]
    check_tolerance("learning_rate", learning_rate)
    return OptaxSolver(tol=tol, learning_rate=_hyper(learning_rate, real), name=method)


def _check_x_scale(x_scale, method, n_params):
    """``x_scale`` as the method uses it: ``"jac"``, or an array of positive scales."""
    if isinstance(x_scale, str):
        if x_scale != "jac":
            raise ValueError(f"`x_scale` must be 'jac' or positive numbers; got {x_scale!r}.")
        if method not in NEWTON_METHODS:
            raise ValueError(f"`x_scale` applies to methods {NEWTON_METHODS}, not {method!r}.")
        return x_scale
    if x_scale is None:
        # scipy 1.17's defaults: 1 for trf; lm and gn scale by the Jacobian's columns.
        return 1.0 if method == "trf" else "jac"
    if method != "trf":
        raise ValueError(
            f"`x_scale` as numbers is supported by method='trf' only; {method!r} scales the "
            "parameters by the Jacobian's columns (x_scale='jac' or None)."
        )
    if isinstance(x_scale, jax.core.Tracer):
        return x_scale
    try:
        arr = np.asarray(x_scale, dtype=float)
    except (TypeError, ValueError) as e:
        raise TypeError(f"`x_scale` must be 'jac' or an array of positive numbers; got {x_scale!r}.") from e
    if arr.ndim > 1 or arr.size not in (1, n_params):
        raise ValueError(
            f"`x_scale` must be a scalar or have one entry per flat parameter ({n_params}); got shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr) & (arr > 0)):
        raise ValueError("`x_scale` must be finite and positive.")
    return x_scale


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
