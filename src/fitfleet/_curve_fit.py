"""scipy-compatible front door: ``curve_fit(f, xdata, ydata, ...)`` and its batched twin.

A scipy user changes one import.  What is the same: the signature, ``f(x, *params)``,
``p0`` defaulting to ones (or the middle of two-sided bounds, as scipy), ``sigma`` as
standard deviations or a covariance, ``absolute_sigma``, ``bounds`` (a pair or an object
with ``lb``/``ub``), ``pcov`` (a pseudo-inverse, as scipy's ``trf``; ``inf`` where it cannot be
estimated, with scipy's warning), a ``RuntimeError`` when the fit fails, and
``full_output``.  ``pcov`` is ``inf`` in the rows and columns of parameters the data do
not determine (an unused parameter, one of ``a`` and ``b`` in ``(a + b)·x``: see
:func:`fitfleet.uncertainty`); scipy's ``lm`` makes it ``inf`` everywhere then, or huge
when the Jacobian is singular only to round-off.

What differs, and why:

- ``method`` runs the method it names: ``"trf"`` fitfleet's trust-region reflective
  (scipy's algorithm), ``"lm"`` its Levenberg-Marquardt; ``None`` picks as scipy does,
  ``"lm"`` without bounds and ``"trf"`` with them.  ``"dogbox"`` runs ``"trf"``: fitfleet
  has no dogleg method, and trf is scipy's recommended one for bounded problems.
  ``method="lm"`` with bounds is allowed (a smooth change of variables, see
  ``docs/fitting_guide.md``), where scipy raises.  fitfleet's own methods (``"gn"``,
  ``"adam"``, ``"sgd"``) may be named too.
- Derivatives are exact (automatic differentiation): ``jac=None`` or a finite-difference
  scheme (``"2-point"``, ``"3-point"``, ``"cs"``) all mean autodiff, and ``diff_step``
  and ``epsfcn`` are ignored.  ``f`` must be written in ``jax.numpy``.
- ``maxfev``/``max_nfev`` bound the residual evaluations, the one at ``p0`` included
  (``least_squares``' ``max_nfev``: ``max_steps = max_nfev − 1``, each step one trial
  point; Jacobians at accepted points are not counted).
- The outputs are JAX arrays in the precision of ``p0`` (or of ``ydata`` without
  ``p0``): float32 unless float64 is enabled.
- ``ier`` uses ``scipy.optimize.least_squares``' status codes for every method: 1
  (gtol), 2 (ftol), 3 (xtol) are successes, 0 means the step budget ran out, −1 any
  other failure (see ``infodict["result"].status``).
- Under ``jit``/``vmap`` nothing can raise or warn: a failed fit returns its result
  (check ``ier`` with ``full_output=True``), and ``mesg`` is ``None``.
- ``nan_policy="omit"`` drops the NaN points, as scipy does, outside ``jit``/``vmap``
  only (it changes the data's shape), and not in ``curve_fit_batch``.
- ``infodict``'s ``fjac``, ``ipvt``, ``qtf`` are computed once at the solution from a
  column-pivoted QR factorisation of the whitened Jacobian (LAPACK's, the same pivoting
  rule as MINPACK's), in scipy's layout: ``fjac.T[:n]`` holds ``R`` (below the diagonal
  zeros, where MINPACK keeps its Householder vectors; the signs of ``R``'s rows may
  differ from MINPACK's), ``ipvt`` the permutation (0-based, as scipy 1.17 returns
  it), ``qtf = (Qᵀ fvec)[:n]``.

Where fitfleet's own ``least_squares`` differs from scipy's on purpose (it takes a
residual of any shape and fewer residuals than parameters; bounds as a change of
variables for ``lm``), ``docs/fitting_guide.md`` ("Coming from scipy") says so.
"""

import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _scipy_conventions as sc
from . import _tracing, _validate
from ._covariance import covariance_quietly
from ._engine import fit_batch
from ._least_squares import least_squares

