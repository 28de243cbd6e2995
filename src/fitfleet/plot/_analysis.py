"""Plots of what a fit determines: profile likelihoods, the sloppiness spectrum of JᵀJ
and the correlation matrix."""

import math

import numpy as np

from .._result import Result
from .._uncertainty import uncertainty
from . import _common


def profile(p, *, names=None, ncols=3, ax=None, fig=None):
    """Profile likelihoods: the statistic Δ against the parameter value, the threshold
    χ²₁(level) and the likelihood-ratio interval.

    Args:
        p: a :class:`~fitfleet.Profile`, or a list or dict of them (one panel each; a
            dict's keys are the panel labels).
        names: one name per flat parameter (a profile's label is ``names[p.index]``), or
            a string for a single profile; default ``p[i]``.
        ncols: panels per row for several profiles.
        ax: the Axes for one profile; fig: the Figure for several.  Default: new.

    Returns:
        The Axes (one profile) or the Figure (a list or dict).  In each panel: the
        profile (crosses where a refit did not converge), the estimate at Δ = 0, the
        threshold (dashed), and the interval shaded between vertical lines at its
        ends; an end the grid did not reach (``∓inf``) is an arrow along the threshold
        labelled "open".  The vertical axis reaches about 4.5 thresholds at most.
    """
    if isinstance(p, dict):
        items = list(p.items())
    elif isinstance(p, (list, tuple)):
        items = [(None, q) for q in p]
    else:
        return _profile_panel(_common.new_axes(ax), p, _label(None, p, names))
    if ax is not None:
        raise TypeError("several profiles are drawn in a grid of panels: pass `fig`, not `ax`.")
    if not items:
        raise ValueError("`p` is empty: pass a Profile, or a list or dict of them.")
    ncols = max(1, min(int(ncols), len(items)))
    nrows = math.ceil(len(items) / ncols)
    fig = _common.new_figure(fig, (3.6 * ncols, 3.0 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for panel, (key, q) in zip(axes, items):
        _profile_panel(panel, q, _label(key, q, names))
    for panel in axes[len(items) :]:
        panel.set_visible(False)
    return fig


def _label(key, p, names):
    if key is not None:
        return str(key)
    if isinstance(names, str):
        return names
    recorded = names if names is not None else getattr(p, "names", None)
    if recorded is not None:
        if not 0 <= p.index < len(recorded):
            raise ValueError(f"`names` has {len(recorded)} entries; the profile is of flat parameter {p.index}.")
        return str(recorded[p.index])
    return f"p[{p.index}]"


def _profile_panel(ax, p, name):
    for field in ("values", "statistic", "ci", "threshold"):
        if not hasattr(p, field):
            raise TypeError(f"`p` must be a fitfleet.Profile (or a list/dict of them); got {type(p).__name__}.")
    values, stat = np.asarray(p.values, np.float64), np.asarray(p.statistic, np.float64)
    if values.ndim != 1:
        raise ValueError("a batched Profile (from jax.vmap): index one profile first, e.g. jax.tree.map(lambda a: a[i], p).")
    success = np.asarray(p.success, bool)
    thr, (lo, hi) = float(p.threshold), np.asarray(p.ci, np.float64)
    estimate = float(p.estimate)
    pct = f"{p.level:.0%}"

    ax.plot(values, stat, "o-", ms=3, color="C0", label="profile")
    if (~success).any():
        ax.plot(values[~success], stat[~success], "x", ms=7, color="C3", label="refit not converged")
    ax.plot([estimate], [0.0], "*", ms=10, color="C3", zorder=4, label=f"estimate {estimate:.4g}")
    ax.axhline(thr, color="k", ls="--", lw=1, label=f"χ²₁({pct}) = {thr:.3g}")

    span = values.max() - values.min() if values.size > 1 else max(abs(estimate), 1.0)
    left = lo if np.isfinite(lo) else min(values.min(), estimate)
    right = hi if np.isfinite(hi) else max(values.max(), estimate)
    ax.axvspan(left, right, color="C2", alpha=0.15, lw=0, label=f"{pct} interval [{lo:.4g}, {hi:.4g}]")
    for end, outward in ((lo, -1), (hi, 1)):
        if np.isfinite(end):
            ax.axvline(end, color="C2", lw=1.2)
        else:
            tip = left if outward < 0 else right
            ax.annotate("open", xy=(tip, thr), xytext=(tip - outward * 0.25 * span, thr), color="C2", ha="center", va="center",
                        bbox=dict(fc="w", ec="none", pad=1), arrowprops=dict(arrowstyle="->", color="C2", lw=1.5))  # fmt: skip
    finite = stat[np.isfinite(stat)]
    # Up to 3 thresholds (what matters is near the threshold; a steep side would squash
    # it), plus headroom for the legend.
    top = 1.5 * max(1.5 * thr, min(float(finite.max()) if finite.size else 0.0, 3 * thr))
    ax.set_ylim(min(0.0, float(finite.min()) if finite.size else 0.0) - 0.03 * top, top)
    ax.set_xlabel(name)
    ax.set_ylabel("profile statistic Δ")
    ax.legend(fontsize="x-small", loc="upper center")
    return ax


def spectrum(ident, *, names=None, member=None, fig=None):
    """The sloppiness spectrum: eigenvalues of JᵀJ on a log axis beside the composition of
    each eigen-direction.

    Args:
        ident: an :class:`~fitfleet.Identifiability` (one fit, or a batch with ``member``).
        names: one name per flat parameter; default what ``ident`` records, else ``p[i]``.
        member: for a batched ``ident``, the fit to draw.
        fig: the Figure to draw in; default a new one.

    Returns:
        The Figure with two panels: the eigenvalue ladder (a rung per eigenvalue,
        largest at the top; undetermined directions red; the dashed line is
        ``ident.threshold``, drawn where it is within 4 decades of the eigenvalues, else
        stated in the title; zero eigenvalues sit at the bottom, dotted), and a heat-map
        of ``V[j, k]²``, the share of parameter ``j`` in eigen-direction ``k`` (each row
        sums to 1).
    """
    lam = np.asarray(ident.eigenvalues, np.float64)
    size = None if lam.ndim == 1 else lam.shape[0]
    if lam.ndim > 2:
        raise ValueError("an Identifiability with several batch axes: index it down to one fit first.")
    (i,) = _one_member(size, member, "ident")
    lam = lam if i is None else lam[i]
    vecs = np.asarray(_common.take(ident.eigenvectors, i), np.float64)
    undetermined = np.asarray(_common.take(ident.undetermined, i), bool)
    threshold = float(np.asarray(_common.take(ident.threshold, i)))
    n = lam.size
    names = _common.resolve_names(names, n, ident) or [f"p[{j}]" for j in range(n)]

    fig = _common.new_figure(fig, (4.5 + 0.5 * n, 3.0 + 0.3 * n))
    ladder, heat = fig.subplots(1, 2, gridspec_kw=dict(width_ratios=[1.0, max(1.5, 0.5 * n)]))
    positive = lam[lam > 0]
    lowest = positive.min() if positive.size else 1.0
    floor = (min(lowest, threshold) if threshold > 0 else lowest) / 100
    shown = np.where(lam > 0, lam, floor)
    for k in range(n):
        style = dict(color="C3" if undetermined[k] else "C0", lw=2, ls=":" if lam[k] <= 0 else "-")
        ladder.plot([0.1, 0.9], [shown[k], shown[k]], **style)
    # The numerical threshold is usually many decades below every eigenvalue: drawn only
    # where it is near them (else it would squash the ladder), else stated.
    near = threshold > 0 and (undetermined.any() or not positive.size or threshold >= 1e-4 * positive.min())
    if near:
        ladder.axhline(threshold, color="k", ls="--", lw=1)
    ladder.set_yscale("log")
    ladder.set_xlim(0, 1)
    ladder.set_xticks([])
    scale = "log-parameters" if getattr(ident, "log_params", False) else "parameters"
    ladder.set_ylabel("eigenvalue of JᵀJ")
    cond = lam[0] / lam[-1] if lam[-1] > 0 else np.inf
    note = "" if near else f"\n(undetermined below {threshold:.1g})"
    ladder.set_title(f"w.r.t. {scale}\ncondition number {cond:.3g}{note}", fontsize="medium")

    image = heat.imshow(vecs.T**2, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    _name_ticks(heat, names)
    heat.set_yticks(np.arange(n), [f"λ{k + 1} = {lam[k]:.2g}" for k in range(n)])
    for label, bad in zip(heat.get_yticklabels(), undetermined):
        if bad:
            label.set_color("C3")
    heat.set_title("eigenvector composition", fontsize="medium")
    fig.colorbar(image, ax=heat, label="V[j, k]²")
    return fig


def correlation(u, *, names=None, member=None, annotate=None, ax=None):
    """The correlation matrix of the parameters as a heat-map on [-1, 1].

    Args:
        u: an :class:`~fitfleet.Uncertainty`, or a :class:`~fitfleet.Result` (then
            ``fitfleet.uncertainty(u)`` is used, and the names come from its params).
        names: one name per flat parameter; default what ``u`` records, else from the
            Result's params, else ``p[i]``.
        member: for a batched ``u``, the fit to draw.
        annotate: write the coefficients in the cells; default for up to 12 parameters.
        ax: the Axes to draw on; default a new figure.

    Returns:
        The Axes.  Entries that are NaN (a parameter with zero standard error) are blank.
    """
    params = None
    if isinstance(u, Result):
        params = u.params
        u = uncertainty(u)
    corr = np.asarray(u.corr, np.float64)
    if corr.ndim > 3:
        raise ValueError("an Uncertainty with several batch axes: index it down to one fit first.")
    (i,) = _one_member(None if corr.ndim == 2 else corr.shape[0], member, "u")
    corr = corr if i is None else corr[i]
    n = corr.shape[0]
    names = _common.resolve_names(names, n, u)
    if names is None:
        names = _common.default_names(_common.take(params, i)) if params is not None else [f"p[{j}]" for j in range(n)]

    ax = _common.new_axes(ax, figsize=(2.5 + 0.6 * n, 2.0 + 0.55 * n))
    image = ax.imshow(np.ma.masked_invalid(corr), cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
    _name_ticks(ax, names)
    ax.set_yticks(np.arange(n), names)
    if annotate is None:
        annotate = n <= 12
    if annotate:
        for (r, c), v in np.ndenumerate(corr):
            if np.isfinite(v):
                text = f"{v:.4f}" if 0.995 <= abs(v) < 1 - 1e-6 else f"{v:.2f}"  # 0.9987 is no "1.00"
                ax.text(c, r, text, ha="center", va="center", fontsize="x-small", color="w" if abs(v) > 0.6 else "k")
    ax.figure.colorbar(image, ax=ax, label="correlation")
    ax.set_title("parameter correlations")
    return ax


def _name_ticks(ax, names):
    long = max(map(len, names)) > 3
    ax.set_xticks(np.arange(len(names)), names, rotation=45 if long else 0, ha="right" if long else "center")


def _one_member(size, member, what):
    if member is not None and np.ndim(member) != 0:
        raise ValueError("`member` must be one int here: draw each fit in its own figure.")
    return _common.members(size, member, what, several=False)
