"""Everything about the user's problem: validation at the boundary, and the residual
and Jacobian in flat coordinates for the solvers.

Validation happens here and only here, in Python, before anything is compiled:
shapes and dtypes come from ``jax.eval_shape``, so a bad argument costs one abstract
trace, never a compilation, and its error names the argument and the fix.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._bounds import make_bounds, strictly_inside
from ._losses import LOSSES, robust_cost, robust_model

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

    def residual_and_jac(self, p):
        """``(r, J)`` at the flat parameters ``p`` of a problem without bounds (with
        bounds, ``_common.linearize`` maps ``J`` to the internal variables); with
        autodiff the residual comes for free with ``J``."""
        if callable(self.jac):
            r = jnp.ravel(self.fun(self.unravel(p), *self.args)).astype(p.dtype)
            J = _flat_user_jac(self.jac(self.unravel(p), *self.args), r, p)
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


def _flat_user_jac(J, r, p):
    """Bring a user Jacobian (array or pytree like ``jax.jacfwd``'s) to shape (m, n)."""
    leaves = jax.tree_util.tree_leaves(J)
    blocks = [jnp.reshape(leaf, (r.size, -1)) for leaf in leaves]
    return jnp.concatenate(blocks, axis=1).astype(p.dtype)


# --------------------------------------------------------------------------- validation


class Spec(eqx.Module):
    """A validated problem: normalised inputs plus what validation learnt about them."""

    x0: Any
    args: tuple
    sigma: Any
    bounds: Any
    f_scale: Any
    loss: str = eqx.field(static=True)
    jac: Any = eqx.field(static=True)
    n_params: int = eqx.field(static=True)
    n_residuals: int = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)


