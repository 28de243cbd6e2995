"""Many independent fits in one compiled program: ``fit_batch``.

Under ``vmap`` a ``while_loop`` runs until its slowest member stops, so one fit that
needs 500 steps would make a thousand easy fits pay for 500 steps each.  And a step
vmapped over a whole batch streams every intermediate (each fit's Jacobian, ``JᵀJ``...)
through main memory, once per operation.  The engine avoids both by running a chunk of
fits in *parts*, *blocks* and *rounds*:

- A *part* is one host thread's share of a chunk.  On CPU a chunk has one part per
  core: a block is too small for XLA to spread over cores, but executions from
  separate threads run in parallel.  Parts call compiled executables, never ``jit``
  (tracing depends on thread-local configuration such as ``enable_x64``).
- A *block* is a few dozen fits (``CPU_BLOCK``, fewer if their working set would not
  stay in cache) stepped together by a vmapped ``while_loop``.  On an accelerator a
  block is as large as the part (``ACCELERATOR_BLOCK``).
- A *round* gathers a part's running fits into its first blocks (a stable argsort of
  their statuses) and runs those blocks one after the other, each until at most a
  quarter of its fits (``1/SHRINK``) are still running; blocks with no running fit are
  never touched.  The host reads back one count per round (and updates the progress
  bar), and repeats.
- The *tail*: on CPU a step costs about in proportion to its block's width, finished
  fits included, so the last few running fits step in narrower blocks (``TAILS``: at
  most 16 fits in a block of 16 until at most 4 run, those in a block of 4), one
  program to the end, and a handful of slow fits do not make a full block step with
  them.  The tail's program is traced and compiled on a background thread once the
  round's has compiled (a first call does not wait for it); until it is ready, the
  round's program runs the tail too.

So a chunk compiles four programs: the initialisation, the round, the results and
the tail, all on worker threads; the first three while this thread traces the next
one.  Every fit
takes exactly the steps it would take alone (a step leaves a finished fit unchanged,
and a block's size changes nothing in a fit's arithmetic), so the results equal a
plain vmapped loop up to round-off.

Chunks bound memory: a batch larger than ``chunk_size`` (by default what fits a memory
budget) runs chunk by chunk.  With several ``jax.devices()`` each chunk is split across
them (``jax.shard_map`` over a sharded batch axis): each device runs its own rounds on
its own fits.  Under a JAX transformation (``jit``, ``grad``, ``vmap`` of ``fit_batch``)
the host cannot look at statuses, so the engine falls back to ``vmap(least_squares)``,
which is traceable and differentiable.
"""

import concurrent.futures
import contextvars
import dataclasses
import functools
import math
import os
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import jaxpr_as_fun
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import _driver, _problem, _setup, _validate, _xla
from ._least_squares import least_squares
from ._setup import DEFAULTS
from ._status import Status

CPU_BLOCK = 64  # fits per block on CPU: small enough that a few slow fits waste little
ACCELERATOR_BLOCK = 2**14  # on GPU/TPU a block should fill the device
BLOCK_BYTES = 2**20  # a CPU block's working set stays within about what a core's cache holds
WORK_FACTOR = 8  # working memory of a step relative to its state and data
TAILS = (16, 4)  # the last few running fits run in blocks of these sizes
SHRINK = 4  # a block's loop stops once at most 1/SHRINK of its fits still run
MEMORY_BUDGET = 2**30  # bytes of state and data per device for one chunk
# Parts are split, and chunks joined, on the host below this many bytes (a helper program
# would cost more to compile than the copy), on the device above.  One chunk's parts are
# always joined on the device: device_put's cost per array exceeds a compiled join's.
LARGE = 2**22


