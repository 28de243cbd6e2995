"""Many independent fits in one compiled program: ``fit_batch``.

Under ``vmap`` a ``while_loop`` runs until its slowest member stops, so one fit that
needs 500 steps would make a thousand easy fits pay for 500 steps each.  The engine
therefore runs a chunk of fits in *rounds* over shrinking *buckets*:

1. ``_start``: initialise every fit of the chunk and step them all (a vmapped
   ``while_loop``) until no more are running than the next bucket holds;
2. ``_advance``: gather the running fits into the smallest bucket that holds them
   (padded with finished fits, which a step leaves unchanged), step that bucket until
   no more are running than the next smaller bucket holds, scatter it back; repeat.
   The smallest bucket runs to the end.

Bucket sizes come from a fixed geometric ladder of at most three sizes (1024, 128 and
16 for a chunk of 1024), so a chunk compiles three programs once and reuses them; the
smaller buckets' programs compile on a worker thread while the first round runs.  Every
fit takes exactly the steps it would take alone, so the results equal a plain vmapped
loop up to round-off.

Chunks bound memory: a batch larger than ``chunk_size`` (by default what fits a memory
budget) runs chunk by chunk.  With several ``jax.devices()`` the batch axis of a chunk
is sharded across them (``jax.sharding``), and bucket sizes are multiples of the device
count.  Under a JAX transformation (``jit``, ``grad``, ``vmap`` of ``fit_batch``) the host
cannot look at statuses, so the engine falls back to ``vmap(least_squares)``, which is
traceable and differentiable.
"""

import collections
import concurrent.futures
import dataclasses
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import _driver, _implicit, _problem
from ._least_squares import least_squares
from ._solvers import make_solver
from ._status import Status

SHRINK = 4  # each bucket is at least this many times smaller than the one before
MIN_BUCKET = 16  # below this a smaller bucket saves less than its compilation costs
LEVELS = 3  # bucket sizes per chunk: each is one more program to compile
MEMORY_BUDGET = 2**30  # bytes of working memory per device for one chunk
WORK_FACTOR = 8  # working memory of a step relative to its state and data


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
    sigma=None,
    bounds=None,
    log_scale=False,
    loss="linear",
    f_scale=1.0,
    learning_rate=None,
    initial_damping=1e-3,
    adjoint="implicit",
    grad_on_failure="nan",
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
        x0: starting parameters with a leading batch axis (an array (B, ...) or a pytree
            whose every leaf has the same leading size B).
        args: tuple of extra arguments; each carries a leading batch axis unless listed
            in ``shared_args``.
        shared_args: indices into ``args`` of arguments common to every fit (a shared
            ``x`` grid, say), or ``True`` when all are shared.
        sigma: as for :func:`least_squares`, shared by all fits, or per fit with a leading
            batch axis: (B, m) standard deviations or (B, m, m) covariances.  A 2-D
            sigma of shape (B, m) is read as per-fit even when B == m.
        chunk_size: fits per chunk; default: as many as fit a working-memory budget of
            1 GiB per device.  Smaller chunks use less memory, not less time.
        devices: the devices to spread each chunk over; default ``jax.devices()``.
        progress: show a progress bar of finished fits (needs ``tqdm``).
        method, jac, ftol, xtol, gtol, max_steps, bounds, log_scale, loss, f_scale,
            learning_rate, initial_damping, adjoint, grad_on_failure: as for
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
    options = dict(
        method=method, jac=jac, ftol=ftol, xtol=xtol, gtol=gtol, max_steps=max_steps, bounds=bounds,
        log_scale=log_scale, loss=loss, f_scale=f_scale, learning_rate=learning_rate,
        initial_damping=initial_damping, adjoint=adjoint, grad_on_failure=grad_on_failure,
    )  # fmt: skip
    _implicit.make_adjoint(adjoint, grad_on_failure, 1)  # validates both, before anything runs
    if not isinstance(args, tuple):
        raise TypeError(
            f"`args` must be a tuple of extra arguments to fun; got {type(args).__name__}. "
            "For a single argument write args=(x,)."
        )
    mask = _batched_mask(shared_args, len(args))
    x0 = jax.tree_util.tree_map(lambda leaf: _as_input(leaf, "x0"), x0)
    args = jax.tree_util.tree_map(lambda leaf: _as_input(leaf, "args"), args)
    size = _batch_size(x0, args, mask)
    sigma, sigma_batched = _split_sigma(sigma, size)

    if _any_tracer((x0, args, sigma, options)):
        return _vmapped_least_squares(fun, x0, args, mask, sigma, sigma_batched, options)

    first = lambda t: jax.tree_util.tree_map(lambda a: a[0], t)  # noqa: E731
    args0 = tuple(first(a) if b else a for a, b in zip(args, mask))
    spec = _problem.check(
        fun, first(x0), args0, jac, sigma=first(sigma) if sigma_batched else sigma, bounds=bounds,
        log_scale=log_scale, loss=loss, f_scale=f_scale,
    )  # fmt: skip
    solver = make_solver(
        method, n_params=spec.n_params, ftol=ftol, xtol=xtol, gtol=gtol, max_steps=max_steps,
        learning_rate=learning_rate, initial_damping=initial_damping,
    )  # fmt: skip
    x0 = jax.tree_util.tree_map(lambda a: a.astype(spec.dtype), x0)
    _check_starts(x0, spec.bounds)
    if sigma_batched:
        sigma = _check_batched_sigma(sigma, spec.n_residuals, spec.dtype)
    template = dataclasses.replace(spec, args=tuple(None if b else a for a, b in zip(spec.args, mask)))
    data = (x0, tuple(a for a, b in zip(args, mask) if b), sigma if sigma_batched else None)
    engine = _Engine(fun, solver, template, mask, sigma_batched, _devices(devices))
    return engine.run(data, size, chunk_size, progress)


