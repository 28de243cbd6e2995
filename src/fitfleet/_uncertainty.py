"""Parameter uncertainty from a fitted :class:`Result`.

All quantities refer to the residual the solver saw, ``r`` whitened by ``sigma`` (so
``RSS = ‖r‖² = χ²`` for a weighted fit), and to ``J = Result.jac = ∂r/∂p`` in the user's
flat parameters (never the internal variables of bounds or ``log_scale``).  With ``m``
residuals and ``n`` parameters, ``dof = m − n``.

Covariance (scipy's ``curve_fit`` and NIST's convention)::

    pcov = s² · (JᵀJ)⁺,     s² = RSS / (m − n)     (absolute_sigma=False)
    pcov =      (JᵀJ)⁺                              (absolute_sigma=True)

``absolute_sigma=True`` says ``sigma`` holds the true measurement errors (σ = 1 if no
``sigma`` was given); ``False`` says only their relative sizes are known, and the scale
is estimated from the scatter of the residuals.  With ``dof <= 0`` and
``absolute_sigma=False`` the scale cannot be estimated and ``pcov`` is ``inf``
(as scipy does).

Pseudo-inverse.  ``(JᵀJ)⁺ = D⁻¹ V diag(1/s²) Vᵀ D⁻¹`` from the SVD ``J D⁻¹ = U diag(s) Vᵀ``
of the column-equilibrated Jacobian (``D`` = the column norms of ``J``), which never
forms ``JᵀJ`` and so keeps the digits the normal equations would square away.  Singular
values ``s_k <= rcond · s_max``, with ``rcond = eps · max(m, n)`` by default (scipy's
cut-off in ``curve_fit``), are treated as zero: their directions get zero variance,
not infinite.  Equilibrating first makes the cut-off independent of the units of the
parameters (scipy applies it to the raw ``J``, which can drop well-determined directions
of badly scaled problems such as NIST's Hahn1).  A rank-deficient fit therefore has
finite but meaningless standard errors for the parameters it does not determine:
``Uncertainty.rank < n`` says so, and :func:`fitfleet.identifiability` says which.

Robust losses.  With ``loss`` other than ``"linear"`` (by default the fit's, which the
``Result`` records with its ``f_scale``), scipy's convention is followed: ``J`` is
scaled row-wise by ``√max(ρ'(z) + 2zρ''(z), eps)`` with ``z = (r/f_scale)²``, the
Gauss-Newton Hessian of the robust cost, and ``s² = 2·cost/(m − n)`` with
``cost = Result.cost`` (the robust cost).  ``rms``, ``aic`` and ``bic`` always use the plain ``RSS``.

Other outputs::

    stderr      = √diag(pcov)
    corr_ij     = pcov_ij / (stderr_i · stderr_j)
    ci          = p ∓ q · stderr,   q = t_{dof}((1 + level)/2)     (absolute_sigma=False)
                                    q = Φ⁻¹((1 + level)/2)           (absolute_sigma=True)
    residual_sd = √(RSS / dof)      (NIST's "residual standard deviation")
    rms         = √(RSS / m)
    aic         = m · ln(RSS/m) + 2n
    bic         = m · ln(RSS/m) + n · ln(m)

AIC and BIC are −2 ln L + penalty for the Gaussian likelihood at the maximum-likelihood
variance RSS/m, dropping the constant m·(1 + ln 2π), lmfit's convention; only
differences between models fitted to the same data mean anything.  ``n`` counts the
fitted parameters, not the variance.
"""

import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import _xla
from ._losses import check_loss, rho
from ._stats import norm_ppf, t_ppf


