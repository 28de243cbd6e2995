"""The one result type of every fit, single or batched."""

from typing import Any

import equinox as eqx
import numpy as np

from ._status import MESSAGES, Status, is_success


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
        n_jev: Jacobian evaluations: one per accepted point, plus one at the solution
            when bounds or a first-order method require it in the user's parameters.
            In :func:`fit_batch` and :func:`multistart`, Levenberg-Marquardt evaluates
            the Jacobian with the residual at every trial point (under ``vmap`` skipping
            it saves nothing): there it is one at the start, one per step and one for
            the final ``jac`` (the engine does not keep J in its loop).
        loss, f_scale: the robust loss the fit minimised (``cost`` is that loss), which
            :func:`uncertainty` and :func:`covariance` use unless told otherwise.

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