# --------------------------------------------------------------------------- validation


def _as_input(leaf, name):
    """Arrays stay where they are (numpy on the host: slicing them compiles nothing)."""
    if isinstance(leaf, (jax.Array, jax.core.Tracer)):
        arr = leaf
    else:
        try:
            arr = np.asarray(leaf)
        except Exception as e:
            raise TypeError(f"`{name}` must hold arrays; got {type(leaf).__name__}.") from e
    if name == "x0":
        if jnp.issubdtype(arr.dtype, jnp.complexfloating):
            raise TypeError("`x0` is complex; fitfleet fits real parameters. Split it into real and imaginary parts.")
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            arr = arr.astype(jnp.result_type(float))
    return arr


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
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "every array in `x0` needs the same leading batch axis (one row per fit); "
            f"got leading sizes {sorted(sizes, key=str)}."
        )
    size = sizes.pop()
    if size == 0:
        raise ValueError("`x0` has an empty batch axis: there is nothing to fit.")
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


def _split_sigma(sigma, size):
    """``(sigma, batched)``: batched when it has two or more axes, the first of size B."""
    if sigma is None:
        return None, False
    sigma = sigma if isinstance(sigma, (jax.Array, jax.core.Tracer)) else np.asarray(sigma)
    return sigma, sigma.ndim >= 2 and sigma.shape[0] == size


def _check_starts(x0, bounds):
    flat = np.concatenate([np.asarray(leaf).reshape(np.shape(leaf)[0], -1) for leaf in jax.tree_util.tree_leaves(x0)], 1)
    if bounds is None:
        return
    bad = ~np.all(np.isfinite(flat), axis=1)
    if np.any(bad):
        raise ValueError(f"`x0` must be finite; rows {np.flatnonzero(bad)[:10].tolist()} are not.")
    log = np.asarray(bounds.log)
    if np.any(log & (flat <= 0)):
        rows = np.flatnonzero(np.any(log & (flat <= 0), axis=1))
        raise ValueError(f"`x0` must be positive where log_scale is set; rows {rows[:10].tolist()} are not.")
    v = np.where(log, np.log(np.where(log, flat, 1)), flat)
    outside = (v < np.asarray(bounds.lower)) | (v > np.asarray(bounds.upper))
    if np.any(outside):
        rows = np.flatnonzero(np.any(outside, axis=1))
        raise ValueError(f"`x0` is outside `bounds` in rows {rows[:10].tolist()}: start inside [lower, upper].")


