"""Profile likelihood of one parameter: fix it on a grid and refit the others.

For each grid value ``g`` of parameter ``p_i`` the other parameters are refitted
(``vmap``-ped), giving the profiled cost ``C(g) = min over p₋ᵢ of cost(p_i = g, p₋ᵢ)``, and
the likelihood-ratio statistic

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
the grid.

The default grid adapts to the parameter (:mod:`fitfleet._profile_walk`): it walks out
from the estimate on the fit's scale until the threshold, a bound or a maximum extent,
and classifies the parameter (``Profile.verdict``).

A negative Δ means a refit found a lower cost than the optimum passed in: the original
fit was not at the (global) minimum.

Reference: D. J. Venzon & S. H. Moolgavkar, "A method for computing profile-likelihood-
based confidence intervals", Appl. Statist. 37 (1988); A. Raue et al., "Structural and
practical identifiability analysis of partially observed dynamical models by exploiting
the profile likelihood", Bioinformatics 25 (2009).
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import _driver, _validate, _xla
from ._engine import fit_batch
from ._least_squares import least_squares
from ._profile_walk import FLAT, ROUNDS, End, Verdict, begin, interval, likelihood_ratio, on_bound, outcome, rounds, verdict
from ._result import Result
from ._setup import check_options, prepare
from ._stats import chi2_1_ppf
from ._uncertainty import uncertainty


class Profile(eqx.Module):
    """A profile likelihood; see :mod:`fitfleet._profile` for the maths.

    Attributes:
        values: (k,) the grid of values of the profiled parameter, ascending.
        statistic: (k,) Δ, the likelihood-ratio statistic at each grid value.
        cost: (k,) the refitted cost at each grid value.
        params: (k, n) the refitted flat parameters (the profiled one included).
        success: (k,) whether each refit met a tolerance.
        estimate: the profiled parameter at the optimum.
        cost_min: the cost at the optimum (refitted with the same options).
        threshold: χ²₁(level), the cut-off of Δ.
        ci: (2,) the likelihood-ratio confidence interval; ``∓inf`` where unbounded.
        ends: (2,) how the lower and the upper side ended (:class:`End` codes).
        verdict: a :class:`Verdict` code; ``verdict_text`` says it in words.
        index: the flat index of the profiled parameter; ``name`` its name.
        level: the confidence level; ``log_scale``: whether the grid was on log p.

    Example:
        >>> import jax.numpy as jnp
        >>> import fitfleet as ff
        >>> x = jnp.arange(5.0)
        >>> line = lambda p, x: (p[0] + p[1] * x - (1.0 + 2.0 * x + 0.1 * jnp.sin(x))) / 0.1
        >>> res = ff.least_squares(line, jnp.zeros(2), (x,))
        >>> prof = ff.profile(line, res, (x,), index=0, grid=jnp.linspace(0.5, 1.5, 11), absolute_sigma=True)
        >>> prof.statistic.shape, bool(prof.ci[0] < res.params[0] < prof.ci[1]), prof.verdict_text
        ((11,), True, 'identifiable: the profile crosses the threshold on both sides')
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
    ends: Any
    verdict: Any
    index: int = eqx.field(static=True)
    level: float = eqx.field(static=True)
    name: str = eqx.field(static=True, default=None)
    log_scale: bool = eqx.field(static=True, default=False)

    @property
    def identifiable(self):
        """True where the verdict is ``identifiable`` (traceable)."""
        return self.verdict == Verdict.IDENTIFIABLE

    @property
    def verdict_text(self):
        """The verdict in words (a string, or a nested list for a batch)."""
        codes = np.asarray(self.verdict)
        if codes.ndim == 0:
            return Verdict(int(codes)).message
        return np.vectorize(lambda c: Verdict(int(c)).message, otypes=[object])(codes).tolist()


