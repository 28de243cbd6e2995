"""Batches larger than memory, resumable and spread over processes: ``fit_stream``.

``fit_stream`` runs :func:`fit_batch` chunk by chunk over inputs read from disk (any
array-like with ``shape``, ``dtype`` and slicing: a numpy memmap, a zarr array, an h5py
dataset) and writes each chunk's results to a zarr (v3) store.  Three things matter.

*Memory.*  A chunk of C fits is alive in three stages at once: chunk k+1 is read on a
reader thread while chunk k is fitted on the caller's thread and chunk k−1 is written on
a writer thread.  Per fit, with ``in`` the bytes of its streamed inputs, ``res`` those of
its full :class:`Result` (``jac`` and ``residual`` included: ``fit_batch`` computes them
whether stored or not) and ``out`` those of the stored fields, the peak is about

    C · (4·in + 2·res + 3·out)

(a chunk being read and its decoded copy, the chunk fitted on the host and on the
device; the solver state and the Result; the stored fields of chunk k waiting for the
writer, and chunk k−1's with their encoded copy).  C is the largest chunk for which this
stays within ``MEMORY_BUDGET``, rounded down to a multiple of the input's own chunking
(so each input chunk is decoded once), never more than the batch.  The device waits on
the disk only when reading or writing one chunk takes longer than fitting one.

*Nothing lost.*  The store holds one array per stored field (batch axis first, chunked
by C along it, so a fit chunk is one file per array and two writers never share one),
and ``done``, one flag per chunk in a file of its own.  A chunk commits by writing its
fields, then its flag; zarr's local store writes every file atomically (a temporary file
renamed into place), so after a kill at any point a chunk is either flagged and whole,
or unflagged and redone, its partly written fields overwritten.  Fits are deterministic
for a given chunk, so a resumed store is bitwise the store of an uninterrupted run.
The store's attributes record a fingerprint of the call (``fun``'s name; the shapes and
dtypes of every input, a hash of the shared ones and of the first and last row of the
streamed ones; the options; the fields; C): a store of another problem is refused,
never silently mixed.  (A kill can leave zarr's temporary ``*.partial`` files behind;
they are never read.)

*Processes.*  Under ``jax.distributed.initialize()`` every process makes the same call;
chunk k is fitted by process ``k mod P`` on its local devices (independent fits need no
communication, and a round-robin share stays balanced however far an earlier run got).
Process 0 creates or checks the store; the others wait for it at a barrier
(``multihost_utils.sync_global_devices``) and check it too; all meet again at the end,
and every process then confirms that every chunk is done.

Parameters are stored flat, (B, n) in the order of ``Result.names`` (``jac``'s
columns, one array whatever the pytree), with ``names`` and ``order`` as attributes.
"""

import concurrent.futures
import hashlib
import json
import math
import os

import jax
import numpy as np

from . import _problem, _setup, _validate
from ._batch import fit_batch

FIELDS = ("params", "cost", "residual", "jac", "grad", "status", "n_steps", "n_fev", "n_jev")
DEFAULT_FIELDS = ("params", "cost", "status", "n_steps")
MEMORY_BUDGET = 2**28  # bytes of chunks alive at once (see the module docstring)
FORMAT = 1  # of the store's layout and fingerprint
_ATTRIBUTE = "fitfleet_stream"
_NOT_OPTIONS = ("history", "verbose", "progress")  # fit_batch's, not stored or per-chunk


