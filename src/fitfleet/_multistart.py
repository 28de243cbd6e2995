"""Multi-start: many fits of one model from starts spread over a box, and what they found.

The starts come from ``_samplers``; the fits from ``fit_batch``, so a start that needs
many steps does not slow the others.  Afterwards, on the host:

- the fits are sorted by cost;
- ``p_star`` is the fraction of all starts whose final cost reaches the best cost found,
  ``C_best``, within a threshold (pyPESTO's convention), whatever their status and
  whichever parameters they ended at: ``cost − C_best <= threshold`` with

      threshold = rtol · |C_best|    (floored at eps · max(1, |C_best|))   by default,
      threshold = χ²₁(0.95)/2 = 1.92                        with ``absolute_sigma=True``,

  or the ``threshold`` given.  ``absolute_sigma=True`` says that the whitened residual
  has unit variance (``sigma`` are the true errors, or the residual is a negative
  log-likelihood written as a sum of squares), so the cost is ``χ²/2``, the negative
  log-likelihood up to a constant, and two costs less than χ²₁(0.95)/2 apart are not
  distinguishable by a likelihood-ratio test.  Symmetric or flat optima (a phase ±2π,
  swapped rates, a ridge) all count: they reach the same cost.  ``p_star`` estimates
  the chance that one random start finds the best cost, so ``1 - (1 - p*)^M``
  estimates the chance that M starts find it at least once (independent starts; Latin
  hypercube and Sobol starts are more even than that, so it is a conservative
  estimate);
- the converged fits (``success``; a fit that ran out of steps or failed has not shown
  that where it stopped is an optimum) are grouped into distinct optima, so distinct
  parameter sets at the best cost are reported separately: in cost order, a fit joins
  the first group whose best member agrees with it in cost and in every parameter, to a
  relative ``rtol`` (plus an absolute floor of machine epsilon times the largest cost,
  or the largest parameter magnitude, for values at round-off level such as a zero
  residual); otherwise it opens a group.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _setup, _validate, _xla
from ._engine import fit_batch, runtime
from ._result import Result
from ._samplers import SAMPLERS, check_box, to_box, unit_cube
from ._stats import chi2_1_ppf
from ._status import is_success


class Optimum(NamedTuple):
    """A distinct optimum found by :func:`multistart`.

    Attributes:
        params: the parameters of its best fit (same structure as a single fit's, as
            numpy arrays).
        cost: that fit's cost.
        n_starts: how many starts reached it.
        fraction: ``n_starts`` over all starts.
        index: position of its best fit in ``MultiStartResult.results``.
    """

    params: Any
    cost: float
    n_starts: int
    fraction: float
    index: int


class MultiStartResult(NamedTuple):
    """The outcome of :func:`multistart`.

    Attributes:
        results: a :class:`Result` with one entry per start, sorted by cost (best first).
        starts: the starting points, in the same order, with the batch axis first.
        best: the :class:`Result` of the best fit (no batch axis).
        optima: the distinct :class:`Optimum` s found (converged fits grouped by cost
            and parameters), best first.
        p_star: the fraction of starts whose cost reached the best cost within
            ``threshold`` (see :mod:`fitfleet._multistart`).
        n_starts: the number of starts.
        threshold: the cost difference from the best within which a start counts as
            having found it (an absolute cost difference; the waterfall plot draws it).
        n_success: how many starts did (``p_star · n_starts``).
        rtol: the relative tolerance of the grouping (and of the default threshold).
        threshold_rule: ``"relative"`` (``rtol`` times the best cost), ``"nll"``
            (χ²₁(0.95)/2, with ``absolute_sigma``) or ``"given"``.

    The fields of ``results`` are also the MultiStartResult's own, as on a batch of
    fits: ``ms.params``, ``ms.cost``, ``ms.status``, ``ms.success``... (one entry per
    start, best first).

    Example:
        >>> import jax.numpy as jnp
        >>> import fitfleet as ff
        >>> def residual(p):                       # minima at p = +1 (best) and p = -1
        ...     return jnp.array([p[0] ** 2 - 1.0, 1e-2 * (p[0] - 1.0)])
        >>> ms = ff.multistart(residual, -3.0, 1.0, n_starts=64, sampler="lhs")
        >>> [round(float(o.params[0]), 3) for o in ms.optima]
        [1.0, -1.0]
        >>> round(ms.p_star, 2), ms.n_success, round(ms.prob_found(10), 3)
        (0.25, 16, 0.944)
    """

    results: Result
    starts: Any
    best: Result
    optima: list
    p_star: float
    n_starts: int
    threshold: float = None
    n_success: int = None
    rtol: float = 1e-3
    threshold_rule: str = "relative"

    def __getattr__(self, name):
        # The per-start Result's fields, start axis first and best first, as on a
        # batch: ``ms.params`` is ``ms.results.params``.
        if not name.startswith("_"):
            try:
                return getattr(self.results, name)
            except AttributeError:
                pass
        raise AttributeError(f"'MultiStartResult' object has no attribute {name!r}")

    def prob_found(self, n_starts=None):
        """Estimated chance that ``n_starts`` random starts (default: as many as were
        run) find the best cost at least once: ``1 - (1 - p*)^M``."""
        m = self.n_starts if n_starts is None else n_starts
        return 1.0 - (1.0 - self.p_star) ** m

    def summary(self, max_optima=10, *, offset=0.0, label="cost"):
        """A text report: exits counted by status, the best cost and how many starts
        found it (within ``threshold``), the starts p* says are needed, the distinct
        optima (those at the best cost marked ``*``) and the best parameters under the
        user's names.  Costs are shown as ``cost + offset`` named ``label`` (a negative
        log-likelihood written as a sum of squares: its constant and ``"NLL"``).

        Example:
            >>> import jax.numpy as jnp
            >>> import fitfleet as ff
            >>> def residual(p):
            ...     return jnp.array([p[0] ** 2 - 1.0, 1e-2 * (p[0] - 1.0)])
            >>> print(ff.multistart(residual, -3.0, 1.0, n_starts=64).summary())
            [[Multi-start]] 64 starts, 64 converged
                exits              = ...
                best cost          = 0
                best value found   = 16 times (cost within 1.19e-07 of the best: relative 0.001), success fraction p* = 0.25
                starts needed      = 17 for 99% (estimate from p*); 64 starts find the best with probability 1.000
            [[Optima]] converged fits grouped by cost and parameters (rtol 0.001)
                optimum          cost  starts  fraction
                      1             0      16    0.2500  *
                      2   0.00019999...      48    0.7500
            [[Best parameters]]
                p[0] = 1
        """
        from ._report import multistart_summary

        return multistart_summary(self, max_optima, float(offset), str(label))

    def save(self, path, info=None):
        """Write the result to one file (a numpy ``.npz`` archive with a JSON header;
        :mod:`fitfleet._saving`), atomically; ``info``: a JSON-able dict stored with it
        (``load_info`` reads it back).  Parameters must be arrays, or dicts, lists and
        tuples of arrays."""
        from ._saving import save

        save(self, path, info)

    @classmethod
    def load(cls, path):
        """The result saved at ``path`` by :meth:`save`: no model needed, nothing
        compiled; its arrays are numpy arrays with the dtypes saved."""
        from ._saving import load

        return load(path)

    @staticmethod
    def load_info(path):
        """The ``info`` dict saved with the result at ``path`` (``{}`` if none)."""
        from ._saving import load_info

        return load_info(path)

    def starts_needed(self, confidence=0.99):
        """Starts needed to find the best cost with probability ``confidence``
        (by the same estimate); ``inf`` when no start found it."""
        if self.p_star >= 1:
            return 1
        if self.p_star <= 0:
            return math.inf
        return math.ceil(math.log1p(-confidence) / math.log1p(-self.p_star))


def multistart(
    fun,
    lower,
    upper,
    n_starts=256,
    args=(),
    *,
    sampler="lhs",
    log_scale=False,
    key=None,
    dtype=None,
    rtol=1e-3,
    threshold=None,
    absolute_sigma=False,
    fit_log_scale=False,
    progress=False,
    **options,
):
    """Fit ``fun`` from ``n_starts`` points drawn in the box ``[lower, upper]``.

    Args:
        fun: ``fun(params, *args)``, as for :func:`least_squares`.
        lower, upper: the box of starting points: scalars, flat arrays or pytrees like
            the parameters (their structure sets the structure of ``params``).  Finite.
        n_starts: number of starts.
        args: extra arguments, shared by every fit.
        sampler: ``"uniform"``, ``"lhs"`` (Latin hypercube, the default) or ``"sobol"``
            (scrambled, needs scipy; best with a power of two ``n_starts``).
        log_scale: bool, or per parameter: sample ``|p|`` log-uniformly (the box must not
            contain 0 there; negative boxes keep their sign), for rate constants
            spanning decades.  This is about the starts; ``fit_log_scale`` is
            :func:`least_squares`' ``log_scale`` option for the fits.
        key: a ``jax.random`` key or a whole-number seed; default ``jax.random.key(0)``.
            Pass a new key for new starts.
        dtype: precision of the fits; default: float64 if enabled, else float32.
        rtol: relative tolerance in cost and parameters for grouping fits into optima,
            and of the default success threshold (``rtol`` times the best cost).
        threshold: a start whose cost is within this of the best cost found it (an
            absolute cost difference); default: see ``absolute_sigma``.
        absolute_sigma: ``True`` when the whitened residual has unit variance (``sigma``
            are the true errors, or the residual is a negative log-likelihood written
            as a sum of squares): the threshold is then χ²₁(0.95)/2 = 1.92, the
            likelihood-ratio test's (see :mod:`fitfleet._multistart`).
        progress: show a progress bar (needs ``tqdm``).
        **options: any other :func:`fit_batch` option (``method``, ``ftol``, ``max_steps``,
            ``bounds``, ``sigma``, ``loss``, ``chunk_size``, ...), the same for every start.

    Returns:
        A :class:`MultiStartResult`.

    Example:
        >>> import jax.numpy as jnp
        >>> import fitfleet as ff
        >>> t = jnp.linspace(0.0, 10.0, 40)
        >>> y = jnp.exp(-0.3 * t) + jnp.exp(-3.0 * t)
        >>> def residual(k, t, y):                 # two decay rates, spanning decades
        ...     return jnp.exp(-k[0] * t) + jnp.exp(-k[1] * t) - y
        >>> ms = ff.multistart(residual, [1e-3, 1.0], [1.0, 1e3], 64, (t, y), log_scale=True)
        >>> [round(k, 3) for k in ms.best.params.tolist()], ms.p_star > 0.5
        ([0.3, 3.0], True)
    """
    if _validate.any_traced((lower, upper, args, key)):
        raise TypeError(
            "multistart groups optima on the host, so it cannot run under jit/grad/vmap; "
            "draw starts yourself and call fit_batch, which can."
        )
    if sampler not in SAMPLERS:
        raise ValueError(f"`sampler` must be one of {SAMPLERS}; got {sampler!r}.")
    if isinstance(n_starts, bool) or not isinstance(n_starts, (int, np.integer)) or n_starts < 1:
        raise ValueError(f"`n_starts` must be a positive integer; got {n_starts!r}.")
    check_grouping(rtol, threshold, absolute_sigma)
    if "shared_args" in options or "x0" in options:
        raise TypeError("multistart shares `args` among all starts and draws x0 itself; use fit_batch for per-fit data.")
    _setup.check_options(options)  # before drawing the starts, which compiles on a first call
    dtype = _validate.floating_dtype("dtype", dtype or jnp.result_type(float))
    template = _structure(lower, upper)
    leaves, structure = jax.tree_util.tree_flatten(template)
    shapes = [np.shape(leaf) for leaf in leaves]
    n = sum(math.prod(shape) for shape in shapes)
    lo, hi = (_validate.flat(v, n, template, name) for v, name in ((lower, "lower"), (upper, "upper")))
    log = _validate.flat(log_scale, n, template, "log_scale", kind=bool)
    lo, hi, log = check_box(lo, hi, log, n)

    key = _validate.random_key("key", key)
    starts_flat = to_box(unit_cube(sampler, key, int(n_starts), n), lo, hi, log).astype(dtype)
    # On the host (numpy): an eager JAX op here would compile a program on a first call.
    columns = np.split(starts_flat, np.cumsum([math.prod(shape) for shape in shapes])[:-1], axis=1)
    x0 = structure.unflatten([c.reshape(int(n_starts), *shape) for c, shape in zip(columns, shapes)])
    # On a first call, sorting's program compiles alongside the fits' programs.
    prepare = lambda shapes: runtime.compile_soon(_sorted.lower(shapes, x0, np.zeros(int(n_starts), np.int64)))  # noqa: E731
    token = runtime.AFTER_BATCH.set(prepare)
    try:
        results = fit_batch(fun, x0, args, shared_args=True, log_scale=fit_log_scale, progress=progress, **options)
    finally:
        runtime.AFTER_BATCH.reset(token)
    return summarise(results, x0, rtol, threshold, absolute_sigma)


def summarise(results, starts, rtol=1e-3, threshold=None, absolute_sigma=False):
    """Sort a batch of fits of one model by cost, count the starts that reached the
    best cost and group the converged fits into optima (module docstring)."""
    _check_threshold(threshold, absolute_sigma)
    cost = np.asarray(results.cost, np.float64)
    order = np.argsort(np.where(np.isfinite(cost), cost, np.inf), kind="stable")
    cost = cost[order]
    params = jax.tree_util.tree_map(lambda a: np.asarray(a)[order], results.params)
    flat = np.concatenate([leaf.reshape(cost.size, -1) for leaf in jax.tree_util.tree_leaves(params)], 1).astype(np.float64)
    converged = is_success(np.asarray(results.status)[order]) & np.isfinite(cost) & np.all(np.isfinite(flat), axis=1)
    eps = float(jnp.finfo(results.cost.dtype).eps)
    idx = np.flatnonzero(converged)
    owner, leaders = _group(cost[idx], flat[idx], rtol, eps)
    counts = np.bincount(owner, minlength=leaders.size).tolist()
    n_total = cost.size
    best_of = idx[leaders]
    leaves, treedef = jax.tree_util.tree_flatten(params)
    optimum_leaves = [leaf[best_of] for leaf in leaves]
    optima = [
        Optimum(treedef.unflatten([leaf[i] for leaf in optimum_leaves]), float(cost[j]), count, count / n_total, int(j))
        for i, (j, count) in enumerate(zip(best_of, counts))
    ]
    threshold, rule = success_threshold(cost[0], eps, rtol, threshold, absolute_sigma)
    n_success = int(np.sum(np.isfinite(cost) & (cost - cost[0] <= threshold)))
    results, starts, best = _sorted(results, starts, order)
    return MultiStartResult(results, starts, best, optima, n_success / n_total, n_total, threshold, n_success, float(rtol), rule)


def success_threshold(best, eps, rtol, threshold=None, absolute_sigma=False):
    """``(threshold, rule)``: the cost difference from ``best`` within which a start
    found the best cost (module docstring)."""
    if threshold is not None:
        return float(threshold), "given"
    if absolute_sigma:
        return chi2_1_ppf(0.95) / 2, "nll"
    best = abs(float(best)) if np.isfinite(best) else 0.0
    return max(rtol * best, eps * max(1.0, best)), "relative"


def check_grouping(rtol, threshold, absolute_sigma):
    """The options that group the optima, checked (before any fit runs)."""
    if isinstance(rtol, bool) or not (isinstance(rtol, (int, float, np.floating, np.integer)) and rtol > 0):
        raise ValueError(f"`rtol` must be a positive number; got {rtol!r}.")
    _check_threshold(threshold, absolute_sigma)


def _check_threshold(threshold, absolute_sigma):
    _validate.boolean("absolute_sigma", absolute_sigma)
    if threshold is not None:
        _validate.real("threshold", threshold)
        if threshold < 0:
            raise ValueError(f"`threshold` must be a cost difference >= 0; got {threshold!r}.")


@_xla.filter_jit
def _sorted(results, starts, order):
    """Results and starts in ``order``, and the first: one small program on the device
    (sending the host's sorted copies back would cost more: device_put has a fixed cost
    per array)."""
    results, starts = jax.tree_util.tree_map(lambda a: a[order], (results, starts))
    return results, starts, jax.tree_util.tree_map(lambda a: a[0], results)


def _group(c, f, rtol, eps):
    """Group fits sorted by cost ``c`` (parameters ``f``, a row each) by the rule of the
    module docstring; returns each fit's group number and each group's first fit.

    Greedy in cost order: each new optimum claims every later unclaimed fit that agrees
    with it, which is the same as each fit joining the first optimum it agrees with.
    Candidates come from one coordinate (the cost or a parameter) sorted: fits that
    agree differ there by at most ``(rtol·|v| + atol) / (1 − rtol)`` (from
    ``|v − w| <= rtol·max(|v|, |w|) + atol``, seen from either fit), so each fit's
    candidates are a window of that order, and a fit alone in its window is an optimum
    of its own.  The coordinate with the narrowest windows is used: on a plateau, where
    hundreds of starts stop at once with nearly equal costs, a parameter separates them.
    """
    n = c.size
    cost_atol = eps * max(1.0, float(np.max(c, initial=0.0)))
    param_atol = eps * max(1.0, float(np.max(np.abs(f), initial=0.0)))  # >= every pair's atol
    columns = np.column_stack([c, f])
    atol = np.array([cost_atol] + [param_atol] * f.shape[1])
    half = (rtol * np.abs(columns) + atol) / (1 - rtol) if rtol < 1 else np.full_like(columns, np.inf)
    half += 4 * np.finfo(np.float64).eps * np.abs(columns)  # round-off of v ± half
    windows = []
    for v, h in zip(columns.T, half.T):
        order = np.argsort(v, kind="stable")
        lo, hi = np.searchsorted(v[order], v - h, "left"), np.searchsorted(v[order], v + h, "right")
        windows.append((int(np.sum(hi - lo)), order, lo, hi))
    _, order, lo, hi = min(windows, key=lambda w: w[0])

    owner = np.where(hi - lo <= 1, np.arange(n), -1)
    for k in np.flatnonzero(owner < 0):
        if owner[k] >= 0:  # claimed by an earlier optimum
            continue
        owner[k] = k
        rest = order[lo[k] : hi[k]]
        rest = rest[(rest > k) & (owner[rest] < 0)]
        scale = np.maximum(np.abs(f[rest]), np.abs(f[k]))
        pair_atol = eps * np.maximum(1.0, np.max(scale, axis=1, keepdims=True, initial=0.0))
        same = (c[rest] - c[k] <= rtol * c[rest] + cost_atol) & np.all(np.abs(f[rest] - f[k]) <= rtol * scale + pair_atol, axis=1)
        owner[rest[same]] = k
    leaders = np.flatnonzero(owner == np.arange(n))
    return np.searchsorted(leaders, owner), leaders


def _structure(lower, upper):
    """The parameters' structure: a pytree bound's, else a flat vector of the bounds' size."""
    for bound in (lower, upper):
        if isinstance(bound, (dict, list, tuple)) and not _is_flat_sequence(bound):
            return jax.tree_util.tree_map(np.asarray, bound)
    size = max(np.size(lower), np.size(upper))
    return np.zeros(size)


def _is_flat_sequence(value):
    return isinstance(value, (list, tuple)) and all(np.ndim(v) == 0 for v in value)

