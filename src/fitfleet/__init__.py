"""fitfleet: fast, differentiable nonlinear least squares on JAX.

Example:
    >>> import jax.numpy as jnp
    >>> import fitfleet as ff
    >>> res = ff.least_squares(lambda p: p**2 - 4.0, jnp.array([1.0]))
    >>> round(float(res.params[0]), 4)
    2.0
"""

from ._batch import fit_batch
from ._covariance import covariance
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

__all__ = ["Result", "Status", "fit_batch", "fit_stream", "least_squares", "Uncertainty", "covariance", "uncertainty", "Identifiability", "identifiability", "Profile", "profile", "curve_fit", "curve_fit_batch", "MultiStartResult", "Optimum", "multistart", "enable_compilation_cache", "set_compile_notice"]
__version__ = "0.1.0"
