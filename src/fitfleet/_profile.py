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

The default grid adapts.  It walks away from the estimate on each side in the scale the
fit used for the parameter (``log p`` for a ``log_scale`` parameter, ``p`` otherwise),
in rounds of ``(n_points − 1)/2`` points per side, each round one vmapped batch of refits
warm-started from the farthest point inside the threshold of the round before.  Offsets from the estimate
grow geometrically from ``h = min(σ/4, u/10)``, ``σ`` the Wald standard error on that
scale and ``u`` its unit (a decade, ``ln 10``, on the log scale; ``|p̂|``, or ``σ``, or 1
on the linear one), by at least ``GROWTH`` = 1.5 per point, and fast enough to reach the
maximum extent in ``ROUNDS`` = 4 rounds.  A side stops when Δ crosses the threshold
(after one more round, if one is left, of points evenly spaced between its last point
inside and its first outside, which pins the interval's end down), when it reaches a bound (kept a relative 100·eps inside), when its refits all fail, or
at the maximum extent: ``LOG_EXTENT`` = 3 decades either way on the log scale,
``LINEAR_EXTENT`` = 1000 units either way on the linear one.  Every grid value is
finite (never 0 or ``inf`` on a log scale, which an ODE solve cannot take), and the
whole walk is one compiled program (a ``while_loop`` over rounds), which ``jit`` and
``vmap`` accept; outside them the unused slots of the last round are dropped, under
them they are NaN (sorted last).

Verdict (``Profile.verdict``, after Raue et al. 2009), from how each side ended
(``Profile.ends``):

- ``identifiable``: Δ crosses the threshold on both sides;
- ``one-sided``: the estimate sits on a bound (within √eps·max(1, |bound|)), so that
  side has no profile; practically non-identifiable, the bound bounds it;
- ``bound``: a side reaches a bound without crossing (practically non-identifiable);
- ``open``: a side never crosses within the maximum extent (or the given grid):
  practically non-identifiable;
- ``flat``: no side crosses and Δ stays below ``FLAT`` = 1% of the threshold over the
  whole grid: structurally non-identifiable (another parameter compensates exactly);
- ``failed``: the refits failed before a side crossed (non-finite costs), so the
  profile says nothing there.

A negative Δ means a refit found a lower cost than the optimum passed in: the original
fit was not at the (global) minimum.

Reference: D. J. Venzon & S. H. Moolgavkar, "A method for computing profile-likelihood-
based confidence intervals", Appl. Statist. 37 (1988); A. Raue et al., "Structural and
practical identifiability analysis of partially observed dynamical models by exploiting
the profile likelihood", Bioinformatics 25 (2009).
"""

import enum
import math
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


ROUNDS = 4  # rounds of refits of the default grid, at most
GROWTH = 1.5  # least growth of the offset from one grid point to the next
LOG_EXTENT = 3.0  # decades either way, for a log_scale parameter
LINEAR_EXTENT = 1e3  # units either way, otherwise
FLAT = 0.01  # a profile below FLAT · threshold everywhere is flat


class Verdict(enum.IntEnum):
    """What a profile says about its parameter (module docstring)."""

    IDENTIFIABLE = 0
    ONE_SIDED = 1
    BOUND = 2
    OPEN = 3
    FLAT = 4
    FAILED = 5

    @property
    def message(self):
        return _VERDICTS[self]


_VERDICTS = {
    Verdict.IDENTIFIABLE: "identifiable: the profile crosses the threshold on both sides",
    Verdict.ONE_SIDED: "practically non-identifiable, one-sided: the optimum sits on a bound",
    Verdict.BOUND: "practically non-identifiable: the profile reaches a bound below the threshold",
    Verdict.OPEN: "practically non-identifiable: the profile stays below the threshold to the end of the grid",
    Verdict.FLAT: "structurally non-identifiable: the profile is flat",
    Verdict.FAILED: "failed: the refits failed before the profile crossed the threshold",
}


class End(enum.IntEnum):
    """How one side of a profile ended (``Profile.ends``: lower side, upper side)."""

    CROSSED = 0  # Δ crossed the threshold
    BOUND = 1  # reached a bound below the threshold
    EXTENT = 2  # reached the maximum extent (or the end of the given grid)
    FAILED = 3  # every refit on that side failed
    AT_BOUND = 4  # the estimate sits on this bound: no side to walk


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
            return _VERDICTS[Verdict(int(codes))]
        return np.vectorize(lambda c: _VERDICTS[Verdict(int(c))], otypes=[object])(codes).tolist()


def profile(fun, res, args=(), index=0, grid=None, *, n_points=21, absolute_sigma=False, level=0.95, **options):
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
    prof = _profile(pinned, res, args, grid, refit_options, index, names[index], n_points, absolute_sigma, level, threshold, box)
    return _drop_unused(prof)


@_xla.filter_jit
def _profile(pinned, res, args, grid, refit_options, index, name, n_points, absolute_sigma, level, threshold, box):
    """Everything after validation, as one program (eager, it would be dozens)."""
    p_hat, _ = ravel_pytree(res.params)
    n = p_hat.shape[0]
    estimate = p_hat[index]
    keep = np.arange(n) != index
    q0 = p_hat[keep] if n > 1 else jnp.zeros(1, p_hat.dtype)  # a dummy the residual ignores
    m = res.residual.shape[0]
    lower, upper, log = box
    at_bound = jnp.stack([_on(estimate, lower, log), _on(estimate, upper, log)])

    def refits(values, starts):
        fits = jax.vmap(lambda v, q: least_squares(pinned, q, (v, *args), **refit_options))(values, starts)
        return fits.cost, fits.params, fits.success

    def statistic(cost, cost_min):
        return 2 * (cost - cost_min) if absolute_sigma else m * jnp.log(cost / cost_min)

    if grid is None:
        values, cost, q, success, cost_min, ends = _walk(
            refits, statistic, res, estimate, q0, index, n_points, absolute_sigma, threshold, box, at_bound
        )
    else:
        cost, q, success = refits(jnp.concatenate([grid, estimate[None]]), jnp.broadcast_to(q0, (grid.shape[0] + 1, q0.shape[0])))
        values, cost_min, cost, q, success = grid, cost[-1], cost[:-1], q[:-1], success[:-1]
        delta = statistic(cost, cost_min)
        sides = jnp.stack([values < estimate, values > estimate])
        crossed = jnp.any(sides & (delta >= threshold), axis=1)
        failed = jnp.any(sides, axis=1) & ~jnp.any(sides & jnp.isfinite(cost), axis=1)
        ends = jnp.where(crossed, End.CROSSED, jnp.where(failed, End.FAILED, End.EXTENT))
        ends = jnp.where(at_bound & ~crossed, End.AT_BOUND, ends)
    order = jnp.argsort(jnp.where(jnp.isnan(values), jnp.inf, values))
    values, cost, q, success = values[order], cost[order], q[order], success[order]
    delta = statistic(cost, cost_min)
    full = jnp.concatenate([q[:, :index], values[:, None], q[:, index:]], axis=1) if n > 1 else values[:, None]
    finite_delta = jnp.where(jnp.isfinite(delta), delta, 0)
    flat = jnp.all(ends != End.CROSSED) & (jnp.max(jnp.abs(finite_delta)) <= FLAT * threshold)
    return Profile(
        values=values,
        statistic=delta,
        cost=cost,
        params=full,
        success=success,
        estimate=estimate,
        cost_min=cost_min,
        threshold=jnp.asarray(threshold, p_hat.dtype),
        ci=_interval(values, delta, estimate, threshold),
        ends=ends.astype(jnp.int32),
        verdict=_verdict(ends, flat),
        index=index,
        level=level,
        name=name,
        log_scale=log,
    )


def _walk(refits, statistic, res, estimate, q0, index, n_points, absolute_sigma, threshold, box, at_bound):
    """The adaptive default grid (module docstring): a ``while_loop`` over rounds, each
    a vmapped batch of refits at ``k`` points per side plus, in the first round, the
    estimate itself.  Returns the values (NaN in unused slots), costs, parameters,
    successes, the refitted optimum's cost and how each side ended."""
    lower, upper, log = box
    dtype = q0.dtype
    k = (n_points - 1) // 2
    se = uncertainty(res, absolute_sigma=absolute_sigma).stderr[index]
    if log:
        centre, sigma, unit, extent = jnp.log(estimate), se / estimate, math.log(10.0), LOG_EXTENT * math.log(10.0)
    else:
        usable = jnp.isfinite(se) & (se > 0)
        centre, sigma = estimate, se
        unit = jnp.where(estimate != 0, jnp.abs(estimate), jnp.where(usable, se, 1.0))
        extent = LINEAR_EXTENT * unit
    first = jnp.where(jnp.isfinite(sigma) & (sigma > 0), jnp.minimum(sigma / 4, unit / 10), unit / 10)
    # Room to each bound, kept a relative 100·eps inside (the refits keep the others
    # feasible), on the grid's scale.
    eps = 100 * float(jnp.finfo(dtype).eps)
    inner = [b - eps * max(1.0, abs(b)) * sign if np.isfinite(b) and not (log and b <= 0) else None for b, sign in ((lower, -1), (upper, 1))]
    room = jnp.stack([_room(centre, inner[0], log, -1), _room(centre, inner[1], log, 1)])
    limit = jnp.minimum(room, extent)
    steps = jnp.arange(k, dtype=dtype)
    index = jnp.arange(k)

    def pick(a, i):  # a[side, i[side]]
        return jnp.take_along_axis(a, jnp.maximum(i, 0).reshape(2, 1, *([1] * (a.ndim - 2))), axis=1)[:, 0]

    def body(state):
        r, nxt, inner, active, refining, bracket, warm, cost_min, ends, buffers = state
        growth = jnp.maximum(GROWTH, (limit / nxt) ** (1 / (k * (ROUNDS - r))))
        walk = nxt[:, None] * growth[:, None] ** steps  # (side, point)
        fine = bracket[:, :1] + (bracket[:, 1:] - bracket[:, :1]) * (steps + 1) / (k + 1)
        previous = jnp.concatenate([jnp.zeros((2, 1), dtype), walk[:, :-1]], axis=1)
        valid = active[:, None] & (refining[:, None] | (previous < limit[:, None]))
        offsets = jnp.where(refining[:, None], fine, jnp.minimum(walk, limit[:, None]))
        s = centre + jnp.array([-1.0, 1.0], dtype)[:, None] * offsets
        values = jnp.clip(jnp.exp(s) if log else s, lower, upper)
        values = jnp.where(valid, values, jnp.nan).reshape(-1)
        values = jnp.concatenate([values, jnp.where(r == 0, estimate, jnp.nan)[None]])
        starts = jnp.concatenate([jnp.repeat(warm, k, axis=0), q0[None]])
        cost, q, success = refits(values, starts)
        cost_min = jnp.where(r == 0, cost[-1], cost_min)
        side_cost, side_q = cost[:-1].reshape(2, k), q[:-1].reshape(2, k, -1)
        delta = statistic(side_cost, cost_min)
        ok = valid & jnp.isfinite(side_cost)
        outside = ok & (delta >= threshold)
        crossed = jnp.any(outside, axis=1)
        first_out = jnp.where(crossed, jnp.argmax(outside, axis=1), k)
        last_in = jnp.max(jnp.where(ok & (index < first_out[:, None]), index, -1), axis=1)
        walking = active & ~refining
        failed = walking & jnp.any(valid, axis=1) & ~jnp.any(ok, axis=1)
        reached = walking & (offsets[:, -1] >= limit)
        # A side that crossed while walking spends the next round (if any) on k points
        # between its last point inside and its first outside: the interval's end.
        refine_next = walking & crossed & (r + 1 < ROUNDS)
        end = jnp.where(crossed, End.CROSSED, jnp.where(failed, End.FAILED, jnp.where(room <= extent, End.BOUND, End.EXTENT)))
        ends = jnp.where(walking & (crossed | failed | reached), end, ends)
        stop = refining | (walking & (crossed | failed | reached) & ~refine_next)
        inner = jnp.where(last_in >= 0, pick(offsets, last_in), inner)
        bracket = jnp.where(refine_next[:, None], jnp.stack([inner, pick(offsets, first_out)], axis=1), bracket)
        warm = jnp.where((last_in >= 0)[:, None], pick(side_q, last_in), warm)
        buffers = tuple(b.at[r].set(x[:-1]) for b, x in zip(buffers, (values, cost, q, success)))
        return r + 1, offsets[:, -1] * growth, inner, active & ~stop, refine_next, bracket, warm, cost_min, ends, buffers

    def cond(state):
        r, active = state[0], state[3]
        return (r == 0) | (r < ROUNDS) & jnp.any(active)  # the first round refits the optimum too

    buffers = (
        jnp.full((ROUNDS, 2 * k), jnp.nan, dtype),
        jnp.full((ROUNDS, 2 * k), jnp.nan, dtype),
        jnp.zeros((ROUNDS, 2 * k, q0.shape[0]), dtype),
        jnp.zeros((ROUNDS, 2 * k), bool),
    )
    ends = jnp.where(at_bound, End.AT_BOUND, End.EXTENT).astype(jnp.int32)
    zeros = jnp.zeros(2, dtype)
    state = (
        jnp.zeros((), jnp.int32), jnp.full(2, first, dtype), zeros, ~at_bound, jnp.zeros(2, bool), jnp.zeros((2, 2), dtype),
        jnp.stack([q0, q0]), jnp.full((), jnp.nan, dtype), ends, buffers,
    )  # fmt: skip
    *_, cost_min, ends, buffers = jax.lax.while_loop(cond, body, state)
    values, cost, q, success = (b.reshape(ROUNDS * 2 * k, *b.shape[2:]) for b in buffers)
    return values, cost, q, success, cost_min, ends


def _room(centre, bound, log, sign):
    """Distance from ``centre`` to ``bound`` on the grid's scale (``inf`` for none)."""
    if bound is None:
        return jnp.asarray(jnp.inf, centre.dtype)
    b = math.log(bound) if log else bound
    return jnp.maximum(sign * (b - centre), 0)


def _on(estimate, bound, log):
    """Whether the estimate sits on ``bound`` (within √eps·max(1, |bound|))."""
    if not np.isfinite(bound) or (log and bound <= 0):
        return jnp.zeros((), bool)
    tol = math.sqrt(float(jnp.finfo(estimate.dtype).eps)) * max(1.0, abs(bound))
    return jnp.abs(estimate - bound) <= tol


def _verdict(ends, flat):
    verdict = jnp.where(jnp.any(ends == End.AT_BOUND), Verdict.ONE_SIDED, jnp.where(jnp.any(ends == End.BOUND), Verdict.BOUND, Verdict.OPEN))
    verdict = jnp.where(flat, Verdict.FLAT, verdict)
    verdict = jnp.where(jnp.any(ends == End.FAILED), Verdict.FAILED, verdict)
    return jnp.where(jnp.all(ends == End.CROSSED), Verdict.IDENTIFIABLE, verdict).astype(jnp.int32)


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


def _interval(grid, statistic, estimate, threshold):
    """The ends of ``{Δ <= threshold}`` around the estimate, by interpolating √Δ between
    the last point inside (or the estimate) and the first outside; points whose refit
    failed (NaN) and unused slots are skipped."""
    values = jnp.concatenate([grid, estimate[None]])
    roots = jnp.sqrt(jnp.maximum(jnp.concatenate([statistic, jnp.zeros((1,), statistic.dtype)]), 0))
    order = jnp.argsort(jnp.where(jnp.isnan(values), jnp.inf, values))
    values, roots = values[order], roots[order]
    c = jnp.sqrt(jnp.asarray(threshold, roots.dtype))

    def upper_end(v, r, centre):
        idx = jnp.arange(v.shape[0])
        usable = (v >= centre) & jnp.isfinite(r)  # the estimate included (Δ = 0)
        outside = usable & (v > centre) & (r >= c)
        j = jnp.argmax(outside)
        i = jnp.max(jnp.where(usable & (idx < j) & (r < c), idx, -1))
        v1, v2, r1, r2 = v[i], v[j], r[i], r[j]
        end = v1 + (c - r1) * (v2 - v1) / jnp.where(r2 > r1, r2 - r1, 1)
        return jnp.where(jnp.any(outside) & (i >= 0), end, jnp.inf)

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