_SCIPY_METHODS = (None, "lm", "trf", "dogbox")
_FITFLEET_METHODS = ("gn", "adam", "sgd")
_FD_JACOBIANS = (None, "2-point", "3-point", "cs")
def curve_fit(
    f,
    xdata,
    ydata,
    p0=None,
    sigma=None,
    absolute_sigma=False,
    check_finite=None,
    bounds=(-np.inf, np.inf),
    method=None,
    jac=None,
    *,
    full_output=False,
    nan_policy=None,
    **kwargs,
):
    """Fit ``ydata ≈ f(xdata, *params)``; scipy's ``curve_fit``, on fitfleet.

    Args:
        f: the model ``f(x, p1, p2, ...)``, written in ``jax.numpy``.
        xdata: the predictors, passed to ``f`` unchanged (any array or pytree).
        ydata: the observations.
        p0: the start; default ones (as scipy; the middle of two-sided bounds).
        sigma: standard deviations of ``ydata`` (a scalar or one per point) or their
            covariance matrix.
        absolute_sigma: ``True`` if ``sigma`` are absolute; ``False`` to rescale
            ``pcov`` by the residual variance (see :func:`fitfleet.uncertainty`).
        check_finite: raise ``ValueError`` on non-finite ``xdata``/``ydata`` (default
            ``True`` unless ``nan_policy`` is given; skipped for traced data).
        bounds: ``(lower, upper)`` scalars or arrays, or an object with ``lb``, ``ub``.
        method: ``None`` (``"lm"`` without bounds, ``"trf"`` with them, as scipy),
            ``"lm"``, ``"trf"``, ``"dogbox"`` (runs ``"trf"``), or fitfleet's ``"gn"``,
            ``"adam"``, ``"sgd"``.
        jac: ``jac(x, *params)`` returning the (m, n) Jacobian of ``f``, or ``None`` /
            a finite-difference scheme name for automatic differentiation.
        full_output: also return ``infodict``, ``mesg`` and ``ier``.
        nan_policy: ``None``, ``"raise"`` (a ``ValueError`` if the data hold NaN) or
            ``"omit"`` (drop the NaN points), as in scipy.
        **kwargs: ``ftol``, ``xtol``, ``gtol``, ``maxfev``/``max_nfev``, ``loss``,
            ``f_scale``, ``x_scale`` (as ``least_squares``: numbers for ``"trf"``,
            ``"jac"`` for all Newton-type methods); ``diff_step``, ``epsfcn`` and
            ``verbose`` are ignored; fitfleet's ``log_scale``, ``max_steps``,
            ``initial_damping``, ``acceleration``, ``secant``, ``subspace``, ``settle``,
            ``learning_rate``.

    Returns:
        ``(popt, pcov)``, or ``(popt, pcov, infodict, mesg, ier)`` with ``full_output``;
        ``infodict`` has ``nfev``, ``njev``, ``nit``, ``fvec`` (the whitened residual)
        and ``result`` (the :class:`Result`).

    Raises:
        RuntimeError: the fit failed (outside ``jit``/``vmap`` only), as in scipy.
        ValueError, TypeError: bad arguments, before anything is compiled.

    Example:
        >>> import jax.numpy as jnp
        >>> import fitfleet as ff
        >>> def model(x, a, k):
        ...     return a * jnp.exp(-k * x)
        >>> x = jnp.linspace(0.0, 4.0, 20)
        >>> y = model(x, 2.5, 1.3) + 0.01 * jnp.sin(7.0 * x)
        >>> popt, pcov = ff.curve_fit(model, x, y)
        >>> [round(float(v), 2) for v in popt], pcov.shape
        ([2.5, 1.3], (2, 2))
    """
    fit, p0, opts = _prepare(
        f, xdata, ydata, p0, sigma, absolute_sigma, check_finite, bounds, method, jac, nan_policy, kwargs
    )
    res = least_squares(fit["fun"], p0, fit["args"], **opts)
    pcov, undetermined = _pcov(res, absolute_sigma, opts)
    concrete = not isinstance(res.status, jax.core.Tracer)
    if concrete and not bool(res.success):
        raise RuntimeError("Optimal parameters not found: " + res.message)
    # Under jax.grad the status is concrete and pcov traced: nothing to warn about then.
    if concrete and not _validate.any_traced((pcov, undetermined)) and not np.all(np.isfinite(np.asarray(pcov))):
        which = [f"p[{i}]" for i in np.flatnonzero(np.asarray(undetermined))]
        detail = f" for {', '.join(which)}: the data do not determine them" if which else ""
        warnings.warn(f"Covariance of the parameters could not be estimated{detail}", UserWarning, stacklevel=2)
    if not full_output:
        return res.params, pcov
    return res.params, pcov, sc.infodict(res), res.message if concrete else None, sc.ier(res.status)