def fit_batch(
    fun,
    x0,
    args=(),
    *,
    shared_args=(),
    method="lm",
    jac="auto",
    ftol=1e-8,
    xtol=1e-8,
    gtol=1e-8,
    max_steps=None,
    max_nfev=None,
    x_scale=None,
    sigma=None,
    bounds=None,
    log_scale=False,
    loss="linear",
    f_scale=1.0,
    learning_rate=None,
    initial_damping=1e-3,
    adjoint="implicit",
    grad_on_failure="nan",
    history=False,
    verbose=0,
    chunk_size=None,
    devices=None,
    progress=False,
):
    """Fit many independent problems ``fun(params_i, *args_i)`` at once.

    Each fit is exactly :func:`least_squares` on its own slice of the batch; they share
    one compiled program, and a slow fit never holds the others back (see the module
    docstring of ``fitfleet._batch``).

    Args:
        fun: ``fun(params, *args)`` for ONE fit, as for :func:`least_squares`.
        x0: starting parameters with a leading batch axis (an array (B, ...), nested
            lists of numbers, or a pytree whose every leaf has the same leading size B).
        args: tuple of extra arguments; each carries a leading batch axis unless listed
            in ``shared_args``.
        shared_args: indices into ``args`` of arguments common to every fit (a shared
            ``x`` grid, say), or ``True`` when all are shared.
        sigma: as for :func:`least_squares`, shared by all fits, or per fit with a leading
            batch axis: (B, m) standard deviations or (B, m, m) covariances.  A 2-D
            sigma of shape (B, m) is read as per-fit even when B == m.
        chunk_size: fits per chunk; default: as many as fit a working-memory budget of
            1 GiB per device.  Smaller chunks use less memory, not less time.
        devices: the devices to spread each chunk over; default ``jax.devices()``.  On
            the default CPU device a chunk is also split over one thread per core.
        progress: show a progress bar of finished fits (needs ``tqdm``).
        history: ``k`` records the start and the first ``k − 1`` steps of every fit
            (``Result.history``, with the batch axis); off by default.
        verbose: 1 prints the batch's Result (statuses counted) at the end.
        method, jac, ftol, xtol, gtol, max_steps, max_nfev, x_scale, bounds, log_scale,
            loss, f_scale, learning_rate, initial_damping, adjoint, grad_on_failure: as for
            :func:`least_squares`, the same for every fit (bounds are shared).  Under
            ``jax.grad``/``jit``/``vmap`` the batch runs as ``vmap(least_squares)``, whose
            derivatives these options define.

    Returns:
        A :class:`Result` whose every field has a leading batch axis of size B; each fit
        has its own ``status`` (a failing fit never affects the others).

    Example:
        >>> import jax.numpy as jnp
        >>> import fitfleet as ff
        >>> t = jnp.linspace(0.0, 4.0, 30)
        >>> rates = jnp.array([0.5, 1.0, 2.0])
        >>> y = jnp.exp(-rates[:, None] * t)                  # three data sets
        >>> def residual(p, t, y):
        ...     return p[0] * jnp.exp(-p[1] * t) - y
        >>> res = ff.fit_batch(residual, jnp.ones((3, 2)), (t, y), shared_args=(0,))
        >>> res.params[:, 1].round(4).tolist(), res.success.tolist()
        ([0.5, 1.0, 2.0], [True, True, True])
    """
    options = {name: value for name, value in locals().items() if name in DEFAULTS}
    args = _validate.arguments(args)
    mask = _batched_mask(shared_args, len(args))
    x0 = _validate.parameters(x0)
    size = _batch_size(x0, args, mask)
    sigma_batched = sigma is not None and np.ndim(sigma) >= 2 and np.shape(sigma)[0] == size

    if _validate.any_traced((x0, args, sigma, options)):
        _setup.check_options(options)
        return _vmapped_least_squares(fun, x0, args, mask, sigma_batched, dict(options, progress=False))

    first = lambda t: jax.tree_util.tree_map(lambda a: a[0], t)  # noqa: E731
    args0 = tuple(first(a) if b else a for a, b in zip(args, mask))
    one = dict(options, sigma=first(sigma) if sigma_batched else sigma)
    if options["history"] is True:
        raise ValueError("`history` in fit_batch is a number of rows, history=k (the start and the first k - 1 steps of each fit): a cap, so that a million fits cannot fill the memory by accident.")
    if options["verbose"] == 2:
        raise ValueError("`verbose=2` (a line per step) is for least_squares; fit_batch takes verbose=0 or 1 (a summary at the end), or progress=True.")
    spec, solver, _, monitor = _setup.prepare(fun, first(x0), args0, one, batched=True)
    x0 = jax.tree_util.tree_map(lambda a: a.astype(spec.dtype), x0)
    _validate.start(_flat_rows(x0), spec.box, np.asarray(spec.log or False), "x0")
    sigma_data = None
    if sigma_batched:  # the given sigmas, and a covariance's Cholesky factors (computed once, here)
        given = _validate.batched_sigma(sigma, size, spec.n_residuals, spec.dtype)
        sigma_data = (given, None if given.ndim == 2 else _problem.whitening(given))
    template = dataclasses.replace(spec, args=tuple(None if b else a for a, b in zip(spec.args, mask)))
    data = (x0, tuple(a for a, b in zip(args, mask) if b), sigma_data)
    engine = _Engine(fun, solver, template, mask, sigma_batched, monitor, _devices(devices))
    with _xla.compile_notice("the batch's programs"):
        res = engine.run(data, size, _chunk_size(chunk_size), _validate.boolean("progress", progress))
    if verbose:
        print(res)
    return res