def profile(
    fun, res, args=(), index=0, grid=None, *, n_points=21, absolute_sigma=False, level=0.95, progress=False, **options
):
    """Profile likelihood of parameter ``index``, its likelihood-ratio interval and a
    verdict on its identifiability.

    Args:
        fun, args: the residual function and its extra arguments, as for the fit.
        res: the fit's :class:`Result` (one fit), or starting parameters, in which case
            the optimum is found first with :func:`least_squares`.
        index: the parameter to profile: a flat index into ``ravel_pytree(params)``, or
            its name (``Result.names``, e.g. ``"km"`` for a dict of parameters).
        grid: the values to fix it at (1-D); default: an adaptive grid that walks away
            from the estimate on the parameter's scale (geometric for a ``log_scale``
            parameter) until the threshold is crossed, a bound reached, or the maximum
            extent (3 decades on a log scale, 1000 units on a linear one) reached; see
            the module docstring.
        n_points: points per round of the default grid (both sides together).
        absolute_sigma: ``True`` if ``sigma`` are the true errors (Δχ² statistic);
            ``False`` to profile the error scale too (see the module docstring).
        level: confidence level of the interval.
        progress: a progress bar of the refits (needs ``tqdm``), advanced after each
            round of the default grid; an upper bound as its total, the walk may stop early.
        **options: options of the refits, as for :func:`least_squares` (``method``,
            ``ftol``, ``max_steps``, ...).  ``sigma``, ``bounds``, ``log_scale``,
            ``loss`` and ``f_scale`` default to what the Result recorded of its fit.
            ``jac`` must be an autodiff mode.

    Returns:
        A :class:`Profile`.  ``jax.vmap`` over data sets works (the default grid's
        unused slots are then NaN, sorted last).

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
    progress = _validate.boolean("progress", progress) and not _validate.any_traced((res, args, grid))
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
            "the data sets."
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
    # Tolerances as arrays (a new value compiles nothing, as for least_squares); bounds
    # as plain Python values (static).
    for name in ("ftol", "xtol", "gtol", "max_steps"):
        if options[name] is not None and not _validate.is_traced(options[name]):
            options[name] = np.asarray(options[name])
    if options["sigma"] is not None and not _validate.is_traced(options["sigma"]):  # (m,) or an (m, m) covariance
        options["sigma"] = _validate.sigma(options["sigma"], res.residual.shape[0], res.residual.dtype)
    refit_options = dict(
        options,
        bounds=None if unbounded or n == 1 else (tuple(lower[keep].tolist()), tuple(upper[keep].tolist())),
        log_scale=tuple(log[keep].tolist()) if n > 1 else False,
        history=False, verbose=0, progress=False,
    )  # fmt: skip
    m = None if absolute_sigma else res.residual.shape[0]
    settings = _Settings(index, names[index], n_points, m, level, threshold, (float(lower[index]), float(upper[index]), bool(log[index])))
    pinned = _Pinned(fun, index, *_unflatten_spec(res.params))
    total = ROUNDS * 2 * ((n_points - 1) // 2) + 1 if grid is None else grid.shape[0] + 1
    # Outside a trace, a model that runs loops of its own (an ODE solve) refits by one
    # fit_batch call a round: vmapped inside the walk's loop, its loops trace and compile
    # several times slower (Boehm's nine PEtab profiles, first call 143.7 s against 69.6 s,
    # second 66.7 s against 31.2 s).  Any other compiles and runs faster as one program
    # (Michaelis-Menten's: 4.1 s against 5.8 s, 3.9 ms against 48 ms), as under a trace.
    eager = not _validate.any_traced((res, args, grid, refit_options)) and _loops(pinned, res, args, refit_options, index)
    with _xla.compile_notice("the profile's refits"), _driver.progress_bar(_driver.Monitor(progress=progress), total, "refit"):
        run = _profile if eager else _profile_compiled
        prof = run(pinned, res, args, grid, refit_options, settings, eager=eager, progress=progress)
    return _drop_unused(prof)


class _Settings(NamedTuple):
    """A profile's static settings."""

    index: int
    name: str
    n_points: int
    m: Any  # residuals, for the statistic; None: known errors (``likelihood_ratio``)
    level: float
    threshold: float
    box: tuple  # (lower, upper, log) of the profiled parameter


def _profile(pinned, res, args, grid, refit_options, s, eager, progress):
    """Everything after validation: one program (``_profile_compiled``); or, ``eager``,
    compiled pieces around ``fit_batch`` calls (run eagerly they would be dozens of tiny
    programs).  ``progress`` (static) advances the bar after each round."""
    refits = functools.partial(_refit_batch if eager else _refit_vmapped, pinned, args, refit_options)
    start = (_start_compiled if eager else _start)(res, grid, s)
    if grid is not None:
        found = refits(*start)
        if progress and eager:
            _driver.advance_bar_by(grid.shape[0] + 1)
        elif progress:
            jax.debug.callback(_driver.advance_bar_by, grid.shape[0] + 1)
    else:
        found = rounds(*start, refits, eager, progress)
    return (_finish_compiled if eager else _finish)(res, grid, found, s)


def _loops(pinned, res, args, options, index):
    """Whether the refits' Jacobian runs a loop (``_problem.Spec.loops``; the set-up
    ``fit_batch`` repeats, its trace remembered)."""
    p_hat = ravel_pytree(res.params)[0]
    return prepare(pinned, _others(p_hat, index), (p_hat[index], *args), options).spec.loops