def curve_fit_batch(
    f,
    xdata,
    ydata,
    p0=None,
    sigma=None,
    absolute_sigma=False,
    check_finite=None,
    bounds=(-np.inf, np.inf),
    method=None,
    jac=None,
    *,
    full_output=False,
    batch_xdata=False,
    **kwargs,
):
    """:func:`curve_fit` of many data sets at once: one fit per row of ``ydata``.

    Runs on :func:`fitfleet.fit_batch` (one compiled program; a slow fit never holds the
    others back).  A failed row never raises: check ``ier`` (``full_output=True``) or
    ``infodict["result"].success``.

    Args:
        ydata: (B, m), one data set per row (or (B, ...) with ``f`` returning (...)).
        xdata: shared by all rows (anything :func:`curve_fit` takes), or, with
            ``batch_xdata=True``, an array with a leading axis B: (B, m), or (B, k, m)
            for k predictors.
        p0: (n,) shared, or (B, n) one start per row; default as :func:`curve_fit`.
        sigma: shared, (m,) or (m, m), or per row, (B, m) or (B, m, m).  As in
            :func:`fitfleet.fit_batch`, a 2-D sigma whose first axis is B is per row,
            even when B == m; pass a shared covariance as (B, m, m) then.
        absolute_sigma, check_finite, bounds, method, jac, **kwargs: as :func:`curve_fit`
            (bounds are shared).

    Returns:
        ``(popt, pcov)`` with shapes (B, n) and (B, n, n); with ``full_output`` also
        ``infodict`` (arrays with a leading B axis), ``mesg`` (a list) and ``ier`` (B,).

    Example:
        >>> import jax.numpy as jnp
        >>> import fitfleet as ff
        >>> def model(x, a, k):
        ...     return a * jnp.exp(-k * x)
        >>> x = jnp.linspace(0.0, 4.0, 20)
        >>> rates = jnp.array([0.5, 1.0, 2.0])
        >>> y = 3.0 * jnp.exp(-rates[:, None] * x)
        >>> popt, pcov = ff.curve_fit_batch(model, x, y)
        >>> [round(float(v), 3) for v in popt[:, 1]], pcov.shape
        ([0.5, 1.0, 2.0], (3, 2, 2))
    """
    if not isinstance(batch_xdata, (bool, np.bool_)):
        raise TypeError(f"`batch_xdata` must be True or False; got {batch_xdata!r}.")
    y = sc.as_data(ydata, "ydata")
    if y.ndim < 2:
        raise ValueError(
            f"`ydata` must have a leading batch axis, (B, m); got shape {y.shape}. For one data set use curve_fit."
        )
    size = y.shape[0]
    if batch_xdata:
        xdata = sc.as_data(xdata, "xdata")
        if xdata.ndim < 1 or xdata.shape[0] != size:
            raise ValueError(
                f"with batch_xdata=True, `xdata` needs a leading batch axis of size {size} like ydata; "
                f"got shape {xdata.shape}."
            )
    first = lambda t: jax.tree_util.tree_map(lambda a: a[0], t)  # noqa: E731
    p0_rows = None if p0 is None else sc.as_data(p0, "p0")
    per_row_p0 = p0_rows is not None and p0_rows.ndim == 2
    # As fit_batch: a sigma with two or more axes whose first is B holds one per row.
    per_row_sigma = sigma is not None and np.ndim(sigma) >= 2 and np.shape(sigma)[0] == size
    fit, p0_one, opts = _prepare(
        f, first(xdata) if batch_xdata else xdata, y[0], p0_rows[0] if per_row_p0 else p0_rows,
        first(sigma) if per_row_sigma else sigma, absolute_sigma, check_finite, bounds, method, jac, None, kwargs,
        check_data=(xdata, y),
    )  # fmt: skip
    dtype = p0_one.dtype
    x0 = p0_rows.astype(dtype) if per_row_p0 else jnp.broadcast_to(p0_one, (size, p0_one.shape[0]))
    x = xdata.astype(dtype) if batch_xdata else fit["args"][0]
    if per_row_sigma:
        opts["sigma"] = sc.as_data(sigma, "sigma").astype(dtype)
    res = fit_batch(fit["fun"], x0, (x, y.astype(dtype)), shared_args=() if batch_xdata else (0,), **opts)
    pcov, _ = _pcov(res, absolute_sigma, opts)
    if not full_output:
        return res.params, pcov
    concrete = not isinstance(res.status, jax.core.Tracer)
    return res.params, pcov, sc.infodict(res), res.message if concrete else None, sc.ier(res.status)


# --------------------------------------------------------------------------- internals


class _Model(eqx.Module):
    """``f(x, *p) − y``; a Module with ``f`` static so the same ``f`` reuses compilations."""

    f: Callable = eqx.field(static=True)

    def __call__(self, p, x, y):
        pred = jnp.asarray(self.f(x, *p))
        return pred - y.astype(pred.dtype)


class _ModelJac(eqx.Module):
    jac: Callable = eqx.field(static=True)

    def __call__(self, p, x, y):
        return jnp.asarray(self.jac(x, *p)).reshape(y.size, p.shape[0])


