"""Shared fixtures (precision control without touching global JAX state at import) and a
compilation counter."""

import contextlib

import jax
import pytest

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
