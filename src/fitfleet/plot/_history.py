"""An optimiser's path: cost, parameters and damping per step, and paths drawn over a
two-parameter slice of the cost landscape.

Both read ``Result.history``: None, or an object with ``params`` (L, n) (the flat user
parameters at the start, row 0, and after each step), ``cost`` (L,), ``damping`` (L,)
(NaN for a method without one) and ``length`` (rows from ``length`` on are padding);
a batched Result has a leading batch axis on each.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .. import _xla
from .._losses import robust_cost
from .._problem import Problem, whitening
from . import _common


def _member(res, member):
    if member is not None and np.ndim(member) != 0:
        raise ValueError("`member` must be one int here.")
    return _common.members(_common.batch_size(res), member, several=False)[0]


def _path(res, i=None):
    """(params (L, n), cost (L,), damping (L,)) of fit ``i``'s history, padding dropped."""
    h = getattr(res, "history", None)
    if h is None:
        return None
    params, cost, damping = (np.asarray(_common.take(getattr(h, f), i), np.float64) for f in ("params", "cost", "damping"))
    length = int(np.asarray(_common.take(h.length, i)))
    params = params.reshape(params.shape[0], -1)
    return params[:length], cost[:length], damping[:length]


def history(res, *, member=None, names=None, fig=None):
    """Cost and parameters at each step of a fit (and the damping, where the method has one).

    Args:
        res: a :class:`~fitfleet.Result` fitted with ``history`` on (one fit, or a batch
            with ``member``).
        member: for a batched ``res``, the fit to draw.
        names: one name per flat parameter; default what ``res`` records, else from the
            structure of ``params``.
        fig: the Figure to draw in; default a new one.

    Returns:
        The Figure: the cost per step (log axis; symlog if it reaches 0), the parameters
        per step, and the damping per step (log) if any is recorded.
    """
    i = _member(res, member)
    path = _path(res, i)
    if path is None:
        raise ValueError("`res.history` is None: fit with history=True to record the path.")
    params, cost, damping = path
    if cost.size == 0:
        raise ValueError("the history is empty (length 0).")
    names = _common.param_names(names, _common.take(res.params, i), res)
    has_damping = bool(np.any(np.isfinite(damping)))
    fig = _common.new_figure(fig, (6.0, 6.5 if has_damping else 5.0))
    axes = fig.subplots(3 if has_damping else 2, 1, sharex=True)
    steps = np.arange(cost.size)

    ax = axes[0]
    ax.plot(steps, cost, ".-", color="k", ms=3, lw=1)
    positive = cost[np.isfinite(cost) & (cost > 0)]
    if positive.size == np.sum(np.isfinite(cost)) and positive.size:
        ax.set_yscale("log")
    elif positive.size:
        ax.set_yscale("symlog", linthresh=float(positive.min()))
    ax.set_ylabel("cost")
    ax.set_title(f"{cost.size - 1} steps: cost {cost[0]:.4g} → {cost[-1]:.4g}", fontsize="medium")

    ax = axes[1]
    for k, name in enumerate(names):
        ax.plot(steps, params[:, k], ".-", ms=3, lw=1, label=name)
    ax.set_ylabel("parameters")
    ax.legend(fontsize="x-small", ncols=max(1, len(names) // 8))

    if has_damping:
        ax = axes[2]
        ax.plot(steps, damping, ".-", color="C4", ms=3, lw=1)
        if np.all(damping[np.isfinite(damping)] > 0):
            ax.set_yscale("log")
        ax.set_ylabel("damping")
    axes[-1].set_xlabel("step")
    return fig


def landscape(fun, args, res, *, i=0, j=1, labels=None, names=None, limits=None, at=None, n_grid=80, levels=30, ax=None):
    """Optimiser paths over the cost ``½‖fun(p, *args)‖²`` on a grid of two parameters.

    Args:
        fun, args: the residual and its extra arguments, as for the fit.  The cost drawn
            is the fit's: ``fun`` whitened by the ``sigma`` and under the ``loss`` the
            first Result recorded.
        res: a :class:`~fitfleet.Result` (one fit) or a list of them.  Each is drawn as
            its path from ``res.history`` if recorded, else as its final point.
        i, j: the flat indices of the parameters on the horizontal and vertical axes.
        labels: one legend label per Result; default ``fit 0``, ``fit 1``...
        names: one name per flat parameter (for the axis labels).
        limits: ``((lo_i, hi_i), (lo_j, hi_j))``; default: the paths and end points with
            a margin.
        at: the flat parameters the other parameters are held at; default the first
            Result's.
        n_grid: grid points per axis (the cost is evaluated at ``n_grid²`` points, in
            one vmapped call).
        levels: number of contour levels (of log10 cost).
        ax: the Axes to draw on; default a new figure.

    Returns:
        The Axes: filled contours of log10 cost (colour bar), each path with its start
        (circle) and end (star).
    """
    results = list(res) if isinstance(res, (list, tuple)) else [res]
    if not results:
        raise ValueError("`res` is empty: pass a Result or a list of them.")
    if not isinstance(args, tuple):
        raise TypeError(f"`args` must be a tuple of extra arguments to fun; got {type(args).__name__}.")
    for r in results:
        if _common.batch_size(r) is not None:
            raise ValueError("`res` holds a batched Result: pass single fits (index the batch first).")
    labels = [f"fit {k}" for k in range(len(results))] if labels is None else [str(s) for s in labels]
    if len(labels) != len(results):
        raise ValueError(f"`labels` has {len(labels)} entries for {len(results)} results.")
    base = ravel_pytree(results[0].params)[0]
    n = base.shape[0]
    if not (0 <= i < n and 0 <= j < n and i != j):
        raise ValueError(f"`i` and `j` must be two different flat parameter indices in [0, {n}); got {i}, {j}.")
    names = _common.param_names(names, results[0].params, results[0])
    if at is not None:
        base = jnp.asarray(at, base.dtype).ravel()
        if base.shape != (n,):
            raise ValueError(f"`at` must hold the {n} flat parameters; got shape {np.shape(at)}.")

    paths = []
    for r in results:
        path = _path(r)
        end = _common.flat(r.params)
        paths.append((path[0] if path is not None and len(path[0]) else end[None], end, path is not None))
    a_lim, b_lim = _limits(limits, np.concatenate([p for p, _, _ in paths]), i, j)
    a = np.linspace(*a_lim, int(n_grid))
    b = np.linspace(*b_lim, int(n_grid))
    grid = np.tile(np.asarray(base, np.float64), (a.size * b.size, 1))
    aa, bb = np.meshgrid(a, b)
    grid[:, i], grid[:, j] = aa.ravel(), bb.ravel()
    first = results[0]
    f_scale = getattr(first, "f_scale", None)
    recorded = (getattr(first, "sigma", None), getattr(first, "loss", "linear"), 1.0 if f_scale is None else f_scale)
    grid = jnp.asarray(grid, base.dtype)
    cost = np.asarray(_grid_cost(fun, first.params, grid, args, *recorded), np.float64).reshape(aa.shape)

    ax = _common.new_axes(ax, figsize=(6.0, 4.8))
    finite = cost[np.isfinite(cost)]
    tiny = max(float(finite.max()) * 1e-16, np.finfo(np.float64).tiny) if finite.size else 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.ma.masked_invalid(np.log10(np.maximum(cost, tiny)))
    filled = ax.contourf(aa, bb, z, levels=levels, cmap="viridis")
    ax.contour(aa, bb, z, levels=filled.levels, colors="k", linewidths=0.3, alpha=0.5)
    ax.figure.colorbar(filled, ax=ax, label="log10 cost")
    colors = ["C3", "C1", "w", "C6", "C9", "C2", "C5", "C4"]
    for k, ((path, end, recorded), label) in enumerate(zip(paths, labels)):
        color = colors[k % len(colors)]
        if recorded:
            ax.plot(path[:, i], path[:, j], ".-", ms=2.5, lw=1.2, color=color, label=f"{label} ({len(path) - 1} steps)")
            ax.plot(path[0, i], path[0, j], "o", ms=7, mfc="none", mew=1.5, color=color)
        else:
            ax.plot([], [], "-", color=color, label=f"{label} (no history)")
        ax.plot(end[i], end[j], "*", ms=12, mec="k", mew=0.5, color=color)
    ax.set_xlim(a_lim)
    ax.set_ylim(b_lim)
    ax.set_xlabel(names[i])
    ax.set_ylabel(names[j])
    ax.legend(fontsize="small")
    return ax


def _limits(limits, points, i, j):
    if limits is not None:
        try:
            (a0, a1), (b0, b1) = limits
        except (TypeError, ValueError):
            raise ValueError("`limits` must be ((lo_i, hi_i), (lo_j, hi_j)).") from None
        return (float(a0), float(a1)), (float(b0), float(b1))
    out = []
    for col in (i, j):
        v = points[:, col][np.isfinite(points[:, col])]
        lo, hi = (float(v.min()), float(v.max())) if v.size else (-1.0, 1.0)
        pad = 0.15 * (hi - lo) if hi > lo else 0.5 * max(abs(lo), 1.0)
        out.append((lo - pad, hi + pad))
    return out


@_xla.filter_jit
def _grid_cost(fun, template, grid, args, sigma, loss, f_scale):
    unravel = ravel_pytree(template)[1]
    whiten = Problem(fun=fun, jac="fwd", unravel=unravel, args=args, sigma=whitening(sigma)).whiten

    def cost(q):
        return robust_cost(loss, f_scale, whiten(jnp.ravel(fun(unravel(q), *args)).astype(q.dtype)))

    return jax.vmap(cost)(grid)
