"""The user's problem: checked once (``check``, with ``_validate`` and ``_tracing``), then
the residual and Jacobian in flat internal coordinates for the solvers (``Problem``).

Checks happen in Python before anything is compiled: shapes and dtypes come from
``jax.eval_shape``, so a bad argument costs one abstract trace, never a compilation,
and its error names the argument and the fix.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import _tracing, _validate
from ._bounds import make_bounds, strictly_inside
from ._losses import check_loss, robust_cost, robust_model
from ._names import parameter_names

JAC_MODES = ("auto", "fwd", "rev")


class Problem(eqx.Module):
    """The residual in the solver's flat internal coordinates ``u`` (a vector of length n).

    ``r(u) = W · fun(unravel(T(u)), *args)`` where ``T`` maps to the user's flat
    parameters (identity, or the bounds / log-scale transform of ``_bounds``) and ``W``
    whitens by the measurement errors (``1/sigma``, or ``L⁻¹`` for a covariance ``LLᵀ``).
    The cost is the robust loss of ``_losses`` (½‖r‖² by default).

    Built inside the traced solve, so its static fields never key a compilation cache.
    """

    fun: Callable = eqx.field(static=True)
    jac: Any = eqx.field(static=True)  # "fwd", "rev" or a callable
    unravel: Callable = eqx.field(static=True)
    args: tuple
    sigma: Any = None  # None, per-residual sigma (m,), or Cholesky factor (m, m)
    bounds: Any = None  # None or _bounds.Bounds
    loss: str = eqx.field(static=True, default="linear")
    f_scale: Any = 1.0
    # The Jacobian holds run-time checks that may raise (``_tracing.choose_jacobian``): it is
    # evaluated only where the residual is finite.
    may_raise: bool = eqx.field(static=True, default=False)

    def to_params(self, u):
        """Flat internal variables -> flat user parameters."""
        return u if self.bounds is None else self.bounds.to_params(u)

    def move(self, u, step):
        """The internal point ``u + step`` (two-sided angles kept in [−π, π])."""
        return u + step if self.bounds is None else self.bounds.wrapped(u + step)

    def pinning(self, u):
        """Per parameter, how much its bounds shrink its Jacobian column at ``u`` (>= 1)."""
        return jnp.ones_like(u) if self.bounds is None else self.bounds.pinning(u)

    def box(self):
        """``(lower, upper)`` on ``u`` where the solver enforces the bounds itself
        (``Bounds.box``), else None."""
        return (self.bounds.lower, self.bounds.upper) if self.bounds is not None and self.bounds.box else None

    def without_bounds(self):
        """The same problem in the user's flat parameters (for uncertainty outputs)."""
        return dataclasses.replace(self, bounds=None)

    def whiten(self, r):
        if self.sigma is None:
            return r
        if self.sigma.ndim == 1:
            return r / (self.sigma if r.ndim == 1 else self.sigma[:, None])
        return jax.scipy.linalg.solve_triangular(self.sigma, r, lower=True)

    def residual(self, u):
        r = self.fun(self.unravel(self.to_params(u)), *self.args)
        return self.whiten(jnp.ravel(r).astype(u.dtype))

    def residual_and_jac(self, p, fallback=None, residual=None):
        """``(r, J)`` at the flat parameters ``p`` of a problem without bounds (with
        bounds, ``_common.linearize`` maps ``J`` to the internal variables); with
        autodiff the residual comes for free with ``J``.

        For a model whose Jacobian may raise (``may_raise``: a diffrax implicit solver's
        linear solves refuse non-finite input, and under ``vmap`` one member's refusal
        raises for all), the residual is evaluated first, and where it is not finite the
        Jacobian is evaluated at ``fallback`` (default 0: any point known to be safe)
        and reported as NaN: the point is rejected as it would be anyway.  ``residual``:
        ``r(p)`` where the caller has it already (a trial point's), so that this check
        costs no evaluation (outside ``vmap`` XLA does not merge the two: the Jacobian
        is evaluated in a ``cond`` branch; a third of a Boehm step's time)."""
        if not self.may_raise:
            return self._residual_and_jac(p)
        r = self.residual(p) if residual is None else residual
        ok = jnp.all(jnp.isfinite(r))
        safe = jnp.zeros_like(p) if fallback is None else fallback
        r_safe, J = self._residual_and_jac(jnp.where(ok, p, safe))
        return jnp.where(ok, r_safe, r), jnp.where(ok, J, jnp.nan)

    def _residual_and_jac(self, p):
        if callable(self.jac):
            r = jnp.ravel(self.fun(self.unravel(p), *self.args)).astype(p.dtype)
            J = _tracing.flat_user_jac(self.jac(self.unravel(p), *self.args), r, p)
            return self.whiten(r), self.whiten(J)
        both = lambda q: (self.residual(q),) * 2  # noqa: E731
        transform = jax.jacfwd if self.jac == "fwd" else jax.jacrev
        J, r = transform(both, has_aux=True)(p)
        return r, J

    def cost(self, r):
        """The (robust) cost, +inf for a non-finite residual so a comparison rejects it."""
        c = robust_cost(self.loss, self.f_scale, r)
        return jnp.where(jnp.isfinite(c), c, jnp.inf)

    def model(self, r, J, second_order=False):
        """Residual and Jacobian of the Gauss-Newton model ``½‖r̃ + J̃δ‖²`` of the cost
        (``second_order``: the loss's scaling, see ``_losses``)."""
        return robust_model(self.loss, self.f_scale, r, J, second_order)

    def residual_cost_grad(self, u):
        """``(r, cost, ∇cost)`` by one reverse-mode pass: no Jacobian is formed."""

        def cost_with_residual(q):
            r = self.residual(q)
            return self.cost(r), r

        (c, r), g = jax.value_and_grad(cost_with_residual, has_aux=True)(u)
        return r, c, g