class Uncertainty(eqx.Module):
    """Uncertainty of a fit; see the :mod:`fitfleet._uncertainty` docstring for the maths.

    For a batched Result every array field has the same leading batch axes.
    Parameter-indexed fields follow ``ravel_pytree(res.params)`` order, like ``Result.jac``.

    Attributes:
        pcov: (n, n) covariance of the parameters.
        stderr: (n,) standard errors √diag(pcov).
        corr: (n, n) correlation matrix.
        ci: (n, 2) lower and upper confidence limits at ``level``.
        residual_sd: √(RSS/dof), the estimated σ of one (whitened) residual.
        rms: √(RSS/m).
        rss: RSS = ‖r‖² of the whitened residual (χ² for a weighted fit).
        aic, bic: Akaike and Bayesian information criteria (lmfit's convention).
        rank: number of singular values of the equilibrated Jacobian kept.
        n_obs, n_params, dof: m, n and m − n (Python ints).
        level: the confidence level of ``ci``.
        absolute_sigma: whether ``pcov`` takes ``sigma`` as absolute.

    Example:
        >>> import jax.numpy as jnp
        >>> import fitfleet as ff
        >>> x = jnp.arange(6.0)
        >>> res = ff.least_squares(lambda p, x: p[0] * x - (2.0 * x + 0.1 * jnp.cos(x)), jnp.ones(1), (x,))
        >>> u = ff.uncertainty(res)
        >>> u.pcov.shape, u.ci.shape, u.dof
        ((1, 1), (1, 2), 5)
    """

    pcov: Any
    stderr: Any
    corr: Any
    ci: Any
    residual_sd: Any
    rms: Any
    rss: Any
    aic: Any
    bic: Any
    rank: Any
    n_obs: int = eqx.field(static=True)
    n_params: int = eqx.field(static=True)
    dof: int = eqx.field(static=True)
    level: float = eqx.field(static=True)
    absolute_sigma: bool = eqx.field(static=True)

    def summary(self, params, names=None):
        """A text table of estimates, standard errors and confidence limits (one fit).

        Example:
            >>> import jax.numpy as jnp
            >>> import fitfleet as ff
            >>> x = jnp.arange(6.0)
            >>> y = jnp.array([1.1, 2.9, 5.2, 7.1, 8.8, 11.0])
            >>> res = ff.least_squares(lambda p, x, y: p[0] + p[1] * x - y, jnp.zeros(2), (x, y))
            >>> print(ff.uncertainty(res).summary(res.params, ["a", "b"]))
            param      estimate        stderr     95% lower     95% upper
            a             1.081        0.1126        0.7684         1.393
            b             1.974       0.03718         1.871         2.078
            dof = 4, residual sd = 0.1555, rms = 0.127, AIC = -20.76, BIC = -21.18
        """
        if np.ndim(self.rss) != 0:
            raise ValueError("summary() is for a single fit; index a batched Uncertainty first.")
        p = np.asarray(ravel_pytree(params)[0])
        names = [f"p[{i}]" for i in range(p.size)] if names is None else list(names)
        if len(names) != p.size:
            raise ValueError(f"`names` has {len(names)} entries but there are {p.size} parameters.")
        pct = f"{100 * self.level:g}%"
        width = max(5, *(len(s) for s in names))
        lines = [f"{'param':<{width}}  {'estimate':>12}  {'stderr':>12}  {pct + ' lower':>12}  {pct + ' upper':>12}"]
        se, ci = np.asarray(self.stderr), np.asarray(self.ci)
        for name, v, e, (lo, hi) in zip(names, p, se, ci):
            lines.append(f"{name:<{width}}  {v:>12.4g}  {e:>12.4g}  {lo:>12.4g}  {hi:>12.4g}")
        lines.append(
            f"dof = {self.dof}, residual sd = {float(self.residual_sd):.4g}, rms = {float(self.rms):.4g}, "
            f"AIC = {float(self.aic):.4g}, BIC = {float(self.bic):.4g}"
        )
        return "\n".join(lines)


