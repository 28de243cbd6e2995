"""Robust losses ρ, with scipy's definitions and its scaling of the Gauss-Newton model.

The cost is ``F = ½ · f_scale² · Σ ρ(zᵢ)`` with ``zᵢ = (rᵢ / f_scale)²``:

============  ==============================
``linear``    ρ(z) = z  (ordinary least squares)
``soft_l1``   ρ(z) = 2 (√(1 + z) − 1)
``huber``     ρ(z) = z if z ≤ 1 else 2√z − 1
``cauchy``    ρ(z) = ln(1 + z)
``arctan``    ρ(z) = arctan(z)
============  ==============================

Newton-type solvers see a rescaled residual and Jacobian with the exact gradient of F,

    r̃ = √ρ' · r,    J̃ = √ρ' · J,    so  J̃ᵀr̃ = ρ' Jᵀr = ∇F,

whose column norms and cosine serve the scaling and the ``gtol`` test.  Gauss-Newton's
model matrix is ``J̃ᵀJ̃``, the iteratively reweighted least-squares matrix (Ceres
Solver's choice in the outlier region): it majorises the cost, so a step without a
trust region stays sane.  Levenberg-Marquardt's is ``Jᵀ diag(ρ' + 2ρ''z) J``, the
Gauss-Newton part of F's exact Hessian, with each row's weight kept at least eps where
the loss bends the other way (``ρ' + 2ρ''z <= 0``: cauchy and arctan beyond z = 1,
huber outside), as scipy's ``trf`` does (``_lsq.common.scale_for_robust_loss_function``);
where that weight vanishes the step would be unbounded, and the trust region bounds it.
The majorising matrix over-weights the residuals the loss has given up on: on scipy's own
robust-regression example from ``x0 = ones``, where every point is far in the tails,
its steps fitted those points by flattening the exponential, and cauchy fits slid down
a valley to ``a = ±1e4`` (max_steps) where scipy's ``trf`` converges in 10-20
evaluations; over that example's data sets and starts, LM with the exact curvature
reaches the best cost more often and in fewer steps (``benchmarks/starts.py``).  Both
models have the same gradient, so the stationary points agree.  The trust-region
reflective method, which factors the scaled Jacobian itself, takes the same matrix in
scipy's form (``robust_model(second_order=True)``):

    w = max(ρ' + 2ρ''z, eps),    r̃ = ρ'·r / √w,    J̃ = √w · J,    so  J̃ᵀJ̃ = Jᵀ diag(w) J.

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


def robust_model(name, f_scale, r, J, second_order=False):
    """``(r̃, J̃) = √ρ' · (r, J)``, or scipy's second-order scaling: see the module docstring."""
    if name == "linear":
        return r, J
    z = (r / f_scale) ** 2
    if not second_order:
        w = jnp.sqrt(rho(name, z)[1])
        return w * r, w[:, None] * J
    w = jnp.sqrt(loss_curvature(name, f_scale, r))
    return rho(name, z)[1] * r / w, w[:, None] * J


def loss_curvature(name, f_scale, r):
    """``ρ'(z) + 2ρ''(z)·z`` with ``z = (r/f_scale)²``, at least eps: each residual's
    weight in the robust cost's Gauss-Newton matrix (module docstring)."""
    z = (r / f_scale) ** 2
    # ρ is elementwise, so a forward pass along ones gives ρ'' entry by entry.
    d1, d2 = jax.jvp(lambda v: rho(name, v)[1], (z,), (jnp.ones_like(z),))
    return jnp.maximum(d1 + 2 * z * d2, jnp.finfo(r.dtype).eps)
