"""Every check of user input, in one layer, before anything is traced or compiled.

Concrete values are checked with numpy (an eager JAX operation would compile a small
program per check); traced values (under the user's ``jit``/``vmap``/``grad``) cannot
be looked at and are trusted.  Every error names the argument and says how to fix it.
Entry points call these through ``_setup.prepare`` (and the batch and analysis front
doors for what is theirs alone); nothing below the front doors raises on user input.
"""

import numbers

import jax
import numpy as np

INT32_MAX = 2**31 - 1


def is_traced(x):
    return isinstance(x, jax.core.Tracer)


def any_traced(tree):
    """True when called under a JAX transformation of these inputs (jit, grad, vmap)."""
    return any(is_traced(leaf) for leaf in jax.tree_util.tree_leaves(tree))


# --------------------------------------------------------------------------- scalars


def real(name, value, *, positive=False, finite=True):
    """A real scalar ``>= 0`` (``> 0`` if ``positive``); returned unchanged."""
    if is_traced(value):
        return value
    arr = np.asarray(value)
    if arr.ndim != 0 or arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise TypeError(f"`{name}` must be a real number; got {value!r}.")
    if finite and not np.isfinite(arr):
        raise ValueError(f"`{name}` must be finite; got {value!r}.")
    if arr < 0 or (positive and not arr > 0):
        raise ValueError(f"`{name}` must be {'> 0' if positive else '>= 0'}; got {value!r}.")
    return value


def integer(name, value, *, minimum=0, maximum=INT32_MAX):
    """A whole number in ``[minimum, maximum]`` (checked before any cast: an int32
    option must not wrap), as a Python int; a traced value is returned unchanged."""
    if is_traced(value):
        return value
    arr = np.asarray(value)
    if arr.ndim != 0 or arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise TypeError(f"`{name}` must be a whole number; got {value!r}.")
    if not np.isfinite(arr) or arr != np.floor(arr):
        raise TypeError(f"`{name}` must be a whole number; got {value!r}.")
    number = int(arr)
    if not minimum <= number <= maximum:
        raise ValueError(f"`{name}` must be between {minimum} and {maximum}; got {number}.")
    return number


def boolean(name, value, allowed="True or False"):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"`{name}` must be {allowed}; got {value!r}.")


def random_key(name, key):
    """A ``jax.random`` key: ``None`` gives ``jax.random.key(0)``, a whole number
    ``n`` gives ``jax.random.key(n)`` (a seed, as numpy and scipy take), a key (new
    style, or the legacy ``PRNGKey`` array) is returned unchanged."""
    if key is None:
        return jax.random.key(0)
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        if not 0 <= key < 2**63:
            raise ValueError(f"`{name}`: a seed must be a whole number in [0, 2**63); got {key}.")
        return jax.random.key(int(key))
    if is_traced(key):
        return key
    if jax.dtypes.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key) and np.ndim(key) == 0:
        return key
    if getattr(key, "dtype", None) == np.uint32 and np.shape(key) == (2,):
        return key  # jax.random.PRNGKey(seed)
    raise TypeError(f"`{name}` must be a jax.random key (jax.random.key(seed)) or a whole-number seed; got {type(key).__name__} {key!r:.80}.")


def choice(name, value, choices):
    if isinstance(value, str) and value in choices:
        return value
    raise ValueError(f"`{name}` must be one of {tuple(choices)}; got {value!r}.")


def tolerances(ftol, xtol, gtol, fatol=0.0):
    """Each ``>= 0``; at least one of them positive, or nothing could stop a fit but its
    step budget (scipy refuses that too)."""
    for name, value in (("ftol", ftol), ("xtol", xtol), ("gtol", gtol), ("fatol", fatol)):
        real(name, value)
    concrete = [v for v in (ftol, xtol, gtol, fatol) if not is_traced(v)]
    if len(concrete) == 4 and all(float(v) == 0 for v in concrete):
        raise ValueError("`ftol`, `xtol`, `gtol` and `fatol` are all 0, so no test could end a fit: set at least one > 0.")


# --------------------------------------------------------------------------- arrays