def uncertainty(res, *, absolute_sigma=False, level=0.95, loss=None, f_scale=None, rcond=None):
    """Covariance, standard errors, correlations, confidence intervals and fit statistics.

    Args:
        res: a :class:`Result`, single or batched (leading batch axes).
        absolute_sigma: ``True`` if the fit's ``sigma`` are the true measurement errors;
            ``False`` (scipy's default) to scale the covariance by ``s² = RSS/dof``.
        level: confidence level of ``ci``, in (0, 1).
        loss, f_scale: the robust loss, for scipy's robust covariance; default: the
            loss the fit used (``res.loss``, ``res.f_scale``).
        rcond: relative cut-off of the pseudo-inverse; default ``eps · max(m, n)``.

    Returns:
        An :class:`Uncertainty`.  Works under ``jit`` and ``vmap``.

    Example:
        >>> import jax.numpy as jnp
        >>> import fitfleet as ff
        >>> x = jnp.arange(6.0)
        >>> y = jnp.array([1.1, 2.9, 5.2, 7.1, 8.8, 11.0])
        >>> res = ff.least_squares(lambda p, x, y: p[0] + p[1] * x - y, jnp.zeros(2), (x, y))
        >>> u = ff.uncertainty(res)
        >>> [round(float(e), 4) for e in u.stderr], u.dof
        ([0.1126, 0.0372], 4)
    """
    loss, f_scale = _fit_loss(res, loss, f_scale)
    level = _check_options(absolute_sigma, level, loss, f_scale, rcond)
    m, n = res.jac.shape[-2:]
    quantile = _quantile(level, m - n, bool(absolute_sigma))
    return _uncertainty(res, bool(absolute_sigma), level, quantile, loss, f_scale, rcond)


@_xla.filter_jit
def _uncertainty(res, absolute_sigma, level, quantile, loss, f_scale, rcond):
    m, n = res.jac.shape[-2:]
    dtype = res.jac.dtype
    dof = m - n

    def one(params, residual, jac, cost, f_scale):
        p = ravel_pytree(params)[0]
        pcov, rank, rss = _covariance(residual, jac, cost, absolute_sigma, loss, f_scale, rcond)
        stderr = jnp.sqrt(jnp.diagonal(pcov))
        outer = stderr[:, None] * stderr[None, :]
        corr = pcov / jnp.where(outer > 0, outer, jnp.nan)
        half = quantile * stderr
        plain_rss = jnp.sum(residual * residual)
        log_mean = jnp.log(plain_rss / m)
        return Uncertainty(
            pcov=pcov,
            stderr=stderr,
            corr=corr,
            ci=jnp.stack([p - half, p + half], axis=-1),
            residual_sd=jnp.sqrt(rss / dof) if dof > 0 else jnp.full((), jnp.inf, dtype),
            rms=jnp.sqrt(plain_rss / m),
            rss=plain_rss,
            aic=m * log_mean + 2 * n,
            bic=m * log_mean + n * np.log(m),
            rank=rank,
            n_obs=m,
            n_params=n,
            dof=dof,
            level=level,
            absolute_sigma=absolute_sigma,
        )

    f_scale = jnp.broadcast_to(f_scale, res.cost.shape)
    return _over_batch(one, res.residual.ndim - 1)(res.params, res.residual, res.jac, res.cost, f_scale)


def covariance(res, absolute_sigma=False, *, loss=None, f_scale=None, rcond=None):
    """The parameter covariance ``pcov`` alone (scipy ``curve_fit``'s second output).

    See :func:`uncertainty` for the arguments and the module docstring for the maths.

    Example:
        >>> import jax.numpy as jnp
        >>> import fitfleet as ff
        >>> x = jnp.arange(6.0)
        >>> y = jnp.array([1.1, 2.9, 5.2, 7.1, 8.8, 11.0])
        >>> res = ff.least_squares(lambda p, x, y: p[0] + p[1] * x - y, jnp.zeros(2), (x, y))
        >>> print(ff.covariance(res).round(5))
        [[ 0.01267 -0.00346]
         [-0.00346  0.00138]]
    """
    loss, f_scale = _fit_loss(res, loss, f_scale)
    _check_options(absolute_sigma, None, loss, f_scale, rcond)
    return _covariance_batch(res.residual, res.jac, res.cost, bool(absolute_sigma), loss, f_scale, rcond)


