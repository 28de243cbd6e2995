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
values ``s_k <= c = rcond · s_max``, with ``rcond = eps · max(m, n)`` by default (scipy's
cut-off in ``curve_fit``), are dropped.  Equilibrating first makes the cut-off
independent of the units of the parameters (scipy applies it to the raw ``J``, which can
drop well-determined directions of badly scaled problems such as NIST's Hahn1).

Undetermined parameters.  A dropped direction is one the data do not determine: its
variance is infinite, or beyond what this precision can resolve.  Parameter ``j`` is
*undetermined* when the dropped directions carry a weight ``w_j = Σ_dropped V_jk²`` that
would, with their singular values floored at the cut-off, at least double its variance::

    w_j / c²  >=  Σ_kept V_jk² / s_k²

(a parameter the data fix has ``w_j`` at round-off level, ~eps², far below; one that an
unused argument or a sum ``(a + b)`` leaves free has ``w_j`` of order 1).  Its variance is
reported as ``inf``, scipy's convention for a covariance that cannot be estimated; so is
every covariance involving it (its row and column of ``pcov``), its correlations are NaN
and its confidence interval is ``(−inf, inf)`` (``(0, inf)`` on a log scale).  The other
parameters keep their variances from the pseudo-inverse, which are exact: each lies in
the row space of ``J``, where every generalised inverse of ``JᵀJ`` agrees.  Outside
``jit``, :func:`uncertainty` and :func:`covariance` warn naming them.
(scipy's ``curve_fit`` with ``method="lm"`` makes the whole ``pcov`` ``inf`` when the
Jacobian is exactly singular and reports huge finite numbers when it is singular to
round-off; with ``"trf"`` it reports the pseudo-inverse silently.)

Failed fits.  A fit whose ``status`` is not a success stopped somewhere that is not shown
to be an optimum, so the quadratic model of the cost there says nothing about the
parameters: ``pcov``, ``stderr``, ``corr`` and ``ci`` are NaN (``rss``, ``rms``,
``aic`` and ``bic`` still describe the point).  Outside ``jit`` a warning says how many
fits of a batch failed (once, not per fit).  Refit with more steps or looser
tolerances, or from a better start.

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
    ci          = p · exp(∓q · stderr / p)       for a parameter the fit took on a log
                                                 scale (``Result.log_scale``)
    residual_sd = √(RSS / dof)      (NIST's "residual standard deviation")
    rms         = √(RSS / m)
    aic         = m · ln(RSS/m) + 2n
    bic         = m · ln(RSS/m) + n · ln(m)

A ``log_scale`` parameter was fitted as ``log p``, so its Wald interval is computed on
that scale, where the fit's quadratic model holds (``stderr/p`` is the standard error of
``log p`` by the delta method), and mapped back: it is positive and asymmetric, like
the parameter.  ``pcov`` and ``stderr`` stay those of ``p`` (scipy's convention).

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
from ._covariance import (
    check_options,
    covariance_one,
    fit_loss,
    over_batch,
    warn_if_concrete,
)
from ._stats import norm_ppf, t_ppf
from ._status import is_success


class Uncertainty(eqx.Module):
    """Uncertainty of a fit; see the :mod:`fitfleet._uncertainty` docstring for the maths.

    For a batched Result every array field has the same leading batch axes.
    Parameter-indexed fields follow ``ravel_pytree(res.params)`` order, like ``Result.jac``
    (``names`` names them; ``order`` lists them in the user's order).

    Attributes:
        pcov: (n, n) covariance of the parameters (``inf`` rows and columns for
            undetermined parameters; NaN for a failed fit).
        stderr: (n,) standard errors √diag(pcov).
        corr: (n, n) correlation matrix.
        ci: (n, 2) lower and upper confidence limits at ``level`` (for a ``log_scale``
            parameter, the interval of ``log p`` mapped back).
        residual_sd: √(RSS/dof), the estimated σ of one (whitened) residual.
        rms: √(RSS/m).
        rss: RSS = ‖r‖² of the whitened residual (χ² for a weighted fit).
        aic, bic: Akaike and Bayesian information criteria (lmfit's convention).
        rank: number of singular values of the equilibrated Jacobian kept.
        estimate: (n,) the flat parameters the uncertainty is about.
        undetermined: (n,) bool, parameters the data do not determine (infinite variance).
        success: whether the fit succeeded (if not, the parameter uncertainties are NaN).
        n_obs, n_params, dof: m, n and m − n (Python ints).
        level: the confidence level of ``ci``.
        absolute_sigma: whether ``pcov`` takes ``sigma`` as absolute.
        names, order, log_scale: what the Result recorded (``None`` if nothing).

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
    estimate: Any
    undetermined: Any
    success: Any
    n_obs: int = eqx.field(static=True)
    n_params: int = eqx.field(static=True)
    dof: int = eqx.field(static=True)
    level: float = eqx.field(static=True)
    absolute_sigma: bool = eqx.field(static=True)
    names: tuple = eqx.field(static=True, default=None)
    order: tuple = eqx.field(static=True, default=None)
    log_scale: tuple = eqx.field(static=True, default=None)

    @property
    def relative_stderr(self):
        """(n,) ``stderr / |estimate|``: the standard error of ``log |p|`` (delta method)."""
        return self.stderr / jnp.abs(self.estimate)

    def summary(self, params=None, names=None):
        """A text table of estimates, standard errors and confidence limits (one fit),
        in the user's order of the parameters, with the fit statistics.

        Args:
            params: the parameters to show; default the estimate the uncertainty is about.
            names: a name per flat parameter; default the names the Result recorded.

        Example:
            >>> import jax.numpy as jnp
            >>> import fitfleet as ff
            >>> x = jnp.arange(6.0)
            >>> y = jnp.array([1.1, 2.9, 5.2, 7.1, 8.8, 11.0])
            >>> res = ff.least_squares(lambda p, x, y: p["a"] + p["b"] * x - y, {"b": 0.0, "a": 0.0}, (x, y))
            >>> print(ff.uncertainty(res).summary())
            param      estimate        stderr      rel.err     95% lower     95% upper
            b             1.974       0.03718        1.88%         1.871         2.078
            a             1.081        0.1126        10.4%        0.7684         1.393
            dof = 4, residual sd = 0.1555, rms = 0.127, AIC = -20.76, BIC = -21.18
        """
        from ._report import uncertainty_table

        return "\n".join(uncertainty_table(self, params, names))


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
        An :class:`Uncertainty`.  Works under ``jit`` and ``vmap``.  Outside them, a
        warning names the undetermined parameters (infinite variance) and counts the
        failed fits (NaN uncertainties): see the module docstring.

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
    loss, f_scale = fit_loss(res, loss, f_scale)
    level = check_options(absolute_sigma, level, loss, f_scale, rcond)
    m, n = res.jac.shape[-2:]
    quantile = _quantile(level, m - n, bool(absolute_sigma))
    u = _uncertainty(res, bool(absolute_sigma), level, quantile, loss, f_scale, rcond)
    warn_if_concrete(u.success, u.undetermined, res.flat_names(), "uncertainties")
    return u


@_xla.filter_jit
def _uncertainty(res, absolute_sigma, level, quantile, loss, f_scale, rcond):
    m, n = res.jac.shape[-2:]
    dtype = res.jac.dtype
    dof = m - n
    log = np.zeros(n, bool) if res.log_scale is None else np.asarray(res.log_scale, bool)

    def one(params, residual, jac, cost, f_scale, status):
        p = ravel_pytree(params)[0]
        pcov, rank, rss, undetermined = covariance_one(residual, jac, cost, absolute_sigma, loss, f_scale, rcond)
        success = is_success(status)
        pcov = jnp.where(success, pcov, jnp.nan)
        stderr = jnp.sqrt(jnp.diagonal(pcov))
        outer = stderr[:, None] * stderr[None, :]
        corr = pcov / jnp.where((outer > 0) & jnp.isfinite(outer), outer, jnp.nan)
        half = quantile * stderr
        # Wald interval of log p for log_scale parameters, mapped back (module docstring).
        log_half = half / jnp.abs(p)
        lower = jnp.where(log, p * jnp.exp(-log_half), p - half)
        upper = jnp.where(log, p * jnp.exp(log_half), p + half)
        plain_rss = jnp.sum(residual * residual)
        log_mean = jnp.log(plain_rss / m)
        return Uncertainty(
            pcov=pcov,
            stderr=stderr,
            corr=corr,
            ci=jnp.stack([lower, upper], axis=-1),
            residual_sd=jnp.sqrt(rss / dof) if dof > 0 else jnp.full((), jnp.inf, dtype),
            rms=jnp.sqrt(plain_rss / m),
            rss=plain_rss,
            aic=m * log_mean + 2 * n,
            bic=m * log_mean + n * np.log(m),
            rank=rank,
            estimate=p,
            undetermined=undetermined,
            success=success,
            n_obs=m,
            n_params=n,
            dof=dof,
            level=level,
            absolute_sigma=absolute_sigma,
            names=res.names,
            order=res.order,
            log_scale=res.log_scale,
        )

    f_scale = jnp.broadcast_to(f_scale, res.cost.shape)
    return over_batch(one, res.residual.ndim - 1)(res.params, res.residual, res.jac, res.cost, f_scale, res.status)


# --------------------------------------------------------------------------- internals


def _is_traced(x):
    return isinstance(x, jax.core.Tracer)


@functools.lru_cache(maxsize=256)
def _quantile(level, dof, absolute_sigma):
    """The two-sided quantile for ``ci``, a Python float (computed on the host)."""
    tail = (1 + level) / 2
    if absolute_sigma:
        return norm_ppf(tail)
    return t_ppf(tail, dof)  # NaN for dof < 1
