"""How fitfleet's programs are compiled for XLA:CPU; fitfleet's uses of JAX internals.

A first call spends most of its time in XLA:CPU generating and optimising LLVM code.
With the options below (the level-1 LLVM pipeline without its expensive passes, the
classic fusion emitters instead of the MLIR ones, and one LLVM module instead of
several compiled on parallel threads, which on a few cores compete with each other and
with fitfleet's other compilations) a fit compiles in about 60% of the time the
defaults take, and its loops run as fast (measured in ``benchmarks/batch.py``); and
XNNPACK runs only the programs' dots, not their small reductions.  They only tune
compilation, per program: nothing global changes.

An XLA that does not know one of them rejects the whole compilation, and options come
and go between versions; so the ones this XLA knows are found once, by compiling a
trivial program.

Options belong to a top-level ``jax.jit`` only.  ``filter_jit`` passes them where they
apply: an eager call, also under an eager ``vmap`` or ``grad``; inside a user's ``jit``
the outer program's options hold (staging refuses options; the retrace without them
hits JAX's tracing cache).

The JAX interfaces fitfleet uses beyond the public API all live here, each with a
fallback (tested): the names of compiler options an XLA does not know (or whose value it
refuses), read from its error message (unknown: compile with XLA's defaults);
``trace_context`` (unknown: the CPU engine's tail program is not traced in the
background, the round's program finishes the fits).
"""

import contextlib
import functools
import math
import re
import sys
import threading
import time

import equinox as eqx
import jax
import numpy as np

CPU_OPTIONS = {
    "xla_backend_optimization_level": 1,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
    "xla_cpu_parallel_codegen_split_count": 1,
    # XNNPACK's fusions for dots only, not for reductions: a fit's reductions are small,
    # and as library calls each cost ~10 µs (a trf step on the 2D-Gaussian batch of
    # ``benchmarks/batch.py``: 1.7-1.9x Levenberg-Marquardt's with them, 1.3-1.5x without).
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
}


@functools.cache
def cpu_options():
    """``CPU_OPTIONS`` less the ones this XLA does not know."""
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    lowered = jax.jit(lambda x: x + 1).lower(jax.ShapeDtypeStruct((), np.float32, sharding=cpu))
    options = dict(CPU_OPTIONS)
    while options:
        try:
            lowered.compile(options)
            return options
        except Exception as e:  # INVALID_ARGUMENT: No such compile option: 'name' (or: While setting option name, ...)
            unknown = [name for name in options if name in str(e)]
            if not unknown:
                return {}  # something else is wrong: compile with the defaults
            for name in unknown:
                del options[name]
    return options


_JITTED = []  # each filter_jit's jitted programs (a jax.jit and the programs it holds)


def clear_caches():
    """Forget the compiler options found and each ``filter_jit``'s jitted programs."""
    cpu_options.cache_clear()
    for jitted in _JITTED:
        jitted.cache_clear()


def filter_jit(fn):
    """``eqx.filter_jit`` (arrays traced, everything else static and hashable; the
    result a pytree of arrays), compiled on CPU with :func:`cpu_options`.

    Example:
        >>> import jax.numpy as jnp
        >>> from fitfleet._xla import filter_jit
        >>> scale = filter_jit(lambda x, factor: x * factor)
        >>> scale(jnp.arange(3.0), 2).tolist()
        [0.0, 2.0, 4.0]
    """

    def run(arrays, structure, static_leaves):
        args, kwargs = eqx.combine(arrays, jax.tree_util.tree_unflatten(structure, static_leaves))
        return fn(*args, **kwargs)

    run.__name__ = run.__qualname__ = getattr(fn, "__name__", "run")  # the program's name in JAX's logs

    @functools.cache
    def jitted(on_cpu):
        return jax.jit(run, static_argnums=(1, 2), compiler_options=cpu_options() if on_cpu else None)

    _JITTED.append(jitted)

    def split(args, kwargs, is_array=eqx.is_array):
        arrays, static = eqx.partition((args, kwargs), is_array)
        static_leaves, structure = jax.tree_util.tree_flatten(static)  # hashable, unlike dicts
        return arrays, structure, tuple(static_leaves)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        parts = split(args, kwargs)
        if jax.default_backend() == "cpu":
            try:
                return jitted(True)(*parts)
            except Exception as e:  # "`compiler_options` can only be passed to top-level `jax.jit`"
                if "compiler_options" not in str(e):
                    raise
        return jitted(False)(*parts)

    def lower(*args, **kwargs):
        """Lower (top level, eagerly) for arrays or their shapes (``jax.ShapeDtypeStruct``).
        Compiling the result fills the cache that later calls with such arrays use, and
        returns the executable as a function of the same arguments as ``fn``."""
        shaped = lambda x: eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)  # noqa: E731
        return _Lowered(jitted(jax.default_backend() == "cpu").lower(*split(args, kwargs, shaped)))

    wrapper.lower = lower
    return wrapper