# --------------------------------------------------------------------------- validation


def _batched_mask(shared_args, n_args):
    if shared_args is True:
        return (False,) * n_args
    if shared_args is False or shared_args is None:
        return (True,) * n_args
    try:
        shared = {int(i) for i in ([shared_args] if np.ndim(shared_args) == 0 else shared_args)}
    except TypeError as e:
        raise TypeError(f"`shared_args` must be True or a tuple of indices into args; got {shared_args!r}.") from e
    if any(not -n_args <= i < n_args for i in shared):
        raise ValueError(f"`shared_args` {sorted(shared)} indexes outside args, which has {n_args} entries.")
    shared = {i % n_args for i in shared}
    return tuple(i not in shared for i in range(n_args))


def _batch_size(x0, args, mask):
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
        raise ValueError(
            "every array in `x0` needs the same leading batch axis (one row per fit); "
            f"got leading sizes {sorted(sizes)}."
        )
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


def _flat_rows(x0):
    return np.concatenate([np.asarray(leaf, np.float64).reshape(np.shape(leaf)[0], -1) for leaf in jax.tree_util.tree_leaves(x0)], 1)


def _chunk_size(chunk_size):
    return None if chunk_size is None else _validate.integer("chunk_size", chunk_size, minimum=1)


def _devices(devices):
    """``None`` (every device of the default backend), a platform name (``"cpu"``,
    ``"gpu"``), or a list of devices."""
    if devices is None:
        return jax.devices()
    if isinstance(devices, str):
        try:
            return jax.devices(devices)
        except RuntimeError as e:
            raise ValueError(f"`devices={devices!r}`: no such platform here ({e}). Pass None for the default devices.") from e
    devices = list(devices) if isinstance(devices, (list, tuple)) else [devices]
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise ValueError(f"`devices` must be None, a platform name such as 'cpu', or a list of jax devices; got {devices!r}.")
    return devices


def _vmapped_least_squares(fun, x0, args, mask, sigma_batched, options):
    """The traceable path: one vmapped ``while_loop``, no host-side compaction."""
    batched_args = tuple(a for a, b in zip(args, mask) if b)
    sigma = options.pop("sigma")

    def one(x0_i, bargs_i, sigma_i):
        it = iter(bargs_i)
        args_i = tuple(next(it) if b else a for a, b in zip(args, mask))
        return least_squares(fun, x0_i, args_i, sigma=sigma_i if sigma_batched else sigma, **options)

    return jax.vmap(one, in_axes=(0, 0, 0 if sigma_batched else None))(x0, batched_args, sigma if sigma_batched else None)


# --------------------------------------------------------------------------- the engine


def _member(template, mask, sigma_batched, data):
    """The Spec of one fit from the shared template and that fit's slice of the data."""
    x0, batched_args, sigma = data
    it = iter(batched_args)
    args = tuple(next(it) if b else a for a, b in zip(template.args, mask))
    if not sigma_batched:
        return dataclasses.replace(template, x0=x0, args=args)
    given, factor = sigma
    return dataclasses.replace(template, x0=x0, args=args, sigma=given if factor is None else factor, sigma_given=given)


