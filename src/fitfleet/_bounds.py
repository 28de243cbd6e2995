"""Bounds and log-scaled parameters by a smooth change of variables.

The solvers work on unconstrained internal variables ``u``; the user's parameter is
``p = T(u)``, elementwise, so every iterate satisfies the bounds exactly:

- two-sided ``[l, h]``:  ``p = l + (h − l)(1 + sin u)/2``       (MINUIT's transform)
- lower only ``[l, ∞)``: ``p = l − 1 + √(u² + 1)``
- upper only ``(−∞, h]``: ``p = h + 1 − √(u² + 1)``
- unbounded:             ``p = u``

With ``log_scale`` a parameter is fitted as ``u = log p`` (bounds, if any, apply to
``log p``), which keeps it positive and lets steps act on relative changes, the right
geometry for rate constants spanning decades.

A bound is reached at a finite ``u`` where ``dp/du = 0``, so an optimum on a bound is
found (the solver's gradient in ``u`` vanishes there).  The price: at an active bound
the Jacobian in ``u`` loses that column, so uncertainties are always computed in the
user's parameters ``p`` (``Result.jac`` is ∂r/∂p), never in ``u``; a parameter on its
bound has no meaningful standard error there, as with any bound-constrained fit.
A start exactly on a bound is moved inside by a relative 100·eps (as scipy's ``trf``
does with 1e-10), since ``dp/du = 0`` would otherwise pin it.  There ``dp/du`` is tiny,
so the first step in ``u`` can be huge; a two-sided angle is then brought back into
[−π, π] (``Bounds.wrapped``: the same ``p``), so that the relative step tests keep
their meaning.

``box=True`` (the trust-region reflective method, which enforces bounds itself): no
change of variables for the bounds, ``u = p`` (``u = log p`` with ``log_scale``), and
``lower``/``upper`` are a box on ``u`` that the solver keeps its iterates inside.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


class Bounds(eqx.Module):
    """Elementwise ``p = T(u)`` on flat vectors; see the module docstring."""

    lower: Any
    upper: Any
    log: Any  # bool mask
    box: bool = eqx.field(static=True, default=False)  # a box on u, enforced by the solver

    def to_params(self, u):
        if self.box:
            return jnp.where(self.log, jnp.exp(u), u)
        lo, hi = self.lower, self.upper
        fin_lo, fin_hi = jnp.isfinite(lo), jnp.isfinite(hi)
        lo0, hi0 = jnp.where(fin_lo, lo, 0), jnp.where(fin_hi, hi, 0)
        # √(u² + 1) − 1 without the cancellation that would put p exactly on its bound
        # (where a model may be singular: log p, p**q) for any |u| < 1e-8.
        rise = u * u / (jnp.sqrt(u * u + 1) + 1)
        v = jnp.where(
            fin_lo & fin_hi,
            lo0 + (hi0 - lo0) * (1 + jnp.sin(u)) / 2,
            jnp.where(fin_lo, lo0 + rise, jnp.where(fin_hi, hi0 - rise, u)),
        )
        return jnp.where(self.log, jnp.exp(v), v)

    def wrapped(self, u):
        """``u`` with each two-sided entry shifted by a multiple of 2π into [−π, π].

        The two-sided transform is 2π-periodic, so ``p``, ``T'`` and ``T''`` are
        unchanged; but an angle that one wild step sent to 1e7 would make the relative
        ``xtol`` test, ``‖δ‖ <= xtol·‖u‖``, meaningless (and cost precision in sin u).
        """
        two_sided = jnp.isfinite(self.lower) & jnp.isfinite(self.upper)
        period = 2 * jnp.pi
        return jnp.where(two_sided, u - period * jnp.round(u / period), u)

    def pinning(self, u):
        """How many times a bound near ``u`` shrinks each parameter's Jacobian column:
        ``max |v'| / |v'(u)| >= 1`` for the bound's transform ``v`` (``1/|cos u|``
        two-sided, ``√(u² + 1)/|u|`` one-sided, 1 unbounded; ∞ is reported as 1)."""
        if self.box:
            return jnp.ones_like(u)
        fin_lo, fin_hi = jnp.isfinite(self.lower), jnp.isfinite(self.upper)
        two_sided = 1 / jnp.abs(jnp.cos(u))
        one_sided = jnp.sqrt(u * u + 1) / jnp.abs(u)
        factor = jnp.where(fin_lo & fin_hi, two_sided, jnp.where(fin_lo | fin_hi, one_sided, 1))
        return jnp.where(jnp.isfinite(factor), factor, 1)

    def derivatives(self, u):
        """``(T'(u), T''(u))``, elementwise.  ``T`` maps each entry on its own, so its
        Jacobian is diagonal and a forward pass along ones gives that diagonal."""
        ones = jnp.ones_like(u)
        first = lambda v: jax.jvp(self.to_params, (v,), (ones,))[1]  # noqa: E731
        return jax.jvp(first, (u,), (ones,))

    def to_internal(self, p):
        v = jnp.where(self.log, jnp.log(jnp.where(self.log, p, 1)), p)
        if self.box:
            return v
        lo, hi = self.lower, self.upper
        fin_lo, fin_hi = jnp.isfinite(lo), jnp.isfinite(hi)
        lo0, hi0 = jnp.where(fin_lo, lo, 0), jnp.where(fin_hi, hi, 1)
        width = jnp.where(fin_lo & fin_hi, hi0 - lo0, 1)
        # (2v − l − h)/(h − l) rather than 2(v − l)/(h − l) − 1: the middle of the box
        # (scipy's default start) maps to exactly u = 0 however XLA fuses the arithmetic.
        two_sided = jnp.arcsin(jnp.clip((2 * v - lo0 - hi0) / width, -1, 1))
        # √((d + 1)² − 1) as √(d(d + 2)): exact for a start just off its bound.
        d_lo, d_hi = jnp.maximum(v - lo0, 0), jnp.maximum(hi0 - v, 0)
        one_sided_lo = jnp.sqrt(d_lo * (d_lo + 2))
        one_sided_hi = jnp.sqrt(d_hi * (d_hi + 2))
        return jnp.where(
            fin_lo & fin_hi, two_sided, jnp.where(fin_lo, one_sided_lo, jnp.where(fin_hi, one_sided_hi, v))
        )


def make_bounds(box, log, dtype, enforced=False):
    """The transform for checked bounds (``_validate.bounds``: ``None`` or flat
    ``(lower, upper)`` on the parameters' own scale) and log-scale mask ``log``.  The
    bounds of a log-scaled parameter become bounds on ``log p`` (a lower bound of 0
    becomes none).  ``enforced``: the solver keeps its iterates inside the box itself
    (``Bounds.box``, see the module docstring)."""
    n = np.size(log)
    lo, hi = (np.full(n, -np.inf), np.full(n, np.inf)) if box is None else (np.asarray(box[0]), np.asarray(box[1]))
    log = np.asarray(log, bool)
    with np.errstate(divide="ignore"):
        lo_v = np.where(log, np.log(np.where(log & (lo > 0), lo, 1)), lo)
    lo_v = np.where(log & ~(lo > 0), -np.inf, lo_v)
    hi_v = np.where(log, np.log(np.where(log & np.isfinite(hi), hi, 1)), hi)
    hi_v = np.where(log & ~np.isfinite(hi), np.inf, hi_v)
    return Bounds(np.asarray(lo_v, dtype), np.asarray(hi_v, dtype), log, box=enforced)


BOX_RSTEP = 1e-10  # scipy's make_strictly_feasible for trf


def strictly_inside(b, x0_flat):
    """Move a start that sits on a bound inside by a relative 100·eps (scipy's rstep).

    For a ``box``, as scipy's ``trf``: a start within a relative 1e-10 of a bound (at
    least 100·eps) is moved to that distance, since the solver's scaling near a bound is
    the square root of the distance to it; a box narrower than that starts at its middle.
    """
    v = jnp.where(b.log, jnp.log(jnp.where(b.log, x0_flat, 1)), x0_flat)
    eps = jnp.finfo(x0_flat.dtype).eps
    if b.box:
        rstep = max(BOX_RSTEP, 100 * float(eps))
        lo_step = rstep * jnp.maximum(1, jnp.abs(jnp.where(jnp.isfinite(b.lower), b.lower, 0)))
        hi_step = rstep * jnp.maximum(1, jnp.abs(jnp.where(jnp.isfinite(b.upper), b.upper, 0)))
        near_lo = v - b.lower <= jnp.minimum(b.upper - v, lo_step)
        near_hi = b.upper - v <= jnp.minimum(v - b.lower, hi_step)
        v = jnp.where(near_lo, b.lower + lo_step, jnp.where(near_hi, b.upper - hi_step, v))
        v = jnp.where((v < b.lower) | (v > b.upper), (b.lower + b.upper) / 2, v)
        return jnp.where(b.log, jnp.exp(v), v).astype(x0_flat.dtype)
    step = 100 * eps * jnp.maximum(1, jnp.abs(v))
    v = jnp.where(v <= b.lower, b.lower + step, v)
    v = jnp.where(v >= b.upper, b.upper - step, v)
    return jnp.where(b.log, jnp.exp(v), v).astype(x0_flat.dtype)
