"""What fitfleet learns about the user's ``fun`` by tracing it, before anything compiles:
the residual's shape (``residual_shape``), a Jacobian function's shape and orientation
(``check_user_jac``), and the Jacobian mode that works (``choose_jacobian``), with
what that mode's trace holds (run-time checks, factorisations in a loop).

Tracing costs time on a large model (an ODE solve), and a multi-start or a batch in a
loop checks the same function again and again, so the results are remembered per
function and input shapes (``_traced``; ``fitfleet.clear_caches()`` empties them).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import _validate, _xla


def flat_user_jac(J, r, p):
    """Bring a user Jacobian (array or pytree like ``jax.jacfwd``'s) to shape (m, n)."""
    leaves = jax.tree_util.tree_leaves(J)
    blocks = [jnp.reshape(leaf, (r.size, -1)) for leaf in leaves]
    return jnp.concatenate(blocks, axis=1).astype(p.dtype)


def residual_shape(fun, x0, args):
    """The shape of ``fun(x0, *args)``, which must be one real floating array."""
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
    return out


def check_user_jac(fun, jac, x0, args, out, n):
    """A Jacobian function must return an (m, n) array or exactly what ``jax.jacfwd``
    would (shape, or pytree structure and leaf shapes).  A square Jacobian could be
    transposed with the right shape: it is probed once against ``jax.jvp`` along one
    random direction (concrete inputs only)."""
    m = int(np.prod(out.shape))
    got = jax.eval_shape(jac, x0, *args)
    if isinstance(got, jax.ShapeDtypeStruct):
        single = isinstance(x0, (jax.Array, np.ndarray))
        ok = tuple(got.shape) in ((m, n), (*out.shape, *np.shape(x0)) if single else (m, n))
    else:  # a pytree: exactly jax.jacfwd's, x0's structure with leaves of shape out.shape + leaf.shape
        expected = jax.tree_util.tree_map(lambda leaf: jax.ShapeDtypeStruct((*out.shape, *np.shape(leaf)), out.dtype), x0)
        shapes = lambda tree: [tuple(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)]  # noqa: E731
        ok = jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(expected) and shapes(got) == shapes(expected)
    if not ok:
        what = got.shape if isinstance(got, jax.ShapeDtypeStruct) else f"a {jax.tree_util.tree_structure(got)}"
        raise ValueError(
            f"`jac` returned {what}, but the Jacobian of {m} residuals with respect to {n} parameters "
            f"is an array of shape ({m}, {n}) (or the pytree jax.jacfwd(fun) returns)."
            + (" Is it transposed?" if isinstance(got, jax.ShapeDtypeStruct) and tuple(got.shape) == (n, m) else "")
        )
    if m == n and n > 1 and not _validate.any_traced((x0, args)):
        p0, unravel = ravel_pytree(x0)
        direction = np.random.default_rng(0).standard_normal(n)
        J = np.asarray(flat_user_jac(jac(x0, *args), jnp.zeros(m), p0), np.float64)
        try:
            _, exact = jax.jvp(lambda q: jnp.ravel(fun(unravel(q), *args)), (p0,), (jnp.asarray(direction, p0.dtype),))
        except Exception:  # fun has no JAX derivative (a callback, say): nothing to compare with
            return
        exact = np.asarray(exact, np.float64)
        error, error_transposed = np.linalg.norm(J @ direction - exact), np.linalg.norm(J.T @ direction - exact)
        if error_transposed <= 1e-4 * np.linalg.norm(exact) < error:
            raise ValueError(
                "`jac` returns the transpose of the Jacobian (checked against automatic differentiation of fun at "
                "x0 along a random direction): return J[i, j] = d r_i / d p_j, shape (m, n)."
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
    traces = {}
    for mode in modes:
        traces[mode] = _traced(_jacobian_trace, fun, x0, args, mode)
        error, raises, solves, loops = traces[mode]
        if error is None:
            return dataclasses.replace(spec, jac=mode, may_raise=raises, solves_in_loop=solves, loops=loops)
    errors = {mode: traces[mode][0] for mode in modes}
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


def _jacobian_trace(fun, x0, args, mode):
    """``(error, may_raise, solves_in_loop, loops)``: the exception that tracing ``fun``'s
    Jacobian in ``mode`` raises (None if it traces), whether it contains run-time checks
    that may raise (``_xla.may_raise``: then the solvers evaluate it only at points whose
    residual is finite, so a member of a batch that strays cannot raise for all of
    them), whether it factorises inside a data-dependent loop (``_xla.solves_in_loop``:
    the batch engine then steps each fit alone), and whether it runs a loop at all
    (``_xla.loops``: profiles then refit by ``fit_batch``)."""
    transform = jax.jacfwd if mode == "fwd" else jax.jacrev
    try:
        jaxpr = jax.make_jaxpr(lambda p, a: transform(lambda q: fun(q, *a))(p))(x0, args)
    except Exception as e:  # whatever JAX raises for an untransformable function
        return e, False, False, False
    return None, _xla.may_raise(jaxpr), _xla.solves_in_loop(jaxpr), _xla.loops(jaxpr)


_TRACED = {}


def _traced(what, fun, x0, args, *extra):
    """``what(fun, x0, args, *extra)``, a function of shapes only, remembered per
    function and input shapes: a repeated call (a multi-start, a batch in a loop) need
    not trace ``fun`` again."""
    leaves, treedef = jax.tree_util.tree_flatten((x0, args))
    if not all(isinstance(leaf, (jax.Array, np.ndarray)) and not _validate.is_traced(leaf) for leaf in leaves):
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
