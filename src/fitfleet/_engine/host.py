"""The host side of the engine: layout, chunks, parts, devices, joining results.

A batch larger than ``chunk_size`` (by default what fits a memory budget) runs chunk by
chunk; with several devices each chunk is split across them (``shard_map`` over the
batch axis).  Then one of two paths runs a chunk:

- **Accelerator** (GPU/TPU; ``device``): one program per chunk, launched once, nothing
  read back.
- **CPU**: under ``vmap`` a step streams every intermediate of a wide batch through
  main memory, and a block of a few dozen fits is too small for XLA to spread over
  cores; so a chunk is split into one *part* per core, each run from its own thread
  (executions from separate threads run in parallel), in cache-sized *blocks* of fits
  (``CPU_BLOCK``, fewer if their working set would not stay in cache) and *rounds*: a
  round gathers a part's running fits into its first blocks and runs those blocks one
  after the other, each until at most a quarter of its fits run (``programs``); the host
  reads back one count per round (and updates the progress bar), and repeats.  The last
  few running fits step in narrower blocks (``TAILS``: at most 16 in a block of 16 until
  at most 4 run, those in a block of 4) in the *tail* program, so a handful of slow fits
  do not make a full block step with them.  A first call compiles four programs (init,
  round, results, tail) on worker threads; the tail's is traced and compiled in the
  background once the round's is done, and until it is ready the round's program
  finishes the fits.
  Parts call compiled executables, never ``jit``: tracing depends on thread-local
  configuration such as ``enable_x64``, which stays on the calling thread.
  A model that factorises a matrix inside a data-dependent loop (``_xla.solves_in_loop``:
  an adaptive implicit ODE solver, whose Newton iterations each solve a linear system)
  runs in blocks of one fit: under ``vmap`` the loop runs every fit of a block for as many
  trips as its slowest fit needs (ODE steps vary several-fold between parameter points),
  and a batched factorisation of small matrices is no cheaper per fit than single ones;
  a block of one steps without ``vmap`` (``programs.batched_step``).  Such fits are
  split into many small parts (``PARTS_PER_THREAD``) that the threads take in turn, as
  each finishes its last: they take seconds each and their steps vary tenfold between
  starts, so one equal part per thread left a core idle while the other finished.
  Measured on PEtab problems (32 starts, a compiled second call, Kvaerno5): Boehm
  53.8 s in blocks of 16 and 53.4 s of 4, 41.1 s of one; Bruno 26.3 → 17.1 s; Armistead
  33.0 → 30.9 s (``benchmarks/results/petab_summary.md``).
  Blocks are narrowed (``NARROWING``) where that keeps a step's batched LAPACK calls too
  small for jaxlib to split them; failing that, parts run one after the other when a
  program makes a batched LAPACK call large enough for jaxlib to split it (trf's SVD for
  more than ``_linalg.JACOBI_MAX`` parameters, the LU of a large implicit ODE solve):
  jaxlib splits it over XLA's intra-op thread pool and waits for it on a thread of that
  same pool, so two executions that do so at once, one per core, each hold a pool
  thread and wait for the other's (a deadlock, ``_xla.lapack_split_ratio``).
"""

import concurrent.futures
import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .. import _xla
from .._status import Status
from . import device, runtime
from .packing import abstract_packed, bytes_per_fit, leading, nbytes, signature, unpack, fit_state_shape
from .programs import INIT, RESULTS, ROUND, concatenate_on_device, init_one, split_on_device, take

