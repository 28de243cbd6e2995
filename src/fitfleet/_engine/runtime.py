"""What the engine keeps between calls: worker threads, caches, switches, counters.

Nothing here exists until a call needs it: the thread pools start on first use, the
caches fill as models are fitted.

- Threads.  ``pool("compile")`` (2 workers) compiles a first call's programs while the
  calling thread traces the next one; ``pool("run")`` (one per core) runs the CPU
  path's parts; ``pool("later")`` (1 worker) compiles the CPU path's tail program in the
  background once the first call's own compilations are done.  Background compilation
  (the tail's, and on a first call what runs after a batch, should the call finish
  before it) is the only work a call may leave running: :func:`wait` waits for it,
  ``settings(background=False)`` makes a call wait for it before returning.
- Caches (keyed on the user's ``fun`` and shapes, so a repeated call neither traces nor
  compiles again): :func:`cache` makes one that :func:`clear_caches` clears, together
  with ``_tracing``'s traced shapes and ``_uncertainty``'s quantiles.  JAX's own caches
  (``jax.clear_caches``) are the user's to clear.
- Switches (:func:`settings`, per thread and context): which path runs a batch, and
  whether the tail may compile in the background.
- Counters (:func:`counting`): the engine's program launches and device-to-host reads,
  for tests (``jax.transfer_guard`` sees neither ``float(x)`` on CPU nor worker threads).
"""

import concurrent.futures
import contextlib
import contextvars
import dataclasses
import os
import threading

import numpy as np

PATHS = ("auto", "cpu", "accelerator")

_lock = threading.Lock()
_pools = {}
_background = set()  # futures of background compilations not yet finished
_caches = []


def cores():
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pool(name):
    """The worker pool ``name`` ("compile", "run" or "later"), started on first use."""
    with _lock:
        if name not in _pools:
            workers = {"compile": 2, "later": 1, "run": cores()}[name]
            _pools[name] = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=f"fitfleet-{name}")
        return _pools[name]


def in_background(fn, *args):
    """Run ``fn(*args)`` on the background pool; :func:`wait` waits for it."""
    return _track(pool("later").submit(fn, *args))


def _track(future):
    with _lock:
        _background.add(future)
    future.add_done_callback(_forget)
    return future


def _forget(future):
    with _lock:
        _background.discard(future)


def wait():
    """Wait until fitfleet's background compilations (a first ``fit_batch`` call's tail
    program, on CPU) are finished."""
    with _lock:
        pending = list(_background)
    concurrent.futures.wait(pending)


# A function of a batch's Result (shapes) to call on a first call while the batch's
# programs compile, set by a caller that runs a program of its own afterwards
# (multi-start's sort).
AFTER_BATCH = contextvars.ContextVar("fitfleet_after_batch", default=None)


def compile_soon(lowered, options=None):
    """Compile ``lowered`` on the compile pool; a future of the executable (which
    :func:`wait` waits for too)."""
    return _track(pool("compile").submit(lowered.compile, options))


def cache():
    """A dict for the engine to remember things in; :func:`clear_caches` empties it."""
    new = {}
    _caches.append(new)
    return new


def remember(store, key, value, limit=256):
    """``store[key] = value``, emptying the store first once it holds ``limit`` entries."""
    if len(store) >= limit:
        store.clear()
    store[key] = value
    return value


def clear_caches():
    """Forget every model fitfleet has traced or compiled.

    fitfleet remembers, per model and shapes, what a repeated call would otherwise
    trace and compile again (each entry holds on to the model function ``fun``).  This
    empties those caches (the engine's, ``_tracing``'s traced shapes, ``_xla``'s jitted
    programs, ``_uncertainty``'s quantiles), after waiting for background compilations.
    JAX keeps compiled programs of its own: ``jax.clear_caches()`` clears them.

    Example:
        >>> import jax.numpy as jnp
        >>> import fitfleet as ff
        >>> ff.clear_caches()
    """
    from .. import _tracing, _uncertainty, _xla

    wait()
    for store in _caches:
        store.clear()
    _tracing._TRACED.clear()
    _uncertainty._quantile.cache_clear()
    _xla.clear_caches()


@dataclasses.dataclass(frozen=True)
class Settings:
    path: str = "auto"
    background: bool = True


_settings = contextvars.ContextVar("fitfleet_engine_settings", default=Settings())


def current():
    return _settings.get()


@contextlib.contextmanager
def settings(path=None, background=None):
    """Switches of ``fit_batch``/``multistart`` inside a ``with`` block.

    Args:
        path: ``"auto"`` (default: the accelerator path on GPU/TPU, the CPU path on
            CPU), ``"accelerator"`` (the whole batch in one device program; forced on
            CPU it shows what a GPU runs, and tests use it) or ``"cpu"`` (rounds driven
            from the host, one thread per core).
        background: ``False``: a first call on CPU compiles its tail program before
            returning instead of in the background (see ``fitfleet.wait_for_compilation``).

    Example:
        >>> import numpy as np
        >>> import fitfleet as ff
        >>> with ff.engine_settings(path="accelerator"):
        ...     res = ff.fit_batch(lambda p, y: p - y, np.zeros((3, 1)), (np.ones((3, 1)),))
        >>> res.params.ravel().tolist()
        [1.0, 1.0, 1.0]
    """
    old = _settings.get()
    if path is not None and path not in PATHS:
        raise ValueError(f"`path` must be one of {PATHS}; got {path!r}.")
    if background is not None and not isinstance(background, bool):
        raise TypeError(f"`background` must be True or False; got {background!r}.")
    new = Settings(path=old.path if path is None else path, background=old.background if background is None else background)
    token = _settings.set(new)
    try:
        yield new
    finally:
        _settings.reset(token)


# Counters of the engine's synchronisations with the device, for tests: every program
# the engine runs goes through ``launch``, every value it reads back through ``fetch``.

_counts = None


@dataclasses.dataclass
class Counts:
    launches: int = 0
    fetches: int = 0


@contextlib.contextmanager
def counting():
    """Count, in the block, the programs the engine launches and the arrays it reads
    back to the host (from any thread)."""
    global _counts
    _counts = Counts()
    try:
        yield _counts
    finally:
        _counts = None


def launch(program, *args):
    """Run a compiled program (counted)."""
    counts = _counts
    if counts is not None:
        with _lock:
            counts.launches += 1
    return program(*args)


def fetch(array):
    """An array read back to the host as numpy (counted)."""
    counts = _counts
    if counts is not None:
        with _lock:
            counts.fetches += 1
    return np.asarray(array)