class _Lowered:
    """A lowered ``filter_jit`` program; ``compile`` gives it back as a function."""

    def __init__(self, lowered):
        self.lowered = lowered

    def compile(self, compiler_options=None):
        executable = self.lowered.compile(compiler_options)

        def call(*args, **kwargs):
            # The executable takes only the arrays: a call costs a pytree partition (eqx's
            # Compiled wrapper would add about 100 µs per call).
            return executable(eqx.filter((args, kwargs), eqx.is_array))

        return call


# jaxlib's batched LAPACK kernels split a large batch over XLA's intra-op thread pool
# and wait for the pieces on a thread of that same pool (``ParallelBatchMap`` in jaxlib's
# ``cpu/lapack_kernels.cc``).  The factorisations below split when the batch's work,
# ``batch · cost`` (x3 for complex numbers), reaches 2e5 flops; the SVD, eigen and other
# kernels follow other rules (the divide-and-conquer SVD splits any batch of matrices
# with 64 entries or more), so for them any batch counts as splitting.
_LAPACK_COST = {
    "getrf": lambda r, c: r * c * min(r, c),
    "potrf": lambda r, c: r**3 / 3,
    "trsm": lambda r, c: r * c * max(r, c),
    "geqrf": lambda r, c: 2 * r * c * min(r, c),
}
_LAPACK_SPLITS_AT = 2e5 / 4  # a margin of 4 on jaxlib's threshold
_KERNEL = re.compile(r"@lapack_[sdcz](\w+?)_ffi\(")
_TENSOR = re.compile(r"tensor<((?:\d+x)+)(f32|f64|complex<f32>|complex<f64>)>")


def lapack_split_ratio(lowered):
    """The work of a lowered program's (``filter_jit(...).lower(...)``) largest batched
    LAPACK call relative to where jaxlib may split it over XLA's thread pool (see
    above): >= 1, it may, and two executions that reach such a call at the same time,
    each on one of the pool's threads, can wait for each other forever, so the program
    must not run concurrently with another; 0 without LAPACK calls.  Read from the
    program's text; what cannot be read (an unknown kernel or lowering) counts as
    ``inf``."""
    try:
        text = lowered.lowered.as_text()
    except Exception:  # an unknown lowering: the safe answer
        return math.inf
    ratio = 0.0
    for line in text.splitlines():
        if "@lapack_" not in line:
            continue
        kernel, signature = _KERNEL.search(line), line.rpartition(" : (")[2].partition(") ->")[0]
        cost = _LAPACK_COST.get(kernel.group(1)) if kernel else None
        shapes = [(tuple(int(d) for d in dims[:-1].split("x")), kind) for dims, kind in _TENSOR.findall(signature)]
        if cost is None or not shapes:
            return math.inf
        work = max((math.prod(dims[:-2]) * cost(*dims[-2:]) * (3 if "complex" in kind else 1) for dims, kind in shapes if len(dims) >= 2), default=math.inf)
        ratio = max(ratio, work / _LAPACK_SPLITS_AT)
    return ratio


def trace_context():
    """The configuration JAX's tracing depends on (JAX keys its own caches on it; some of
    it thread-local), so that a program traced on a worker thread can be checked to be
    the caller's; ``None`` where this JAX does not say (a private interface)."""
    try:
        from jax._src.config import trace_context as context
    except ImportError:
        return None
    try:
        return context()
    except Exception:
        return None


def x64(enabled):
    """A context in which ``enable_x64`` is ``enabled`` on this thread (for worker
    threads, which do not inherit the caller's thread-local setting)."""
    if callable(getattr(jax, "enable_x64", None)):
        return jax.enable_x64(enabled)
    from jax.experimental import disable_x64, enable_x64  # older jax

    return enable_x64() if enabled else disable_x64()
# Primitives through which a traced function can raise at run time: host callbacks
# (equinox's ``error_if``, used by optimistix and diffrax, is a ``pure_callback`` that
# raises), and lineax's ``linear_solve``, whose check of its input is part of the
# primitive (a diffrax implicit solver's root finds go through it).  Under ``vmap`` such
# a check raises for the whole batch when any member trips it.
RAISING_PRIMITIVES = ("pure_callback", "io_callback", "linear_solve")


def may_raise(closed_jaxpr):
    """Whether a jaxpr contains a host callback that may raise at run time (searched
    through every sub-jaxpr: cond branches, loop bodies, custom rules, calls)."""
    return any(eqn.primitive.name in RAISING_PRIMITIVES for eqn, _ in _equations(closed_jaxpr))


# Factorisations: inside a loop, what an implicit solver's Newton iterations run.
FACTORISATIONS = ("lu", "cholesky", "linear_solve")


