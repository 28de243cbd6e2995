"""How a batch's solver state travels between programs, and what it weighs.

Between programs, and whenever a round regroups fits, a state travels *packed*: one
(fits, k) matrix per dtype instead of a dozen arrays, so that gathering and scattering
a block's rows costs one operation per dtype, not one per field (each is a kernel of its
own to compile and to run).
"""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import runtime

_STATE_SHAPES = runtime.cache()


def pack(state):
    """A batched state as a tuple of matrices, one per dtype, a fit per row."""
    groups = {}
    for leaf in jax.tree_util.tree_leaves(state):
        groups.setdefault(np.dtype(leaf.dtype), []).append(leaf.reshape(leaf.shape[0], -1))
    return tuple(jnp.concatenate(g, axis=1) if len(g) > 1 else g[0] for g in groups.values())


def unpack(packed, like):
    """The state a packed tuple holds, with the matrices' leading axes; ``like`` is one
    fit's state (shapes).  Slicing only, so numpy matrices give numpy fields."""
    leaves, treedef = jax.tree_util.tree_flatten(like)
    matrices = dict(zip(dict.fromkeys(np.dtype(leaf.dtype) for leaf in leaves), packed))
    offsets = dict.fromkeys(matrices, 0)
    fields = []
    for leaf in leaves:
        dtype, width = np.dtype(leaf.dtype), math.prod(leaf.shape)
        matrix, start = matrices[dtype], offsets[dtype]
        fields.append(matrix[..., start : start + width].reshape(*matrix.shape[:-1], *leaf.shape))
        offsets[dtype] = start + width
    return jax.tree_util.tree_unflatten(treedef, fields)


def signature(tree):
    """A hashable key of a pytree's structure, array shapes and static leaves (a fresh
    object, which matches nothing, where a static leaf is unhashable)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    is_shaped = lambda a: eqx.is_array(a) or isinstance(a, jax.ShapeDtypeStruct)  # noqa: E731
    spec = tuple((np.shape(a), a.dtype, getattr(a, "weak_type", False)) if is_shaped(a) else a for a in leaves)
    try:
        hash(spec)
    except TypeError:
        return object()
    return treedef, spec


def leading(tree):
    return jax.tree_util.tree_leaves(tree)[0].shape[0]


def fit_state_shape(init_one, statics, data):
    """Shapes of one fit's solver state (``init_one(statics, one fit's data)``) for a
    batch ``data``, without computing anything."""
    one = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a)[1:], a.dtype), data)
    key = signature((statics, one))
    shapes = _STATE_SHAPES.get(key)
    if shapes is None:
        shapes = runtime.remember(_STATE_SHAPES, key, jax.eval_shape(functools.partial(init_one, statics), one))
    return shapes


def state_shape(init_one, statics, data):
    """Shapes of the solver state of a batch ``data``."""
    batch = (leading(data),)
    one = fit_state_shape(init_one, statics, data)
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(batch + s.shape, s.dtype), one)


def abstract_packed(init_one, statics, data):
    """A stand-in packed state for lowering: zero-stride views, so nothing is allocated."""
    packed = jax.eval_shape(pack, state_shape(init_one, statics, data))
    return tuple(np.broadcast_to(np.zeros((), s.dtype), s.shape) for s in packed)


def bytes_per_fit(init_one, statics, data):
    """Bytes of one fit's state and data."""
    shapes = (state_shape(init_one, statics, data), data)
    total = sum(math.prod(s.shape) * np.dtype(s.dtype).itemsize for s in jax.tree_util.tree_leaves(shapes))
    return max(1, total // leading(data))


def nbytes(tree):
    return sum(np.size(a) * np.dtype(a.dtype).itemsize for a in jax.tree_util.tree_leaves(tree))
