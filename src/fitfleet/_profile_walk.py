"""The adaptive default grid of a profile likelihood, and its verdict.

The default grid walks away from the estimate on each side, on the scale the fit used
for the parameter (``log p`` for a ``log_scale`` parameter, ``p`` otherwise), in rounds
of ``(n_points − 1)/2`` points per side.  Each round is one vmapped batch of refits,
warm-started from the farthest point inside the threshold of the round before.

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
cannot take), and the whole walk is one compiled program (a ``while_loop`` over rounds),
which ``jit`` and ``vmap`` accept; outside them the unused slots of the last rounds are
dropped, under them they are NaN (sorted last).

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

import jax
import jax.numpy as jnp
import numpy as np

from ._driver import advance_bar_by
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


def walk(refits, statistic, res, estimate, q0, index, n_points, absolute_sigma, threshold, box, at_bound, progress=False):
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
        used = ~jnp.isnan(values)
        # An unused slot refits at the optimum, from the optimum (one step): never a NaN
        # parameter, which a model's own linear solves (an implicit ODE solver) reject
        # by raising.
        starts = jnp.where(used[:, None], jnp.concatenate([jnp.repeat(warm, k, axis=0), q0[None]]), q0)
        cost, q, success = refits(jnp.where(used, values, estimate), starts)
        if progress:  # static: off, no host callback at all
            jax.debug.callback(advance_bar_by, jnp.sum(used))
        cost = jnp.where(used, cost, jnp.nan)
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
