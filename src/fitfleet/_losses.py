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

scipy's ``trf`` uses the second-order scaling ``√(ρ' + 2ρ''z)`` instead; for these
concave losses that weight can be ~0 far out in the tails, which makes the model's step
unbounded, while ``√ρ'`` gives a model that majorises the cost and steps stay sane.
Both share the same stationary points, so the optima agree.

Reference: B. Triggs, P. McLauchlan, R. Hartley, A. Fitzgibbon, "Bundle adjustment — a
modern synthesis" (2000), §4.3; Ceres Solver, ``internal/ceres/corrector.cc``.
"""

import jax
import jax.numpy as jnp

LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")


def rho(name, z):
    """ρ(z) and ρ'(z) for ``z >= 0``.

    ``name`` may be a function of ``z`` written in ``jax.numpy`` (scipy's callable
    ``loss``): returning ρ(z) elementwise (ρ' then comes from autodiff), or, as scipy's
    callables do, the stack ``[ρ, ρ', ρ'']`` of shape ``(3, *z.shape)``."""
    if callable(name):
        out = jnp.asarray(name(z))
        if out.shape == (3, *z.shape):
            return out[0], out[1]
        if out.shape != z.shape:
            raise ValueError(f"a callable `loss` must return rho(z) with z's shape {z.shape} or [rho, rho', rho''] of shape {(3, *z.shape)}; got {out.shape}.")
        return out, jax.jvp(name, (z,), (jnp.ones_like(z),))[1]
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
    raise ValueError(f"`loss` must be one of {LOSSES} or a function of z; got {name!r}.")


def check_loss(loss):
    """A loss name, or a function ``rho(z)`` (see ``rho``)."""
    if callable(loss) or (isinstance(loss, str) and loss in LOSSES):
        return loss
    raise ValueError(f"`loss` must be one of {LOSSES} or a function rho(z) written in jax.numpy; got {loss!r}.")


def robust_cost(name, f_scale, r):
    if name == "linear":
        return 0.5 * jnp.sum(r * r)
    z = (r / f_scale) ** 2
    return 0.5 * f_scale**2 * jnp.sum(rho(name, z)[0])


def robust_model(name, f_scale, r, J):
    """``(r̃, J̃) = √ρ' · (r, J)``: see the module docstring."""
    if name == "linear":
        return r, J
    w = jnp.sqrt(rho(name, (r / f_scale) ** 2)[1])
    return w * r, w[:, None] * J