def _iterate(statics, data, state, threshold):
    """Step every running fit until at most ``threshold`` of them are still running."""
    vstep = jax.vmap(_traced_step(statics, data, state))
    return jax.lax.while_loop(
        lambda s: jnp.sum(s.status == Status.RUNNING) > threshold, lambda s: vstep(data, s), state
    )


def _step_one(statics, data, state):
    """One step of one fit; a finished fit is left as it is."""
    fun, solver, template, mask, sigma_batched, monitor = statics
    problem, _ = _problem.make_problem(fun, _member(template, mask, sigma_batched, data))
    new = _driver.step(solver, problem, state, monitor)
    running = state.status == Status.RUNNING
    return jax.tree_util.tree_map(lambda a, b: jnp.where(running, a, b), new, state)


def _traced_step(statics, data, state):
    """``_step_one`` for one fit of the batch ``(data, state)``, from a jaxpr traced once
    per model and shapes: the round and the tail vmap it at their own block sizes, and
    vmapping a jaxpr takes a fraction of the time of tracing the step under ``vmap``."""
    arrays, static = eqx.partition(statics, eqx.is_array)

    def shapes(tree, batched):  # of one fit
        aval = lambda a: jax.ShapeDtypeStruct(a.shape[batched:], a.dtype, weak_type=jax.typeof(a).weak_type)  # noqa: E731
        return jax.tree_util.tree_map(aval, tree)

    one = (shapes(arrays, 0), shapes(data, 1), shapes(state, 1))
    key = (_signature((static, one)), _trace_context())
    traced = _STEPS.get(key)  # one lookup: the tail's thread may clear the cache meanwhile
    if traced is None:
        step = lambda a, d, s: _step_one(eqx.combine(a, static), d, s)  # noqa: E731
        traced = _remember(_STEPS, key, jax.make_jaxpr(step, return_shape=True)(*one))
    jaxpr, out = traced
    run, structure = jaxpr_as_fun(jaxpr), jax.tree_util.tree_structure(out)
    return lambda d, s: jax.tree_util.tree_unflatten(structure, run(*jax.tree_util.tree_leaves((arrays, d, s))))


def _init(statics, blocks, data, valid):
    """The initial states; padding (``valid`` False) starts finished, so no round steps it."""
    state = jax.lax.map(functools.partial(_init_one, statics), data, batch_size=blocks[0])
    return _pack(eqx.tree_at(lambda s: s.status, state, jnp.where(valid, state.status, jnp.int32(Status.MAX_STEPS))))


def _round(statics, blocks, data, packed, stop_at):
    """One round over this device's fits (see the module docstring), in stages: in
    blocks of ``blocks[0]``, then, once at most ``blocks[1]`` run, in one block of that
    size, and so on; returns the new (packed) state and how many fits still run.  The
    last stage, on one block, stops at ``stop_at`` running fits (the tail's block), or
    runs them all to the end (0)."""
    for block, stage_stop in zip(blocks, (*blocks[1:], stop_at)):
        packed = _stage(statics, block, data, packed, stage_stop)
    unpack = functools.partial(_unpack, like=_fit_state_shape(statics, data))
    return packed, jnp.sum(unpack(packed).status == Status.RUNNING, dtype=jnp.int32)[None]


