"""Multi-start plots, after pyPESTO's: the waterfall of final costs and the parameters
of the best fits.

Waterfall.  The starts, sorted by final cost, against ``Δ = cost − best cost`` on a log
axis.  Δ is 0 for every start that reached the best optimum, so ``Δ + δ`` is drawn,
with ``δ`` a tenth of the success threshold (stated on the axis): the starts that found
the best sit on the floor, the threshold line is at ``threshold + δ``, and a plateau
is a local optimum found by many starts.
"""

import jax
import numpy as np

from .. import _validate
from .._status import Status
from . import _common

DEFAULT_RTOL = 1e-3  # multistart's default rtol for grouping fits into optima

_MARKERS = {
    Status.RUNNING: "s",
    Status.MAX_STEPS: "v",
    Status.NONFINITE_RESIDUAL: "X",
    Status.NONFINITE_JACOBIAN: "P",
    Status.STEP_FAILED: "D",
}


def success_threshold(ms, threshold=None, rtol=DEFAULT_RTOL):
    """The cost difference from the best below which a start counts as having found the
    best: ``threshold`` if given, else ``ms.threshold`` if recorded, else
    ``rtol·|best cost|`` (floored at round-off, ``eps·max(1, |best cost|)``)."""
    if threshold is None:
        threshold = getattr(ms, "threshold", None)
    cost = np.asarray(ms.results.cost)
    best = float(cost[0])
    if threshold is None:
        eps = float(np.finfo(cost.dtype).eps) if np.issubdtype(cost.dtype, np.floating) else float(np.finfo(np.float64).eps)
        threshold = max(rtol * abs(best), eps * max(1.0, abs(best)))
    threshold = float(threshold)
    if not (np.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"`threshold` must be a finite cost difference >= 0; got {threshold!r}.")
    return threshold


def waterfall(ms, *, threshold=None, rtol=DEFAULT_RTOL, ax=None):
    """The final costs of a multi-start, sorted, as offsets from the best (log axis).

    Args:
        ms: a :class:`~fitfleet.MultiStartResult` (its ``results`` are sorted best first).
        threshold: the success threshold, an absolute cost difference from the best:
            a start within it found the best optimum.  Default: what ``ms`` records
            (``ms.threshold``), else ``rtol·|best cost|``, multistart's relative grouping
            tolerance.  For a cost that is a negative log-likelihood, 1.92 (= χ²₁(95%)/2)
            is the usual absolute choice.
        rtol: the relative tolerance of the default threshold.
        ax: the Axes to draw on; default a new figure.

    Returns:
        The Axes.  Starts whose fit did not converge are marked by status (legend); a
        start with a non-finite cost is drawn as a cross at the top edge.

    """
    ax = _common.new_axes(ax)
    cost = np.asarray(ms.results.cost, np.float64).ravel()
    status = np.asarray(ms.results.status).ravel()
    n = cost.size
    finite = np.isfinite(cost)
    if not finite.any():
        raise ValueError("no start has a finite cost: nothing to draw (see ms.results.message).")
    best = cost[finite].min()
    thr = success_threshold(ms, threshold, rtol)
    floor = max(thr, float(np.finfo(np.float64).tiny)) / 10
    rank = np.arange(1, n + 1)
    delta = np.where(finite, np.maximum(cost - best, 0.0), np.nan) + floor
    ok = (status >= Status.GTOL) & (status <= Status.XTOL)

    ax.plot(rank[finite], delta[finite], "-", color="0.6", lw=0.8, zorder=1)
    ax.plot(rank[ok & finite], delta[ok & finite], "o", ms=4, color="C0", label=f"converged ({int(np.sum(ok))})", zorder=2)
    for code in sorted(set(status[~ok].tolist())):
        pick = (status == code) & finite
        name = Status(code).name.lower() if code in Status._value2member_map_ else f"status {code}"
        if pick.any():
            marker = _MARKERS.get(code, "o")
            label = f"{name} ({int(np.sum(status == code))})"
            ax.plot(rank[pick], delta[pick], marker, ms=6, mfc="none", color="C3", label=label, zorder=3)
    if (~finite).any():
        top = ax.get_xaxis_transform()  # x in data, y in axes coordinates
        ax.plot(rank[~finite], np.full(int(np.sum(~finite)), 0.97), "x", color="C3", transform=top, clip_on=False,
                label=f"non-finite cost ({int(np.sum(~finite))})", zorder=3)  # fmt: skip
    found = int(np.sum(finite & (cost - best <= thr)))
    ax.axhline(thr + floor, color="k", ls="--", lw=1, label=f"threshold Δ = {thr:.3g}: {found}/{n} starts", zorder=0)
    ax.set_yscale("log")
    ax.set_xlim(0.5, n + 0.5)
    ax.set_xlabel("start (sorted by final cost)")
    ax.set_ylabel(f"cost − best + δ   (best {best:.6g}, δ = {floor:.2g})")
    ax.set_title("waterfall")
    ax.legend(fontsize="small", loc="best")
    return ax