class Keywords(eqx.Module):
    """``fun(params, *args, **kwargs)`` as ``fun(params, *args, *kwargs.values())``: the
    keyword arguments travel with ``args`` (traced), their names are static."""

    fun: Callable = eqx.field(static=True)
    names: tuple = eqx.field(static=True)

    def __call__(self, params, *args):
        k = len(self.names)
        return self.fun(params, *args[: len(args) - k], **dict(zip(self.names, args[len(args) - k :])))


def with_keywords(fun, args, kwargs):
    """``(fun, args)`` with scipy's ``kwargs`` folded in (see :class:`Keywords`)."""
    if kwargs is None or kwargs == {}:
        return fun, args
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise TypeError(f"`kwargs` must be a dict of keyword arguments to fun; got {type(kwargs).__name__}.")
    return Keywords(fun, tuple(kwargs)), (*_validate.arguments(args), *kwargs.values())


# --------------------------------------------------------------------------- the checked problem


class Spec(eqx.Module):
    """A validated problem: normalised inputs plus what validation learnt about them.

    ``bounds`` is the solver's change of variables (or None); ``box``, ``log`` and
    ``sigma_given`` are the user's bounds, log-scale mask and sigma as the Result records
    them; ``names``/``order`` name the flat parameters and list them in the user's order.
    """

    x0: Any
    args: tuple
    sigma: Any  # whitening: per-residual sigma (m,) or the covariance's Cholesky factor
    sigma_given: Any
    bounds: Any
    f_scale: Any
    loss: str = eqx.field(static=True)
    jac: Any = eqx.field(static=True)
    n_params: int = eqx.field(static=True)
    n_residuals: int = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)
    names: tuple = eqx.field(static=True)
    order: tuple = eqx.field(static=True)
    box: Any = eqx.field(static=True)  # None, or (lower, upper): tuples of floats, user scale
    log: Any = eqx.field(static=True)  # None, or a tuple of bools
    may_raise: bool = eqx.field(static=True, default=False)  # see Problem.may_raise
    solves_in_loop: bool = eqx.field(static=True, default=False)  # of the Jacobian (_xla; the engine blocks of one)
    loops: bool = eqx.field(static=True, default=False)  # the Jacobian runs a while loop (_xla; profiles refit by fit_batch)


