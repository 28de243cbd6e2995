"""``fit_batch``: check, set up one member's fit, and hand the batch to the engine."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _driver, _problem, _setup, _validate, _xla
from .._least_squares import least_squares
from .._setup import DEFAULTS
from .host import Engine
from .programs import init_one, result_one


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
    settle=True,
    fatol=0.0,
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
    acceleration=None,
    secant=None,
    subspace="full",
    adjoint="implicit",
    grad_on_failure="nan",
    history=False,
    verbose=0,
    chunk_size=None,
    devices=None,
    progress=False,
):
    """Fit many independent problems ``fun(params_i, *args_i)`` at once.

    Each fit is :func:`least_squares` on its own slice of the batch: the same steps and
    tests, its arithmetic independent of the other fits' values.  A batched program may
    round differently in the last bit (XLA vectorises it by width), so results agree
    with a fit alone to round-off, and a fit whose stopping test is borderline (float32,
    zero residuals) can end a step apart.  The fits share compiled programs, and a
    slow fit never holds the others back (see ``fitfleet._engine``).  On GPU/TPU the
    whole batch runs in one device program; on CPU in cache-sized blocks, one thread
    per core (``fitfleet.engine_settings`` picks the path).

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
            1 GiB per device (on a GPU or TPU, a 32nd of its memory where that is more).
            Smaller chunks use less memory, not less time.
        devices: the devices to spread each chunk over; default ``jax.devices()``.  On
            the default CPU device a chunk is also split over one thread per core.
        progress: show a progress bar of finished fits (needs ``tqdm``; on the
            accelerator path it advances chunk by chunk).
        history: ``k`` records the start and the first ``k − 1`` steps of every fit
            (``Result.history``, with the batch axis); off by default.
        verbose: 1 prints the batch's Result (statuses counted) at the end.
        method, jac, ftol, xtol, gtol, settle, fatol, max_steps, max_nfev, x_scale, bounds, log_scale,
            loss, f_scale, learning_rate, initial_damping, acceleration, secant, subspace, adjoint, grad_on_failure: as for
            :func:`least_squares`, the same for every fit (bounds are shared).  Under
            ``jax.grad``/``jit``/``vmap`` the batch runs as ``vmap(least_squares)``, whose
            derivatives these options define.

    Returns:
        A :class:`Result` whose every field has a leading batch axis of size B and means
        what it means for :func:`least_squares`; each fit has its own ``status`` (a
        failing fit never affects the others).

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
    mask = _validate.shared_args_mask(shared_args, len(args))
    x0 = _validate.parameters(x0)
    size = _validate.batch_size(x0, args, mask)
    sigma_batched = sigma is not None and np.ndim(sigma) >= 2 and np.shape(sigma)[0] == size

    if _validate.any_traced((x0, args, sigma, options)):
        _setup.check_options(options)
        return _vmapped_least_squares(fun, x0, args, mask, sigma_batched, dict(options, progress=False))

    first = lambda t: jax.tree_util.tree_map(lambda a: a[0], t)  # noqa: E731
    args0 = tuple(first(a) if b else a for a, b in zip(args, mask))
    if options["history"] is True:
        raise ValueError("`history` in fit_batch is a number of rows, history=k (the start and the first k - 1 steps of each fit): a cap, so that a million fits cannot fill the memory by accident.")
    if options["verbose"] == 2:
        raise ValueError("`verbose=2` (a line per step) is for least_squares; fit_batch takes verbose=0 or 1 (a summary at the end), or progress=True.")
    # The engine draws its own progress bar (finished fits), not the per-step one.
    one = dict(options, sigma=first(sigma) if sigma_batched else sigma, progress=False)
    spec, solver, _, monitor = _setup.prepare(fun, first(x0), args0, one)
    x0 = jax.tree_util.tree_map(lambda a: a.astype(spec.dtype), x0)
    _validate.start(_validate.flat_rows(x0), spec.box, np.asarray(spec.log or False), "x0")
    sigma_data = None
    if sigma_batched:  # the given sigmas, and a covariance's Cholesky factors (computed once, here)
        given = _validate.batched_sigma(sigma, size, spec.n_residuals, spec.dtype)
        sigma_data = (given, None if given.ndim == 2 else _problem.whitening(given))
    chunk_size = None if chunk_size is None else _validate.integer("chunk_size", chunk_size, minimum=1)
    progress = _validate.boolean("progress", progress)
    template = dataclasses.replace(spec, args=tuple(None if b else a for a, b in zip(spec.args, mask)))
    data = (x0, tuple(a for a, b in zip(args, mask) if b), sigma_data)
    engine = Engine((fun, solver, template, mask, sigma_batched, monitor), _validate.devices(devices))
    with _xla.compile_notice("the batch's programs"):
        result = _run(engine, data, size, chunk_size, progress, template.may_raise)
    if verbose:
        print(result)
    return result


