"""Identifiability and sloppiness: the eigen-spectrum of JᵀJ at a fit.

Near the optimum the cost is ``F(p + δ) ≈ F(p) + ½ δᵀ JᵀJ δ``, so the eigenvectors
``v_k`` of ``JᵀJ`` are the principal axes of the confidence ellipsoid and its eigenvalues
``λ_k`` their curvatures: a "stiff" direction (large λ) is pinned down by the data, a
"sloppy" one (small λ) barely changes the fit.  ``J`` is ``Result.jac`` (whitened by
``sigma``), in the user's flat parameters; with ``log_params=True`` it is ``J·diag(p)``,
the Jacobian with respect to ``log |p|``, which makes the spectrum independent of the
units of the parameters (Sethna's "sloppy model" analysis uses this).

The eigen-pairs come from the SVD of ``J`` (``λ_k = s_k²``), never from forming ``JᵀJ``,
so eigenvalues far below ``eps · λ_max`` are still resolved.

Undetermined directions.  A direction is flagged when

    λ_k <= rtol · λ_max,      rtol = eps · max(m, n)  by default,

``eps`` of the Jacobian's dtype: below that, forming ``JᵀJ`` in this precision would
round the direction's curvature away entirely (a structurally non-identifiable model,
whose Jacobian columns are exactly dependent, sits many orders of magnitude below it).
This is a numerical statement; whether the data determine a direction *statistically*
depends on the noise: compare ``1/√λ_k`` (a standard deviation along ``v_k`` for whitened
residuals with ``absolute_sigma``) with the precision you need, or pass a larger
``rtol``.

Undetermined parameters.  Parameter ``j`` is flagged when the undetermined subspace has
a component along it, ``w_j = Σ_{k undetermined} V_jk² > weight_tol`` (default 0.01:
moving along the undetermined subspace changes ``p_j`` by more than 10% of the step).
``w_j`` is between 0 (the data fix ``p_j``) and 1 (the data say nothing about ``p_j``).
These are *structurally* unidentified parameters (``unidentified``).

Practical non-identifiability.  A parameter the data determine in principle may still
be determined so poorly that its value means nothing: a fast rate seen only after it
has decayed has a finite, huge standard error.  Parameter ``j`` is flagged
``practically_unidentified`` when it is not structurally unidentified and its relative
standard error exceeds ``max_rse`` (default 1)::

    rse_j = stderr_j / |p_j|  >  max_rse,

``stderr`` as :func:`fitfleet.uncertainty` computes it (with the same ``absolute_sigma``
and the fit's loss).  ``rse_j`` is the standard error of ``log |p_j|`` (delta method),
so the rule is one on the log scale: with ``rse > 1`` the 95% Wald interval of
``log p`` spans more than a factor ``e^1.96 ≈ 7`` either way, and the data do not fix
the parameter's order of magnitude.  It is meant for parameters whose size is their
scale (rates, amplitudes, concentrations: positive parameters); for a parameter whose
value may sit near 0 (an offset), pass a per-parameter ``max_rse`` with ``inf`` there,
and judge it by its ``stderr``.  The Wald standard error is a local measure; the profile
likelihood (:func:`fitfleet.profile`, whose ``verdict`` classifies the parameter) is
the global one.

A fit whose parameters, residual or Jacobian are not finite (a failed fit) says nothing: every
parameter is flagged ``unidentified`` and ``identifiable`` is False.
"""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import _validate, _xla
from ._covariance import covariance_one, fit_loss, over_batch