def numbers_as_array(value):
    """A list or tuple of plain numbers (nested or not) is an array, as numpy and scipy
    read it, so ``x0=[1.0, 2.0]`` gives ``fun`` an array; any other pytree stays one."""
    if not isinstance(value, (list, tuple)):
        return value
    leaves = jax.tree_util.tree_leaves(value)
    if not leaves or not all(isinstance(leaf, numbers.Real) and not isinstance(leaf, bool) for leaf in leaves):
        return value
    try:
        return np.asarray(value)
    except ValueError:  # ragged: a pytree after all
        return value


def parameters(x0, name="x0"):
    """Starting parameters: a pytree of real floating arrays (numbers and lists of
    numbers become numpy arrays; integers become the default float; complex is an
    error, as in scipy).  JAX arrays stay where they are."""

    def leaf(a):
        if is_traced(a) or isinstance(a, jax.ShapeDtypeStruct):
            dtype = a.dtype
        else:
            if not isinstance(a, jax.Array):
                try:
                    a = np.asarray(a)
                except Exception as e:
                    raise TypeError(f"`{name}` must be an array or a pytree of arrays; got {type(a).__name__}.") from e
            dtype = a.dtype
        if np.issubdtype(dtype, np.complexfloating):
            raise ValueError(f"`{name}` is complex; fitfleet fits real parameters: split it into real and imaginary parts.")
        if not np.issubdtype(dtype, np.number) and dtype.kind != "b":
            raise TypeError(f"`{name}` must hold numbers; got dtype {dtype}.")
        if not np.issubdtype(dtype, np.floating):
            a = np.asarray(a).astype(jax.numpy.result_type(float)) if not is_traced(a) else a.astype(float)
        return a

    return jax.tree_util.tree_map(leaf, numbers_as_array(x0))


def arguments(args, name="args", lazy=False):
    """``args`` as a tuple (a list is taken as scipy takes it); each entry that is a list
    of numbers becomes an array, Python and numpy scalars become arrays, and so do
    other array-likes (``array_like``) unless ``lazy`` (``fit_stream`` reads them chunk
    by chunk)."""
    if isinstance(args, list):
        args = tuple(args)
    if not isinstance(args, tuple):
        raise TypeError(
            f"`{name}` must be a tuple of extra arguments to fun; got {type(args).__name__}. "
            "For a single argument write args=(x,)."
        )
    return jax.tree_util.tree_map(_scalar_as_array if lazy else array_like, tuple(map(numbers_as_array, args)))


def array_like(a):
    """Python and numpy scalars, and objects that convert themselves to arrays
    (``__array__``: a pandas Series or DataFrame, an xarray DataArray), as numpy arrays:
    jit would otherwise take them for static arguments.  Anything else as it is."""
    if hasattr(a, "__array__") and not isinstance(a, (np.ndarray, jax.Array)):
        return np.asarray(a)
    return _scalar_as_array(a)


def _scalar_as_array(a):
    return np.asarray(a) if isinstance(a, (bool, int, float, np.generic)) else a


def flat(value, n, like, name, kind=float):
    """A scalar, a flat array of ``n`` entries, or a pytree like ``like`` (its leaves
    broadcast to ``like``'s) -> a flat numpy array of ``n`` entries."""
    if kind is bool and _has_string(value):
        raise TypeError(f"`{name}` must be True/False, or booleans per parameter; got {value!r}.")
    try:
        if not isinstance(value, (dict, list, tuple)) and np.size(value) == 1:  # a scalar, or scipy's Bounds(0, 1)
            out = np.full(n, np.ravel(value)[0], dtype=kind)
        elif jax.tree_util.tree_structure(value) == jax.tree_util.tree_structure(like) and n > 0:
            leaves = jax.tree_util.tree_map(lambda v, x: np.broadcast_to(np.asarray(v, kind), np.shape(x)).ravel(), value, like)
            out = np.concatenate(jax.tree_util.tree_leaves(leaves))
        else:
            out = np.asarray(value, dtype=kind).ravel()
    except (TypeError, ValueError) as e:
        raise ValueError(f"`{name}` must be a scalar, an array of the {n} flat parameters, or a pytree like the parameters: {e}") from e
    if out.size != n:
        raise ValueError(f"`{name}` has {out.size} entries for {n} parameters.")
    return out