def check(
    fun, x0, args, jac, *, sigma=None, bounds=None, log_scale=False, loss="linear", f_scale=1.0, x0_name="x0",
    enforced=False,
) -> Spec:
    """Validate the user's problem (``_validate``), trace ``fun`` once for its output
    shape (``jax.eval_shape``: no compilation), and return the :class:`Spec`.
    ``enforced``: the solver keeps the iterates inside the bounds itself (``Bounds.box``)."""
    if not callable(fun):
        raise TypeError(f"`fun` must be callable as fun(params, *args); got {type(fun).__name__}.")
    args = _validate.arguments(args)
    names, order = parameter_names(_validate.numbers_as_array(x0))  # before dicts get sorted
    x0 = _validate.parameters(x0, x0_name)
    leaves = jax.tree_util.tree_leaves(x0)
    if not leaves:
        raise ValueError(f"`{x0_name}` has no parameters: pass an array or a pytree of arrays.")
    dtype = jnp.result_type(*leaves)
    n = sum(int(np.prod(np.shape(leaf))) for leaf in leaves)
    if n == 0:
        raise ValueError(f"`{x0_name}` has no parameters: every array in it is empty.")
    check_loss(loss)
    _validate.real("f_scale", f_scale, positive=True)
    log = _validate.flat(log_scale, n, x0, "log_scale", bool)
    box = _validate.bounds(bounds, n, x0, log)

    out = _tracing.residual_shape(fun, x0, args)
    m = int(np.prod(out.shape))
    if m == 0:
        raise ValueError("`fun` returned an empty residual array: there is nothing to fit.")
    if callable(jac):
        _tracing.check_user_jac(fun, jac, x0, args, out, n)
    elif jac not in JAC_MODES:
        raise ValueError(f"`jac` must be one of {JAC_MODES} or a callable jac(params, *args); got {jac!r}.")

    if not _validate.any_traced(leaves):
        _validate.start(np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in leaves]), box, log, x0_name)
    sigma_given = _validate.sigma(sigma, m, dtype)
    return Spec(
        x0=x0,
        args=args,
        sigma=None if sigma_given is None else whitening(sigma_given),
        sigma_given=sigma_given,
        bounds=None if box is None and not np.any(log) else make_bounds(box, log, dtype, enforced),
        f_scale=np.asarray(f_scale, dtype) if not _validate.is_traced(f_scale) else f_scale.astype(dtype),
        loss=loss,
        jac=jac,
        n_params=n,
        n_residuals=m,
        dtype=dtype,
        names=names,
        order=order,
        box=None if box is None else (tuple(box[0].tolist()), tuple(box[1].tolist())),
        log=tuple(log.tolist()) if np.any(log) else None,
    )


def whitening(sigma):
    """What ``Problem.whiten`` divides by: sigma itself, or a covariance's Cholesky factor."""
    if sigma is None or np.ndim(sigma) == 1 or np.ndim(sigma) == 0:
        return sigma
    if _validate.is_traced(sigma) or isinstance(sigma, jax.Array):
        return jnp.linalg.cholesky(sigma)
    return np.linalg.cholesky(np.asarray(sigma, np.float64)).astype(sigma.dtype)


def make_problem(fun, spec):
    """Flatten ``x0`` and build the flat :class:`Problem`; call inside the traced solve.

    Returns the problem and the internal starting point ``u0``.
    """
    assert callable(spec.jac) or spec.jac in ("fwd", "rev"), "call choose_jacobian first"
    p0, unravel = ravel_pytree(spec.x0)
    problem = Problem(
        fun=fun,
        jac=spec.jac,
        unravel=unravel,
        args=spec.args,
        sigma=spec.sigma,
        bounds=spec.bounds,
        loss=spec.loss,
        f_scale=spec.f_scale,
        may_raise=spec.may_raise,
    )
    if spec.bounds is None:
        return problem, p0
    return problem, spec.bounds.to_internal(strictly_inside(spec.bounds, p0))
