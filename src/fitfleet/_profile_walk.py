"""The adaptive default grid of a profile likelihood, its verdict, and the interval's
ends on a grid.

The default grid walks away from the estimate on each side, on the scale the fit used
for the parameter (``log p`` for a ``log_scale`` parameter, ``p`` otherwise), in rounds
of ``(n_points − 1)/2`` points per side.  Each round is one batch of refits, warm-started
from the farthest point inside the threshold of the round before.

Offsets from the estimate grow geometrically from ``h = min(σ/4, u/10)``, ``σ`` the
Wald standard error on that scale and ``u`` its unit (a decade, ``ln 10``, on the log
scale; ``|p̂|``, else ``σ``, else 1 on the linear one), by at least ``GROWTH`` = 1.5
per point, and fast enough to reach the maximum extent within ``ROUNDS`` = 4 rounds.
A side stops

- when Δ crosses the threshold, after one more round (if one is left) of points evenly
  spaced between its last point inside and its first outside, which pins the
  interval's end down;
- when it reaches a bound (kept a relative 100·eps inside);
- when all its refits in a round fail;
- at the maximum extent: ``LOG_EXTENT`` = 3 decades either way on the log scale,
  ``LINEAR_EXTENT`` = 1000 units either way on the linear one.

Every grid value is finite (never 0 or ``inf`` on a log scale, which an ODE solve
cannot take).  A round is pure functions of an explicit state (:class:`Walk`,
``propose``, ``advance``, ``running``), so the walk runs as a ``while_loop`` around
vmapped ``least_squares``, one program (under ``jit`` and ``vmap`` too), or for a model
with loops of its own as a Python loop whose refits are ``fit_batch`` calls
(``fitfleet._profile`` says why).  Outside a trace the unused slots of the last rounds
are dropped; under one they are NaN (sorted last).

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

Reference: D. J. Venzon & S. H. Moolgavkar, "A method for computing profile-likelihood-
based confidence intervals", Appl. Statist. 37 (1988); A. Raue et al., "Structural and
practical identifiability analysis of partially observed dynamical models by exploiting
the profile likelihood", Bioinformatics 25 (2009).
"""

import enum
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._driver import advance_bar_by
from ._xla import filter_jit


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


class Walk(eqx.Module):
    """One side-by-side walk's constants (arrays) and settings (static).

    A round is ``propose`` (its grid values and the starts of their refits), the refits,
    then ``advance`` (the state after the round); ``running`` says whether another
    round follows.  These are pure, so the rounds run in a ``while_loop`` (one program,
    under the caller's ``jit``/``vmap``) or in a Python loop around ``fit_batch``."""

    centre: Any  # the estimate on the grid's scale
    limit: Any  # (side,) the farthest offset: the room to the bound, or the maximum extent
    room: Any  # (side,) the room to the bound
    extent: Any
    estimate: Any
    q0: Any  # the other parameters at the optimum
    threshold: Any
    k: int = eqx.field(static=True)  # points per side per round
    box: tuple = eqx.field(static=True)  # (lower, upper, log) of the profiled parameter
    m: Any = eqx.field(static=True)  # residuals, for the statistic; None: known errors


def likelihood_ratio(cost, cost_min, m):
    """Δ (``fitfleet._profile``): ``2 (C − Ĉ)``, or ``m ln(C / Ĉ)`` with the error scale
    profiled too (``m`` residuals; None: known errors)."""
    return 2 * (cost - cost_min) if m is None else m * jnp.log(cost / cost_min)


def begin(estimate, q0, n_points, m, threshold, box, at_bound, se):
    """The walk's constants and its state before the first round; ``se`` the Wald
    standard error of the profiled parameter."""
    lower, upper, log = box
    dtype = q0.dtype
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
    k = (n_points - 1) // 2
    walk = Walk(
        centre=centre, limit=jnp.minimum(room, extent), room=room, extent=jnp.asarray(extent, dtype),
        estimate=estimate, q0=q0, threshold=jnp.asarray(threshold, dtype), k=k, box=box, m=m,
    )  # fmt: skip
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
    return walk, state


def running(state):
    r, active = state[0], state[3]
    return (r == 0) | (r < ROUNDS) & jnp.any(active)  # the first round refits the optimum too


def _grid(w, state):
    """This round's offsets (side, point), which of them are used, their growth factor,
    and the grid values (NaN in unused slots; in the first round the estimate last)."""
    r, nxt, _, active, refining, bracket = state[:6]
    dtype, k = w.q0.dtype, w.k
    lower, upper, log = w.box
    steps = jnp.arange(k, dtype=dtype)
    growth = jnp.maximum(GROWTH, (w.limit / nxt) ** (1 / (k * (ROUNDS - r))))
    walk = nxt[:, None] * growth[:, None] ** steps  # (side, point)
    fine = bracket[:, :1] + (bracket[:, 1:] - bracket[:, :1]) * (steps + 1) / (k + 1)
    previous = jnp.concatenate([jnp.zeros((2, 1), dtype), walk[:, :-1]], axis=1)
    valid = active[:, None] & (refining[:, None] | (previous < w.limit[:, None]))
    offsets = jnp.where(refining[:, None], fine, jnp.minimum(walk, w.limit[:, None]))
    s = w.centre + jnp.array([-1.0, 1.0], dtype)[:, None] * offsets
    values = jnp.clip(jnp.exp(s) if log else s, lower, upper)
    values = jnp.where(valid, values, jnp.nan).reshape(-1)
    values = jnp.concatenate([values, jnp.where(r == 0, w.estimate, jnp.nan)[None]])
    return offsets, valid, growth, values