class Identifiability(eqx.Module):
    """The spectrum of JᵀJ at a fit; see :mod:`fitfleet._identifiability` for the maths.

    For a batched Result every field has the same leading batch axes.

    Attributes:
        eigenvalues: (n,) eigenvalues of JᵀJ, largest first (zeros pad a fit with m < n).
        eigenvectors: (n, n) the matching unit eigenvectors, as columns.
        condition_number: λ_max / λ_min (``inf`` if λ_min = 0).
        threshold: the eigenvalue below which a direction counts as undetermined.
        undetermined: (n,) bool, per eigen-direction: ``λ_k <= threshold``.
        null_weight: (n,) per parameter, its squared component in the undetermined subspace.
        unidentified: (n,) bool, per parameter, structurally: ``null_weight > weight_tol``
            (every parameter of a fit that is not finite).
        relative_stderr: (n,) ``stderr / |p|``, the standard error of ``log |p|``.
        practically_unidentified: (n,) bool, per parameter: not ``unidentified`` but
            ``relative_stderr > max_rse`` (or not finite).
        finite: whether the fit's parameters, residual and Jacobian are finite.
        max_rse: the threshold of ``practically_unidentified``.
        log_params: whether the spectrum is with respect to log-parameters.

    Example:
        >>> import jax.numpy as jnp
        >>> import fitfleet as ff
        >>> x = jnp.linspace(0.0, 1.0, 8)
        >>> res = ff.least_squares(lambda p, x: p[0] + p[1] * x - 2 * x, jnp.zeros(2), (x,))
        >>> ident = ff.identifiability(res)
        >>> ident.eigenvalues.shape, bool(ident.identifiable)
        ((2,), True)
    """

    eigenvalues: Any
    eigenvectors: Any
    condition_number: Any
    threshold: Any
    undetermined: Any
    null_weight: Any
    unidentified: Any
    relative_stderr: Any
    practically_unidentified: Any
    finite: Any
    max_rse: Any
    log_params: bool = eqx.field(static=True)

    @property
    def stiff(self):
        """(n,) the stiffest eigen-direction (largest eigenvalue)."""
        return self.eigenvectors[..., :, 0]

    @property
    def sloppy(self):
        """(n,) the sloppiest eigen-direction (smallest eigenvalue)."""
        return self.eigenvectors[..., :, -1]

    @property
    def structurally_identifiable(self):
        """True where the fit is finite and no direction is undetermined (traceable)."""
        return self.finite & ~jnp.any(self.undetermined, axis=-1)

    @property
    def identifiable(self):
        """True where the fit is finite, no direction is undetermined and no parameter
        is practically unidentified (traceable)."""
        return self.structurally_identifiable & ~jnp.any(self.practically_unidentified, axis=-1)


def identifiability(res, *, log_params=False, rtol=None, weight_tol=0.01, max_rse=1.0, absolute_sigma=False):
    """Eigen-spectrum of JᵀJ, condition number, stiff/sloppy directions, and flags.

    Args:
        res: a :class:`Result`, single or batched.
        log_params: analyse ``J·diag(p)``, the sensitivities to ``log |p|`` (unit-free;
            the natural choice for rate constants and other positive parameters).
        rtol: a direction with ``λ <= rtol · λ_max`` is undetermined; default
            ``eps · max(m, n)`` of the Jacobian's dtype.
        weight_tol: a parameter with more than this squared weight in the undetermined
            subspace is flagged as unidentified.
        max_rse: a parameter whose relative standard error exceeds this is flagged as
            practically unidentified; a number, or one per flat parameter (``inf``
            turns the test off for that parameter).
        absolute_sigma: as for :func:`fitfleet.uncertainty`, for the standard errors.

    Returns:
        An :class:`Identifiability`.  Works under ``jit`` and ``vmap``.

    Example: only the product ``a·b`` of ``y = a·b·x`` is identifiable.

        >>> import jax.numpy as jnp
        >>> import fitfleet as ff
        >>> x = jnp.linspace(0.0, 1.0, 10)
        >>> res = ff.least_squares(lambda p, x: p[0] * p[1] * x - 6.0 * x, jnp.array([1.0, 2.0]), (x,))
        >>> ident = ff.identifiability(res, log_params=True)
        >>> ident.undetermined.tolist(), ident.unidentified.tolist()
        ([False, True], [True, True])
        >>> [round(abs(float(v)), 3) for v in ident.sloppy]  # the level set of a·b in log space
        [0.707, 0.707]
    """
    if not isinstance(log_params, (bool, np.bool_)):
        raise TypeError(f"`log_params` must be True or False; got {log_params!r}.")
    if rtol is not None and not (0 <= float(rtol) < 1):
        raise ValueError(f"`rtol` must be in [0, 1); got {rtol!r}.")
    if not 0 <= float(weight_tol) < 1:
        raise ValueError(f"`weight_tol` must be in [0, 1); got {weight_tol!r}.")
    _validate.boolean("absolute_sigma", absolute_sigma)
    m, n = res.jac.shape[-2:]
    if not _validate.is_traced(max_rse):
        rse = np.asarray(max_rse, np.float64)
        if rse.shape not in ((), (n,)) or not np.all(rse > 0):
            raise ValueError(f"`max_rse` must be a positive number, or {n} of them (one per flat parameter); got {max_rse!r}.")
    if rtol is None:
        rtol = float(jnp.finfo(res.jac.dtype).eps) * max(m, n)
    loss, f_scale = fit_loss(res, None, None)
    max_rse = max_rse if _validate.is_traced(max_rse) else np.asarray(max_rse, np.float64)
    return _identifiability(res, bool(log_params), float(rtol), float(weight_tol), max_rse, bool(absolute_sigma), loss, f_scale)


