"""fitfleet: fast, differentiable nonlinear least squares on JAX.

Example:
    >>> import jax.numpy as jnp
    >>> import fitfleet as ff
    >>> res = ff.least_squares(lambda p: p**2 - 4.0, jnp.array([1.0]))
    >>> round(float(res.params[0]), 4)
    2.0
"""

from ._least_squares import least_squares
from ._result import Result
from ._status import Status

__all__ = ["Result", "Status", "least_squares"]
__version__ = "0.1.0"