def propose(w, state):
    """The round's refits: the values to fix the parameter at, the starts of the other
    parameters, and which are used.  An unused slot refits at the optimum, from the
    optimum (one step): never a NaN parameter, which a model's own linear solves (an
    implicit ODE solver) reject by raising."""
    values = _grid(w, state)[3]
    used = ~jnp.isnan(values)
    warm = state[6]
    starts = jnp.where(used[:, None], jnp.concatenate([jnp.repeat(warm, w.k, axis=0), w.q0[None]]), w.q0)
    return jnp.where(used, values, w.estimate), starts, used


def advance(w, state, cost, q, success):
    """The state after a round whose refits ended at ``cost``, ``q``, ``success``."""
    r, _, inner, active, refining, bracket, warm, cost_min, ends, buffers = state
    offsets, valid, growth, values = _grid(w, state)
    k = w.k
    index = jnp.arange(k)

    def pick(a, i):  # a[side, i[side]]
        return jnp.take_along_axis(a, jnp.maximum(i, 0).reshape(2, 1, *([1] * (a.ndim - 2))), axis=1)[:, 0]

    cost = jnp.where(jnp.isnan(values), jnp.nan, cost)
    cost_min = jnp.where(r == 0, cost[-1], cost_min)
    side_cost, side_q = cost[:-1].reshape(2, k), q[:-1].reshape(2, k, -1)
    delta = likelihood_ratio(side_cost, cost_min, w.m)
    ok = valid & jnp.isfinite(side_cost)
    outside = ok & (delta >= w.threshold)
    crossed = jnp.any(outside, axis=1)
    first_out = jnp.where(crossed, jnp.argmax(outside, axis=1), k)
    last_in = jnp.max(jnp.where(ok & (index < first_out[:, None]), index, -1), axis=1)
    walking = active & ~refining
    failed = walking & jnp.any(valid, axis=1) & ~jnp.any(ok, axis=1)
    reached = walking & (offsets[:, -1] >= w.limit)
    # A side that crossed while walking spends the next round (if any) on k points
    # between its last point inside and its first outside: the interval's end.
    refine_next = walking & crossed & (r + 1 < ROUNDS)
    end = jnp.where(crossed, End.CROSSED, jnp.where(failed, End.FAILED, jnp.where(w.room <= w.extent, End.BOUND, End.EXTENT)))
    ends = jnp.where(walking & (crossed | failed | reached), end, ends)
    stop = refining | (walking & (crossed | failed | reached) & ~refine_next)
    inner = jnp.where(last_in >= 0, pick(offsets, last_in), inner)
    bracket = jnp.where(refine_next[:, None], jnp.stack([inner, pick(offsets, first_out)], axis=1), bracket)
    warm = jnp.where((last_in >= 0)[:, None], pick(side_q, last_in), warm)
    buffers = tuple(b.at[r].set(x[:-1]) for b, x in zip(buffers, (values, cost, q, success)))
    return r + 1, offsets[:, -1] * growth, inner, active & ~stop, refine_next, bracket, warm, cost_min, ends, buffers


def rounds(walk, state, refits, eager, progress=False):
    """The walk's rounds until ``running`` fails, refitting with ``refits(values, starts)
    -> (cost, q, success)``: one ``while_loop``; or (``eager``) a Python loop around
    compiled rounds, the refits (``fit_batch`` calls) in between.  ``progress`` (static)
    advances the progress bar by each round's refits."""
    if not eager:

        def body(state):
            values, starts, used = propose(walk, state)
            if progress:  # static: off, no host callback at all
                jax.debug.callback(advance_bar_by, jnp.sum(used))
            return advance(walk, state, *refits(values, starts))

        return jax.lax.while_loop(running, body, state)
    going = True
    while going:
        values, starts, used = _propose_compiled(walk, state)
        state, going = _advance_compiled(walk, state, *refits(values, starts))
        going = bool(going)
        if progress:
            advance_bar_by(np.asarray(used).sum())
    return state


def _advance_and_check(walk, state, cost, q, success):
    state = advance(walk, state, cost, q, success)
    return state, running(state)


_propose_compiled, _advance_compiled = map(filter_jit, (propose, _advance_and_check))


def outcome(state):
    """The walk's values (NaN in unused slots), costs, parameters, successes, the
    refitted optimum's cost and how each side ended."""
    *_, cost_min, ends, buffers = state
    values, cost, q, success = (b.reshape(b.shape[0] * b.shape[1], *b.shape[2:]) for b in buffers)
    return values, cost, q, success, cost_min, ends


def interval(grid, statistic, estimate, threshold):
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


def _room(centre, bound, log, sign):
    """Distance from ``centre`` to ``bound`` on the grid's scale (``inf`` for none)."""
    if bound is None:
        return jnp.asarray(jnp.inf, centre.dtype)
    b = math.log(bound) if log else bound
    return jnp.maximum(sign * (b - centre), 0)


def on_bound(estimate, bound, log):
    """Whether the estimate sits on ``bound`` (within √eps·max(1, |bound|))."""
    if not np.isfinite(bound) or (log and bound <= 0):
        return jnp.zeros((), bool)
    tol = math.sqrt(float(jnp.finfo(estimate.dtype).eps)) * max(1.0, abs(bound))
    return jnp.abs(estimate - bound) <= tol


def verdict(ends, flat):
    verdict = jnp.where(jnp.any(ends == End.AT_BOUND), Verdict.ONE_SIDED, jnp.where(jnp.any(ends == End.BOUND), Verdict.BOUND, Verdict.OPEN))
    verdict = jnp.where(flat, Verdict.FLAT, verdict)
    verdict = jnp.where(jnp.any(ends == End.FAILED), Verdict.FAILED, verdict)
    return jnp.where(jnp.all(ends == End.CROSSED), Verdict.IDENTIFIABLE, verdict).astype(jnp.int32)
