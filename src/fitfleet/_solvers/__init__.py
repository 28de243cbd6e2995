"""Solvers, and the contract between a solver and the loops that run it.

A solver is an ``equinox.Module`` (its hyper-parameters arrays, so new values never
recompile) with

- ``init(problem, p) -> State`` and ``step(problem, state) -> State`` (``_common.State``:
  the point, its residual, cost, Jacobian and gradient, a ``Status``, the counters
  ``n_steps``/``n_fev``/``n_jev`` and the method's own ``inner`` variables).  A step
  proposes and evaluates one trial point and sets the status; it never raises.
  ``_driver.run`` loops ``while status == RUNNING``.
- ``forms_jacobian``: whether ``init``/``step`` evaluate ``J`` (Newton-type methods) or
  gradients only (first-order methods, whose ``State.jac`` is None).
- ``thin(state) -> State``: the state a batch carries from step to step, with what the
  step can do without dropped (``_common.without_jacobian``).
- ``vectorised() -> solver``: the same method with a step that has no data-dependent
  loop (LM's spectral damping search), for the engine's accelerator path: under ``vmap``
  a loop inside the step runs every fit as long as the slowest, and on a GPU each of
  its trips costs kernel launches and a predicate read.  Its iterates are the same as
  the solver's own, up to round-off.

The batch engine (``fitfleet._engine``) runs the same ``init``/``step``, vmapped, on
``thin`` states:

- What a batched step may skip is ``State.jac``, and only that: a solver whose step uses
  only ``JᵀJ``/``Jᵀr`` (in ``inner``/``grad``) drops it in ``thin``, and its step then
  keeps ``jac`` None (``_common.linearize_like``), so that a batch does not carry (m, n)
  per fit through its loop; the Result evaluates ``J`` once, at the solution.  LM and
  Gauss-Newton always drop it; trf keeps it where its geodesic acceleration applies
  (``Jᵀr_pp``) and with more than ``_linalg.UNROLL_MAX`` parameters, where its step is
  an SVD of ``J`` itself.
- Nothing else differs: a batched step is the same step, and every counter means the
  same (``n_jev`` counts the Jacobians the method needs, where a fit alone evaluates
  them; under ``vmap`` a ``lax.cond`` runs both branches, so the batch may evaluate
  more, uncounted).  A solver writes its step so that both branches of such a choice
  are cheap together (LM evaluates ``J`` at the trial point, whose residual XLA then
  computes once for both branches).
"""

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
SUBSPACES = ("full", "2d")  # trf's trust-region subproblem: exactly, or in Coleman & Li's plane


def make_solver(
    method, *, ftol, xtol, gtol, max_steps, settle=True, fatol=0.0, learning_rate, initial_damping, acceleration=True, secant=True,
    x_scale="jac", acceleration_from=0, two_dimensional=False,
    differentiable=False,
):  # fmt: skip
    """Build the solver from checked options (``_setup.prepare``); hyper-parameters
    become arrays, so a new value, or a vmapped one, never recompiles.

    ``x_scale``: ``"jac"`` or positive numbers (``_validate.x_scale``).

    ``acceleration_from``: trf's first step that the acceleration corrects.

    ``two_dimensional``: trf's steps in Coleman & Li's two-dimensional subspace
    (``subspace="2d"``).

    ``differentiable``: the steps themselves carry gradients (``adjoint="unroll"``).
    """
    real = jnp.result_type(float)
    tol = Tolerances(
        ftol=_hyper(ftol, real),
        xtol=_hyper(xtol, real),
        gtol=_hyper(gtol, real),
        settle=_hyper(settle, bool),
        fatol=_hyper(fatol, real),
        max_steps=_hyper(max_steps, jnp.int32),
    )
    scale = None if isinstance(x_scale, str) else _hyper(x_scale, real)
    if method == "lm":
        return LevenbergMarquardt(
            tol=tol, initial_damping=_hyper(initial_damping, real), differentiable=differentiable, x_scale=scale,
        )  # fmt: skip
    if method == "gn":
        return GaussNewton(tol=tol, x_scale=scale)
    if method == "trf":
        return TrustRegionReflective(
            tol=tol, x_scale=scale, acceleration=acceleration, acceleration_from=acceleration_from, secant=secant,
            two_dimensional=two_dimensional, differentiable=differentiable,
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