def _prepare(
    f, xdata, ydata, p0, sigma, absolute_sigma, check_finite, bounds, method, jac, nan_policy, kwargs, check_data=None
):
    """Validate scipy-style arguments; return the residual, the start and least_squares options."""
    if not callable(f):
        raise TypeError(f"`f` must be callable as f(x, *params); got {type(f).__name__}.")
    _validate.boolean("absolute_sigma", absolute_sigma)
    if nan_policy not in (None, "raise", "omit"):
        raise ValueError(f"`nan_policy` must be one of None, 'raise', 'omit' (scipy does not support 'propagate'); got {nan_policy!r}.")
    if check_finite is None:
        check_finite = nan_policy is None
    if method not in _SCIPY_METHODS + _FITFLEET_METHODS:
        raise ValueError(f"`method` must be one of {_SCIPY_METHODS + _FITFLEET_METHODS}; got {method!r}.")
    if not (callable(jac) or jac in _FD_JACOBIANS):
        raise ValueError(f"`jac` must be a callable jac(x, *params), None, or one of {_FD_JACOBIANS[1:]}; got {jac!r}.")
    if "args" in kwargs:
        raise ValueError("'args' is not a supported keyword argument: f is called as f(x, *params).")
    opts = sc.scipy_options(kwargs)

    y = sc.as_data(ydata, "ydata")
    if y.size == 0:
        raise ValueError("`ydata` must not be empty.")
    x_all, y_all = (xdata, y) if check_data is None else check_data
    if check_finite:
        sc.check_finite(y_all, "ydata", "(check_finite=True)")
        sc.check_finite(x_all, "xdata", "(check_finite=True)")
    elif nan_policy == "raise":
        sc.check_finite(y_all, "ydata", "(nan_policy='raise')", nan_only=True)
        sc.check_finite(x_all, "xdata", "(nan_policy='raise')", nan_only=True)
    elif nan_policy == "omit":
        if check_data is not None:
            raise ValueError("nan_policy='omit' would give the rows different lengths: drop the NaN points per row and fit them with curve_fit.")
        xdata, y, sigma = sc.omit_nan(xdata, y, sigma)

    n = sc.n_params(f) if p0 is None else int(np.size(p0))
    lb, ub = sc.bounds_pair(bounds, n)
    if p0 is None:
        p0 = jnp.asarray(sc.initial_point(lb, ub), y.dtype)
    else:
        p0 = _validate.parameters(p0, "p0")
        p0 = jnp.ravel(jnp.asarray(p0))
        if not _validate.is_traced(p0):
            _validate.start(np.asarray(p0), (lb, ub), np.zeros(n, bool), "p0")
    x = sc.as_x(xdata, p0.dtype)
    y = y.astype(p0.dtype)
    m = y.size
    bounded = bool(np.any(np.isfinite(lb) | np.isfinite(ub)))
    if method in (None, "lm") and not bounded and m != 1 and n > m:
        raise TypeError(f"The number of func parameters={n} must not exceed the number of data points={m}.")

    if sigma is not None:
        sigma = sc.as_data(sigma, "sigma").astype(p0.dtype)
        if sigma.size == 1:
            sigma = jnp.broadcast_to(jnp.reshape(sigma, ()), (m,))
        elif sigma.shape not in ((m,), (m, m)):
            raise ValueError(
                f"`sigma` has incorrect shape {sigma.shape}: use ({m},) standard deviations "
                f"or an ({m}, {m}) covariance."
            )
    _check_shapes(f, p0, x, y)
    opts.update(
        method=("trf" if bounded else "lm") if method is None else "trf" if method == "dogbox" else method,
        jac=_ModelJac(jac) if callable(jac) else "auto",
        sigma=sigma,
        bounds=(lb, ub) if bounded else None,
    )
    return {"fun": _Model(f), "args": (x, y)}, p0, opts


def _check_shapes(f, p0, x, y):
    """``f(xdata, *p0) − ydata`` must have ``ydata``'s shape: numpy would broadcast a
    column of data against a row of predictions into a matrix of residuals and fit
    that, where scipy refuses.  One abstract trace, remembered for the fit's own check
    (``_tracing``)."""
    out = _tracing.residual_shape(_Model(f), p0, (x, y))
    if out.shape != y.shape:
        raise ValueError(
            f"`ydata` has shape {y.shape}, but f(xdata, *p0) - ydata has shape {out.shape}: f's output "
            "broadcasts against ydata instead of matching it. Give ydata the shape of f's output "
            "(e.g. ydata.ravel(), or xdata without a trailing axis of size 1)."
        )


def _pcov(res, absolute_sigma, opts):
    """``(pcov, undetermined)``: inf rows and columns for undetermined parameters (and
    all inf, scipy's "could not be estimated", for a failed fit: NaN would be new to a
    scipy user)."""
    pcov, undetermined, success = covariance_quietly(res, absolute_sigma)  # with the fit's loss, which res records
    usable = success[..., None, None] & ~jnp.any(jnp.isnan(pcov), axis=(-2, -1), keepdims=True)
    return jnp.where(usable, pcov, jnp.inf), undetermined


