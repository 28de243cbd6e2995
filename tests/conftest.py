"""Shared fixtures: precision control without touching global JAX state at import."""

import jax
import pytest


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