CPU_BLOCK = 64  # fits per block on CPU: small enough that a few slow fits waste little
BLOCK_BYTES = 2**20  # a CPU block's working set stays within about what a core's cache holds
WORK_FACTOR = 8  # working memory of a step relative to its state and data
TAILS = (16, 4)  # the last few running fits run in blocks of these sizes
# Blocks are narrowed, at most NARROWING times and to no fewer than NARROWEST fits, where
# that keeps a step's batched LAPACK calls below the work at which jaxlib splits them, so
# that the parts run at once: an ODE model's step costs about the same per fit in a block
# of 4 as of 64 (Bruno's and Armistead's Jacobians: within 15%), a cheap model's more,
# which two parts at once repay up to about that factor.
NARROWING, NARROWEST = 4, 4
# Fits in blocks of one run in about this many parts per thread, taken in turn (module
# docstring).  Crauste's 300 PEtab starts (1 to 1,300 steps a fit), counted in steps: in
# two equal parts the busier thread had 11% more than the mean of the two; in 100 parts
# of three, taken in turn, it would have had 0.02% more.  Measured on 60 of those starts
# (four of the slow ones; two runs each, alternated): 126 s → 115 s, less than the steps
# say, as a fit left alone also runs faster (XLA's intra-op threads take the idle core).
PARTS_PER_THREAD = 64
MEMORY_BUDGET = 2**30  # bytes of state and data per device for one chunk
# Parts are split, and chunks joined, on the host below this many bytes (a helper program
# would cost more to compile than the copy), on the device above.  One chunk's parts are
# always joined on the device: device_put's cost per array exceeds a compiled join's.
LARGE = 2**22

_EXECUTABLES = runtime.cache()  # the CPU path's programs, per model, shapes and block
_SEEN = runtime.cache()  # the accelerator path's programs that have run, per model and shapes