def _run(engine, data, size, chunk_size, progress, may_raise):
    """The engine's run of the batch, and where the model raised at run time
    (``_xla.raised_by_model``: under ``vmap`` one member's check raises for all), the
    raising members found by bisection: the same batch runs again with the rows under
    suspicion kept and the others replaced by fillers (the same shapes, so nothing
    compiles again), halving the rows of every run that raised, until each raising
    member stands alone and gets ``Status.MODEL_RAISED`` (its start, no steps, as
    ``least_squares`` gives it); every other member keeps the result of a run that did
    not raise, which equals its fit alone (a row's arithmetic never depends on the
    others).

    A filler is a copy of the first suspect's data started at NaN: its fit ends at its
    start (``NONFINITE_RESIDUAL``), so a run costs about as much as its suspects' fits,
    and k raising members cost about 2·k runs of the batch, not 2·k·log2(B).  Until a
    run with NaN fillers has passed, a suspect standing alone that raises is tried again
    among copies of itself: if that passes, the NaN starts raised, and copies serve as
    fillers from then on.  (An error surfaces when the program has run: a model that may
    raise is waited for here.)"""
    nan_fillers = {"use": True, "proven": False}

    def attempt(rows, nan_start=True):
        suspect = np.isin(np.arange(size), rows)
        kept = np.where(suspect, np.arange(size), rows[0])
        part = data if len(rows) == size else jax.tree_util.tree_map(lambda a: a[kept], data)
        nan_start = nan_start and nan_fillers["use"] and len(rows) < size
        if nan_start:
            fill = lambda a: np.where(suspect.reshape(-1, *(1,) * (np.ndim(a) - 1)), a, np.nan).astype(a.dtype)  # noqa: E731
            part = (jax.tree_util.tree_map(fill, part[0]), *part[1:])
        try:
            result = engine.run(part, size, chunk_size, progress and len(rows) == size)
            result = jax.block_until_ready(result) if may_raise else result
            nan_fillers["proven"] |= nan_start
            return result
        except Exception as e:
            if not _xla.raised_by_model(e):
                raise
            return None

    everything = np.arange(size)
    result = attempt(everything)
    if result is not None:
        return result
    merged, raised, pending = None, [], [everything]
    while pending:
        rows = pending.pop()
        found = attempt(rows) if len(rows) < size else None
        if found is None and len(rows) == 1 and nan_fillers["use"] and not nan_fillers["proven"]:
            found = attempt(rows, nan_start=False)  # did the NaN starts raise?
            nan_fillers["use"] = found is None
        if found is not None:
            take = np.isin(everything, rows)
            merged = found if merged is None else _where_rows(take, found, merged)
        elif len(rows) == 1:
            raised.append(int(rows[0]))
        else:
            pending += [rows[len(rows) // 2 :], rows[: len(rows) // 2]]
    statics, row = engine.statics, lambda i: jax.tree_util.tree_map(lambda a: a[i], data)  # noqa: E731
    shapes = eqx.filter_eval_shape(lambda d: result_one(statics, d, init_one(statics, d)), row(0))
    for i in raised:
        failed = _driver.raised_result(shapes, row(i)[0])
        if merged is None:  # every member raised
            merged = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (size, *a.shape)), failed)
        merged = jax.tree_util.tree_map(lambda a, b: a.at[i].set(b), merged, failed)
    return merged


def _where_rows(take, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(take.reshape(-1, *(1,) * (a.ndim - 1)), a, b), new, old)


def _vmapped_least_squares(fun, x0, args, mask, sigma_batched, options):
    """The traceable path: one vmapped ``while_loop``, no compaction."""
    batched_args = tuple(a for a, b in zip(args, mask) if b)
    sigma = options.pop("sigma")

    def one(x0_i, bargs_i, sigma_i):
        it = iter(bargs_i)
        args_i = tuple(next(it) if b else a for a, b in zip(args, mask))
        return least_squares(fun, x0_i, args_i, sigma=sigma_i if sigma_batched else sigma, **options)

    return jax.vmap(one, in_axes=(0, 0, 0 if sigma_batched else None))(x0, batched_args, sigma if sigma_batched else None)