def fit_stream(fun, x0, args, out, *, shared_args=(), chunk_size=None, progress=True, fields=None, **options):
    """Fit a batch that need not fit in memory, writing results to a zarr store as it goes.

    Runs :func:`fit_batch` chunk by chunk (reading the next chunk and writing the last
    while one is fitted) and commits each chunk atomically.  The same call with the same
    ``out`` after a crash or a kill fits only the chunks not done; the finished store is
    bit for bit that of an uninterrupted run.  Under ``jax.distributed.initialize()``
    every process makes the same call and fits its share.  Design: ``fitfleet._stream``;
    a cluster set-up: ``docs/streaming.md``.

    Args:
        fun: ``fun(params, *args)`` for ONE fit, as for :func:`fit_batch`.
        x0: starts with a leading batch axis B: an array-like (anything with ``shape``,
            ``dtype`` and slicing: numpy array or memmap, zarr array, h5py dataset), or
            a pytree of them.
        args: tuple of extra arguments, array-likes with the batch axis B, except those
            in ``shared_args`` (as for :func:`fit_batch`), held in memory.
        out: a zarr v3 store: a path (created if missing) or a ``zarr.Group``.  It
            holds one array per field (batch axis first), a ``done`` flag per chunk,
            and the call's fingerprint (its attributes).
        chunk_size: fits per chunk; default: the largest whose reading, fitting and
            writing fit ``MEMORY_BUDGET`` (256 MiB) together, aligned to the input's
            own chunks; a resumed call keeps the store's.
        progress: a progress bar of this process's fits (``tqdm``).
        fields: the :class:`Result` fields to store, among ``FIELDS``; default
            ``("params", "cost", "status", "n_steps")`` (``jac`` costs m·n numbers a
            fit).  ``params`` is stored flat (B, n), its columns named by the array's
            ``names`` attribute (``Result.names``), ``order`` giving the user's order.
        **options: :func:`fit_batch`'s fit options, the same for every chunk; a
            per-fit ``sigma`` (B, m) or (B, m, m) is streamed like ``args``.

    Returns:
        The ``zarr.Group`` written, complete.

    Example:
        >>> import numpy as np, jax.numpy as jnp, fitfleet as ff, tempfile
        >>> t = np.linspace(0.0, 4.0, 30)
        >>> y = np.exp(-np.array([[0.5], [1.0], [2.0]]) * t)   # on disk: np.load(..., mmap_mode="r")
        >>> out = ff.fit_stream(lambda p, t, y: p[0] * jnp.exp(-p[1] * t) - y, np.ones((3, 2)), (t, y),
        ...                     tempfile.mkdtemp() + "/fits.zarr", shared_args=(0,), progress=False)
        >>> out["params"][:, 1].round(4).tolist(), [ff.Status(s).success for s in out["status"][:]]
        ([0.5, 1.0, 2.0], [True, True, True])
    """
    zarr = _import_zarr()
    fields = _fields(fields)
    options = _options(options)
    x0, args, mask, size = _inputs(x0, args, shared_args)
    sigma = options.get("sigma")
    sigma_batched = sigma is not None and len(_shape(sigma)) >= 2 and _shape(sigma)[0] == size
    if sigma_batched:
        sigma = _array_like(sigma, "sigma")
    spec = _check_problem(fun, x0, args, mask, sigma if sigma_batched else None, options)
    progress = _validate.boolean("progress", progress)
    if chunk_size is not None:
        chunk_size = _validate.integer("chunk_size", chunk_size, minimum=1)
    streamed = (x0, tuple(a for a, b in zip(args, mask) if b), sigma if sigma_batched else None)
    shared = tuple(a for a, b in zip(args, mask) if not b)
    layout = _Layout(spec, fields, size)
    described = dict(options, sigma="streamed") if sigma_batched else options  # (its rows are hashed with x0's)
    fingerprint = _fingerprint(fun, streamed, shared, mask, described, spec, fields, size)

    rank, n_processes = jax.process_index(), jax.process_count()
    failure = None
    if rank == 0:
        try:
            root, chunk = _open(zarr, out, fingerprint, chunk_size, layout, streamed, create=True)
        except (ValueError, TypeError, OSError) as e:  # the others must pass the barrier to hear of it
            failure = e
    _barrier("fitfleet_stream_open", n_processes)
    if failure is not None:
        raise failure
    if rank != 0:
        root, chunk = _open(zarr, out, fingerprint, chunk_size, layout, streamed, create=False)

    n_chunks = math.ceil(size / chunk)
    done = np.asarray(root["done"][:])
    mine = [k for k in range(rank, n_chunks, n_processes) if not done[k]]
    rows = lambda k: (k * chunk, min(size, (k + 1) * chunk))  # noqa: E731
    length = lambda k: rows(k)[1] - rows(k)[0]  # noqa: E731
    shared_indices = tuple(i for i, b in enumerate(mask) if not b)
    devices = jax.local_devices()

    def read(k):
        lo, hi = rows(k)
        return _map(lambda a: np.array(a[lo:hi]), streamed)  # a copy: a memmap reads here

    def fit(data):
        x0_k, batched, sigma_k = data
        it = iter(batched)
        args_k = tuple(next(it) if b else a for a, b in zip(args, mask))
        opts = dict(options, sigma=sigma_k) if sigma_batched else options
        res = fit_batch(fun, x0_k, args_k, shared_args=shared_indices, devices=devices, progress=False, **opts)
        return {name: getattr(res, name) for name in fields}  # the rest is freed here

    arrays = {name: root[name] for name in (*fields, "done")}

    def write(k, values):
        lo, hi = rows(k)
        for name, value in values.items():
            arrays[name][lo:hi] = layout.host(name, value, hi - lo)
        arrays["done"][k] = 1  # last: the chunk's commit

    share = sum(length(k) for k in range(rank, n_chunks, n_processes))
    bar = _progress_bar(progress, share, share - sum(length(k) for k in mine))
    try:
        _pipeline(mine, read, fit, write, lambda k: bar is not None and bar.update(length(k)))
    except BaseException:
        if n_processes > 1:  # let the others finish and report the store incomplete
            _barrier("fitfleet_stream_done", n_processes)
        raise
    finally:
        if bar is not None:
            bar.close()
    if n_processes > 1:
        _barrier("fitfleet_stream_done", n_processes)
        missing = np.flatnonzero(np.asarray(root["done"][:]) == 0)
        if missing.size:
            raise RuntimeError(
                f"fit_stream: {missing.size} of {n_chunks} chunks (e.g. {missing[:5].tolist()}) were not written: "
                "another process failed (see its error). Run the same call again to fit the rest."
            )
    return root