def _has_string(value):
    return any(isinstance(leaf, (str, bytes)) or np.asarray(leaf).dtype.kind in "US" for leaf in jax.tree_util.tree_leaves(value))


def bounds(value, n, like, log):
    """``(lower, upper)`` flat float64 numpy arrays on the parameters' own scale, or
    ``None`` for no bounds.  Takes a pair (scalars, flat arrays, or pytrees like x0)
    or an object with ``lb`` and ``ub`` (``scipy.optimize.Bounds``)."""
    if value is None:
        return None
    if any_traced(value):
        raise ValueError(
            "`bounds` must be concrete numbers or arrays, not traced by jit/vmap: the Result records them "
            "and a new value compiles a new program. Pass them from outside the transformed function."
        )
    value = bounds_pair(value)
    lo = flat(value[0], n, like, "bounds[0] (lower)")
    hi = flat(value[1], n, like, "bounds[1] (upper)")
    if np.any(np.isnan(lo)) or np.any(np.isnan(hi)):
        raise ValueError("`bounds` contain NaN: use -inf/inf for a missing bound.")
    if np.any(lo == np.inf) or np.any(hi == -np.inf):
        raise ValueError("`bounds`: a lower bound of +inf or an upper bound of -inf leaves no feasible value (did you swap them?).")
    if np.any(lo >= hi):
        bad = np.flatnonzero(lo >= hi)[:10].tolist()
        raise ValueError(f"`bounds`: every lower bound must be strictly below its upper bound (not at flat index {bad}).")
    # A lower bound of 0 on a log_scale parameter only restates its positivity: allowed.
    if np.any(log & (lo < 0) & np.isfinite(lo)) or np.any(log & (hi <= 0)):
        raise ValueError("`bounds` of a log_scale parameter must be positive, or 0 for the lower one (they bound p, not log p).")
    if not np.any(np.isfinite(lo) | np.isfinite(hi)):
        return None
    return lo, hi


def bounds_pair(value):
    """``(lower, upper)`` from a pair, a (2, ...) array (scipy takes one) or an object
    with ``lb`` and ``ub`` (``scipy.optimize.Bounds``)."""
    if hasattr(value, "lb") and hasattr(value, "ub"):
        return value.lb, value.ub
    if isinstance(value, (np.ndarray, jax.Array)) and not is_traced(value) and value.ndim >= 1 and value.shape[0] == 2:
        return value[0], value[1]
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ValueError("`bounds` must be a pair (lower, upper) of scalars, arrays or pytrees like x0, or scipy.optimize.Bounds.")
    return tuple(value)


def start(flat_x0, box, log, name="x0"):
    """A concrete flat start (rows of starts for a batch): finite, inside the box,
    positive where log-scaled."""
    x = np.atleast_2d(np.asarray(flat_x0, np.float64))
    rows = lambda bad: np.flatnonzero(np.any(bad, axis=1))[:10].tolist()  # noqa: E731
    where = (lambda bad: f"in rows {rows(bad)}") if np.ndim(flat_x0) == 2 else (lambda bad: f"at flat index {np.flatnonzero(bad[0])[:10].tolist()}")
    if box is None and not np.any(log):
        return
    if np.any(~np.isfinite(x)):
        raise ValueError(f"`{name}` must be finite ({where(~np.isfinite(x))}).")
    if box is not None:
        outside = (x < box[0]) | (x > box[1])
        if np.any(outside):
            raise ValueError(f"`{name}` is outside `bounds` {where(outside)}: start inside [lower, upper].")
    if np.any(log & (x <= 0)):
        raise ValueError(f"`{name}` must be positive where log_scale is set (not {where(log & (x <= 0))}).")


