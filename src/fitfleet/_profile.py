"""Profile likelihood of one parameter: fix it on a grid and refit the others.

For each grid value ``g`` of parameter ``p_i`` the other parameters are refitted (all grid
points at once, ``vmap``-ped, each warm-started from the optimum), giving the profiled
cost ``C(g) = min over p₋ᵢ of cost(p_i = g, p₋ᵢ)``, and the likelihood-ratio statistic

    Δ(g) = 2 · (C(g) − C(p̂))         known errors (absolute_sigma=True): a Δχ²
    Δ(g) = m · ln(C(g) / C(p̂))        unknown error scale (absolute_sigma=False)

The second is −2 ln of the Gaussian likelihood ratio with the variance profiled out
too (its maximum-likelihood value RSS/m at each point).  ``C`` is ``Result.cost``,
½χ² of the whitened residual (or the robust cost, with a ``loss``).

The likelihood-ratio confidence interval at ``level`` is ``{g : Δ(g) <= χ²₁(level)}``
(3.84 for 95%; Wilks' theorem).  Its ends are found on the grid: the signed root
``sign(g − p̂_i)·√Δ(g)``, which is exactly linear in ``g`` for a linear model, is
interpolated linearly between the last grid point inside and the first outside.
An end that the grid does not reach is ``∓inf``: the profile stays below the threshold
up to the last grid point, so the data do not bound the parameter on that side within
the grid (a flat profile is the signature of a non-identifiable parameter).

A negative Δ means a refit found a lower cost than the optimum passed in: the original
fit was not at the (global) minimum.

Reference: D. J. Venzon & S. H. Moolgavkar, "A method for computing profile-likelihood-
based confidence intervals", Appl. Statist. 37 (1988); A. Raue et al., "Structural and
practical identifiability analysis of partially observed dynamical models by exploiting
the profile likelihood", Bioinformatics 25 (2009).
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import _xla
from . import _validate
from ._least_squares import least_squares
from ._setup import check_options
from ._result import Result
from ._stats import chi2_1_ppf
from ._uncertainty import uncertainty


class Profile(eqx.Module):
    """A profile likelihood; see :mod:`fitfleet._profile` for the maths.

    Attributes:
        values: (k,) the grid of values of the profiled parameter.
        statistic: (k,) Δ, the likelihood-ratio statistic at each grid value.
        cost: (k,) the refitted cost at each grid value.
        params: (k, n) the refitted flat parameters (the profiled one included).
        success: (k,) whether each refit met a tolerance.
        estimate: the profiled parameter at the optimum.
        cost_min: the cost at the optimum (refitted with the same options).
        threshold: χ²₁(level), the cut-off of Δ.
        ci: (2,) the likelihood-ratio confidence interval; ``∓inf`` where unbounded.
        index: the flat index of the profiled parameter.
        level: the confidence level.

    Example:
        >>> import jax.numpy as jnp
        >>> import fitfleet as ff
        >>> x = jnp.arange(5.0)
        >>> line = lambda p, x: (p[0] + p[1] * x - (1.0 + 2.0 * x + 0.1 * jnp.sin(x))) / 0.1
        >>> res = ff.least_squares(line, jnp.zeros(2), (x,))
        >>> prof = ff.profile(line, res, (x,), index=0, grid=jnp.linspace(0.5, 1.5, 11), absolute_sigma=True)
        >>> prof.statistic.shape, bool(prof.ci[0] < res.params[0] < prof.ci[1])
        ((11,), True)
    """

    values: Any
    statistic: Any
    cost: Any
    params: Any
    success: Any
    estimate: Any
    cost_min: Any
    threshold: Any
    ci: Any
    index: int = eqx.field(static=True)
    level: float = eqx.field(static=True)


def profile(fun, res, args=(), index=0, grid=None, *, n_points=21, absolute_sigma=False, level=0.95, **options):
    """Profile likelihood of parameter ``index`` and its likelihood-ratio interval.

    Args:
        fun, args: the residual function and its extra arguments, as for the fit.
        res: the fit's :class:`Result` (one fit), or starting parameters, in which case
            the optimum is found first with :func:`least_squares`.
        index: the parameter to profile: a flat index into ``ravel_pytree(params)``, or
            its name (``Result.names``, e.g. ``"km"`` for a dict of parameters).
        grid: the values to fix it at (1-D); default: ``n_points`` values spanning
            ``±2·√χ²₁(level)`` standard errors around the estimate (about ±3.9 for 95%),
            geometric for a ``log_scale`` parameter, and kept inside its bounds.
        absolute_sigma: ``True`` if ``sigma`` are the true errors (Δχ² statistic);
            ``False`` to profile the error scale too (see the module docstring).
        level: confidence level of the interval.
        **options: options of the refits, as for :func:`least_squares` (``method``,
            ``ftol``, ``max_steps``, ...).  ``sigma``, ``bounds``, ``log_scale``,
            ``loss`` and ``f_scale`` default to what the Result recorded of its fit.
            ``jac`` must be an autodiff mode.

    Returns:
        A :class:`Profile`.  ``jax.vmap`` over data sets works, with a given ``grid``.

    Example: the 95% interval of a straight line's slope, with known errors.

        >>> import jax.numpy as jnp
        >>> import fitfleet as ff
        >>> x = jnp.arange(6.0)
        >>> y = jnp.array([1.1, 2.9, 5.2, 7.1, 8.8, 11.0])
        >>> def line(p, x, y):
        ...     return (p[0] + p[1] * x - y) / 0.2
        >>> res = ff.least_squares(line, jnp.zeros(2), (x, y))
        >>> prof = ff.profile(line, res, (x, y), index=1, absolute_sigma=True)
        >>> [round(float(v), 3) for v in prof.ci]  # = slope ± 1.96 stderr, the model is linear
        [1.881, 2.068]
    """
    args = _validate.arguments(args)
    _validate.boolean("absolute_sigma", absolute_sigma)
    if callable(options.get("jac")):
        raise TypeError("profile refits with automatic differentiation: pass jac='auto', 'fwd' or 'rev'.")
    level = _check_level(level)
    if isinstance(res, Result):
        options = {**recorded_options(res), **options}
    else:
        res = least_squares(fun, res, args, **options)
    options = check_options(options)
    if res.residual.ndim != 1:
        raise ValueError(
            "`res` is a batched Result: profile one fit at a time, e.g. with jax.vmap over "
            "the data sets and an explicit `grid`."
        )
    names = res.flat_names()
    n = len(names)
    index = parameter_index(index, names)
    log = _validate.flat(options["log_scale"], n, res.params, "log_scale", bool)
    box = _validate.bounds(options["bounds"], n, res.params, log)
    lower, upper = box if box is not None else (np.full(n, -np.inf), np.full(n, np.inf))
    threshold = chi2_1_ppf(level)

    if grid is None:
        _validate.integer("n_points", n_points, minimum=3)
    else:
        grid = jnp.asarray(grid, jnp.result_type(*jax.tree_util.tree_leaves(res.params)))
        if grid.ndim != 1 or grid.shape[0] < 1:
            raise ValueError(f"`grid` must be a 1-D array of values of parameter {index}; got shape {grid.shape}.")
        if not _validate.is_traced(grid):
            g = np.asarray(grid)
            if np.any(~np.isfinite(g)) or np.any(g < lower[index]) or np.any(g > upper[index]):
                raise ValueError(f"`grid` must be finite and inside the bounds of parameter {index}.")
            if log[index] and np.any(g <= 0):
                raise ValueError(f"`grid` must be positive: parameter {index} is log_scale.")

    keep = np.arange(n) != index
    unbounded = np.all(np.isinf(lower[keep])) and np.all(np.isinf(upper[keep]))
    # Tolerances as arrays (traced in the compiled profile: a new value compiles
    # nothing, as for least_squares); bounds as plain Python values (static).
    for name in ("ftol", "xtol", "gtol", "max_steps"):
        if options[name] is not None and not _validate.is_traced(options[name]):
            options[name] = np.asarray(options[name])
    refit_options = dict(
        options,
        bounds=None if unbounded or n == 1 else (tuple(lower[keep].tolist()), tuple(upper[keep].tolist())),
        log_scale=tuple(log[keep].tolist()) if n > 1 else False,
    )
    box = (float(lower[index]), float(upper[index]), bool(log[index]))
    pinned = _Pinned(fun, index, *_unflatten_spec(res.params))
    with _xla.compile_notice("the profile's refits"):
        return _profile(pinned, res, args, grid, refit_options, index, n_points, absolute_sigma, level, threshold, box)


@_xla.filter_jit
def _profile(pinned, res, args, grid, refit_options, index, n_points, absolute_sigma, level, threshold, box):
    """Everything after validation, as one program (eager, it would be dozens)."""
    p_hat, _ = ravel_pytree(res.params)
    n = p_hat.shape[0]
    estimate = p_hat[index]
    if grid is None:
        grid = _default_grid(res, index, n_points, absolute_sigma, threshold, *box)
    grid = jnp.sort(grid)
    keep = np.arange(n) != index
    q0 = p_hat[keep] if n > 1 else jnp.zeros(1, p_hat.dtype)  # a dummy the residual ignores

    def refit(value):
        return least_squares(pinned, q0, (value, *args), **refit_options)

    fits = jax.vmap(refit)(jnp.concatenate([grid, estimate[None]]))
    cost, cost_min = fits.cost[:-1], fits.cost[-1]
    m = res.residual.shape[0]
    statistic = 2 * (cost - cost_min) if absolute_sigma else m * jnp.log(cost / cost_min)
    q = fits.params[:-1]
    full = jnp.concatenate([q[:, :index], grid[:, None], q[:, index:]], axis=1) if n > 1 else grid[:, None]
    return Profile(
        values=grid,
        statistic=statistic,
        cost=cost,
        params=full,
        success=fits.success[:-1],
        estimate=estimate,
        cost_min=cost_min,
        threshold=jnp.asarray(threshold, p_hat.dtype),
        ci=_interval(grid, statistic, estimate, threshold),
        index=index,
        level=level,
    )


class _Pinned(eqx.Module):
    """``fun`` with flat parameter ``index`` fixed to a value passed as the first argument.

    All fields are static and hashable, so profiling the same ``fun`` again reuses the
    compiled refit.
    """

    fun: Callable = eqx.field(static=True)
    index: int = eqx.field(static=True)
    treedef: Any = eqx.field(static=True)
    shapes: tuple = eqx.field(static=True)
    dtypes: tuple = eqx.field(static=True)

    def __call__(self, q, value, *args):
        value = jnp.reshape(value, (1,)).astype(q.dtype)
        if sum(int(np.prod(s)) for s in self.shapes) == 1:
            p = value
        else:
            p = jnp.concatenate([q[: self.index], value, q[self.index :]])
        leaves, start = [], 0
        for shape, dtype in zip(self.shapes, self.dtypes):
            size = int(np.prod(shape))
            leaves.append(p[start : start + size].reshape(shape).astype(dtype))
            start += size
        return self.fun(jax.tree_util.tree_unflatten(self.treedef, leaves), *args)


def _unflatten_spec(params):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return treedef, tuple(tuple(jnp.shape(x)) for x in leaves), tuple(jnp.result_type(x).name for x in leaves)


def _default_grid(res, index, n_points, absolute_sigma, threshold, lower, upper, log):
    p_hat = ravel_pytree(res.params)[0]
    centre = p_hat[index]
    se = uncertainty(res, absolute_sigma=absolute_sigma).stderr[index]
    half_width = 2 * np.sqrt(threshold) * se
    usable = jnp.isfinite(half_width) & (half_width > 0)
    t = jnp.linspace(-1, 1, n_points, dtype=p_hat.dtype)
    if log:
        # A relative standard error se/p is the standard error of log p (delta method).
        log_width = jnp.where(usable, half_width / jnp.abs(centre), np.log(2.0))
        grid = centre * jnp.exp(t * log_width)
    else:
        width = jnp.where(usable, half_width, jnp.where(centre != 0, 0.5 * jnp.abs(centre), 1))
        grid = centre + t * width
    # Stay a little inside the bounds: the refits keep the other parameters feasible.
    eps = 100 * jnp.finfo(p_hat.dtype).eps
    lo = lower + eps * max(1.0, abs(lower)) if np.isfinite(lower) else -jnp.inf
    hi = upper - eps * max(1.0, abs(upper)) if np.isfinite(upper) else jnp.inf
    return jnp.clip(grid, lo, hi)


def _interval(grid, statistic, estimate, threshold):
    """The ends of ``{Δ <= threshold}`` around the estimate, by interpolating √Δ."""
    values = jnp.concatenate([grid, estimate[None]])
    roots = jnp.sqrt(jnp.maximum(jnp.concatenate([statistic, jnp.zeros((1,), statistic.dtype)]), 0))
    order = jnp.argsort(values)
    values, roots = values[order], roots[order]
    c = jnp.sqrt(jnp.asarray(threshold, roots.dtype))

    def upper_end(v, r, centre):
        outside = (v > centre) & (r >= c)  # NaN (a failed refit) is never outside
        j = jnp.argmax(outside)
        v1, v2, r1, r2 = v[j - 1], v[j], r[j - 1], r[j]
        end = v1 + (c - r1) * (v2 - v1) / jnp.where(r2 > r1, r2 - r1, 1)
        return jnp.where(jnp.any(outside), end, jnp.inf)

    upper = upper_end(values, roots, estimate)
    lower = -upper_end(-values[::-1], roots[::-1], -estimate)
    return jnp.stack([lower, upper])


def recorded_options(res):
    """The options a Result recorded of its fit (``sigma``, ``bounds``, ``log_scale``,
    ``loss``, ``f_scale``), for refitting the same problem."""
    recorded = dict(sigma=res.sigma, bounds=res.bounds, log_scale=res.log_scale or False, loss=res.loss)
    if res.f_scale is not None:
        recorded["f_scale"] = res.f_scale
    return recorded


def parameter_index(index, names):
    """A flat parameter index from an index or a name."""
    if isinstance(index, str):
        if index not in names:
            raise ValueError(f"`index`: no parameter named {index!r}; the parameters are {names}.")
        return names.index(index)
    n = len(names)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < n:
        raise ValueError(f"`index` must be a parameter name or an int in [0, {n}) (a flat index); got {index!r}.")
    return int(index)


def _check_level(level):
    _validate.real("level", level)
    level = float(level)
    if not 0 < level < 1:
        raise ValueError(f"`level` must be in (0, 1), e.g. 0.95; got {level!r}.")
    return level
