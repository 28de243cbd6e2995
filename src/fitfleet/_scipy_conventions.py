"""scipy's conventions, translated: ``curve_fit``'s inputs (the number of parameters
from ``f``'s signature, the bounds pair, the default ``p0``, ``nan_policy``, scipy's
keyword arguments) and its outputs (``infodict``'s MINPACK fields, ``ier``)."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate, _xla
from ._status import Status

IGNORED = ("diff_step", "epsfcn", "verbose")  # finite-difference and printing options
PASSED = (
    "ftol", "xtol", "gtol", "loss", "f_scale", "log_scale", "max_steps", "initial_damping", "acceleration", "secant",
    "subspace", "learning_rate", "x_scale",
)  # fmt: skip


def n_params(f):
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError) as e:
        raise ValueError("Unable to determine number of fit parameters: pass `p0`.") from e
    kinds = [p.kind for p in sig.parameters.values()]
    positional = [k for k in kinds if k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if inspect.Parameter.VAR_POSITIONAL in kinds or len(positional) < 2:
        raise ValueError("Unable to determine number of fit parameters from f's signature: pass `p0`.")
    return len(positional) - 1


def bounds_pair(bounds, n):
    lb, ub = _validate.bounds_pair(bounds)
    try:
        lb = np.broadcast_to(np.asarray(lb, float), (n,))
        ub = np.broadcast_to(np.asarray(ub, float), (n,))
    except ValueError as e:
        raise ValueError(f"`bounds`: each of lower and upper must be a scalar or have {n} entries.") from e
    return lb, ub


def initial_point(lb, ub):
    """scipy's ``_initialize_feasible``: ones, moved inside one- or two-sided bounds."""
    lo, hi = np.isfinite(lb), np.isfinite(ub)
    lb0, ub0 = np.where(lo, lb, 0.0), np.where(hi, ub, 0.0)
    p0 = np.where(lo & hi, 0.5 * (lb0 + ub0), 1.0)
    p0 = np.where(lo & ~hi, lb0 + 1, p0)
    return np.where(~lo & hi, ub0 - 1, p0)


def as_x(xdata, dtype):
    """As scipy: lists, tuples and numpy arrays become float arrays, and so do objects
    that convert themselves (a pandas Series); anything else (a dict, a JAX array) is
    f's business."""
    xdata = _validate.array_like(xdata)
    return jnp.asarray(xdata, dtype) if isinstance(xdata, (list, tuple, np.ndarray)) else xdata


def as_data(a, name):
    if isinstance(a, jax.core.Tracer) or isinstance(a, jax.Array):
        arr = a
    else:
        try:
            arr = jnp.asarray(a)
        except TypeError as e:
            raise TypeError(f"`{name}` must be an array; got {type(a).__name__}.") from e
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    return arr


def check_finite(tree, name, why, nan_only=False):
    for leaf in jax.tree_util.tree_leaves(tree):
        if _validate.is_traced(leaf):
            continue
        arr = np.asarray(leaf)
        if not np.issubdtype(arr.dtype, np.number):
            continue
        if nan_only and np.any(np.isnan(arr)):
            raise ValueError(f"`{name}` contains NaN values {why}.")
        if not nan_only and not np.all(np.isfinite(arr)):
            raise ValueError(f"`{name}` must not contain infs or NaNs {why}.")


def scipy_options(kwargs):
    """scipy's keyword arguments -> least_squares options."""
    opts = {}
    for key, value in kwargs.items():
        if key in PASSED:
            opts[key] = value
        elif key in ("maxfev", "max_nfev"):
            if value is not None:
                opts["max_nfev"] = value
        elif key not in IGNORED:
            raise TypeError(
                f"curve_fit got an unsupported keyword argument {key!r}. Supported: "
                f"{', '.join(PASSED + ('maxfev', 'max_nfev') + IGNORED)}."
            )
    return opts


def omit_nan(xdata, y, sigma):
    """scipy's ``nan_policy="omit"``: drop the points where ``ydata`` or ``xdata`` (its
    last axis indexing the points) is NaN, and their ``sigma`` entries."""
    if _validate.any_traced((xdata, y, sigma)):
        raise ValueError("nan_policy='omit' changes the data's shape, so it cannot run under jit/vmap: drop the NaN points first.")
    yn = np.asarray(y)
    if yn.ndim != 1:
        raise ValueError(f"nan_policy='omit' needs 1-D ydata; got shape {yn.shape}.")
    has_nan = np.isnan(yn)
    xn = np.asarray(xdata) if isinstance(xdata, (list, tuple, np.ndarray, jax.Array)) else None
    if xn is not None and np.issubdtype(xn.dtype, np.number):
        x_nan = np.isnan(xn)
        has_nan |= x_nan.any(axis=tuple(range(x_nan.ndim - 1))) if x_nan.ndim else False
        xdata = xn[..., ~has_nan]
    if sigma is not None:
        s = np.asarray(sigma)
        sigma = s[~has_nan] if s.ndim == 1 and s.size > 1 else s[np.ix_(~has_nan, ~has_nan)] if s.ndim == 2 else s
    return xdata, jnp.asarray(yn[~has_nan]), sigma


def infodict(res):
    fjac, ipvt, qtf = minpack_qr(res.jac, res.residual)
    return {
        "nfev": res.n_fev, "njev": res.n_jev, "nit": res.n_steps, "fvec": res.residual, "fjac": fjac, "ipvt": ipvt,
        "qtf": qtf, "result": res,
    }  # fmt: skip


@_xla.filter_jit
def minpack_qr(jac, residual):
    """MINPACK's ``fjac``, ``ipvt``, ``qtf`` (see the module docstring), batched too."""

    def one(J, r):
        m, n = J.shape
        q, R, perm = jax.scipy.linalg.qr(J, mode="economic", pivoting=True)
        fjac = jnp.zeros((n, m), J.dtype).at[:, : R.shape[0]].set(R.T)
        return fjac, perm.astype(jnp.int32), q.T @ r

    for _ in range(jac.ndim - 2):
        one = jax.vmap(one)
    return one(jac, residual)


def ier(status):
    """fitfleet status -> scipy least_squares' status: 1, 2, 3 success, 0 budget, -1 failure."""
    ier = jnp.where(status == Status.MAX_STEPS, 0, -1)
    return jnp.where((status >= Status.GTOL) & (status <= Status.XTOL), status, ier).astype(jnp.int32)