def sigma(value, m, dtype, name="sigma"):
    """Per-residual standard deviations, shape (m,) (any shape of m entries, or a
    scalar), or an (m, m) symmetric positive definite covariance; returned as a numpy
    array of ``dtype`` (a traced sigma is reshaped only)."""
    if value is None:
        return None
    if is_traced(value):
        return value.astype(dtype) if np.ndim(value) == 2 and np.shape(value) == (m, m) else value.reshape(m).astype(dtype)
    s = np.asarray(value)
    if not np.issubdtype(s.dtype, np.number) or np.iscomplexobj(s):
        raise TypeError(f"`{name}` must be real numbers; got dtype {s.dtype}.")
    s = s.astype(np.float64)
    if s.ndim == 2 and s.shape == (m, m) and m > 1:
        if not np.all(np.isfinite(s)):
            raise ValueError(f"`{name}` as a covariance matrix must be finite.")
        if not np.allclose(s, s.T, rtol=1e-10, atol=1e-14 * np.max(np.abs(s))):
            raise ValueError(f"`{name}` as a covariance matrix must be symmetric; it is not (sigma - sigma.T is not ~0).")
        try:
            np.linalg.cholesky(s)
        except np.linalg.LinAlgError as e:
            raise ValueError(f"`{name}` as a covariance matrix must be positive definite.") from e
        return s.astype(dtype)
    if s.size == 1 and m > 1:
        s = np.full(m, float(s.reshape(())))
    if s.size != m:
        raise ValueError(
            f"`{name}` must hold one standard deviation per residual ({m}) or be an ({m}, {m}) covariance matrix; got shape {s.shape}."
        )
    s = s.reshape(m)
    if not np.all(np.isfinite(s) & (s > 0)):
        raise ValueError(f"`{name}` must be positive and finite: standard deviations of the measurements.")
    return s.astype(dtype)


def batched_sigma(value, size, m, dtype):
    """A per-fit sigma: (B, m) standard deviations or (B, m, m) covariances."""
    s = np.asarray(value, np.float64)
    if s.ndim == 3:
        rows = [i for i in range(size) if not _is_covariance(s[i], m)]
        what = "symmetric positive definite (m, m) covariances"
    else:
        s = s.reshape(size, -1)
        rows = np.flatnonzero(~np.all(np.isfinite(s) & (s > 0), axis=1)).tolist() if s.shape[1] == m else list(range(size))
        what = f"{m} positive standard deviations"
    if rows:
        raise ValueError(f"`sigma` per fit must hold {what}; rows {rows[:10]} do not.")
    return s.astype(dtype)


def _is_covariance(s, m):
    if s.shape != (m, m) or not np.all(np.isfinite(s)) or not np.allclose(s, s.T, rtol=1e-10, atol=1e-14 * np.max(np.abs(s))):
        return False
    try:
        np.linalg.cholesky(s)
        return True
    except np.linalg.LinAlgError:
        return False


def floating_dtype(name, dtype):
    d = np.dtype(dtype)
    if not np.issubdtype(d, np.floating):
        raise TypeError(f"`{name}` must be a floating dtype such as float32 or float64; got {d}.")
    return d


