"""Shared fixtures (precision control without touching global JAX state at import), a
compilation counter, and the release of compiled programs after each test module."""

import contextlib
import gc

import jax
import pytest

import fitfleet as ff

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compilations():
    """Collect the names of XLA compilations (not traces) made inside the block."""
    names = []

    def listener(event, duration, **kwargs):
        if event == BACKEND_COMPILE_EVENT:
            names.append(kwargs.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture
def x64():
    """Run the test body with float64 enabled; restored afterwards."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """Run a test in both precisions; yields the numpy dtype name, x64 on for float64."""
    with jax.enable_x64(request.param == "float64"):
        yield request.param


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Forget every compiled program after each test module.  A compiled XLA program
    holds a few memory mappings of its own (about 6 on CPU), and the whole suite compiles
    thousands: by the last modules the process neared Linux's default limit of 65,530
    mappings (``vm.max_map_count``), where allocations fail, and the run died with a
    segfault in XLA's compiler, a ``MemoryError`` or a hung thread start."""
    yield
    ff.clear_caches()
    jax.clear_caches()
    gc.collect()
