"""The parameter covariance of a fitted :class:`Result` (``covariance``), and the
pieces :func:`fitfleet.uncertainty` and :func:`fitfleet.identifiability` build on: the
pseudo-inverse of ``JᵀJ`` that finds undetermined parameters, the robust loss's
sandwich weights, the per-batch warnings.  The maths: ``fitfleet._uncertainty``'s
docstring."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate, _xla
from ._losses import check_loss, loss_curvature
from ._status import is_success


def covariance(res, absolute_sigma=False, *, loss=None, f_scale=None, rcond=None):
    """The parameter covariance ``pcov`` alone (scipy ``curve_fit``'s second output).

    See :func:`uncertainty` for the arguments, the warnings, and the module docstring
    for the maths (``inf`` rows and columns for undetermined parameters, NaN for a
    failed fit).

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
    pcov, undetermined, success = covariance_quietly(res, absolute_sigma, loss=loss, f_scale=f_scale, rcond=rcond)
    warn_if_concrete(success, undetermined, res.flat_names(), "covariances")
    return pcov


def covariance_quietly(res, absolute_sigma=False, *, loss=None, f_scale=None, rcond=None):
    """``(pcov, undetermined, success)`` as :func:`covariance` computes them, without
    warnings."""
    loss, f_scale = fit_loss(res, loss, f_scale)
    check_options(absolute_sigma, None, loss, f_scale, rcond)
    return _covariance_batch(res.residual, res.jac, res.cost, res.status, bool(absolute_sigma), loss, f_scale, rcond)


@_xla.filter_jit
def _covariance_batch(residual, jac, cost, status, absolute_sigma, loss, f_scale, rcond):
    def one(residual, jac, cost, f_scale, status):
        pcov, _, _, undetermined = covariance_one(residual, jac, cost, absolute_sigma, loss, f_scale, rcond)
        success = is_success(status)
        return jnp.where(success, pcov, jnp.nan), undetermined, success

    return over_batch(one, residual.ndim - 1)(residual, jac, cost, jnp.broadcast_to(f_scale, cost.shape), status)


def warn_if_concrete(success, undetermined, names, what, stacklevel=3):
    """Outside traces: one warning counting the failed fits, one naming the undetermined
    parameters (over a whole batch, never one per fit)."""
    if _validate.is_traced(success) or _validate.is_traced(undetermined):
        return
    success = np.asarray(success, bool)
    undetermined = np.asarray(undetermined, bool) & success[..., None]
    n_fits = success.size
    if not success.all():
        failed = int(np.sum(~success))
        which = "the fit did not succeed" if n_fits == 1 else f"{failed} of {n_fits} fits did not succeed"
        warnings.warn(
            f"{which} (see Result.message): the parameter {what} of a failed fit are NaN; refit "
            "(more steps, another start) before reading them.",
            UserWarning,
            stacklevel=stacklevel,
        )
    if undetermined.any():
        flagged = np.flatnonzero(undetermined.reshape(-1, undetermined.shape[-1]).any(axis=0))
        listed = ", ".join(names[j] for j in flagged)
        where = "" if n_fits == 1 else f" in {int(np.sum(undetermined.any(axis=-1)))} of {n_fits} fits"
        warnings.warn(
            f"Covariance of the parameters could not be estimated for {listed}{where}: the data do not "
            "determine them (their variance is reported as inf; see fitfleet.identifiability).",
            UserWarning,
            stacklevel=stacklevel,
        )


def fit_loss(res, loss, f_scale):
    """The loss and f_scale asked for, else those the fit recorded (a Result built by
    hand records no f_scale: 1)."""
    f_scale = res.f_scale if f_scale is None else f_scale
    return res.loss if loss is None else loss, 1.0 if f_scale is None else f_scale


def check_options(absolute_sigma, level, loss, f_scale, rcond):
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


def over_batch(fn, n_batch):
    for _ in range(n_batch):
        fn = jax.vmap(fn)
    return fn


def pinv_normal(jac, rcond=None):
    """``((JᵀJ)⁺, rank, undetermined)`` by the SVD of the column-equilibrated ``J``
    (module docstring)."""
    m, n = jac.shape
    if rcond is None:
        rcond = jnp.finfo(jac.dtype).eps * max(m, n)
    d = jnp.sqrt(jnp.sum(jac * jac, axis=0))
    d = jnp.where(d > 0, d, 1)
    # With m < n the null space has n − m more directions than singular values: the
    # full V holds them (U is then only m × m).
    _, s, vt = jnp.linalg.svd(jac / d, full_matrices=m < n)
    s = jnp.concatenate([s, jnp.zeros(n - s.shape[0], s.dtype)])
    cut = rcond * s[0]
    keep = s > cut
    inv = jnp.where(keep, 1 / jnp.where(keep, s, 1) ** 2, 0)
    weight = vt.T**2  # (parameter, direction)
    kept_variance = weight @ inv
    dropped_weight = weight @ (~keep).astype(weight.dtype)
    undetermined = (dropped_weight > 0) & (dropped_weight >= cut**2 * kept_variance)
    pinv = (vt.T * inv) @ vt / (d[:, None] * d[None, :])
    return pinv, jnp.sum(keep).astype(jnp.int32), undetermined


def covariance_one(residual, jac, cost, absolute_sigma, loss, f_scale, rcond):
    """``(pcov, rank, s²·dof, undetermined)`` for one fit."""
    m, n = jac.shape
    if loss == "linear":
        rss = jnp.sum(residual * residual)
    else:
        jac = jnp.sqrt(loss_curvature(loss, f_scale, residual))[:, None] * jac  # scipy's robust scaling
        rss = 2 * cost
    pcov, rank, undetermined = pinv_normal(jac, rcond)
    if not absolute_sigma:
        pcov = jnp.full_like(pcov, jnp.inf) if m <= n else pcov * (rss / (m - n))
    pcov = jnp.where(undetermined[:, None] | undetermined[None, :], jnp.inf, pcov)
    return pcov, rank, rss, undetermined
