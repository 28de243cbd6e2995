"""What every plot needs: matplotlib on demand, somewhere to draw, parameter names, and
one member of a batch."""

import importlib

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

_EXTRA = "pip install 'fitfleet[plot]' (or: pip install matplotlib)"


def matplotlib():
    """The matplotlib module, imported on first use (``fitfleet.plot`` loads without it)."""
    try:
        return importlib.import_module("matplotlib")
    except ImportError as e:
        raise ImportError(f"fitfleet.plot needs matplotlib, the `plot` extra: {_EXTRA}.") from e


def new_axes(ax, figsize=(6.0, 4.0)):
    """``ax`` if given, else the axes of a new pyplot figure (so ``plt.show()`` shows it;
    pyplot is touched only here, when the caller passed nowhere to draw)."""
    matplotlib()
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.figure(figsize=figsize, layout="constrained").add_subplot()


def new_figure(fig, figsize):
    """``fig`` if given (cleared of nothing: panels are added to it), else a new pyplot figure."""
    matplotlib()
    if fig is not None:
        return fig
    import matplotlib.pyplot as plt

    return plt.figure(figsize=figsize, layout="constrained")


def flat(params):
    """The flat parameter vector (``ravel_pytree`` order) as float64 numpy."""
    return np.asarray(ravel_pytree(params)[0], np.float64)


def default_names(params):
    """Names for the flat parameters of one fit: dict keys and attribute names from the
    pytree paths, ``p[i]`` for the entries of a bare array, ``name[i]`` (``name[i,j]``)
    for the entries of an array leaf."""
    names = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        prefix = ""
        for key in path:
            if isinstance(key, jax.tree_util.DictKey):
                prefix += ("." if prefix else "") + str(key.key)
            elif isinstance(key, jax.tree_util.GetAttrKey):
                prefix += ("." if prefix else "") + key.name
            elif isinstance(key, jax.tree_util.SequenceKey):
                prefix += f"[{key.idx}]"
            else:  # FlattenedIndexKey and custom keys
                prefix += f"[{jax.tree_util.keystr((key,))}]"
        if not prefix or prefix.startswith("["):
            prefix = "p" + prefix
        shape = np.shape(leaf)
        if shape == ():
            names.append(prefix)
        else:
            names.extend(f"{prefix}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape))
    return names


def resolve_names(names, n, *owners):
    """``names`` if given (checked), else the first ``owner.names`` recorded, else None."""
    if names is None:
        for owner in owners:
            recorded = getattr(owner, "names", None)
            if recorded is not None:
                names = recorded
                break
        else:
            return None
    names = [str(s) for s in names]
    if len(names) != n:
        raise ValueError(f"`names` has {len(names)} entries but there are {n} parameters; pass one name per flat parameter.")
    return names


def param_names(names, params, *owners):
    """Names of the flat parameters of one fit: given, recorded, or derived."""
    n = flat(params).size
    return resolve_names(names, n, *owners) or default_names(params)


def batch_size(res):
    """The number of fits in a Result (None for a single fit)."""
    ndim = np.ndim(res.residual)
    if ndim == 1:
        return None
    if ndim != 2:
        raise ValueError("a Result with more than one batch axis: index it down to one batch axis (or one fit) first.")
    return np.shape(res.residual)[0]


def members(size, member, what="res", several=True):
    """The list of members to draw (``[None]`` for a single fit) and whether ``member``
    was a list (several panels/curves)."""
    if size is None:
        if member is not None:
            raise ValueError(f"`member` is for a batched {what}; this one holds a single fit.")
        return [None]
    if member is None:
        hint = " (or several with member=[i, j])" if several else ""
        raise ValueError(f"`{what}` is a batch of {size} fits: pick one with member=i{hint}.")
    chosen = [member] if np.ndim(member) == 0 else list(np.asarray(member).ravel())
    for i in chosen:
        if not (isinstance(i, (int, np.integer)) and -size <= i < size):
            raise ValueError(f"`member` must be an int (or list of ints) in [0, {size}); got {member!r}.")
    return [int(i) % size for i in chosen]


def take(tree, i):
    """Member ``i`` of a batched pytree (the tree itself for ``i=None``)."""
    if i is None:
        return tree
    # 0-d leaves are shared by the batch (a Result's scalar f_scale, say).
    return jax.tree_util.tree_map(lambda a: a[i] if np.ndim(a) > 0 else a, tree)