def _pipeline(chunks, read, fit, write, committed):
    """Read chunk k+1 and write chunk k−1 while chunk k is fitted (one thread each,
    joined before returning: nothing runs on after the call)."""
    with (
        concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fitfleet-read") as reader,
        concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fitfleet-write") as writer,
    ):
        following = reader.submit(read, chunks[0]) if chunks else None
        pending = None
        try:
            for i, k in enumerate(chunks):
                data = following.result()
                following = reader.submit(read, chunks[i + 1]) if i + 1 < len(chunks) else None
                values = fit(data)
                del data
                if pending is not None:
                    pending[1].result()
                    committed(pending[0])
                pending = (k, writer.submit(write, k, values))
                del values
            if pending is not None:
                pending[1].result()
                committed(pending[0])
        finally:  # on an error, no new read starts; a write under way finishes (it commits or not)
            if following is not None:
                following.cancel()


# --------------------------------------------------------------------------- inputs


def _import_zarr():
    try:
        import zarr

        zarr.create_array  # zarr 3
    except (ImportError, AttributeError) as e:
        raise ImportError("fit_stream writes a zarr v3 store: pip install 'fitfleet[stream]' (or 'zarr>=3.1.3').") from e
    return zarr


def _fields(fields):
    if fields is None:
        return DEFAULT_FIELDS
    fields = (fields,) if isinstance(fields, str) else tuple(fields)
    unknown = [f for f in fields if f not in FIELDS]
    if unknown or not fields or len(set(fields)) != len(fields):
        raise ValueError(f"`fields` must name distinct Result fields among {FIELDS}; got {fields!r}.")
    return fields


def _options(options):
    refused = sorted(set(options) & set(_NOT_OPTIONS))
    if refused:
        raise TypeError(f"fit_stream does not take {refused}: it stores the fields in `fields=`, and `progress=` is its own bar.")
    unknown = sorted(set(options) - set(_setup.DEFAULTS))
    if unknown:
        raise TypeError(f"unexpected option(s) {unknown}; the fit options are {sorted(set(_setup.DEFAULTS) - set(_NOT_OPTIONS))}.")
    _setup.check_options(options)
    return options


def _shape(a):
    return tuple(a.shape) if hasattr(a, "shape") else np.shape(a)


