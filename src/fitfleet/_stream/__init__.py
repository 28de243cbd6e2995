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
import math

import jax
import numpy as np

from .. import _validate
from .._batch import fit_batch
from .inputs import (
    array_like,
    check_problem,
    import_zarr,
    inputs,
    mapped,
    options_of,
    selected_fields,
)
from .store import FIELDS, MEMORY_BUDGET, Layout, fingerprint_of, open_store, shape_of

__all__ = ["FIELDS", "MEMORY_BUDGET", "fit_stream"]


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
    zarr = import_zarr()
    fields = selected_fields(fields)
    options = options_of(options)
    x0, args, mask, size = inputs(x0, args, shared_args)
    sigma = options.get("sigma")
    sigma_batched = sigma is not None and len(shape_of(sigma)) >= 2 and shape_of(sigma)[0] == size
    if sigma_batched:
        sigma = array_like(sigma, "sigma")
    spec = check_problem(fun, x0, args, mask, sigma if sigma_batched else None, options)
    progress = _validate.boolean("progress", progress)
    if chunk_size is not None:
        chunk_size = _validate.integer("chunk_size", chunk_size, minimum=1)
    streamed = (x0, tuple(a for a, b in zip(args, mask) if b), sigma if sigma_batched else None)
    shared = tuple(a for a, b in zip(args, mask) if not b)
    layout = Layout(spec, fields, size)
    described = dict(options, sigma="streamed") if sigma_batched else options  # (its rows are hashed with x0's)
    fingerprint = fingerprint_of(fun, streamed, shared, mask, described, spec, fields, size)

    rank, n_processes = jax.process_index(), jax.process_count()
    failure = None
    if rank == 0:
        try:
            root, chunk = open_store(zarr, out, fingerprint, chunk_size, layout, streamed, create=True)
        except (ValueError, TypeError, OSError) as e:  # the others must pass the barrier to hear of it
            failure = e
    _barrier("fitfleet_stream_open", n_processes)
    if failure is not None:
        raise failure
    if rank != 0:
        root, chunk = open_store(zarr, out, fingerprint, chunk_size, layout, streamed, create=False)

    n_chunks = math.ceil(size / chunk)
    done = np.asarray(root["done"][:])
    mine = [k for k in range(rank, n_chunks, n_processes) if not done[k]]
    rows = lambda k: (k * chunk, min(size, (k + 1) * chunk))  # noqa: E731
    length = lambda k: rows(k)[1] - rows(k)[0]  # noqa: E731
    shared_indices = tuple(i for i, b in enumerate(mask) if not b)
    devices = jax.local_devices()

    def read(k):
        lo, hi = rows(k)
        return mapped(lambda a: np.array(a[lo:hi]), streamed)  # a copy: a memmap reads here

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
