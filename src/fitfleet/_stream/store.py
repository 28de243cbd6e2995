"""``fit_stream``'s zarr store: its layout, its creation, and the fingerprint that makes
a resumed call prove it is the same call (see the package docstring)."""

import hashlib
import json
import math
import os

import jax
import numpy as np

from .. import _setup

FIELDS = ("params", "cost", "residual", "jac", "grad", "status", "n_steps", "n_fev", "n_jev")
DEFAULT_FIELDS = ("params", "cost", "status", "n_steps")
MEMORY_BUDGET = 2**28  # bytes of chunks alive at once (see the module docstring)
FORMAT = 1  # of the store's layout and fingerprint
_ATTRIBUTE = "fitfleet_stream"
NOT_OPTIONS = ("history", "verbose", "progress")  # fit_batch's, not stored or per-chunk


def shape_of(a):
    return tuple(a.shape) if hasattr(a, "shape") else np.shape(a)


class Layout:
    """Shapes, dtypes and per-fit bytes of the stored fields; host copies of them."""

    def __init__(self, spec, fields, size):
        n, m, dtype = spec.n_params, spec.n_residuals, np.dtype(spec.dtype)
        shapes = dict(params=(n,), cost=(), residual=(m,), jac=(m, n), grad=(n,), status=(), n_steps=(), n_fev=(), n_jev=())
        self.spec, self.size = spec, size
        self.arrays = {f: (shapes[f], np.dtype(np.int32) if f in ("status", "n_steps", "n_fev", "n_jev") else dtype) for f in FIELDS}
        self.result_bytes = sum(math.prod(s) * d.itemsize for s, d in self.arrays.values())
        self.out_bytes = sum(math.prod(self.arrays[f][0]) * self.arrays[f][1].itemsize for f in fields)
        self.fields = fields

    def host(self, name, value, rows):
        """A field of a chunk's Result as the numpy array stored (params flattened)."""
        if name == "params":
            value = np.concatenate([np.asarray(leaf).reshape(rows, -1) for leaf in jax.tree_util.tree_leaves(value)], 1)
        value = np.asarray(value)
        shape, dtype = self.arrays[name]
        if value.shape != (rows, *shape) or value.dtype != dtype:
            raise RuntimeError(f"fit_stream: fit_batch returned {name} {value.dtype}{value.shape}, expected {dtype}{(rows, *shape)}.")
        return value

    def chunk(self, streamed):
        """The default chunk (see the module docstring)."""
        leaves = jax.tree_util.tree_leaves(streamed)
        row_bytes = [math.prod(shape_of(a)[1:]) * np.dtype(a.dtype).itemsize for a in leaves]
        per_fit = 4 * sum(row_bytes) + 2 * self.result_bytes + 3 * self.out_bytes
        limit = max(1, min(self.size, MEMORY_BUDGET // per_fit))
        given = getattr(leaves[int(np.argmax(row_bytes))], "chunks", None)  # zarr's and h5py's chunking
        if limit < self.size and given and isinstance(given[0], (int, np.integer)) and 1 < given[0] <= limit:
            return limit // int(given[0]) * int(given[0])
        return math.ceil(self.size / math.ceil(self.size / limit))  # equal chunks, as far as it goes

    def create(self, zarr, root, chunk, fingerprint):
        for f in self.fields:
            shape, dtype = self.arrays[f]
            array = root.create_array(f, shape=(self.size, *shape), chunks=(chunk, *shape), dtype=dtype, overwrite=True)
            if f == "params":
                array.attrs.update(names=list(self.spec.names), order=list(self.spec.order))
        n_chunks = math.ceil(self.size / chunk)
        root.create_array("done", shape=(n_chunks,), chunks=(1,), dtype="uint8", fill_value=0, compressors=None, overwrite=True)
        root.attrs[_ATTRIBUTE] = fingerprint  # last: its presence marks a complete store


def open_store(zarr, out, fingerprint, chunk_size, layout, streamed, create):
    """The store and its chunk size: created (``create``, process 0) or checked."""
    if isinstance(out, zarr.Group):
        root = out
        if root.metadata.zarr_format != 3:
            raise ValueError("`out` is a zarr v2 group; fit_stream writes zarr v3: pass a new path or a v3 group.")
    elif isinstance(out, (str, os.PathLike)):
        path = os.fspath(out)
        if os.path.isfile(path) or (os.path.isdir(path) and os.listdir(path) and not os.path.exists(os.path.join(path, "zarr.json"))):
            raise ValueError(f"`out` {path!r} exists and is not a zarr v3 store: pass a new path (it is created) or a zarr store.")
        if not create and not os.path.exists(path):
            raise ValueError(
                f"`out` {path!r} does not exist on process {jax.process_index()}, though process 0 created it: "
                "every process must see the same store (a shared filesystem)."
            )
        try:
            root = zarr.open_group(path, mode="a" if create else "r+", zarr_format=3)
        except Exception as e:
            raise ValueError(f"`out` {path!r} could not be opened as a zarr v3 group: {e}") from e
    else:
        raise TypeError(f"`out` must be a path or a zarr.Group (zarr v3); got {type(out).__name__}.")

    stored = root.attrs.get(_ATTRIBUTE)
    if stored is None:
        ours = set(FIELDS) | {"done"}
        foreign = sorted(set(root.keys()) - ours)
        if foreign or not create:  # a partly created store of ours is simply created again
            raise ValueError(f"`out` holds {foreign or 'an unfinished store'}, not a fit_stream store of this call: pass a new path.")
        chunk = chunk_size or layout.chunk(streamed)
        layout.create(zarr, root, chunk, dict(fingerprint, chunk_size=chunk))
        return root, chunk
    chunk = chunk_size or stored.get("chunk_size")
    now = json.loads(json.dumps(dict(fingerprint, chunk_size=chunk)))
    differ = [k for k in sorted(set(now) | set(stored)) if now.get(k) != stored.get(k)]
    if differ:
        shown = "; ".join(f"{k}: {_short(stored.get(k))} in the store, {_short(now.get(k))} now" for k in differ)
        raise ValueError(
            f"`out` holds the results of a different fit_stream call ({shown}). Pass a new `out`, or the same "
            "arguments as the call that made it to resume it."
        )
    return root, chunk


def _short(value, limit=120):
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fingerprint_of(fun, streamed, shared, mask, options, spec, fields, size):
    """What must agree for a store to be resumed (JSON)."""
    streamed_desc = [_describe_streamed(a, size) for a in jax.tree_util.tree_leaves(streamed)]
    return dict(
        format=FORMAT,
        fun=_name(fun),
        size=size,
        fields=list(fields),
        params=dict(n=spec.n_params, dtype=str(np.dtype(spec.dtype)), names=list(spec.names)),
        n_residuals=spec.n_residuals,
        streamed=dict(structure=str(jax.tree_util.tree_structure(streamed)), leaves=streamed_desc),
        shared=_describe(shared),
        shared_args=[i for i, b in enumerate(mask) if not b],
        options={k: _describe(v) for k, v in sorted({**_setup.DEFAULTS, **options}.items()) if k not in NOT_OPTIONS},
    )


def _describe_streamed(a, size):
    """Shape, dtype and a hash of the first and last rows (reading them all would cost
    a pass over the data)."""
    rows = np.concatenate([np.asarray(a[0:1]), np.asarray(a[size - 1 : size])])
    return dict(shape=list(shape_of(a)), dtype=str(np.dtype(a.dtype)), rows=_digest(rows))


def _describe(value):
    """A pytree as JSON: its structure, and per leaf a number, a string, a function's
    name, or an array's shape, dtype and hash."""
    leaves, treedef = jax.tree_util.tree_flatten(value)

    def leaf(v):
        if isinstance(v, (bool, int, float, str)):
            return v
        if callable(v) and not hasattr(v, "shape"):
            return _name(v)
        a = np.asarray(v)
        return dict(shape=list(a.shape), dtype=str(a.dtype), sha256=_digest(a))

    if value is None or jax.tree_util.treedef_is_leaf(treedef):
        return None if value is None else leaf(value)
    return dict(structure=str(treedef), leaves=[leaf(v) for v in leaves])


def _digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:32]


def _name(fun):
    """A function's qualified name (not its module: a script's is ``__main__``)."""
    return getattr(fun, "__qualname__", type(fun).__qualname__)
