"""The one result type of every fit, single or batched."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._status import MESSAGES, Status, is_success


class History(eqx.Module):
    """The path of a fit (``history=`` in :func:`least_squares`, :func:`fit_batch`).

    Attributes:
        params: (L, n) the flat parameters (the order of ``Result.jac``'s columns) at
            the start (row 0) and after each step.
        cost: (L,) the cost at those points.
        damping: (L,) the method's damping after each step (Levenberg-Marquardt's λ;
            NaN for a method without one, and at the start).
        length: how many rows were recorded; later rows are NaN padding.
    For a batched Result each field has the leading batch axis.
    """

    params: Any
    cost: Any
    damping: Any
    length: Any

    @classmethod
    def empty(cls, rows, n, dtype):
        nan = lambda *shape: jnp.full(shape, jnp.nan, dtype)  # noqa: E731
        return cls(nan(rows, n), nan(rows), nan(rows), jnp.zeros((), jnp.int32))

    def record(self, row, params, cost, damping):
        """Row ``row`` set to this point; rows past the end are dropped."""
        put = lambda buf, value: buf.at[row].set(jnp.asarray(value, buf.dtype), mode="drop")  # noqa: E731
        rows = self.cost.shape[0]
        return History(put(self.params, params), put(self.cost, cost), put(self.damping, damping), jnp.minimum(row + 1, rows).astype(jnp.int32))


class Result(eqx.Module):
    """The outcome of a fit.

    For a batch or multi-start run every field has a leading batch axis.

    Attributes:
        params: the fitted parameters, same pytree structure as ``x0``.
        cost: ½‖r‖² at ``params``.
        residual: the residual at ``params``, flattened to a vector of length m.
        jac: the Jacobian (m, n) at ``params`` with respect to the flattened parameters,
            in the order of ``jax.flatten_util.ravel_pytree(params)``.
        grad: the gradient Jᵀr of the cost (n,), same ordering.
        status: integer :class:`Status` code; ``success`` and ``message`` derive from it.
        n_steps: solver iterations (each proposes one trial point).
        n_fev: residual evaluations at trial points (the residual a Jacobian evaluation
            yields with it is not counted again).
        n_jev: Jacobian evaluations the method needs: one at the start and one per
            accepted point, plus one at the solution when bounds or a first-order method
            require it in the user's parameters.  The same in :func:`fit_batch` and
            :func:`multistart` as for the fit alone (a batch may evaluate more, where
            under ``vmap`` skipping one saves nothing; those are not counted).
        loss, f_scale: the robust loss the fit minimised (``cost`` is that loss), which
            :func:`uncertainty` and :func:`covariance` use unless told otherwise.
        sigma: the ``sigma`` the residual was whitened by (standard deviations (m,) or a
            covariance (m, m); ``None`` for none).
        names: a name per flat parameter, in the order of ``jac``'s columns (``"vmax"``,
            ``"A[1]"``, ``"p[0]"``); ``order``: the same parameters in the user's own
            order (a dict's keys as written), for display.
        bounds: ``(lower, upper)``, flat tuples on the parameters' own scale, or
            ``None``; ``log_scale``: a flat tuple of bools, or ``None`` for none.  With
            ``sigma``, ``loss`` and ``f_scale`` they let :func:`uncertainty`,
            :func:`profile` and the plots analyse the fit without being told again.
        history: the fit's path, a :class:`History` (``history=`` on), else None.

    Example:
        >>> import jax.numpy as jnp
        >>> import fitfleet as ff
        >>> res = ff.least_squares(lambda p: p - jnp.array([1.0, 2.0]), jnp.zeros(2))
        >>> res.params.round(3).tolist(), bool(res.success)
        ([1.0, 2.0], True)
    """

    params: Any
    cost: Any
    residual: Any
    jac: Any
    grad: Any
    status: Any
    n_steps: Any
    n_fev: Any
    n_jev: Any
    loss: str = eqx.field(static=True, default="linear")
    f_scale: Any = None  # None: 1 (a Result built by hand)
    sigma: Any = None
    names: tuple = eqx.field(static=True, default=None)
    order: tuple = eqx.field(static=True, default=None)
    bounds: Any = eqx.field(static=True, default=None)
    log_scale: Any = eqx.field(static=True, default=None)
    history: Any = None

    @property
    def success(self):
        """True where a tolerance was met (``status`` in GTOL, FTOL, XTOL); traceable."""
        return is_success(self.status)

    @property
    def message(self):
        """Human text for ``status``: a string, or a nested list of strings for a batch."""
        codes = np.asarray(self.status)
        if codes.ndim == 0:
            return MESSAGES[Status(int(codes))]
        return np.vectorize(lambda c: MESSAGES[Status(int(c))], otypes=[object])(codes).tolist()

    def flat_names(self):
        """The names of the flat parameters (``jac``'s columns); ``p[i]`` when unrecorded."""
        if self.names is not None:
            return list(self.names)
        n = np.shape(self.jac)[-1] if self.jac is not None else np.size(self.params)
        return [f"p[{i}]" for i in range(n)]

    def display_order(self):
        """Flat parameter indices in the user's order."""
        return list(self.order) if self.order is not None else list(range(len(self.flat_names())))

    def summary(self, *, absolute_sigma=False, level=0.95, min_correlation=0.1):
        """A report of one fit, after lmfit's ``fit_report``: the status, χ², reduced
        χ², AIC and BIC, the parameters (user's names, user's order) with standard
        errors, relative errors and Wald intervals, the correlations above
        ``min_correlation``, and warnings (a failed fit, undetermined or practically
        non-identifiable parameters, parameters on a bound, redundant pairs).

        ``absolute_sigma`` and ``level`` are :func:`uncertainty`'s.

        Example:
            >>> import jax.numpy as jnp
            >>> import fitfleet as ff
            >>> S = jnp.array([0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
            >>> v = jnp.array([2.4, 4.1, 6.1, 7.6, 9.1, 9.6])
            >>> res = ff.least_squares(lambda p, S, v: p["vmax"] * S / (p["km"] + S) - v, {"vmax": 5.0, "km": 1.0}, (S, v))
            >>> print(res.summary())
            [[Fit Statistics]]
                status             = success (...
                steps              = ...
                data points        = 6
                variables          = 2
                chi-square         = 0.0967727
                reduced chi-square = 0.0241932
                Akaike info crit   = -20.7629
                Bayesian info crit = -21.1794
            [[Variables]] (stderr, relative error and 95% Wald interval, Student t, 4 dof)
                param      estimate        stderr      rel.err     95% lower     95% upper
                vmax          10.71         0.169        1.58%         10.25         11.18
                km            1.596       0.08612        5.39%         1.357         1.835
            [[Correlations]] (unreported correlations are < 0.100 in magnitude)
                C(vmax, km) = +0.8169
        """
        from ._report import result_summary

        return result_summary(self, absolute_sigma, level, min_correlation)

    def __repr__(self):
        try:
            codes = np.asarray(self.status)
            cost = np.asarray(self.cost, np.float64)
            flat = np.concatenate([np.reshape(np.asarray(leaf, np.float64), (*codes.shape, -1)) for leaf in jax.tree_util.tree_leaves(self.params)], -1)
        except Exception:  # traced values: no numbers to show
            return eqx.Module.__repr__(self)
        names = self.flat_names()
        if codes.ndim == 0:
            verdict = "success" if is_success(codes) else "failure"
            lines = [
                f"Result: {verdict}, status {int(codes)} ({MESSAGES[Status(int(codes))]})",
                f"  cost = {float(cost):.6g}   n_steps = {int(self.n_steps)}, n_fev = {int(self.n_fev)}, n_jev = {int(self.n_jev)}",
            ]
            shown = self.display_order()[:_MAX_SHOWN]
            lines.append("  params: " + ", ".join(f"{names[i]} = {flat[i]:.6g}" for i in shown) + (", ..." if len(names) > _MAX_SHOWN else ""))
            return "\n".join(lines)
        counts = {Status(int(c)): int(k) for c, k in zip(*np.unique(codes, return_counts=True))}
        tally = ", ".join(f"{k} {s.name.lower()}" for s, k in counts.items())
        finite = cost[np.isfinite(cost)]
        spread = (
            f"min {finite.min():.4g}, median {np.median(finite):.4g}, max {finite.max():.4g}" if finite.size else "none finite"
        )
        return "\n".join(
            [
                f"Result of {codes.size} fits{' ' + str(codes.shape) if codes.ndim > 1 else ''}: "
                f"{int(np.sum(is_success(codes)))} succeeded ({tally})",
                f"  cost: {spread}",
                f"  params: {len(names)} per fit ({', '.join(names[i] for i in self.display_order()[:_MAX_SHOWN])}"
                f"{', ...' if len(names) > _MAX_SHOWN else ''})",
            ]
        )

    __str__ = __repr__


_MAX_SHOWN = 12  # parameters listed by repr
