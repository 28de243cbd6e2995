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
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import _xla
from ._uncertainty import _over_batch


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
        unidentified: (n,) bool, per parameter: ``null_weight > weight_tol``.
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
    def identifiable(self):
        """True where no direction is undetermined (traceable)."""
        return ~jnp.any(self.undetermined, axis=-1)


def identifiability(res, *, log_params=False, rtol=None, weight_tol=0.01):
    """Eigen-spectrum of JᵀJ, condition number, stiff/sloppy directions, and flags.

    Args:
        res: a :class:`Result`, single or batched.
        log_params: analyse ``J·diag(p)``, the sensitivities to ``log |p|`` (unit-free;
            the natural choice for rate constants and other positive parameters).
        rtol: a direction with ``λ <= rtol · λ_max`` is undetermined; default
            ``eps · max(m, n)`` of the Jacobian's dtype.
        weight_tol: a parameter with more than this squared weight in the undetermined
            subspace is flagged as unidentified.

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
    m, n = res.jac.shape[-2:]
    if rtol is None:
        rtol = float(jnp.finfo(res.jac.dtype).eps) * max(m, n)
    return _identifiability(res.params, res.jac, bool(log_params), float(rtol), float(weight_tol))


@_xla.filter_jit
def _identifiability(params, jac, log_params, rtol, weight_tol):
    def one(params, jac):
        if log_params:
            jac = jac * ravel_pytree(params)[0]
        eigenvalues, eigenvectors = _spectrum(jac)
        threshold = rtol * eigenvalues[0]
        undetermined = eigenvalues <= threshold
        null_weight = jnp.sum(jnp.where(undetermined, eigenvectors**2, 0), axis=1)
        return Identifiability(
            eigenvalues=eigenvalues,
            eigenvectors=eigenvectors,
            condition_number=eigenvalues[0] / eigenvalues[-1],
            threshold=threshold,
            undetermined=undetermined,
            null_weight=null_weight,
            unidentified=null_weight > weight_tol,
            log_params=log_params,
        )

    return _over_batch(one, jac.ndim - 2)(params, jac)


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
