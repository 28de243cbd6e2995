"""Derivatives of a fit with respect to everything it depends on.

A fit is a function ``θ ↦ p*(θ)`` of the data, ``args``, ``sigma``, ``f_scale``... (all
the floating-point arrays of the problem, together called θ).  fitfleet offers two ways
to differentiate it, chosen by ``least_squares(..., adjoint=...)``.

``adjoint="implicit"`` (the default) differentiates the optimality condition, not the
iterations.  In the solver's internal coordinates ``u`` (``p = T(u)``, see ``_bounds``)
the solution satisfies ``g(u*, θ) = ∇ᵤF(u*, θ) = 0`` with ``F`` the (robust) cost, so

    du*/dθ · θ̇ = −H⁻¹ (∂_θ g · θ̇),        H = ∇²ᵤF(u*, θ),

and ``dp* = T'(u*) du*``.  The loop runs without gradients (its inputs are
``stop_gradient``-ed); the rule above is attached to its result by a ``custom_jvp``,
whose primal is the identity, so a fit that is not differentiated costs nothing extra.
Reverse mode is JAX's transpose of this rule: one transposed solve with ``H`` plus one
vector-Jacobian product of ``g``, never a replay of the loop.  Consequences:

- The derivative with respect to ``x0`` is zero by construction: ``p*`` is a property
  of the problem, not of the path to it.  (Under ``adjoint="unroll"`` it is whatever
  the iterations give: close to zero for a converged fit.)
- ``H`` is the **exact** Hessian of the cost (``n`` Hessian-vector products, about the
  price of one Jacobian), not the Gauss-Newton ``J̃ᵀJ̃``.  Gauss-Newton would drop
  ``Σ rᵢ∇²rᵢ``, so its derivative is wrong by a relative ``O(‖r‖‖∇²r‖/σ_min(J)²)``
  for every fit whose residual is not zero (any real, noisy data); it would also drop
  the ``ρ''`` terms of robust losses, and at an active bound, where ``T'(u*) = 0``,
  the Gauss-Newton matrix in ``u`` is singular while the exact one keeps the curvature
  of the transform, which pins the parameter to its bound (``dp* = 0`` there, as it
  should be).
- ``H`` is solved by a Cholesky factorisation after Jacobi scaling (``D⁻¹HD⁻¹``,
  ``D = √|diag H|``) that drops a direction whose pivot falls below ``10·n·eps``
  (numpy's pseudo-inverse cut-off) rather than failing: a parameter that is
  (numerically) a function of earlier ones, e.g. ``p₁`` when only ``p₀ + p₁`` matters,
  gets a zero derivative, while every identifiable combination gets its right one; so
  does a direction of negative curvature (a saddle, or a failed fit under ``"keep"``).
  Batched over fits it costs what an LU solve does; a pseudo-inverse (batched SVDs)
  would cost 30× more.
- The other fields of the :class:`Result` (``residual``, ``cost``, ``jac``, ``grad``)
  are differentiable consistently: their primal values are the solver's, and their
  derivatives are those of recomputing them at the attached solution.
- Higher derivatives work: the rule is itself differentiable, and re-attaches the
  solution inside it.

``adjoint="unroll"`` differentiates through the iterations of the solver, in reverse
mode only (``grad``/``vjp``/``jacrev``; forward mode raises), by equinox's checkpointed
while loop: memory is that of ``O(√max_steps)`` copies of the solver state, whatever
the number of steps taken, at the price of recomputing steps in the backward pass.  It
is for comparison, and for users who want the derivative of exactly what ran.

A fit that failed (``Result.success`` is False: ``max_steps``, a non-finite residual,
a failed step) is not at a stationary point, so the implicit derivative has no meaning
there.  ``grad_on_failure`` decides what its derivatives are, for either adjoint, for
every field of the Result, per fit in a batch:

- ``"nan"`` (default): NaN, forward and reverse mode, so the failure cannot go unseen.
  NaN survives masking (``0·NaN = NaN``): to leave failed fits out of a loss, use
  ``"zero"``.
- ``"zero"``: zero, so failed fits contribute nothing to a gradient.
- ``"keep"``: the formula evaluated at the point returned anyway.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp

from ._linalg import solve_semidefinite
from ._solvers._common import linearize
from ._status import is_success

ADJOINTS = ("implicit", "unroll")
ON_FAILURE = ("nan", "zero", "keep")


class Adjoint(eqx.Module):
    """How a fit is differentiated; static, so it is part of the compilation key."""

    kind: str = eqx.field(static=True, default="implicit")
    on_failure: str = eqx.field(static=True, default="nan")
    checkpoints: int | None = eqx.field(static=True, default=None)


IMPLICIT = Adjoint()


def make_adjoint(adjoint, grad_on_failure, max_steps_bound):
    """Validate ``adjoint``/``grad_on_failure``; ``max_steps_bound`` sizes the checkpoints."""
    if adjoint not in ADJOINTS:
        raise ValueError(f"`adjoint` must be one of {ADJOINTS}; got {adjoint!r}.")
    if grad_on_failure not in ON_FAILURE:
        raise ValueError(f"`grad_on_failure` must be one of {ON_FAILURE}; got {grad_on_failure!r}.")
    if adjoint == "implicit":
        return Adjoint("implicit", grad_on_failure)
    return Adjoint("unroll", grad_on_failure, checkpoints=_checkpoints(max_steps_bound))


def _checkpoints(max_steps):
    # equinox's default: online checkpointing with O(√max_steps) checkpoints needs no
    # more recomputation than the optimal offline schedule (Stumm & Walther 2010).
    if max_steps <= 1:
        return 1
    return int((-1.5 + (2 * max_steps + 0.25) ** 0.5) // 1) + 1


def no_gradient(tree):
    """``stop_gradient`` on every floating-point array of a pytree (modules included)."""
    dynamic, static = eqx.partition(tree, eqx.is_inexact_array)
    return eqx.combine(jax.lax.stop_gradient(dynamic), static)


# ------------------------------------------------------------------ the implicit rule


def _cost(problem, u):
    return problem.cost(problem.residual(u))


def _cost_grad(problem, u):
    return jax.grad(_cost, argnums=1)(problem, u)


@eqx.filter_custom_jvp
def solution(u_star, problem):
    """``u_star``, with the implicit derivative ``−H⁻¹ ∂_θ∇ᵤF`` attached; see the module."""
    return u_star


@solution.def_jvp
def _solution_jvp(primals, tangents):
    u_star, problem = primals
    # Re-attaching keeps second derivatives right: the rule below is differentiated at
    # a u* that itself depends on θ.
    u = solution(u_star, problem)
    t_problem = tangents[1]
    if not jax.tree_util.tree_leaves(t_problem):
        return u, None
    _, mixed = _jvp_where_given(lambda prob: _cost_grad(prob, u), problem, t_problem)
    hessian = jax.hessian(_cost, argnums=1)(problem, u)
    box = problem.box()
    if box is None:
        return u, -_solve_symmetric(hessian, mixed)
    # A box the solver enforces (trf): the KKT conditions.  A parameter held by its
    # bound stays there under a small change of θ; the others satisfy ∇F = 0 among
    # themselves.
    active = on_active_bound(u, jax.lax.stop_gradient(_cost_grad(problem, u)), hessian, *box)
    eye = jnp.eye(u.shape[0], dtype=hessian.dtype)
    hessian = jnp.where(active[:, None] | active[None, :], eye, hessian)
    return u, jnp.where(active, 0, -_solve_symmetric(hessian, jnp.where(active, 0, mixed)))


def on_active_bound(u, grad, hessian, lower, upper):
    """Which parameters a bound holds at the solution ``u``: those whose own Newton step
    ``−g_j/H_jj``, the others held fixed, would cross the bound the gradient pushes them
    against.  At a KKT point a free parameter has ``g_j = 0``, so that step is zero;
    a held one is on its bound (to the solver's precision) with ``g_j`` pushing outward."""
    curvature = jnp.abs(jnp.diagonal(hessian))
    return ((grad > 0) & (grad >= curvature * (u - lower))) | ((grad < 0) & (-grad >= curvature * (upper - u)))


def _solve_symmetric(H, b):
    """``H⁻¹b`` for symmetric ``H``, by a Cholesky factorisation that drops dependent
    directions instead of failing (see the module docstring)."""
    d = jnp.sqrt(jnp.abs(jnp.diagonal(H)))
    d = jnp.where(d > 0, d, 1)
    return solve_semidefinite(H / (d[:, None] * d[None, :]), b / d) / d


def _jvp_where_given(fn, primals, tangents):
    """``jax.jvp(fn, (primals,), (tangents,))`` where a ``None`` tangent leaf means zero.

    Only the leaves with a tangent are differentiated, so large arrays nobody asked
    about (the data, when differentiating with respect to ``sigma``) cost nothing.
    """
    leaves, treedef = jax.tree_util.tree_flatten(primals)
    t_leaves = treedef.flatten_up_to(tangents)
    given = [i for i, t in enumerate(t_leaves) if t is not None]

    def partial_fn(*diff):
        full = list(leaves)
        for i, leaf in zip(given, diff):
            full[i] = leaf
        return fn(jax.tree_util.tree_unflatten(treedef, full))

    return jax.jvp(partial_fn, [leaves[i] for i in given], [t_leaves[i] for i in given])


# ------------------------------------------------------ the Result's other fields


@eqx.filter_custom_jvp
def _known(value, inputs, *, fn):
    return value


@_known.def_jvp
def _known_jvp(primals, tangents, *, fn):
    value, inputs = primals
    out = _known(value, inputs, fn=fn)
    if not jax.tree_util.tree_leaves(tangents[1]):
        return out, None
    return out, _jvp_where_given(fn, inputs, tangents[1])[1]


def known_value(value, fn, inputs):
    """``fn(inputs)``, whose ``value`` is already known: recomputed only when
    differentiated (for the tangent), so an undifferentiated fit pays nothing."""
    return _known(value, inputs, fn=fn)


def _fields_in_user_coordinates(inputs):
    params, problem = inputs
    if callable(problem.jac):
        # The tangent of a user-supplied Jacobian comes from autodiff of fun (which the
        # Hessian needs anyway): the user's jac need not be differentiable.
        problem = dataclasses.replace(problem, jac="fwd")
    lin = linearize(problem.without_bounds(), params)
    return lin.residual, problem.cost(lin.residual), lin.jac, lin.grad


def attach(u_star, problem, fields):
    """The Result's ``(params, residual, cost, jac, grad)`` as functions of θ.

    ``u_star`` is the solver's (undifferentiated) solution in internal coordinates and
    ``fields`` the values of ``(residual, cost, jac, grad)`` there, ``jac``/``grad``
    with respect to the user's flat parameters.
    """
    params = problem.to_params(solution(u_star, problem))
    return (params, *known_value(fields, _fields_in_user_coordinates, (params, problem)))


# ------------------------------------------------------------------- failed fits


@eqx.filter_custom_jvp
def _scale_tangent(tree, factor):
    return tree


@_scale_tangent.def_jvp
def _scale_tangent_jvp(primals, tangents):
    tree, factor = primals
    out = _scale_tangent(tree, factor)
    # Linear in the tangent, so reverse mode scales the cotangent by the same factor.
    scale = lambda t: None if t is None else t * factor.astype(t.dtype)  # noqa: E731
    return out, jax.tree_util.tree_map(scale, tangents[0], is_leaf=lambda t: t is None)


def guard(tree, status, on_failure):
    """Replace the derivatives of ``tree`` by NaN or zero where ``status`` is not a success."""
    if on_failure == "keep":
        return tree
    bad = jnp.nan if on_failure == "nan" else 0.0
    return _scale_tangent(tree, jnp.where(is_success(status), 1.0, bad))