def _check_batched_sigma(sigma, m, dtype):
    per_fit = jax.vmap(lambda s: _problem._check_sigma(s, m, dtype))(sigma)
    if per_fit.ndim == 3:
        bad = ~np.all(np.isfinite(np.asarray(per_fit)), axis=(1, 2))
        what = "symmetric positive definite covariances"
    else:
        bad = ~np.all(np.asarray(per_fit) > 0, axis=1)
        what = "positive standard deviations"
    if np.any(bad):
        raise ValueError(f"`sigma` must hold {what}; rows {np.flatnonzero(bad)[:10].tolist()} do not.")
    return per_fit


def _any_tracer(tree):
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def _devices(devices):
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("`devices` is empty: pass jax devices to run on, or None for all.")
    return devices


def _vmapped_least_squares(fun, x0, args, mask, sigma, sigma_batched, options):
    """The traceable path: one vmapped ``while_loop``, no host-side compaction."""
    batched_args = tuple(a for a, b in zip(args, mask) if b)

    def one(x0_i, bargs_i, sigma_i):
        it = iter(bargs_i)
        args_i = tuple(next(it) if b else a for a, b in zip(args, mask))
        return least_squares(fun, x0_i, args_i, sigma=sigma_i if sigma_batched else sigma, **options)

    return jax.vmap(one, in_axes=(0, 0, 0 if sigma_batched else None))(
        x0, batched_args, sigma if sigma_batched else None
    )


# --------------------------------------------------------------------------- the engine


def _member(template, mask, sigma_batched, data):
    """The Spec of one fit from the shared template and that fit's slice of the data."""
    x0, batched_args, sigma = data
    it = iter(batched_args)
    args = tuple(next(it) if b else a for a, b in zip(template.args, mask))
    return dataclasses.replace(template, x0=x0, args=args, sigma=sigma if sigma_batched else template.sigma)


def _iterate(fun, solver, template, mask, sigma_batched, data, state, threshold):
    """Step every running fit until at most ``threshold`` of them are still running."""

    def step(d, s):
        problem, _ = _problem.make_problem(fun, _member(template, mask, sigma_batched, d))
        new = _driver.step(solver, problem, s)
        running = s.status == Status.RUNNING
        return jax.tree_util.tree_map(lambda a, b: jnp.where(running, a, b), new, s)

    vstep = jax.vmap(step)
    return jax.lax.while_loop(
        lambda s: jnp.sum(s.status == Status.RUNNING) > threshold, lambda s: vstep(data, s), state
    )


def _start(fun, solver, template, mask, sigma_batched, data, threshold):
    def init(d):
        problem, u0 = _problem.make_problem(fun, _member(template, mask, sigma_batched, d))
        return _driver.finish(solver, solver.init(problem, u0))

    state = jax.vmap(init)(data)
    return _iterate(fun, solver, template, mask, sigma_batched, data, state, threshold)


def _advance(fun, solver, template, mask, sigma_batched, data, state, index, threshold, sharding):
    take = lambda tree: jax.tree_util.tree_map(lambda a: _shard(a[index], sharding), tree)  # noqa: E731
    bucket = _iterate(fun, solver, template, mask, sigma_batched, take(data), take(state), threshold)
    return jax.tree_util.tree_map(lambda a, b: a.at[index].set(b), state, bucket)


def _results(fun, template, mask, sigma_batched, data, state):
    def one(d, s):
        problem, _ = _problem.make_problem(fun, _member(template, mask, sigma_batched, d))
        return _driver.to_result(problem, s)

    return jax.vmap(one)(data, state)


def _shard(a, sharding):
    return a if sharding is None else jax.lax.with_sharding_constraint(a, sharding)