@_xla.filter_jit
def _covariance_batch(residual, jac, cost, absolute_sigma, loss, f_scale, rcond):
    def one(residual, jac, cost, f_scale):
        return _covariance(residual, jac, cost, absolute_sigma, loss, f_scale, rcond)[0]

    return _over_batch(one, residual.ndim - 1)(residual, jac, cost, jnp.broadcast_to(f_scale, cost.shape))


# --------------------------------------------------------------------------- internals


def _fit_loss(res, loss, f_scale):
    """The loss and f_scale asked for, else those the fit recorded (a Result built by
    hand records no f_scale: 1)."""
    f_scale = res.f_scale if f_scale is None else f_scale
    return res.loss if loss is None else loss, 1.0 if f_scale is None else f_scale


def _check_options(absolute_sigma, level, loss, f_scale, rcond):
    if not isinstance(absolute_sigma, (bool, np.bool_)):
        raise TypeError(f"`absolute_sigma` must be True or False; got {absolute_sigma!r}.")
    check_loss(loss)
    if not isinstance(f_scale, jax.core.Tracer) and not np.all(np.asarray(f_scale) > 0):
        raise ValueError(f"`f_scale` must be > 0 (the f_scale the fit used); got {f_scale!r}.")
    if rcond is not None and not (0 <= float(rcond) < 1):
        raise ValueError(f"`rcond` must be in [0, 1); got {rcond!r}.")
    if level is None:
        return None
    if isinstance(level, jax.core.Tracer) or not np.ndim(level) == 0:
        raise TypeError("`level` must be a Python number (it fixes a compile-time quantile).")
    level = float(level)
    if not 0 < level < 1:
        raise ValueError(f"`level` must be in (0, 1), e.g. 0.95; got {level!r}.")
    return level


def _over_batch(fn, n_batch):
    for _ in range(n_batch):
        fn = jax.vmap(fn)
    return fn


def pinv_normal(jac, rcond=None):
    """``((JᵀJ)⁺, rank)`` by the SVD of the column-equilibrated ``J`` (module docstring)."""
    m, n = jac.shape
    if rcond is None:
        rcond = jnp.finfo(jac.dtype).eps * max(m, n)
    d = jnp.sqrt(jnp.sum(jac * jac, axis=0))
    d = jnp.where(d > 0, d, 1)
    _, s, vt = jnp.linalg.svd(jac / d, full_matrices=False)
    keep = s > rcond * s[0]
    inv = jnp.where(keep, 1 / jnp.where(keep, s, 1) ** 2, 0)
    return (vt.T * inv) @ vt / (d[:, None] * d[None, :]), jnp.sum(keep).astype(jnp.int32)


def _covariance(residual, jac, cost, absolute_sigma, loss, f_scale, rcond):
    """``(pcov, rank, s²·dof)`` for one fit."""
    m, n = jac.shape
    if loss == "linear":
        rss = jnp.sum(residual * residual)
    else:
        jac = _robust_scale(loss, f_scale, residual)[:, None] * jac
        rss = 2 * cost
    pcov, rank = pinv_normal(jac, rcond)
    if absolute_sigma:
        return pcov, rank, rss
    if m <= n:
        return jnp.full_like(pcov, jnp.inf), rank, rss
    return pcov * (rss / (m - n)), rank, rss


def _robust_scale(loss, f_scale, r):
    """scipy's ``√max(ρ'(z) + 2zρ''(z), eps)``, ``z = (r/f_scale)²``."""
    z = (r / f_scale) ** 2
    d2 = jax.vmap(jax.grad(lambda z: rho(loss, z)[1]))(z)
    weight = rho(loss, z)[1] + 2 * z * d2
    return jnp.sqrt(jnp.maximum(weight, jnp.finfo(r.dtype).eps))


@functools.lru_cache(maxsize=256)
def _quantile(level, dof, absolute_sigma):
    """The two-sided quantile for ``ci``, a Python float (computed on the host)."""
    tail = (1 + level) / 2
    if absolute_sigma:
        return norm_ppf(tail)
    return t_ppf(tail, dof)  # NaN for dof < 1