def _refit_vmapped(pinned, args, options, values, starts):
    fits = jax.vmap(lambda v, q: least_squares(pinned, q, (v, *args), **options))(values, starts)
    return fits.cost, fits.params, fits.success


def _refit_batch(pinned, args, options, values, starts):
    sigma, size = options["sigma"], values.shape[0]
    if np.ndim(sigma) == 2 and np.shape(sigma)[0] == size:  # a covariance, which fit_batch would read as per fit
        sigma = np.broadcast_to(sigma, (size, *np.shape(sigma)))
    fits = fit_batch(pinned, starts, (values, *args), shared_args=tuple(range(1, len(args) + 1)), **dict(options, sigma=sigma))
    return fits.cost, fits.params, fits.success


def _estimate(res, s):
    """The flat optimum, the profiled parameter there, the others, and whether it sits on
    each of its bounds."""
    p_hat, _ = ravel_pytree(res.params)
    estimate = p_hat[s.index]
    lower, upper, log = s.box
    return p_hat, estimate, _others(p_hat, s.index), jnp.stack([on_bound(estimate, lower, log), on_bound(estimate, upper, log)])


def _others(p_hat, index):
    """The flat parameters but ``index``; for a single parameter a dummy the residual
    ignores."""
    n = p_hat.shape[0]
    return p_hat[np.arange(n) != index] if n > 1 else jnp.zeros(1, p_hat.dtype)


def _start(res, grid, s):
    """The walk and its first state; or, on a given grid, the refits' values and starts."""
    _, estimate, q0, at_bound = _estimate(res, s)
    if grid is None:
        se = uncertainty(res, absolute_sigma=s.m is None).stderr[s.index]
        return begin(estimate, q0, s.n_points, s.m, s.threshold, s.box, at_bound, se)
    return jnp.concatenate([grid, estimate[None]]), jnp.broadcast_to(q0, (grid.shape[0] + 1, q0.shape[0]))


def _finish(res, grid, found, s):
    """The Profile from the refits (the walk's final state, or a given grid's refits)."""
    p_hat, estimate, _, at_bound = _estimate(res, s)
    n = p_hat.shape[0]
    if grid is None:
        values, cost, q, success, cost_min, ends = outcome(found)
    else:
        cost, q, success = found
        values, cost_min, cost, q, success = grid, cost[-1], cost[:-1], q[:-1], success[:-1]
        delta = likelihood_ratio(cost, cost_min, s.m)
        sides = jnp.stack([values < estimate, values > estimate])
        crossed = jnp.any(sides & (delta >= s.threshold), axis=1)
        failed = jnp.any(sides, axis=1) & ~jnp.any(sides & jnp.isfinite(cost), axis=1)
        ends = jnp.where(crossed, End.CROSSED, jnp.where(failed, End.FAILED, End.EXTENT))
        ends = jnp.where(at_bound & ~crossed, End.AT_BOUND, ends)
    order = jnp.argsort(jnp.where(jnp.isnan(values), jnp.inf, values))
    values, cost, q, success = values[order], cost[order], q[order], success[order]
    delta = likelihood_ratio(cost, cost_min, s.m)
    full = jnp.concatenate([q[:, : s.index], values[:, None], q[:, s.index :]], axis=1) if n > 1 else values[:, None]
    finite_delta = jnp.where(jnp.isfinite(delta), delta, 0)
    flat = jnp.all(ends != End.CROSSED) & (jnp.max(jnp.abs(finite_delta)) <= FLAT * s.threshold)
    return Profile(
        values=values,
        statistic=delta,
        cost=cost,
        params=full,
        success=success,
        estimate=estimate,
        cost_min=cost_min,
        threshold=jnp.asarray(s.threshold, p_hat.dtype),
        ci=interval(values, delta, estimate, s.threshold),
        ends=ends.astype(jnp.int32),
        verdict=verdict(ends, flat),
        index=s.index,
        level=s.level,
        name=s.name,
        log_scale=s.box[2],
    )


_profile_compiled, _start_compiled, _finish_compiled = map(_xla.filter_jit, (_profile, _start, _finish))


def _drop_unused(prof):
    """Outside traces, the default grid's unused slots (NaN values) go."""
    if _validate.is_traced(prof.values):
        return prof
    values = np.asarray(prof.values)
    used = ~np.isnan(values)
    if used.all():
        return prof
    take = lambda a: jnp.asarray(np.asarray(a)[used])  # noqa: E731  (numpy: no program to compile)
    return eqx.tree_at(lambda p: (p.values, p.statistic, p.cost, p.params, p.success), prof,
                       tuple(take(getattr(prof, f)) for f in ("values", "statistic", "cost", "params", "success")))  # fmt: skip


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
