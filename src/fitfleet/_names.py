"""The names of a fit's flat parameters, and the user's own order of them.

``ravel_pytree`` flattens a dict in sorted key order; a user who wrote
``{"vmax": ..., "km": ...}`` reads reports in their own order.  ``parameter_names``
gives both: a name per flat parameter (``jac``'s columns) and the user's order.
"""

import jax
import numpy as np


def parameter_names(x0):
    """``(names, order)``: a name per flat parameter (``ravel_pytree`` order) and the
    flat indices in the user's own order (a dict's keys as the user wrote them, where
    JAX sorts them): ``"vmax"``, ``"A[1]"``, ``"rates.k[0]"``, ``"p[2]"`` for a plain array."""
    paths_leaves = jax.tree_util.tree_flatten_with_path(x0)[0]
    names, spans, start = [], [], 0
    for path, leaf in paths_leaves:
        base = "".join(_key_name(k) for k in path).lstrip(".") or "p"
        shape = np.shape(leaf)
        size = int(np.prod(shape))
        if shape == ():
            names.append(base)
        else:
            names += [f"{base}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape)]
        spans.append(range(start, start + size))
        start += size
    rank = [_user_rank(x0, path) for path, _ in paths_leaves]
    order = [i for k in sorted(range(len(spans)), key=lambda k: rank[k]) for i in spans[k]]
    return tuple(names), tuple(order)


def _key_name(key):
    if isinstance(key, jax.tree_util.DictKey):
        return f".{key.key}"
    if isinstance(key, jax.tree_util.GetAttrKey):
        return f".{key.name}"
    if isinstance(key, jax.tree_util.SequenceKey):
        return f"[{key.idx}]"
    return f"[{getattr(key, 'key', key)}]"


def _user_rank(tree, path):
    """The position of a leaf when dicts are walked in their own (insertion) order."""
    rank = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey) and isinstance(tree, dict):
            rank.append(list(tree).index(key.key))
            tree = tree[key.key]
        elif isinstance(key, jax.tree_util.SequenceKey):
            rank.append(key.idx)
            tree = tree[key.idx]
        else:
            rank.append(0)
            tree = getattr(tree, key.name, None) if isinstance(key, jax.tree_util.GetAttrKey) else None
    return tuple(rank)