def _stage(statics, block, data, packed, stop_at):
    """The running fits, gathered first, in blocks of ``block``, one block after the
    other, each until at most ``block // SHRINK`` of its fits run (``stop_at`` if one
    block holds them all)."""
    unpack = functools.partial(_unpack, like=_fit_state_shape(statics, data))
    running = unpack(packed).status == Status.RUNNING
    n_running = jnp.sum(running, dtype=jnp.int32)
    order = jnp.argsort(~running, stable=True).astype(jnp.int32)  # running fits first
    n_blocks = -(-n_running // block)
    threshold = jnp.where(n_blocks > 1, block // SHRINK, stop_at)

    def run_block(i, packed):
        rows = jax.lax.dynamic_slice_in_dim(order, i * block, block)
        take = lambda tree: jax.tree_util.tree_map(lambda a: a[rows], tree)  # noqa: E731
        stepped = _pack(_iterate(statics, take(data), unpack(take(packed)), threshold))
        return tuple(a.at[rows].set(b, unique_indices=True) for a, b in zip(packed, stepped))

    return jax.lax.fori_loop(0, n_blocks, run_block, packed)


def _results(statics, blocks, data, packed):
    fun, _, template, mask, sigma_batched, _ = statics
    like = _fit_state_shape(statics, data)

    def one(ds):
        spec = _member(template, mask, sigma_batched, ds[0])
        problem, _ = _problem.make_problem(fun, spec)
        return _driver.to_result(problem, _unpack(ds[1], like), spec=spec)

    return jax.lax.map(one, (data, packed), batch_size=blocks[0])


def _program(local, n_batched, n_shared=0):
    """A jitted program over a chunk: ``local`` on one device, or under ``shard_map``
    on each device's share of the batch axis (a ``mesh`` is given)."""

    def program(statics, blocks, mesh, *arrays):
        f = functools.partial(local, statics, blocks)
        if mesh is not None:
            specs = (PartitionSpec("batch"),) * n_batched + (PartitionSpec(),) * n_shared
            f = jax.shard_map(f, mesh=mesh, in_specs=specs, out_specs=PartitionSpec("batch"), check_vma=False)
        return f(*arrays)

    return program


_INIT, _ROUND, _RESULTS = (_xla.filter_jit(_program(*a)) for a in ((_init, 2), (_round, 2, 1), (_results, 2)))
# Compilations run here, on worker threads, while the caller's thread traces the next
# program or runs the first one.  The tail's program is traced and compiled later, on
# its own thread, once the round's is done: until it is ready the round's program
# serves the tail.
_COMPILER = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="fitfleet-compile")
_LATER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fitfleet-compile-later")
# On CPU a chunk is split into one part per core, each part's rounds on its own thread:
# a block is too small for XLA to spread over cores, but separate executions run in
# parallel.
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
_RUNNER = concurrent.futures.ThreadPoolExecutor(max_workers=_CORES, thread_name_prefix="fitfleet-run")


class _Engine:
    """Host-side loop over chunks, parts and rounds (see the module docstring)."""

    def __init__(self, fun, solver, template, mask, sigma_batched, monitor, devices):
        self.statics = (fun, solver, template, mask, sigma_batched, monitor)
        self.n_devices = len(devices)
        self.cpu = devices[0].platform == "cpu"
        self.mesh = Mesh(np.asarray(devices), ("batch",)) if self.n_devices > 1 else None
        if self.mesh is not None:
            self.device = NamedSharding(self.mesh, PartitionSpec("batch"))
        else:
            self.device = None if devices[0] == jax.devices()[0] else devices[0]
        # Compiled executables serve the default device: they carry no tracing state, so
        # worker threads may call them.  Elsewhere the jitted programs run on this thread.
        self.precompiled = self.device is None
        self.n_parts = _CORES if self.cpu and self.precompiled else 1
        self.x64 = jnp.result_type(float) == jnp.float64  # the caller's (thread-local) enable_x64 mode

    def run(self, data, size, chunk_size, progress):
        chunk, part, block = self._layout(data, size, chunk_size)
        n_chunks, n_parts = math.ceil(size / chunk), chunk // part
        bar = _progress_bar(progress, size)
        programs, fresh = self._programs(data, part, block)
        if fresh and n_chunks == 1:
            self._prepare_after(programs["results"].out, n_parts, size)
        try:
            results = []
            for c in range(n_chunks):
                rows = np.arange(c * chunk, (c + 1) * chunk)
                chunk_data = (data if chunk == size else _take(data, np.minimum(rows, size - 1)), rows < size)
                n_valid = np.clip(size - c * chunk - np.arange(0, chunk, part), 0, part)
                parts = _split(chunk_data, n_parts) if n_parts > 1 else [jax.device_put(chunk_data, self.device)]
                if n_parts == 1:
                    results.append(self._run_part(programs, parts[0], int(n_valid[0]), bar))
                else:
                    futures = [_RUNNER.submit(self._run_part, programs, *p, bar) for p in zip(parts, n_valid)]
                    results += [f.result() for f in futures]
        finally:
            if bar is not None:
                bar.close()
        if len(results) == 1 and (size == chunk or self.mesh is not None):
            return results[0] if size == chunk else _take(results[0], slice(0, size))  # stays sharded
        if size == chunk:  # one chunk's parts (see LARGE)
            return _concatenate_on_device(results, size)
        return _concatenate(results, size)

    def _run_part(self, programs, part, n_valid, bar):
        """Initialise, run rounds until no fit of this part runs, and return its Results."""
        # On a worker thread, in the caller's enable_x64 mode (it is thread-local): numpy
        # arguments (hyper-parameters, the host's share of the data) convert as they would
        # on the caller's thread.
        with _x64(self.x64):
            return self._rounds(programs, part, n_valid, bar)

    def _rounds(self, programs, part, n_valid, bar):
        data, valid = part
        state = programs["init"](self.statics, self.mesh, data, valid)
        counts = np.array([n_valid])  # not read back: the first round follows at once
        done_before = 0
        while True:
            if bar is not None:
                status = _unpack(tuple(map(np.asarray, state)), _fit_state_shape(self.statics, data)).status
                done_now = n_valid - int(np.sum(status[:n_valid] == Status.RUNNING))
                with bar.get_lock():  # parts report from several threads
                    bar.update(done_now - done_before)
                done_before = done_now
            if counts.max() == 0:
                break
            tail = programs["tail"]
            has_tail = tail is not None and tail.future.done() and tail.future.result() is not None
            if has_tail and counts.max() <= tail.blocks[0]:
                state, counts = tail(self.statics, self.mesh, data, state, np.int32(0))
            else:  # until the tail can take over, or to the end
                stop_at = np.int32(tail.blocks[0] if has_tail else 0)
                state, counts = programs["round"](self.statics, self.mesh, data, state, stop_at)
            counts = np.asarray(counts)
        return programs["results"](self.statics, self.mesh, data, state)

    def _programs(self, data, part, block):
        """The programs that run a part: compiled executables, compiling on worker
        threads (tracing stays on this thread, under the caller's JAX configuration:
        ``enable_x64`` and friends are thread-local), or else the jitted programs; and
        whether they are new (this is their first call)."""
        # The round, the longest to compile, goes first; the tail is needed last.
        jitted = {"round": _ROUND, "init": _INIT, "results": _RESULTS}
        # On an accelerator a narrower block steps no faster (a step costs its kernel
        # launches), so there the tail is one block.
        tail = tuple(size for size in (TAILS if self.cpu else TAILS[:1]) if size < block)
        abstract = jax.tree_util.tree_map(lambda a: np.broadcast_to(np.zeros((), a.dtype), (part, *a.shape[1:])), data)
        key = _signature((self.statics, abstract, block)) if self.precompiled else None
        programs = None if key is None else _EXECUTABLES.get(key)
        if programs is not None:
            return programs, False
        if not self.precompiled:
            programs = {name: _Program(_done(program), (block,)) for name, program in jitted.items()}
            return {**programs, "tail": _Program(_done(_ROUND), tail) if tail else None}, False
        state = _abstract_state(self.statics, abstract)
        options = _xla.cpu_options() if self.cpu else None
        valid = np.broadcast_to(np.True_, (part,))
        arrays = {"round": (abstract, state, np.int32(0)), "init": (abstract, valid), "results": (abstract, state)}
        programs = {}
        for name, program in jitted.items():
            args = (self.statics, (block,), self.mesh, *arrays[name])
            lowered = program.lower(*args)
            out = eqx.filter_eval_shape(program, *args) if name == "results" else None  # traced already
            programs[name] = _Program(_COMPILER.submit(lowered.compile, options), (block,), out)
        programs["tail"] = None
        if tail:
            lower = functools.partial(_ROUND.lower, self.statics, tail, self.mesh, *arrays["round"])
            future = _LATER.submit(self._compile_later, lower, options, programs["round"].future, _trace_context())
            programs["tail"] = _Program(future, tail)
        return _remember(_EXECUTABLES, key, programs, limit=32), True

    def _prepare_after(self, result, n_parts, size):
        """On a first call, while the batch's programs compile: compile what runs after
        them, the join of the parts' results and whatever the caller set in
        ``_AFTER_BATCH`` (multi-start's sorting), from one part's ``result`` (shapes)."""
        if n_parts > 1:
            _COMPILER.submit(_concatenate_on_device.lower([result] * n_parts, size).compile)
        hook = _AFTER_BATCH.get()
        if hook is not None:
            hook(jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct((size, *s.shape[1:]), s.dtype), result))

    def _compile_later(self, lower, options, first, context):
        """Trace and compile a program on a background thread once ``first`` has
        compiled (so that a first call's own compilations have the cores), in the
        caller's tracing configuration; ``None`` where that cannot be reproduced here."""
        first.exception()
        with _x64(self.x64):
            if context is None or _trace_context() != context:
                return None  # e.g. a thread-local option other than enable_x64 was set
            return lower().compile(options)

    def _layout(self, data, size, chunk_size):
        """``(chunk, part, block)``: fits per chunk, per part (run by one thread), and per
        block.  A part is a multiple of the block (and of the device count), a chunk a
        multiple of the part; chunks are padded with copies of the last fit, which start
        finished."""
        unit = self.n_devices
        per_fit = _bytes_per_fit(self.statics, data)
        if chunk_size is not None:
            if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
                raise ValueError(f"`chunk_size` must be a positive integer or None; got {chunk_size!r}.")
            chunk = min(int(chunk_size), size)
        else:
            limit = max(unit, MEMORY_BUDGET * unit // (2 * per_fit))
            chunk = math.ceil(size / math.ceil(size / limit))
        per_device = math.ceil(chunk / unit)
        if self.cpu:
            largest = min(CPU_BLOCK, 2 ** int(math.log2(max(1, BLOCK_BYTES // (WORK_FACTOR * per_fit)))))
        else:
            largest = ACCELERATOR_BLOCK
        block = min(largest, _next_power_of_two(math.ceil(per_device / self.n_parts)))
        n_parts = min(self.n_parts, math.ceil(per_device / block))
        # Blocks per part from a coarse ladder (..., 8, 9, ..., 15, 16, 18, ..., 30, 32, 36...):
        # batches of nearby sizes share one compiled program; the padding starts finished
        # and costs no steps.
        part = _coarse(math.ceil(per_device / n_parts / block)) * block * unit
        return part * n_parts, part, block


class _Program(NamedTuple):
    """A program (a future of it, while it compiles), its block sizes (static), and the
    shapes of its output (for the results' program)."""

    future: concurrent.futures.Future
    blocks: tuple
    out: object = None

    def __call__(self, statics, mesh, *arrays):
        return self.future.result()(statics, self.blocks, mesh, *arrays)


# A function of the batch's Result (shapes) to call on a first call while the batch's
# programs compile, set by a caller that runs a program of its own afterwards.
_AFTER_BATCH = contextvars.ContextVar("fitfleet_after_batch", default=None)


def _done(value):
    future = concurrent.futures.Future()
    future.set_result(value)
    return future


def _coarse(n):
    """n rounded up to four significant bits (8 values per octave): at most 1/8 more."""
    shift = max(0, n.bit_length() - 4)
    return -(-n >> shift) << shift


def _next_power_of_two(n):
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def _fit_state_shape(statics, data):
    """Shapes of one fit's solver state for a batch ``data``, without computing anything."""
    one = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a)[1:], a.dtype), data)
    key = _signature((statics, one))
    shapes = _STATE_SHAPES.get(key)
    if shapes is None:
        shapes = _remember(_STATE_SHAPES, key, jax.eval_shape(functools.partial(_init_one, statics), one))
    return shapes


def _state_shape(statics, data):
    """Shapes of the solver state of a batch ``data``."""
    batch = (_leading(data),)
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(batch + s.shape, s.dtype), _fit_state_shape(statics, data))


def _init_one(statics, data):
    fun, solver, template, mask, sigma_batched, monitor = statics
    problem, u0 = _problem.make_problem(fun, _member(template, mask, sigma_batched, data))
    return _driver.start(solver, problem, u0, monitor)


# What a repeated call with the same shapes need not trace again (the programs themselves
# live in jax's compilation cache).
_STATE_SHAPES = {}
_STEPS = {}  # one fit's step, traced
_EXECUTABLES = {}  # futures of compiled programs, per model, shapes and block


def _signature(tree):
    """A hashable key of a pytree's structure, array shapes and static leaves."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    is_shaped = lambda a: eqx.is_array(a) or isinstance(a, jax.ShapeDtypeStruct)  # noqa: E731
    spec = tuple((np.shape(a), a.dtype, getattr(a, "weak_type", False)) if is_shaped(a) else a for a in leaves)
    try:
        hash(spec)
    except TypeError:  # an unhashable static leaf: no caching, just a little more tracing
        return object()
    return treedef, spec


def _remember(cache, key, value, limit=256):
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value
    return value


def _abstract_state(statics, data):
    """A stand-in packed state for lowering: zero-stride views, so nothing is allocated."""
    packed = jax.eval_shape(_pack, _state_shape(statics, data))
    return tuple(np.broadcast_to(np.zeros((), s.dtype), s.shape) for s in packed)


# Between the programs a state travels packed: one (fits, k) matrix per dtype instead of
# a dozen arrays, so that a round gathers and scatters each block's rows once per dtype,
# not once per field (each scatter is a kernel of its own to compile and to run).


def _pack(state):
    """A batched state as a tuple of matrices, one per dtype, a fit per row."""
    leaves = jax.tree_util.tree_leaves(state)
    groups = {}
    for leaf in leaves:
        groups.setdefault(np.dtype(leaf.dtype), []).append(leaf.reshape(leaf.shape[0], -1))
    return tuple(jnp.concatenate(g, axis=1) if len(g) > 1 else g[0] for g in groups.values())


def _unpack(packed, like):
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


def _bytes_per_fit(statics, data):
    """Bytes of one fit's state and data."""
    shapes = (_state_shape(statics, data), data)
    total = sum(math.prod(s.shape) * s.dtype.itemsize for s in jax.tree_util.tree_leaves(shapes))
    return max(1, total // _leading(data))


def _leading(tree):
    return jax.tree_util.tree_leaves(tree)[0].shape[0]


def _split(tree, n):
    """``n`` equal parts along the batch axis: device arrays, or numpy ones when small
    (device_put costs tens of microseconds per array, more than a compiled program
    takes to copy a small numpy argument each time it is called)."""
    if _nbytes(tree) > LARGE:
        return _split_on_device(tree, n)
    size = _leading(tree) // n
    host = jax.tree_util.tree_map(np.asarray, tree)
    return [jax.tree_util.tree_map(lambda a: a[i * size : (i + 1) * size], host) for i in range(n)]


def _concatenate(trees, size):
    """The first ``size`` fits of the chunks' results, joined."""
    if _nbytes(trees) > LARGE:
        return _concatenate_on_device(trees, size)
    joined = jax.tree_util.tree_map(lambda *a: np.concatenate([np.asarray(x) for x in a])[:size], *trees)
    return jax.device_put(joined)  # one call: device_put has a fixed cost per call


def _nbytes(tree):
    return sum(np.size(a) * np.dtype(a.dtype).itemsize for a in jax.tree_util.tree_leaves(tree))


@functools.partial(jax.jit, static_argnums=1)
def _split_on_device(tree, n):
    size = _leading(tree) // n
    return [jax.tree_util.tree_map(lambda a: a[i * size : (i + 1) * size], tree) for i in range(n)]


@functools.partial(jax.jit, static_argnums=1)
def _concatenate_on_device(trees, size):
    return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a)[:size], *trees)


def _trace_context():
    """The configuration JAX's tracing depends on (JAX keys its own caches on it), or
    ``None`` where this JAX does not say."""
    try:
        from jax._src.config import trace_context
    except ImportError:
        return None
    return trace_context()


def _x64(enabled):
    """A context in which ``enable_x64`` is ``enabled`` on this thread."""
    if callable(getattr(jax, "enable_x64", None)):
        return jax.enable_x64(enabled)
    from jax.experimental import disable_x64, enable_x64  # older jax

    return enable_x64() if enabled else disable_x64()


def _take(tree, rows):
    return jax.tree_util.tree_map(lambda a: a[rows], tree)


def _progress_bar(progress, total):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError as e:
        raise ImportError("progress=True needs tqdm: pip install 'fitfleet[progress]' (or pip install tqdm).") from e
    return tqdm(total=total, unit="fit", desc="fitfleet")
