"""The fit over the data, its confidence band, and the residuals.

Confidence band (delta method).  With ``f(x; p)`` the model and ``C`` the parameter
covariance of :func:`fitfleet.uncertainty`, the variance of the fitted curve at ``x`` is
to first order ``g(x)ᵀ C g(x)``, ``g = ∂f(x; p)/∂p`` (``jax.jacfwd`` of the model on
the plotting grid, with respect to the flat parameters in ``ravel_pytree`` order, the
order of ``C``).  The band is ``f ± q·√(gᵀCg)`` with ``uncertainty``'s quantile ``q``
(Student t with ``dof`` degrees of freedom, or normal with ``absolute_sigma``): a
pointwise confidence band for the mean curve, not a prediction band for new data.  It is
exact for a model linear in its parameters (the textbook regression band).
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .._uncertainty import _quantile, uncertainty
from . import _common


def fit(
    res,
    model,
    x,
    y,
    sigma=None,
    *,
    band=False,
    absolute_sigma=False,
    residuals=True,
    member=None,
    grid=None,
    n_grid=200,
    ax=None,
    fig=None,
):
    """The data with error bars, the fitted curve, optionally its confidence band, and
    the residuals.

    Args:
        res: a :class:`~fitfleet.Result` (one fit, or a batch: pick with ``member``).
        model: ``model(params, x) -> prediction``, the fitted model without the data
            (the residual was, say, ``(model(p, x) - y) / sigma``), in ``jax.numpy``.
        x: where the data were taken.  A 1-D ``x`` (with ``y`` of the same length) is
            the horizontal axis, and the curve is drawn on a fine sorted grid; any
            other ``x`` (2-D, a tuple, a pytree) is passed to ``model`` as is, and
            the data and the model at the data are plotted against the data index
            (the axis label says so).
        y: the data.  For a batched ``res``, ``x``, ``y`` and ``sigma`` are either shared
            or per fit, with a leading batch axis (as ``fit_batch`` takes them); a 1-D
            array is always shared.
        sigma: the data's standard deviations (scalar or like ``y``), or their (m, m)
            covariance (its diagonal gives the error bars); None: no error bars.
        band: False; True for a 95% confidence band; or the confidence level.
        absolute_sigma: passed to :func:`fitfleet.uncertainty` for the band.
        residuals: add a panel of ``y - model(params, x)`` below.
        member: for a batched ``res``, the fit to draw (an int), or a list of them
            (drawn in turn, one colour each).
        grid: the x values of the curve (1-D ``x`` only); default ``n_grid`` points
            spanning the data.
        ax: where to draw: an Axes (``residuals=False``), or a pair of Axes (fit,
            residuals); fig: a Figure to add the two panels to.  Default: a new figure.

    Returns:
        The Figure (its ``axes`` are the fit and residual panels) when ``residuals``,
        else the Axes.

    Example:
        >>> import jax.numpy as jnp, fitfleet as ff, fitfleet.plot
        >>> from matplotlib.figure import Figure
        >>> x = jnp.linspace(0.0, 4.0, 20)
        >>> y = 3.0 * jnp.exp(-0.8 * x) + 0.02 * jnp.sin(7 * x)
        >>> model = lambda p, x: p[0] * jnp.exp(-p[1] * x)
        >>> res = ff.least_squares(lambda p, x, y: model(p, x) - y, jnp.ones(2), (x, y))
        >>> fig = ff.plot.fit(res, model, x, y, band=True, fig=Figure())
        >>> fit_panel, residual_panel = fig.axes
        >>> sorted(fit_panel.get_legend_handles_labels()[1])
        ['95% confidence band', 'data', 'fit']
        >>> fig.savefig("fit.png")  # doctest: +SKIP
    """
    _common.matplotlib()
    if not callable(model):
        raise TypeError("`model` must be a function model(params, x) -> prediction (the fit's model without the data).")
    level = _level(band)
    size = _common.batch_size(res)
    chosen = _common.members(size, member)
    main, lower = _panels(residuals, ax, fig)

    for k, i in enumerate(chosen):
        r = _common.take(res, i)
        xk = _pick(x, i, size)
        yk = np.asarray(_pick(y, i, size), np.float64)
        sk = _pick(sigma, i, size) if sigma is not None and np.ndim(sigma) >= 2 and np.ndim(sigma) > np.ndim(yk) else sigma
        data_color, fit_color = ("C0", "C1") if len(chosen) == 1 else (f"C{k}", f"C{k}")
        suffix = "" if i is None else f" (member {i})"
        _draw_one(main, lower, r, model, xk, yk, sk, level, absolute_sigma, grid, n_grid, data_color, fit_color, suffix)

    main.legend(fontsize="small")
    if lower is None:
        return main
    lower.axhline(0.0, color="0.5", lw=0.8, zorder=0)
    lower.set_ylabel("data − fit")
    lower.set_xlabel(main.get_xlabel())
    main.set_xlabel("")
    main.tick_params(labelbottom=False)
    return main.figure


def _level(band):
    if band is False or band is None:
        return None
    if band is True:
        return 0.95
    level = float(band)
    if not 0 < level < 1:
        raise ValueError(f"`band` must be False, True (95%) or a confidence level in (0, 1); got {band!r}.")
    return level


def _panels(residuals, ax, fig):
    if not residuals:
        if fig is not None:
            raise TypeError("`fig` is for the two-panel plot (residuals=True); pass `ax` for one panel.")
        return _common.new_axes(ax), None
    if ax is not None:
        try:
            main, lower = ax
        except (TypeError, ValueError):
            raise TypeError("with residuals=True, `ax` must be a pair of Axes (fit, residuals); or pass `fig`.") from None
        return main, lower
    fig = _common.new_figure(fig, (6.0, 5.0))
    main, lower = fig.subplots(2, 1, sharex=True, gridspec_kw=dict(height_ratios=[3, 1]))
    return main, lower


def _pick(value, i, size):
    """Member ``i`` of per-fit data (leading batch axis, at least 2-D), else shared data."""
    if i is None or value is None:
        return value
    if isinstance(value, list):
        value = np.asarray(value)
    leaves = jax.tree_util.tree_leaves(value)
    if leaves and all(np.ndim(leaf) >= 2 and np.shape(leaf)[0] == size for leaf in leaves):
        return jax.tree_util.tree_map(lambda a: a[i], value)
    return value


def _error_bars(sigma, y):
    if sigma is None:
        return None
    s = np.asarray(sigma, np.float64)
    if s.ndim == 2 and s.shape == (y.size, y.size) and y.shape != s.shape:
        return np.sqrt(np.diagonal(s))
    try:
        return np.broadcast_to(s, y.shape).ravel()
    except ValueError:
        raise ValueError(f"`sigma` of shape {s.shape} fits neither y's shape {y.shape} nor an (m, m) covariance.") from None


def _draw_one(main, lower, res, model, x, y, sigma, level, absolute_sigma, grid, n_grid, data_color, fit_color, suffix):
    p_flat, unravel = ravel_pytree(res.params)
    if isinstance(x, list):
        x = np.asarray(x)
    at_data = np.asarray(model(res.params, x), np.float64)
    if at_data.size != y.size:
        raise ValueError(
            f"model(params, x) has {at_data.size} values but y has {y.size}: pass the data the fit used "
            "(for a batch, per-fit data need a leading batch axis)."
        )
    err = _error_bars(sigma, y)
    y, at_data = y.ravel(), at_data.ravel()
    one_d = not isinstance(x, (tuple, dict)) and np.ndim(x) == 1 and np.size(x) == y.size
    if one_d:
        xd = np.asarray(x, np.float64)
        xg = np.sort(np.asarray(grid, np.float64).ravel()) if grid is not None else np.linspace(xd.min(), xd.max(), int(n_grid))
        x_model = jnp.asarray(xg, p_flat.dtype)
        main.set_xlabel("x")
    else:
        if grid is not None:
            raise ValueError("`grid` needs a 1-D x; with this x the model is drawn at the data.")
        xd = xg = np.arange(y.size, dtype=np.float64)
        x_model = x
        main.set_xlabel("data index (x is not 1-D)")
    curve_fn = lambda q: jnp.ravel(model(unravel(q), x_model))  # noqa: E731
    curve = np.asarray(curve_fn(p_flat), np.float64)

    points = dict(fmt="o", ms=4, color=data_color, ecolor=data_color, elinewidth=0.8)
    main.errorbar(xd, y, yerr=err, label="data" + suffix, zorder=3, **points)
    main.plot(xg, curve, "-", color=fit_color, lw=1.5, label="fit" + suffix, zorder=4)
    if level is not None:
        u = uncertainty(res, absolute_sigma=absolute_sigma, level=level)
        pcov = np.asarray(u.pcov, np.float64)
        if np.all(np.isfinite(pcov)):
            g = np.asarray(jax.jacfwd(curve_fn)(p_flat), np.float64)  # (grid, n)
            half = _quantile(level, u.dof, bool(absolute_sigma)) * np.sqrt(np.maximum(np.einsum("gi,ij,gj->g", g, pcov, g), 0))
            label = f"{level:.0%} confidence band{suffix}"
            main.fill_between(xg, curve - half, curve + half, color=fit_color, alpha=0.25, lw=0, label=label)
        else:
            warnings.warn("fitfleet.plot.fit: no band: the covariance is not finite (no degrees of freedom?).", stacklevel=3)
    main.set_ylabel("y")
    if lower is not None:
        lower.errorbar(xd, y - at_data, yerr=err, **points)