class Engine:
    """Runs one ``fit_batch`` call (see the module docstring)."""

    def __init__(self, statics, devices):
        self.statics = statics  # (fun, solver, template, mask, sigma_batched, monitor): see ``programs``
        self.devices = devices
        self.n_devices = len(devices)
        self.cpu = devices[0].platform == "cpu"
        self.mesh = Mesh(np.asarray(devices), ("batch",)) if self.n_devices > 1 else None
        if self.mesh is not None:
            self.device = NamedSharding(self.mesh, PartitionSpec("batch"))
        else:
            self.device = None if devices[0] == jax.devices()[0] else devices[0]
        settings = runtime.current()
        self.path = settings.path if settings.path != "auto" else ("cpu" if self.cpu else "accelerator")
        self.background = settings.background
        if self.path == "accelerator":  # a step without loops (the solvers' contract, ``vectorised``)
            self.statics = (statics[0], statics[1].vectorised(), *statics[2:])
        # Compiled executables serve the default device: they carry no tracing state, so
        # worker threads may call them.  Elsewhere the jitted programs run on this thread.
        self.precompiled = self.device is None
        self.threads = runtime.cores() if self.cpu and self.precompiled and self.path == "cpu" else 1
        self.x64 = jnp.result_type(float) == jnp.float64  # the caller's (thread-local) enable_x64 mode

    def run(self, data, size, chunk_size, progress):
        chunk, part, block = self._layout(data, size, chunk_size)
        n_chunks = math.ceil(size / chunk)
        bar = _progress_bar(progress, size)
        try:
            if self.path == "accelerator":
                widths = device.ladder(chunk // self.n_devices, device.SMALLEST["cpu" if self.cpu else "accelerator"])
                results = [self._run_on_device(c, chunk, widths, data, size, bar) for c in range(n_chunks)]
            else:
                results = self._run_on_cpu(data, size, chunk, part, block, bar)
        finally:
            if bar is not None:
                bar.close()
        if not self.background:
            runtime.wait()
        if len(results) == 1 and size == chunk:
            return results[0]
        if len(results) == 1 and (self.mesh is not None or self.path == "accelerator"):
            return runtime.launch(take, results[0], np.arange(size))  # stays on the device (and sharded)
        if size == chunk and len(results) <= self.threads:  # one chunk's parts, one per thread (see LARGE)
            return runtime.launch(concatenate_on_device, results, size)
        return _concatenate(results, size)

    def _chunk(self, data, c, chunk, size):
        """Chunk ``c`` of the data, padded with copies of the last fit, and which rows are real."""
        rows = np.arange(c * chunk, (c + 1) * chunk)
        valid = rows < size
        if chunk == size:
            return data, valid
        rows = np.minimum(rows, size - 1)
        if all(isinstance(a, np.ndarray) for a in jax.tree_util.tree_leaves(data)):
            return jax.tree_util.tree_map(lambda a: a[rows], data), valid
        return runtime.launch(take, data, rows), valid

    # ------------------------------------------------------------------- the accelerator path

    def _run_on_device(self, c, chunk, widths, data, size, bar):
        chunk_data, valid = self._chunk(data, c, chunk, size)
        chunk_data, valid = jax.device_put((chunk_data, valid), self.device)
        hook = runtime.AFTER_BATCH.get()
        if hook is not None and c == 0 and self._first_time((chunk_data, widths)):
            # What runs after the batch compiles while this thread compiles the batch's program.
            state = jax.eval_shape(jax.vmap(lambda d: init_one(self.statics, d)), chunk_data)
            out = jax.eval_shape(jax.vmap(lambda d, s: device.result_one(self.statics, d, s)), chunk_data, state)
            hook(jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct((size, *s.shape[1:]), s.dtype), out))
        result = runtime.launch(device.PROGRAM, self.statics, widths, self.mesh, chunk_data, valid)
        if bar is not None:
            bar.update(min(chunk, size - c * chunk))
        return result

    def _first_time(self, arrays):
        """Whether the device program has not yet run for this model and these shapes."""
        key = signature((self.statics, arrays, self.mesh))
        return key not in _SEEN and runtime.remember(_SEEN, key, True)

    # ------------------------------------------------------------------- the CPU path

    def _run_on_cpu(self, data, size, chunk, part, block, bar):
        n_chunks, n_parts = math.ceil(size / chunk), chunk // part
        programs, fresh = self._programs(data, part, block)
        if fresh and n_chunks == 1:
            self._prepare_after(programs["results"].out, n_parts, size)
        results = []
        for c in range(n_chunks):
            chunk_data = self._chunk(data, c, chunk, size)
            n_valid = np.clip(size - c * chunk - np.arange(0, chunk, part), 0, part)
            parts = _split(chunk_data, n_parts) if n_parts > 1 else [jax.device_put(chunk_data, self.device)]
            if n_parts == 1 or programs["serial"]:
                results += [self._run_part(programs, p, int(n), bar) for p, n in zip(parts, n_valid)]
            else:
                futures = [runtime.pool("run").submit(self._run_part, programs, *p, bar) for p in zip(parts, n_valid)]
                concurrent.futures.wait(futures)  # all of them, even where one raised: nothing left running
                results += [f.result() for f in futures]
        return results

    def _run_part(self, programs, part, n_valid, bar):
        """Initialise, run rounds until no fit of this part runs, and return its Results."""
        # On a worker thread, in the caller's enable_x64 mode (it is thread-local): numpy
        # arguments (hyper-parameters, the host's share of the data) convert as they would
        # on the caller's thread.
        with _xla.x64(self.x64):
            return self._rounds(programs, part, n_valid, bar)

    def _rounds(self, programs, part, n_valid, bar):
        data, valid = part
        state = programs["init"](self, data, valid)
        counts = np.array([n_valid])  # not read back: the first round follows at once
        done_before = 0
        while True:
            if bar is not None:
                status = unpack(tuple(map(runtime.fetch, state)), fit_state_shape(init_one, self.statics, data)).status
                done_now = n_valid - int(np.sum(status[:n_valid] == Status.RUNNING))
                with bar.get_lock():  # parts report from several threads
                    bar.update(done_now - done_before)
                done_before = done_now
            if counts.max() == 0:
                break
            tail = programs["tail"]
            has_tail = tail is not None and tail.future.done() and tail.future.result() is not None
            if has_tail and counts.max() <= tail.blocks[0]:
                state, counts = tail(self, data, state, np.int32(0))
            else:  # until the tail can take over, or to the end
                stop_at = np.int32(tail.blocks[0] if has_tail else 0)
                state, counts = programs["round"](self, data, state, stop_at)
            counts = runtime.fetch(counts)
        return programs["results"](self, data, state)

    def _programs(self, data, part, block):
        """The programs that run a part: compiled executables, compiling on worker
        threads (tracing stays on this thread, under the caller's JAX configuration:
        ``enable_x64`` and friends are thread-local), or else the jitted programs; and
        whether they are new (this is their first call)."""
        jitted = {"round": ROUND, "init": INIT, "results": RESULTS}  # the longest to compile first
        # On an accelerator a narrower block steps no faster (a step costs its kernel
        # launches), so there the tail is one block.
        tail = tuple(size for size in (TAILS if self.cpu else TAILS[:1]) if size < block)
        abstract = jax.tree_util.tree_map(lambda a: np.broadcast_to(np.zeros((), a.dtype), (part, *a.shape[1:])), data)
        key = signature((self.statics, abstract, block)) if self.precompiled else None
        programs = None if key is None else _EXECUTABLES.get(key)
        if programs is not None:
            return programs, False
        if not self.precompiled:
            programs = {name: _Program(_done(program), (block,)) for name, program in jitted.items()}
            return {**programs, "tail": _Program(_done(ROUND), tail) if tail else None, "serial": True}, False
        options = _xla.cpu_options() if self.cpu else None
        lower = lambda block: {name: program.lower(*self._abstract_args(name, abstract, (block,))) for name, program in jitted.items()}  # noqa: E731
        lowered = lower(block)
        ratio = max(map(_xla.lapack_split_ratio, lowered.values()))
        narrower = _unsplit_block(block, ratio)
        if narrower is not None:  # LAPACK calls jaxlib would split, in narrower blocks not
            lowered_narrower = lower(narrower)
            if max(map(_xla.lapack_split_ratio, lowered_narrower.values())) < 1:
                block, lowered, ratio = narrower, lowered_narrower, 0.0
                tail = tuple(size for size in tail if size < block)
        programs = {"serial": ratio >= 1}
        for name, program in jitted.items():
            out = eqx.filter_eval_shape(program, *self._abstract_args(name, abstract, (block,))) if name == "results" else None
            programs[name] = _Program(runtime.compile_soon(lowered[name], options), (block,), out)
        programs["tail"] = None
        if tail:
            args = self._abstract_args("round", abstract, tail)
            later = (self.x64, args, options, programs["round"].future, _xla.trace_context())
            programs["tail"] = _Program(runtime.in_background(_compile_tail, *later), tail)
        return runtime.remember(_EXECUTABLES, key, programs, limit=32), True

    def _abstract_args(self, name, abstract, blocks):
        state = abstract_packed(init_one, self.statics, abstract)
        valid = np.broadcast_to(np.True_, (leading(abstract),))
        arrays = {"round": (abstract, state, np.int32(0)), "init": (abstract, valid), "results": (abstract, state)}[name]
        return (self.statics, blocks, self.mesh, *arrays)

    def _prepare_after(self, result, n_parts, size):
        """On a first call, while the batch's programs compile: compile what runs after
        them, the join of the parts' results and whatever the caller set in
        ``runtime.AFTER_BATCH`` (multi-start's sorting), from one part's ``result`` (shapes)."""
        if 1 < n_parts <= self.threads:  # the join ``run`` makes on the device
            runtime.compile_soon(concatenate_on_device.lower([result] * n_parts, size))
        hook = runtime.AFTER_BATCH.get()
        if hook is not None:
            hook(jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct((size, *s.shape[1:]), s.dtype), result))

    def _memory_budget(self):
        """Bytes of state and data per device for one chunk: ``MEMORY_BUDGET``, or on an
        accelerator that reports its memory, a 32nd of it where that is more."""
        if self.cpu:
            return MEMORY_BUDGET
        try:
            return max(MEMORY_BUDGET, self.devices[0].memory_stats()["bytes_limit"] // 32)
        except Exception:  # a backend without memory statistics
            return MEMORY_BUDGET

    def _layout(self, data, size, chunk_size):
        """``(chunk, part, block)``: fits per chunk, per part (run by one thread), and per
        block.  A part is a multiple of the block (and of the device count), a chunk a
        multiple of the part; chunks are padded with copies of the last fit, which start
        finished."""
        unit = self.n_devices
        per_fit = bytes_per_fit(init_one, self.statics, data)
        if chunk_size is not None:
            chunk = min(chunk_size, size)
        else:
            limit = max(unit, self._memory_budget() * unit // (2 * per_fit))
            chunk = math.ceil(size / math.ceil(size / limit))
        per_device = math.ceil(chunk / unit)
        if self.path == "accelerator":  # one part, one block: the chunk, a multiple of 8 from the coarse ladder
            part = _coarse(-(-per_device // 8)) * 8 * unit
            return part, part, part
        largest = min(CPU_BLOCK, 2 ** int(math.log2(max(1, BLOCK_BYTES // (WORK_FACTOR * per_fit)))))
        if self.statics[2].solves_in_loop:  # each fit alone (module docstring)
            largest = 1
        block = min(largest, _next_power_of_two(math.ceil(per_device / self.threads)))
        n_parts = min(self.threads * (PARTS_PER_THREAD if block == 1 else 1), math.ceil(per_device / block))
        # Blocks per part from a coarse ladder (..., 8, 9, ..., 15, 16, 18, ..., 30, 32, 36...):
        # batches of nearby sizes share one compiled program; the padding starts finished
        # and costs no steps.
        part = _coarse(math.ceil(per_device / n_parts / block)) * block
        return part * math.ceil(per_device / part) * unit, part * unit, block


def _unsplit_block(block, ratio):
    """The widest block narrower than ``block`` (by powers of two, by at most
    ``NARROWING`` and to no fewer than ``NARROWEST`` fits) at which a program whose LAPACK
    calls have ``ratio`` of the work jaxlib splits at width ``block``
    (``_xla.lapack_split_ratio``) would have them unsplit, assuming their work is
    proportional to the block (checked after); ``None`` if the calls do not split, or
    would still at the narrowest block allowed."""
    narrowest = max(NARROWEST, block // NARROWING)
    if not 1 <= ratio < math.inf or block // 2 < narrowest:
        return None
    narrower = block // 2
    while narrower * ratio >= block and narrower // 2 >= narrowest:
        narrower //= 2
    return narrower if narrower * ratio < block else None


def _compile_tail(x64, args, options, first, context):
    """The tail's program, traced and compiled on a background thread once ``first`` (the
    round's) has compiled, so that a first call's own compilations have the cores; in
    the caller's tracing configuration (``context``), or ``None`` where this thread cannot
    reproduce it (an option other than ``enable_x64`` set on the caller's thread), or
    where this JAX does not say what it is: then the round's program finishes the fits."""
    first.exception()
    with _xla.x64(x64):
        if context is None or _xla.trace_context() != context:
            return None
        try:
            return ROUND.lower(*args).compile(options)
        except Exception:  # without a tail the round's program finishes the fits
            return None


class _Program(NamedTuple):
    """A program (a future of it, while it compiles), its block sizes (static), and the
    shapes of its output (for the results' program)."""

    future: concurrent.futures.Future
    blocks: tuple
    out: object = None

    def __call__(self, engine, *arrays):
        return runtime.launch(self.future.result(), engine.statics, self.blocks, engine.mesh, *arrays)


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


def _split(tree, n):
    """``n`` equal parts along the batch axis: device arrays, or numpy ones when small
    (device_put costs tens of microseconds per array, more than a compiled program
    takes to copy a small numpy argument each time it is called)."""
    if nbytes(tree) > LARGE:
        return runtime.launch(split_on_device, tree, n)
    size = leading(tree) // n
    host = jax.tree_util.tree_map(np.asarray, tree)
    return [jax.tree_util.tree_map(lambda a: a[i * size : (i + 1) * size], host) for i in range(n)]


def _concatenate(trees, size):
    """The first ``size`` fits of the chunks' results, joined."""
    if nbytes(trees) > LARGE:
        return runtime.launch(concatenate_on_device, trees, size)
    joined = jax.tree_util.tree_map(lambda *a: np.concatenate([runtime.fetch(x) for x in a])[:size], *trees)
    return jax.device_put(joined)  # one call: device_put has a fixed cost per call


def _progress_bar(progress, total):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError as e:
        raise ImportError("progress=True needs tqdm: pip install 'fitfleet[progress]' (or pip install tqdm).") from e
    return tqdm(total=total, unit="fit", desc="fitfleet")
