"""Status codes carried in every solver state.

A status is a small integer so it can live inside ``jax.lax.while_loop`` and be
``vmap``-ped: one failed fit in a batch gets its own code and never raises.
Raising only ever happens at the boundary, in Python, before tracing.
"""

import enum

import jax.numpy as jnp


class Status(enum.IntEnum):
    """Why a fit stopped.

    Example:
        >>> import fitfleet as ff
        >>> ff.Status.FTOL.message
        'ftol: the relative reduction of the cost was below ftol'
        >>> ff.Status.FTOL.success
        True
    """

    RUNNING = 0
    GTOL = 1
    FTOL = 2
    XTOL = 3
    MAX_STEPS = 4
    NONFINITE_RESIDUAL = 5
    NONFINITE_JACOBIAN = 6
    STEP_FAILED = 7
    MODEL_RAISED = 8
    DIVERGED = 9
    MODEL_INACCURATE = 10

    @property
    def message(self) -> str:
        return MESSAGES[self]

    @property
    def success(self) -> bool:
        return self in (Status.GTOL, Status.FTOL, Status.XTOL)


MESSAGES = {
    Status.RUNNING: "running",
    Status.GTOL: "gtol: the gradient is orthogonal to the residual to within gtol",
    Status.FTOL: "ftol: the relative reduction of the cost was below ftol",
    Status.XTOL: "xtol: the relative step size was below xtol",
    Status.MAX_STEPS: "max_steps reached before any tolerance was met",
    Status.NONFINITE_RESIDUAL: (
        "the residual is not finite at the starting point, or so large that its cost "
        "overflows; or (trf, lm) ftol or xtol held only on a step cut short around trial "
        "points where it is not finite, so the point returned (the last accepted one) is "
        "not a minimum; or, for a first-order method, at an iterate (the last finite one "
        "is returned)"
    ),
    Status.NONFINITE_JACOBIAN: "the Jacobian is not finite (or JᵀJ overflows) at an accepted point",
    Status.STEP_FAILED: (
        "no step reduces the cost: the step shrank to round-off or the linear "
        "system is singular (tolerances tighter than the problem's precision?)"
    ),
    Status.MODEL_RAISED: (
        "the model raised an error while it was evaluated (for example a linear solver inside "
        "an implicit ODE solver refused non-finite input): the fit was stopped and its start returned"
    ),
    Status.DIVERGED: (
        "a stopping test held at a cost above the starting cost: the iteration diverged "
        "(a first-order method's learning rate too large?)"
    ),
    Status.MODEL_INACCURATE: (
        "a tolerance was met, but the model's own numerical error at the end point exceeds "
        "the stopping test (an ODE solve with tighter tolerances changes the cost by more, "
        "or fails), also after continuing the fit with tighter ones where that was possible: "
        "the stop is not trustworthy"
    ),
}


def is_success(status):
    """Traceable version of ``Status(status).success`` for arrays of codes."""
    return (status >= Status.GTOL) & (status <= Status.XTOL)


def as_code(value):
    return jnp.asarray(int(value), dtype=jnp.int32)