def solves_in_loop(closed_jaxpr):
    """Whether a jaxpr factorises a matrix inside a ``while`` loop, a loop whose trip
    count depends on the data: an adaptive implicit ODE solver (diffrax's Kvaerno5), a
    Newton root find with ``jnp.linalg.solve``.  (``fori_loop`` with fixed bounds is a
    ``scan``, not a ``while``.)"""
    return any(looped and eqn.primitive.name in FACTORISATIONS for eqn, looped in _equations(closed_jaxpr))


def loops(closed_jaxpr):
    """Whether a jaxpr runs a ``while`` loop (an ODE solve, a root find)."""
    return any(eqn.primitive.name == "while" for eqn, _ in _equations(closed_jaxpr))


def _equations(closed_jaxpr):
    """Every equation of a jaxpr and of its sub-jaxprs, with whether it lies inside a
    ``while`` loop."""
    stack = [(closed_jaxpr, False)]
    while stack:
        item, looped = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend((sub, looped) for sub in item)
            continue
        jaxpr = getattr(item, "jaxpr", item)  # a ClosedJaxpr holds a Jaxpr
        for eqn in getattr(jaxpr, "eqns", ()):
            yield eqn, looped
            inner = looped or eqn.primitive.name == "while"
            subs = (v for v in eqn.params.values() if hasattr(v, "eqns") or hasattr(v, "jaxpr") or isinstance(v, (list, tuple)))
            stack.extend((sub, inner) for sub in subs)


def raised_by_model(error):
    """Whether an exception from running a compiled fit is a run-time error raised
    inside the user's model through a host callback (equinox's ``error_if``, used by
    lineax, optimistix and diffrax), rather than a failure of fitfleet or of XLA."""
    text = f"{type(error).__name__}: {error}"
    return isinstance(error, (RuntimeError, ValueError)) and ("EquinoxRuntimeError" in text or "CpuCallback error" in text)


# --------------------------------------------------------------------- compile notices

_NOTICE = {"seconds": 2.0}
_WATCHING = threading.local()  # a notice open in this thread: an inner one stays silent
_TRACED, _COMPILED = "/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/backend_compile_duration"


def set_compile_notice(seconds=2.0):
    """Print a one-line notice (to stderr) when fitfleet compiles a new program for longer than
    ``seconds`` (default 2; ``None`` turns notices off), so that a long first call of a
    new model or shape is not a silent wait.  Returns the previous setting.

    Example:
        >>> import fitfleet as ff
        >>> previous = ff.set_compile_notice(None)   # quiet
        >>> _ = ff.set_compile_notice(previous)
    """
    if seconds is not None and not (isinstance(seconds, (int, float)) and seconds >= 0):
        raise ValueError(f"`seconds` must be a number >= 0 or None; got {seconds!r}.")
    previous, _NOTICE["seconds"] = _NOTICE["seconds"], seconds
    return previous


@contextlib.contextmanager
def compile_notice(what):
    """While the block runs, watch JAX's compilation events (listeners registered for
    the block only): once a program has been traced and its compilation has run for
    the notice's threshold (or its tracing alone took that long), print one line."""
    seconds = _NOTICE["seconds"]
    if seconds is None or getattr(_WATCHING, "open", False):  # off, or inside another (a profile's fit_batch calls)
        yield
        return
    state = {"timer": None, "said": False, "start": time.perf_counter()}
    lock = threading.Lock()

    def say():
        with lock:
            if not state["said"]:
                state["said"] = True
                print(f"fitfleet: compiling {what} for a new model or shape (once: later calls with these shapes reuse it; "
                      "ff.enable_compilation_cache() keeps it across sessions)...", file=sys.stderr, flush=True)  # fmt: skip

    def listener(event, duration, **kwargs):
        with lock:
            if state["timer"] is not None:
                state["timer"].cancel()
                state["timer"] = None
        if event == _TRACED and not state["said"]:
            if time.perf_counter() - state["start"] >= seconds:
                say()
            else:
                with lock:
                    state["timer"] = threading.Timer(seconds, say)
                    state["timer"].daemon = True
                    state["timer"].start()

    jax.monitoring.register_event_duration_secs_listener(listener)
    _WATCHING.open = True
    try:
        yield
    finally:
        _WATCHING.open = False
        jax.monitoring.unregister_event_duration_listener(listener)
        with lock:
            if state["timer"] is not None:
                state["timer"].cancel()


def enable_compilation_cache(path=None, min_compile_seconds=0.0):
    """Turn on JAX's persistent compilation cache (your choice: it is JAX's global
    setting, which fitfleet never changes on its own): compiled programs are kept on
    disk, so a new Python session skips most of a first call's compilation.

    Args:
        path: the cache directory; default ``~/.cache/fitfleet-jax``.
        min_compile_seconds: keep programs that took at least this long to compile.

    Returns:
        The directory used.
    """
    import os

    path = os.path.expanduser(path or "~/.cache/fitfleet-jax")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    return path