@_xla.filter_jit
def _identifiability(res, log_params, rtol, weight_tol, max_rse, absolute_sigma, loss, f_scale):
    max_rse = jnp.broadcast_to(max_rse, res.jac.shape[-1:]).astype(res.jac.dtype)
    def one(params, residual, jac, cost, f_scale):
        p = ravel_pytree(params)[0]
        finite = jnp.all(jnp.isfinite(jac)) & jnp.all(jnp.isfinite(p)) & jnp.all(jnp.isfinite(residual))
        pcov = covariance_one(residual, jac, cost, absolute_sigma, loss, f_scale, None)[0]
        rse = jnp.sqrt(jnp.diagonal(pcov)) / jnp.abs(p)
        if log_params:
            jac = jac * p
        eigenvalues, eigenvectors = _spectrum(jnp.where(finite, jac, 0))
        threshold = rtol * eigenvalues[0]
        undetermined = eigenvalues <= threshold
        null_weight = jnp.sum(jnp.where(undetermined, eigenvectors**2, 0), axis=1)
        unidentified = (null_weight > weight_tol) | ~finite
        return Identifiability(
            eigenvalues=jnp.where(finite, eigenvalues, jnp.nan),
            eigenvectors=jnp.where(finite, eigenvectors, jnp.nan),
            condition_number=jnp.where(finite, eigenvalues[0] / eigenvalues[-1], jnp.nan),
            threshold=threshold,
            undetermined=undetermined | ~finite,
            null_weight=jnp.where(finite, null_weight, jnp.nan),
            unidentified=unidentified,
            relative_stderr=rse,
            practically_unidentified=~unidentified & ~(rse <= max_rse),
            finite=finite,
            max_rse=max_rse,
            log_params=log_params,
        )

    f_scale = jnp.broadcast_to(f_scale, res.cost.shape)
    return over_batch(one, res.jac.ndim - 2)(res.params, res.residual, res.jac, res.cost, f_scale)


def _spectrum(jac):
    """Eigenvalues (descending, zero-padded to n) and eigenvectors of JᵀJ via QR + SVD.

    The QR step shrinks a tall (m, n) Jacobian to its (n, n) triangle first, so the SVD
    never builds the (m, m) or (m, n) left singular vectors.
    """
    m, n = jac.shape
    r = jnp.linalg.qr(jac, mode="r") if m > n else jac
    _, s, vt = jnp.linalg.svd(r, full_matrices=True)
    s = jnp.concatenate([s, jnp.zeros(n - s.shape[0], s.dtype)])
    return s * s, vt.T