def _array_like(a, name):
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


def _inputs(x0, args, shared_args):
    """``(x0, args, mask, B)``: streamed leaves as array-likes, a batched-or-shared mask."""
    args = _validate.arguments(args)
    if shared_args is True:
        mask = (False,) * len(args)
    else:
        shared = () if shared_args in (None, False) else (shared_args,) if np.ndim(shared_args) == 0 else tuple(shared_args)
        if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -len(args) <= i < len(args) for i in shared):
            raise ValueError(f"`shared_args` must be True or indices into args ({len(args)} entries); got {shared_args!r}.")
        mask = tuple(i not in {j % len(args) for j in shared} for i in range(len(args)))
    x0 = _map(lambda a: _array_like(a, "x0"), _validate.numbers_as_array(x0))
    if not jax.tree_util.tree_leaves(x0):
        raise ValueError("`x0` has no parameters: pass an array-like (batch, ...) or a pytree of them.")
    args = tuple(
        jax.tree_util.tree_map(lambda a, i=i: _array_like(a, f"args[{i}]"), a) if b else a for i, (a, b) in enumerate(zip(args, mask))
    )
    sizes = {_shape(leaf)[0] for leaf in jax.tree_util.tree_leaves(x0)}
    if len(sizes) != 1:
        raise ValueError(f"every array in `x0` needs the same leading batch axis (one row per fit); got lengths {sorted(sizes)}.")
    size = sizes.pop()
    if size == 0:
        raise ValueError("`x0` has an empty batch axis: there is nothing to fit.")
    for i, (a, b) in enumerate(zip(args, mask)):
        for leaf in jax.tree_util.tree_leaves(a) if b else ():
            if _shape(leaf)[0] != size:
                raise ValueError(
                    f"`args[{i}]` needs a leading batch axis of length {size}, like x0 (got shape {_shape(leaf)}); "
                    "list it in shared_args if it is common to all fits."
                )
    return x0, args, mask, size


def _map(f, tree):
    """``tree_map`` that keeps a dict's keys in the user's order (the names' order)."""
    if isinstance(tree, dict):
        return {k: _map(f, v) for k, v in tree.items()}
    return jax.tree_util.tree_map(f, tree)


def _check_problem(fun, x0, args, mask, sigma, options):
    """Validate the problem on its first fit (one abstract trace, no compilation)."""
    first = lambda tree: _map(lambda a: np.asarray(a[0]), tree)  # noqa: E731
    args0 = tuple(first(a) if b else a for a, b in zip(args, mask))
    o = {**_setup.DEFAULTS, **options, "sigma": first(sigma) if sigma is not None else options.get("sigma")}
    return _problem.check(
        fun, first(x0), args0, o["jac"], sigma=o["sigma"], bounds=o["bounds"], log_scale=o["log_scale"], loss=o["loss"],
        f_scale=o["f_scale"],
    )  # fmt: skip


# --------------------------------------------------------------------------- the store


class _Layout:
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
        row_bytes = [math.prod(_shape(a)[1:]) * np.dtype(a.dtype).itemsize for a in leaves]
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


def _open(zarr, out, fingerprint, chunk_size, layout, streamed, create):
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


def _fingerprint(fun, streamed, shared, mask, options, spec, fields, size):
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
        options={k: _describe(v) for k, v in sorted({**_setup.DEFAULTS, **options}.items()) if k not in _NOT_OPTIONS},
    )


def _describe_streamed(a, size):
    """Shape, dtype and a hash of the first and last rows (reading them all would cost
    a pass over the data)."""
    rows = np.concatenate([np.asarray(a[0:1]), np.asarray(a[size - 1 : size])])
    return dict(shape=list(_shape(a)), dtype=str(np.dtype(a.dtype)), rows=_digest(rows))


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


# --------------------------------------------------------------------------- processes and progress


def _barrier(name, n_processes):
    if n_processes > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _progress_bar(progress, total, initial):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError as e:
        raise ImportError("progress=True needs tqdm: pip install 'fitfleet[stream]' (or pass progress=False).") from e
    return tqdm(total=total, initial=initial, unit="fit", desc="fitfleet stream")
