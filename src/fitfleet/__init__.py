"""fitfleet: fast, differentiable nonlinear least squares on JAX.

Example:
    >>> import jax.numpy as jnp
    >>> import fitfleet as ff
    >>> res = ff.least_squares(lambda p: p**2 - 4.0, jnp.array([1.0]))
    >>> round(float(res.params[0]), 4)
    2.0
"""

from ._covariance import covariance
from ._engine import fit_batch
from ._engine.runtime import clear_caches, settings as engine_settings, wait as wait_for_compilation
from ._curve_fit import curve_fit, curve_fit_batch
from ._identifiability import Identifiability, identifiability
from ._least_squares import least_squares
from ._multistart import MultiStartResult, Optimum, multistart
from ._profile import Profile, profile
from ._result import Result
from ._status import Status
from ._stream import fit_stream
from ._uncertainty import Uncertainty, uncertainty
from ._xla import enable_compilation_cache, set_compile_notice

__all__ = ["Result", "Status", "fit_batch", "fit_stream", "least_squares", "Uncertainty", "covariance", "uncertainty", "Identifiability", "identifiability", "Profile", "profile", "curve_fit", "curve_fit_batch", "MultiStartResult", "Optimum", "multistart", "clear_caches", "engine_settings", "wait_for_compilation", "enable_compilation_cache", "set_compile_notice"]
__version__ = "0.1.0"

_SUBPACKAGES = ("petab", "plot")  # optional extras: imported on first use, so ``ff.petab.load`` works


def __getattr__(name):  # PEP 562
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

