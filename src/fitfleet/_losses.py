"""Robust losses ρ, with scipy's definitions and its scaling of the Gauss-Newton model.

The cost is ``F = ½ · f_scale² · Σ ρ(zᵢ)`` with ``zᵢ = (rᵢ / f_scale)²``:

============  ==============================
``linear``    ρ(z) = z  (ordinary least squares)
``soft_l1``   ρ(z) = 2 (√(1 + z) − 1)
``huber``     ρ(z) = z if z ≤ 1 else 2√z − 1
``cauchy``    ρ(z) = ln(1 + z)
``arctan``    ρ(z) = arctan(z)
============  ==============================

Newton-type solvers see a rescaled residual and Jacobian whose Gauss-Newton model has
the exact gradient of F (iteratively reweighted least squares, as Ceres Solver does for
losses with ρ'' <= 0, which all of the above are):

    r̃ = √ρ' · r,    J̃ = √ρ' · J,    so  J̃ᵀr̃ = ρ' Jᵀr = ∇F.

scipy's ``trf`` uses the second-order scaling instead (Triggs et al., §4.3):

    w = max(ρ' + 2ρ''z, eps),    r̃ = ρ'·r / √w,    J̃ = √w · J,

whose ``J̃ᵀJ̃`` is the Gauss-Newton part of the exact Hessian of F (again
``J̃ᵀr̃ = ∇F``).  For these concave losses ``w`` is ~0 far out in the tails, so an
outlier contributes almost no curvature and a large step.  Levenberg-Marquardt and
Gauss-Newton use ``√ρ'``, a model that majorises the cost, so their steps stay sane;
fitfleet's ``trf`` uses scipy's (``second_order=True``), with which it follows scipy's
path: from a poor start (scipy's robust-regression example from ``x0 = ones``) the
majorising model's steps are too short to leave the region where the outliers dominate,
and the fit runs out of steps, while the second-order model converges.  Both share the
same stationary points, so the optima agree.

Reference: B. Triggs, P. McLauchlan, R. Hartley, A. Fitzgibbon, "Bundle adjustment — a
modern synthesis" (2000), §4.3; Ceres Solver, ``internal/ceres/corrector.cc``.
"""

import jax
import jax.numpy as jnp

LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")


def rho(name, z):
    """ρ(z) and ρ'(z) for ``z >= 0``."""
    if name == "linear":
        return z, jnp.ones_like(z)
    if name == "soft_l1":
        t = jnp.sqrt(1 + z)
        return 2 * (t - 1), 1 / t
    if name == "huber":
        inside = z <= 1
        sz = jnp.sqrt(jnp.where(inside, 1, z))
        return jnp.where(inside, z, 2 * sz - 1), jnp.where(inside, 1, 1 / sz)
    if name == "cauchy":
        return jnp.log1p(z), 1 / (1 + z)
    if name == "arctan":
        return jnp.arctan(z), 1 / (1 + z**2)
    raise ValueError(f"`loss` must be one of {LOSSES}; got {name!r}.")


def robust_cost(name, f_scale, r):
    if name == "linear":
        return 0.5 * jnp.sum(r * r)
    z = (r / f_scale) ** 2
    return 0.5 * f_scale**2 * jnp.sum(rho(name, z)[0])


def robust_model(name, f_scale, r, J, second_order=False):
    """``(r̃, J̃) = √ρ' · (r, J)``, or scipy's second-order scaling: see the module docstring."""
    if name == "linear":
        return r, J
    z = (r / f_scale) ** 2
    if not second_order:
        w = jnp.sqrt(rho(name, z)[1])
        return w * r, w[:, None] * J
    # ρ is elementwise, so a forward pass along ones gives ρ'' entry by entry.
    d1, d2 = jax.jvp(lambda v: rho(name, v)[1], (z,), (jnp.ones_like(z),))
    w = jnp.sqrt(jnp.maximum(d1 + 2 * z * d2, jnp.finfo(r.dtype).eps))
    return d1 * r / w, w[:, None] * J