def _as_float_leaf(leaf, name):
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    try:
        arr = leaf if isinstance(leaf, jax.Array) else jnp.asarray(leaf)
    except TypeError as e:
        raise TypeError(f"`{name}` must be an array or a pytree of arrays; got {type(leaf)}.") from e
    if jnp.issubdtype(arr.dtype, jnp.complexfloating):
        raise TypeError(f"`{name}` is complex; fitfleet fits real parameters. Split it into real and imaginary parts.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    return arr


def numbers_as_array(x0):
    """A list or tuple of plain numbers (nested or not) is an array, as numpy and scipy
    read it, so ``x0=[1.0, 2.0]`` gives ``fun`` an array; any other pytree stays one.
    (For ``x0`` and each of ``args``.)"""
    if not isinstance(x0, (list, tuple)):
        return x0
    leaves = jax.tree_util.tree_leaves(x0)
    if not leaves or not all(isinstance(leaf, (int, float, np.number)) and not isinstance(leaf, bool) for leaf in leaves):
        return x0
    try:
        return np.asarray(x0)
    except ValueError:  # ragged: a pytree after all
        return x0


def _as_arg_leaf(leaf):
    if isinstance(leaf, (bool, int, float, complex, np.ndarray, np.generic)):
        return jnp.asarray(leaf)
    return leaf


def _is_concrete(x):
    return not isinstance(x, jax.core.Tracer)


def any_tracer(tree):
    """True when called under a JAX transformation of these inputs (jit, grad, vmap)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def check(
    fun, x0, args, jac, *, sigma=None, bounds=None, log_scale=False, loss="linear", f_scale=1.0, box=False
) -> Spec:
    """Validate the user's problem; raise a clear error before anything compiles.

    ``box``: the solver enforces the bounds itself (``_bounds.Bounds.box``)."""
    if not callable(fun):
        raise TypeError(f"`fun` must be callable as fun(params, *args); got {type(fun).__name__}.")
    if not isinstance(args, tuple):
        raise TypeError(
            f"`args` must be a tuple of extra arguments to fun; got {type(args).__name__}. "
            "For a single argument write args=(x,)."
        )
    x0 = jax.tree_util.tree_map(lambda leaf: _as_float_leaf(leaf, "x0"), numbers_as_array(x0))
    leaves = jax.tree_util.tree_leaves(x0)
    if not leaves:
        raise ValueError("`x0` has no parameters: pass an array or a pytree of arrays.")
    dtype = jnp.result_type(*leaves)
    n = sum(int(np.prod(leaf.shape)) for leaf in leaves)
    if n == 0:
        raise ValueError("`x0` has no parameters: every array in it is empty.")
    args = jax.tree_util.tree_map(_as_arg_leaf, tuple(map(numbers_as_array, args)))

    try:
        out = _output_shape(fun, x0, args)
    except Exception as e:
        context = "calling fun(x0, *args) failed while checking the problem"
        try:
            wrapped = type(e)(f"{context}: {e}")
        except Exception:  # a type with its own constructor, e.g. jax's tracer errors
            wrapped = None
        if wrapped is None:
            e.add_note(context)
            raise
        raise wrapped from e
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(
            "`fun` must return a single array of residuals; got a "
            f"{type(out).__name__}. Concatenate the pieces with jnp.concatenate."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(
            f"`fun` must return a real floating-point array; it returned dtype {out.dtype}. "
            "Make the residual float, e.g. model(x) - y with float data."
        )
    m = int(np.prod(out.shape))
    if m == 0:
        raise ValueError("`fun` returned an empty residual array: there is nothing to fit.")

    if callable(jac):
        jout = jax.eval_shape(jac, x0, *args)
        size = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(jout))
        if size != m * n:
            raise ValueError(
                f"`jac` returned {size} entries but the Jacobian of {m} residuals with respect "
                f"to {n} parameters has {m * n}: return an array of shape ({m}, {n}) "
                "(or the pytree jax.jacfwd(fun) would return)."
            )
    elif jac not in JAC_MODES:
        raise ValueError(f"`jac` must be one of {JAC_MODES} or a callable jac(params, *args); got {jac!r}.")

    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}; got {loss!r}.")
    check_tolerance("f_scale", f_scale)
    if _is_concrete(f_scale) and not float(f_scale) > 0:
        raise ValueError(f"`f_scale` must be > 0; got {f_scale!r}.")
    x0_flat = ravel_pytree(x0)[0] if all(_is_concrete(leaf) for leaf in leaves) else jnp.zeros(n, dtype)
    bounds_obj = make_bounds(bounds, log_scale, x0_flat, x0, box=box)
    return Spec(
        x0=x0,
        args=args,
        sigma=_check_sigma(sigma, m, dtype),
        bounds=bounds_obj,
        f_scale=jnp.asarray(f_scale, dtype),
        loss=loss,
        jac=jac,
        n_params=n,
        n_residuals=m,
        dtype=dtype,
    )


def choose_jacobian(fun, spec):
    """``spec`` with its Jacobian mode settled: ``"fwd"`` or ``"rev"``, the mode asked for,
    or for ``"auto"`` the cheaper one (forward when n <= m), checked by tracing
    ``jax.jacfwd``/``jax.jacrev`` of ``fun``; a Jacobian function stays.  The last check
    (it traces a derivative): call it once every other argument is validated.

    Not every function has both: a ``custom_vjp`` (diffrax's default adjoint, say) has no
    forward mode, a ``lax.while_loop`` with a traced trip count no reverse mode.  "auto"
    then takes the mode that works; an explicit mode that fails is an error here, before
    anything compiles, rather than deep inside the solver's compilation."""
    jac, x0, args = spec.jac, spec.x0, spec.args
    if callable(jac):
        return spec
    modes = (jac,) if jac != "auto" else ("fwd", "rev") if spec.n_params <= spec.n_residuals else ("rev", "fwd")
    for mode in modes:
        if _traced(_differentiable, fun, x0, args, mode):
            return dataclasses.replace(spec, jac=mode)
    errors = {mode: _jacobian_error(fun, x0, args, mode) for mode in modes}  # traced again: not kept
    how = {"fwd": "forward mode (jax.jacfwd)", "rev": "reverse mode (jax.jacrev)"}
    reasons = "; ".join(f"{how[mode]}: {type(e).__name__}: {str(e).splitlines()[0].rstrip('.')}" for mode, e in errors.items())
    if jac != "auto":
        other = "rev" if jac == "fwd" else "fwd"
        raise ValueError(
            f"`jac={jac!r}`: fun cannot be differentiated in {reasons}. Pass jac={other!r} or "
            f"jac='auto' (which uses whichever mode works), or a Jacobian function jac(params, *args). "
            "(diffrax's default adjoint has reverse mode only, adjoint=diffrax.ForwardMode() forward mode only.)"
        ) from errors[jac]
    raise ValueError(
        f"fun cannot be differentiated by JAX in either mode ({reasons}). Pass `jac`, a function "
        "jac(params, *args) returning the (m, n) Jacobian."
    ) from errors[modes[0]]


def _differentiable(fun, x0, args, mode):
    return _jacobian_error(fun, x0, args, mode) is None


def _jacobian_error(fun, x0, args, mode):
    """The exception that tracing ``fun``'s Jacobian in ``mode`` raises, or None."""
    transform = jax.jacfwd if mode == "fwd" else jax.jacrev
    try:
        jax.eval_shape(lambda p, a: transform(lambda q: fun(q, *a))(p), x0, args)
    except Exception as e:  # whatever JAX raises for an untransformable function
        return e
    return None


_TRACED = {}


def _traced(what, fun, x0, args, *extra):
    """``what(fun, x0, args, *extra)``, a function of shapes only, remembered per
    function and input shapes: a repeated call (a multi-start, a batch in a loop) need
    not trace ``fun`` again."""
    leaves, treedef = jax.tree_util.tree_flatten((x0, args))
    if not all(isinstance(leaf, (jax.Array, np.ndarray)) and _is_concrete(leaf) for leaf in leaves):
        return what(fun, x0, args, *extra)
    shapes = tuple((a.shape, a.dtype, getattr(a, "weak_type", False)) for a in leaves)
    key = (what, fun, treedef, shapes, jnp.result_type(float), *extra)  # float is float64 only under x64
    try:
        hash(key)
    except TypeError:  # an unhashable callable
        return what(fun, x0, args, *extra)
    if key not in _TRACED:
        if len(_TRACED) > 256:
            _TRACED.clear()
        _TRACED[key] = what(fun, x0, args, *extra)
    return _TRACED[key]


def _eval_shape(fun, x0, args):
    return jax.eval_shape(fun, x0, *args)


def _output_shape(fun, x0, args):
    """``jax.eval_shape(fun, x0, *args)``, remembered (see ``_traced``)."""
    return _traced(_eval_shape, fun, x0, args)


def _check_sigma(sigma, m, dtype):
    """Per-residual standard deviations (m,) or a covariance (m, m) -> sigma or its Cholesky factor."""
    if sigma is None:
        return None
    sigma = jnp.asarray(sigma, dtype)
    if sigma.ndim == 2 and sigma.shape == (m, m):
        factor = jnp.linalg.cholesky(sigma)
        if _is_concrete(factor) and not bool(jnp.all(jnp.isfinite(factor))):
            raise ValueError("`sigma` as a covariance matrix must be symmetric positive definite.")
        return factor
    if sigma.size != m:
        raise ValueError(
            f"`sigma` must hold one standard deviation per residual ({m}) or be an ({m}, {m}) "
            f"covariance matrix; got shape {sigma.shape}."
        )
    sigma = sigma.reshape(m)
    if _is_concrete(sigma) and not bool(jnp.all(sigma > 0)):
        raise ValueError("`sigma` must be positive: standard deviations of the measurements.")
    return sigma


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
    )
    if spec.bounds is None:
        return problem, p0
    return problem, spec.bounds.to_internal(strictly_inside(spec.bounds, p0))


def check_tolerance(name, value):
    """Hyper-parameters are non-negative finite numbers; traced values (under vmap) are trusted."""
    if isinstance(value, jax.core.Tracer):
        return value
    arr = np.asarray(value)
    if arr.ndim != 0 or not (np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.complexfloating)):
        raise TypeError(f"`{name}` must be a real scalar; got {value!r}.")
    if not np.isfinite(arr) or arr < 0:
        raise ValueError(f"`{name}` must be finite and >= 0; got {value!r}.")
    return value