def parameters(ms, *, n_best=20, names=None, lower=None, upper=None, log=None, ax=None):
    """The parameters of the best fits of a multi-start, one row per parameter.

    Each fit is a line through its parameters (darker: lower cost), the best fit in
    red on top; bounds are drawn as bars at the ends of each row.

    Args:
        ms: a :class:`~fitfleet.MultiStartResult`.
        n_best: how many of the best fits to draw (fits with a non-finite cost are
            left out).
        names: one name per flat parameter; default what the results record, else
            names from the structure of ``params`` (``p[i]``, dict keys).
        lower, upper: bounds to draw (scalars, flat arrays or pytrees like the
            parameters; ``±inf`` for none); default ``ms.lower``/``ms.upper`` if
            recorded, else none.  Typically the multistart box or the fit's bounds.
        log: bool or per parameter: draw ``log10`` of the parameter (positive
            parameters spanning decades); default the results' ``log_scale`` if recorded,
            else False.  Their names get a ``log10`` prefix.
        ax: the Axes to draw on; default a new figure.

    Returns:
        The Axes.
    """
    results = ms.results
    cost = np.asarray(results.cost, np.float64).ravel()
    leaves = jax.tree_util.tree_leaves(results.params)
    values = np.concatenate([np.asarray(leaf, np.float64).reshape(cost.size, -1) for leaf in leaves], axis=1)
    n = values.shape[1]
    template = _common.take(results.params, 0)
    names = _common.param_names(names, template, ms, results)
    if log is None:
        log = getattr(results, "log_scale", None)
    log = _validate.flat(False if log is None else log, n, template, "log", kind=bool)
    bounds = [_bound(v, ms, attr, template, n) for v, attr in ((lower, "lower"), (upper, "upper"))]
    if not (isinstance(n_best, (int, np.integer)) and n_best >= 1):
        raise ValueError(f"`n_best` must be a positive int; got {n_best!r}.")

    keep = np.flatnonzero(np.isfinite(cost) & np.all(np.isfinite(values), axis=1))[:n_best]
    if keep.size == 0:
        raise ValueError("no start has finite parameters and cost: nothing to draw.")
    if np.any(log & np.any(values[keep] <= 0, axis=0)):
        raise ValueError("`log` is set for a parameter that is not positive in the fits drawn.")
    shown = np.where(log, np.log10(np.where(log, np.abs(values[keep]), 1.0)), values[keep])
    ax = _common.new_axes(ax, figsize=(6.0, 1.8 + 0.45 * n))
    import matplotlib

    rows = np.arange(n)
    cmap = matplotlib.colormaps["Greys_r"]
    for rank in range(keep.size - 1, 0, -1):  # worst first: the better ones on top
        ax.plot(shown[rank], rows, "o-", ms=3, lw=0.8, color=cmap(0.75 * rank / max(keep.size - 1, 1)), zorder=2)
    ax.plot(shown[0], rows, "o-", ms=5, lw=1.5, color="C3", zorder=3, label=f"best fit (cost {cost[keep[0]]:.4g})")
    if keep.size > 1:
        ax.plot([], [], "o-", ms=3, lw=0.8, color=cmap(0.4), label=f"next {keep.size - 1} fits (darker: lower cost)")
    for side, b in zip(("lower", "upper"), bounds):
        with np.errstate(divide="ignore", invalid="ignore"):
            bv = np.where(log, np.log10(np.where(log & (b > 0), b, np.nan)), b)
        drawn = np.isfinite(bv)
        if drawn.any():
            ax.plot(bv[drawn], rows[drawn], "|", ms=16, mew=2, color="k", zorder=4, label="bounds" if side == "lower" else None)
    ax.set_yticks(rows, [f"log10 {s}" if lg else s for s, lg in zip(names, log)])
    ax.set_ylim(n - 0.5, -0.5)  # first parameter at the top
    ax.set_xlabel("parameter value" + (" (log10 where marked)" if log.any() else ""))
    drawable = int(np.sum(np.isfinite(cost) & np.all(np.isfinite(values), axis=1)))
    ax.set_title(f"parameters of all {keep.size} fits" if keep.size == drawable else f"parameters of the {keep.size} best fits")
    ax.legend(fontsize="small")
    return ax


def _bound(value, ms, attr, template, n):
    if value is None:
        value = getattr(ms, attr, None)
    if value is None:
        bounds = getattr(ms.results, "bounds", None)
        value = None if bounds is None else bounds[0 if attr == "lower" else 1]
    if value is None:
        return np.full(n, np.nan)
    b = _validate.flat(value, n, template, attr)
    return np.where(np.isinf(b), np.nan, b)