# XLA:CPU spends most of a first call in LLVM; its level-1 pipeline compiles about twice
# as fast and the step loops run as fast (measured in benchmarks/batch.py).
_CPU_OPTIONS = {"xla_backend_optimization_level": 1}
_PROGRAMS = {
    platform: tuple(eqx.filter_jit(f, **kw) for f in (_start, _advance, _results))
    for platform, kw in (("cpu", {"compiler_options": _CPU_OPTIONS}), ("other", {}))
}
# Smaller buckets compile on this thread while the first round runs on the device.
_COMPILER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fitfleet-compile")


class _Engine:
    """Host-side loop over chunks and buckets (see the module docstring)."""

    def __init__(self, fun, solver, template, mask, sigma_batched, devices):
        self.statics = (fun, solver, template, mask, sigma_batched)
        self.n_devices = len(devices)
        platform = "cpu" if devices[0].platform == "cpu" else "other"
        self.start, self.advance, self.results = _PROGRAMS[platform]
        if self.n_devices > 1:
            mesh = Mesh(np.asarray(devices), ("batch",))
            self.sharding = NamedSharding(mesh, PartitionSpec("batch"))
        else:
            self.sharding = None
            # Uncommitted arrays on the default device: programs compiled ahead (lowered
            # with stand-in arrays, which are uncommitted) then serve the real calls.
            self.device = None if devices[0] == jax.devices()[0] else devices[0]

    def run(self, data, size, chunk_size, progress):
        chunk = self._chunk_size(data, size, chunk_size)
        n_chunks = math.ceil(size / chunk)
        bar = _progress_bar(progress, size)
        try:
            parts = []
            for c in range(n_chunks):
                rows = np.minimum(np.arange(c * chunk, (c + 1) * chunk), size - 1)
                n_valid = min(chunk, size - c * chunk)
                chunk_data = data if chunk == size else _take(data, rows)
                result = self._run_chunk(self._place(chunk_data), n_valid, bar)
                if n_chunks == 1:
                    return _take(result, slice(0, n_valid)) if n_valid < chunk else result
                parts.append(jax.tree_util.tree_map(lambda a: np.asarray(a[:n_valid]), result))
        finally:
            if bar is not None:
                bar.close()
        return jax.tree_util.tree_map(lambda *a: jnp.asarray(np.concatenate(a)), *parts)

    def _run_chunk(self, data, n_valid, bar):
        fun, solver, template, mask, sigma_batched = self.statics
        ladder = _ladder(_leading(data), self.n_devices)
        compiled = self._compile_ahead(data, ladder)
        state = self.start(*self.statics, data, _below(ladder, ladder[0]))
        done_before = 0
        while True:
            running = np.asarray(state.status) == Status.RUNNING
            n_running = int(running.sum())
            if bar is not None:
                done_now = n_valid - int(running[:n_valid].sum())
                bar.update(done_now - done_before)
                done_before = done_now
            if n_running == 0:
                break
            bucket = min(s for s in ladder if s >= n_running)
            index = np.concatenate([np.flatnonzero(running), np.full(bucket - n_running, np.argmin(running))])
            compiled[bucket].result()
            state = self.advance(*self.statics, data, state, index.astype(np.int32), _below(ladder, bucket), self.sharding)
        compiled["results"].result()
        return self.results(fun, template, mask, sigma_batched, data, state)

    def _compile_ahead(self, data, ladder):
        """Compile the buckets' and the results' programs on a worker thread while this
        thread compiles and runs the first round (a no-op once they are cached).

        Tracing stays on this thread, under the caller's JAX configuration (``enable_x64``
        and friends are thread-local); only XLA's compilation moves.
        """
        fun, solver, template, mask, sigma_batched = self.statics
        key = _signature((self.statics, data))
        if not self._compiles_ahead() or key in _COMPILED_AHEAD:
            done = concurrent.futures.Future()
            done.set_result(None)
            return collections.defaultdict(lambda: done)
        _remember(_COMPILED_AHEAD, key, True)
        state = _abstract_state(self.statics, data)
        lowered = {
            bucket: self.advance.lower(
                *self.statics, data, state, np.zeros(bucket, np.int32), _below(ladder, bucket), self.sharding
            )
            for bucket in ladder[1:]
        }
        lowered["results"] = self.results.lower(fun, template, mask, sigma_batched, data, state)
        return {key: _COMPILER.submit(low.compile) for key, low in lowered.items()}

    def _place(self, data):
        if self.sharding is None:
            return jax.device_put(data, self.device)
        return jax.device_put(data, self.sharding)

    def _compiles_ahead(self):
        return self.sharding is None and self.device is None

    def _chunk_size(self, data, size, chunk_size):
        unit = self.n_devices
        if chunk_size is not None:
            if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
                raise ValueError(f"`chunk_size` must be a positive integer or None; got {chunk_size!r}.")
            return _round_up(min(int(chunk_size), size), unit)
        per_fit = _bytes_per_fit(self.statics, data)
        limit = max(unit, MEMORY_BUDGET * unit // (WORK_FACTOR * per_fit))
        n_chunks = math.ceil(size / limit)
        return _round_up(math.ceil(size / n_chunks), unit)


def _state_shape(statics, data):
    """Shapes of the vmapped solver state for ``data``, without computing anything."""
    key = _signature((statics, data))
    if key not in _STATE_SHAPES:
        _remember(_STATE_SHAPES, key, _trace_state_shape(statics, data))
    return _STATE_SHAPES[key]


def _trace_state_shape(statics, data):
    fun, solver, template, mask, sigma_batched = statics

    def init(d):
        problem, u0 = _problem.make_problem(fun, _member(template, mask, sigma_batched, d))
        return _driver.finish(solver, solver.init(problem, u0))

    return jax.eval_shape(jax.vmap(init), data)


# What a repeated call with the same shapes need not trace again (the programs themselves
# live in jax's compilation cache).
_STATE_SHAPES = {}
_COMPILED_AHEAD = {}


def _signature(tree):
    """A hashable key of a pytree's structure, array shapes and static leaves."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    spec = tuple(
        (np.shape(a), a.dtype, getattr(a, "weak_type", False)) if eqx.is_array(a) else a for a in leaves
    )
    try:
        hash(spec)
    except TypeError:  # an unhashable static leaf: no caching, just a little more tracing
        return object()
    return treedef, spec


def _remember(cache, key, value):
    if len(cache) > 256:
        cache.clear()
    cache[key] = value


def _abstract_state(statics, data):
    """A stand-in state for lowering: zero-stride views, so nothing is allocated."""
    return jax.tree_util.tree_map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape), _state_shape(statics, data))


def _bytes_per_fit(statics, data):
    shapes = (_state_shape(statics, data), data)
    total = sum(math.prod(s.shape) * s.dtype.itemsize for s in jax.tree_util.tree_leaves(shapes))
    return max(1, total // _leading(data))


def _ladder(chunk, unit):
    """Bucket sizes, largest first, multiples of ``unit``: from the chunk down to about
    MIN_BUCKET in at most LEVELS geometric steps, each at least SHRINK times smaller."""
    smallest = _round_up(MIN_BUCKET, unit)
    if chunk <= SHRINK * smallest / 2:
        return [chunk]
    ratio = max(SHRINK, (chunk / smallest) ** (1 / (LEVELS - 1)))
    sizes = [chunk]
    while sizes[-1] > ratio * smallest / 2 and len(sizes) < LEVELS:
        sizes.append(max(smallest, _round_up(math.ceil(sizes[-1] / ratio), unit)))
    return sizes


def _below(ladder, bucket):
    """The stopping threshold for a bucket: the next size down, or 0 for the smallest."""
    smaller = [s for s in ladder if s < bucket]
    return np.int32(smaller[0] if smaller else 0)


def _round_up(n, unit):
    return -(-n // unit) * unit


def _leading(tree):
    return jax.tree_util.tree_leaves(tree)[0].shape[0]


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
