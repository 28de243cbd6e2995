"""``fit_stream``'s inputs: array-likes that may live on disk, checked without reading them."""

import jax
import numpy as np

from .. import _problem, _setup, _validate
from . import store
from .store import NOT_OPTIONS, shape_of


def import_zarr():
    try:
        import zarr

        zarr.create_array  # zarr 3
    except (ImportError, AttributeError) as e:
        raise ImportError("fit_stream writes a zarr v3 store: pip install 'fitfleet[stream]' (or 'zarr>=3.1.3').") from e
    return zarr


def selected_fields(fields):
    if fields is None:
        return store.DEFAULT_FIELDS
    fields = (fields,) if isinstance(fields, str) else tuple(fields)
    unknown = [f for f in fields if f not in store.FIELDS]
    if unknown or not fields or len(set(fields)) != len(fields):
        raise ValueError(f"`fields` must name distinct Result fields among {store.FIELDS}; got {fields!r}.")
    return fields


def options_of(options):
    refused = sorted(set(options) & set(NOT_OPTIONS))
    if refused:
        raise TypeError(f"fit_stream does not take {refused}: it stores the fields in `fields=`, and `progress=` is its own bar.")
    unknown = sorted(set(options) - set(_setup.DEFAULTS))
    if unknown:
        raise TypeError(f"unexpected option(s) {unknown}; the fit options are {sorted(set(_setup.DEFAULTS) - set(NOT_OPTIONS))}.")
    _setup.check_options(options)
    return options


def array_like(a, name):
    """An array-like stays as it is (it may live on disk); a jax array or nested list
    becomes numpy (in memory already)."""
    if isinstance(a, jax.Array) or not all(hasattr(a, attr) for attr in ("shape", "dtype", "__getitem__")):
        try:
            a = np.asarray(_validate.numbers_as_array(a))
        except Exception as e:
            raise TypeError(f"`{name}` must be an array-like (shape, dtype and slicing); got {type(a).__name__}.") from e
    if len(a.shape) == 0:
        raise ValueError(f"`{name}` needs a leading batch axis (one row per fit); got a scalar.")
    return a


def inputs(x0, args, shared_args):
    """``(x0, args, mask, B)``: streamed leaves as array-likes, a batched-or-shared mask."""
    args = _validate.arguments(args, lazy=True)  # out-of-core arrays stay on disk
    if shared_args is True:
        mask = (False,) * len(args)
    else:
        shared = () if shared_args in (None, False) else (shared_args,) if np.ndim(shared_args) == 0 else tuple(shared_args)
        if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -len(args) <= i < len(args) for i in shared):
            raise ValueError(f"`shared_args` must be True or indices into args ({len(args)} entries); got {shared_args!r}.")
        mask = tuple(i not in {j % len(args) for j in shared} for i in range(len(args)))
    x0 = mapped(lambda a: array_like(a, "x0"), _validate.numbers_as_array(x0))
    if not jax.tree_util.tree_leaves(x0):
        raise ValueError("`x0` has no parameters: pass an array-like (batch, ...) or a pytree of them.")
    args = tuple(
        jax.tree_util.tree_map(lambda a, i=i: array_like(a, f"args[{i}]"), a) if b else a for i, (a, b) in enumerate(zip(args, mask))
    )
    sizes = {shape_of(leaf)[0] for leaf in jax.tree_util.tree_leaves(x0)}
    if len(sizes) != 1:
        raise ValueError(f"every array in `x0` needs the same leading batch axis (one row per fit); got lengths {sorted(sizes)}.")
    size = sizes.pop()
    if size == 0:
        raise ValueError("`x0` has an empty batch axis: there is nothing to fit.")
    for i, (a, b) in enumerate(zip(args, mask)):
        for leaf in jax.tree_util.tree_leaves(a) if b else ():
            if shape_of(leaf)[0] != size:
                raise ValueError(
                    f"`args[{i}]` needs a leading batch axis of length {size}, like x0 (got shape {shape_of(leaf)}); "
                    "list it in shared_args if it is common to all fits."
                )
    return x0, args, mask, size


def mapped(f, tree):
    """``tree_map`` that keeps a dict's keys in the user's order (the names' order)."""
    if isinstance(tree, dict):
        return {k: mapped(f, v) for k, v in tree.items()}
    return jax.tree_util.tree_map(f, tree)


def check_problem(fun, x0, args, mask, sigma, options):
    """Validate the problem on its first fit (one abstract trace, no compilation)."""
    first = lambda tree: mapped(lambda a: np.asarray(a[0]), tree)  # noqa: E731
    args0 = tuple(first(a) if b else a for a, b in zip(args, mask))
    o = {**_setup.DEFAULTS, **options, "sigma": first(sigma) if sigma is not None else options.get("sigma")}
    return _problem.check(
        fun, first(x0), args0, o["jac"], sigma=o["sigma"], bounds=o["bounds"], log_scale=o["log_scale"], loss=o["loss"],
        f_scale=o["f_scale"],
    )  # fmt: skip