def x_scale(value, method, n_params, newton_methods):
    """``x_scale`` as the method uses it: ``"jac"``, or positive scales (a scalar or one
    per flat parameter).  None is the method's default (scipy 1.17's: 1
    for trf; lm and gn always scale by the Jacobian's columns)."""
    if value is None:
        return 1.0 if method == "trf" else "jac"
    if isinstance(value, str):
        if value != "jac":
            raise ValueError(f"`x_scale` must be 'jac' or positive numbers; got {value!r}.")
        if method not in newton_methods:
            raise ValueError(f"`x_scale` applies to methods {newton_methods}, not {method!r}.")
        return value
    if method not in newton_methods:
        raise ValueError(f"`x_scale` applies to methods {newton_methods}, not {method!r}.")
    if is_traced(value):
        return value
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as e:
        raise TypeError(f"`x_scale` must be 'jac' or an array of positive numbers; got {value!r}.") from e
    if arr.ndim > 1 or arr.size not in (1, n_params):
        raise ValueError(
            f"`x_scale` must be a scalar or have one entry per flat parameter ({n_params}); got shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr) & (arr > 0)):
        raise ValueError("`x_scale` must be finite and positive.")
    return value


def steps_from_nfev(max_steps, max_nfev):
    """``max_steps`` from scipy's ``max_nfev`` (evaluations including the one at x0)."""
    if max_nfev is None:
        return max_steps
    if max_steps is not None:
        raise ValueError("give `max_steps` or `max_nfev`, not both (max_nfev = max_steps + 1).")
    if is_traced(max_nfev):
        return jax.numpy.maximum(max_nfev - 1, 0)
    return integer("max_nfev", max_nfev, minimum=1) - 1


# --------------------------------------------------------------------------- batches


def shared_args_mask(shared_args, n_args):
    """``fit_batch``'s ``shared_args`` as a tuple: True for each batched argument."""
    if shared_args is True:
        return (False,) * n_args
    if shared_args is False or shared_args is None:
        return (True,) * n_args
    entries = [shared_args] if np.ndim(shared_args) == 0 else list(shared_args)
    if any(isinstance(i, (bool, np.bool_)) for i in entries):
        raise TypeError(f"`shared_args` takes the indices of the shared arguments, e.g. shared_args=(0,) for args[0]; got booleans {shared_args!r} (True alone shares every argument).")
    try:
        shared = {int(i) for i in entries}
    except TypeError as e:
        raise TypeError(f"`shared_args` must be True or a tuple of indices into args; got {shared_args!r}.") from e
    if any(not -n_args <= i < n_args for i in shared):
        raise ValueError(f"`shared_args` {sorted(shared)} indexes outside args, which has {n_args} entries.")
    shared = {i % n_args for i in shared}
    return tuple(i not in shared for i in range(n_args))


def batch_size(x0, args, mask):
    """The number of fits: the leading axis every leaf of ``x0`` and of the batched
    ``args`` must share."""
    leaves = jax.tree_util.tree_leaves(x0)
    if not leaves:
        raise ValueError("`x0` has no parameters: pass an array (batch, ...) or a pytree of such arrays.")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if None in sizes:
        raise ValueError(
            "every array in `x0` needs a leading batch axis (one row per fit), but some are "
            "scalars. Pass an array of shape (batch, n_params) (e.g. np.asarray(x0) for a "
            "nested list: a list is a pytree, each of its entries a parameter)."
        )
    if len(sizes) != 1:
        raise ValueError(f"every array in `x0` needs the same leading batch axis (one row per fit); got leading sizes {sorted(sizes)}.")
    size = sizes.pop()
    if size == 0:
        raise ValueError("`x0` has an empty batch axis: there is nothing to fit.")
    arg_sizes = {np.shape(leaf)[0] for a, b in zip(args, mask) if b for leaf in jax.tree_util.tree_leaves(a) if np.ndim(leaf)}
    if len(arg_sizes) == 1 and size not in arg_sizes and len(leaves) == 1 and np.ndim(leaves[0]) == 1:
        (other,) = arg_sizes
        raise ValueError(
            f"`x0` has a leading axis of {size} but the batched `args` have {other} rows: x0 needs a batch axis, "
            f"one start per fit, shape ({other}, n_params) (np.broadcast_to(x0, ({other}, len(x0))) starts every fit "
            "from the same point); or list shared args in shared_args."
        )
    for i, (arg, batched) in enumerate(zip(args, mask)):
        if not batched:
            continue
        for leaf in jax.tree_util.tree_leaves(arg):
            if np.ndim(leaf) == 0 or np.shape(leaf)[0] != size:
                raise ValueError(
                    f"`args[{i}]` needs a leading batch axis of size {size} like x0 (got shape "
                    f"{np.shape(leaf)}); list it in shared_args if it is common to all fits."
                )
    return size


def flat_rows(x0):
    """A batch of starts as a (fits, flat parameters) float64 numpy array."""
    return np.concatenate([np.asarray(leaf, np.float64).reshape(np.shape(leaf)[0], -1) for leaf in jax.tree_util.tree_leaves(x0)], 1)


def devices(value):
    """``None`` (every device of the default backend), a platform name (``"cpu"``,
    ``"gpu"``), or a list of devices -> a list of devices."""
    if value is None:
        return jax.devices()
    if isinstance(value, str):
        try:
            return jax.devices(value)
        except RuntimeError as e:
            raise ValueError(f"`devices={value!r}`: no such platform here ({e}). Pass None for the default devices.") from e
    found = list(value) if isinstance(value, (list, tuple)) else [value]
    if not found or not all(isinstance(d, jax.Device) for d in found):
        raise ValueError(f"`devices` must be None, a platform name such as 'cpu', or a list of jax devices; got {value!r}.")
    return found
