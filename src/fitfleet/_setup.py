"""The options of a fit, their defaults, and the order in which a fit is set up.

Every entry point (``least_squares``, ``fit_batch``, and through them ``profile``,
``curve_fit``, ``multistart``) calls :func:`prepare`, so a default lives here once and
every door checks the same things in the same order:

1. the options (``_validate``: tolerances, integers, choices; no tracing);
2. the problem (``_problem.check``: ``x0``, ``args``, ``sigma``, ``bounds``,
   ``log_scale``, ``loss``; one abstract trace of ``fun``);
3. the adjoint and the solver (hyper-parameters become arrays, so a new value, or a
   vmapped one, never recompiles);
4. the Jacobian mode (``_tracing.choose_jacobian``: traces a derivative, so last).
"""

from typing import Any, NamedTuple

import jax
import numpy as np

from . import _driver, _implicit, _problem, _tracing, _validate
from ._solvers import METHODS, NEWTON_METHODS, SUBSPACES, make_solver

# The public signatures of least_squares and fit_batch spell these out (a test checks
# that they agree).
DEFAULTS = dict(
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
    progress=False,
)
DEFAULT_LEARNING_RATE = 1e-3
# scipy's finite-difference Jacobians, accepted for ``jac`` and read as "auto": fitfleet's
# derivatives are exact, so a scipy call runs unchanged.
FD_SCHEMES = ("2-point", "3-point", "cs")


def default_max_steps(method, n_params):
    """The step budget when ``max_steps`` is None: ``100·(n + 1)`` for Newton-type
    methods (MINPACK's default for ``lmder``), 10,000 for first-order ones."""
    return 100 * (n_params + 1) if method in NEWTON_METHODS else 10_000


class Setup(NamedTuple):
    spec: Any  # _problem.Spec, its Jacobian mode settled
    solver: Any
    adjoint: Any
    monitor: Any  # _driver.Monitor


def check_options(options):
    """Complete ``options`` with the defaults and check what can be checked before the
    problem is known; returns the completed dict."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unexpected option(s) {sorted(unknown)}; the options are {sorted(DEFAULTS)}.")
    o = {**DEFAULTS, **options}
    for name in ("ftol", "xtol", "gtol"):
        if o[name] is None:  # scipy's way of turning a test off
            o[name] = 0.0
    if isinstance(o["jac"], str) and o["jac"] in FD_SCHEMES:
        o["jac"] = "auto"
    method = o["method"]
    if not (_is_optax(method) or method in METHODS):
        raise ValueError(f"`method` must be one of {METHODS} or an optax.GradientTransformation; got {method!r}.")
    _validate.tolerances(o["ftol"], o["xtol"], o["gtol"], o["fatol"])
    o["settle"] = _validate.boolean("settle", o["settle"])
    if o["max_steps"] is not None:
        o["max_steps"] = _validate.integer("max_steps", o["max_steps"])
    o["max_steps"] = _validate.steps_from_nfev(o["max_steps"], o.pop("max_nfev"))
    _validate.real("initial_damping", o["initial_damping"])
    if o["acceleration"] is not None and not isinstance(o["acceleration"], (bool, np.bool_)):
        if not isinstance(o["acceleration"], (int, np.integer)):
            raise TypeError(f"`acceleration` must be True, False, None or the step from which it is on; got {o['acceleration']!r}.")
        o["acceleration"] = _validate.integer("acceleration", o["acceleration"])
    if o["secant"] is not None:
        o["secant"] = _validate.boolean("secant", o["secant"], "True, False or None")
    _validate.choice("subspace", o["subspace"], SUBSPACES)
    if o["learning_rate"] is not None:
        _validate.real("learning_rate", o["learning_rate"], positive=True)
    _validate.choice("adjoint", o["adjoint"], _implicit.ADJOINTS)
    _validate.choice("grad_on_failure", o["grad_on_failure"], _implicit.ON_FAILURE)
    if not isinstance(o["history"], (bool, np.bool_)):
        o["history"] = _validate.integer("history", o["history"])
    if o["verbose"] not in (0, 1, 2) or isinstance(o["verbose"], bool):
        raise ValueError(f"`verbose` must be 0 (silent), 1 (a final report) or 2 (a line per step); got {o['verbose']!r}.")
    return o


def _acceleration(value, free):
    """``(on, first step corrected)`` from the ``acceleration`` option: None (on where
    ``free``), True, False, or the step from which it is on."""
    if value is None:
        return free, 0
    if isinstance(value, (bool, np.bool_)):
        return bool(value), 0
    return True, value


def prepare(fun, x0, args, options):
    """Check everything and build the fit's pieces; see the module docstring.  (The
    batch engine passes one member's ``x0``/``args``.)"""
    o = check_options(options)
    n_params = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(_validate.numbers_as_array(x0)))
    x_scale = _validate.x_scale(o["x_scale"], o["method"], n_params, NEWTON_METHODS)
    spec = _problem.check(
        fun, x0, args, o["jac"], sigma=o["sigma"], bounds=o["bounds"], log_scale=o["log_scale"], loss=o["loss"],
        f_scale=o["f_scale"], enforced=o["method"] == "trf",
    )  # fmt: skip
    method = o["method"]
    max_steps = o["max_steps"]
    if max_steps is None:
        max_steps = default_max_steps(method, spec.n_params)
    bound = max_steps if isinstance(max_steps, int) else default_max_steps(method, spec.n_params)
    adjoint = _implicit.make_adjoint(o["adjoint"], o["grad_on_failure"], bound)
    learning_rate = o["learning_rate"]
    if learning_rate is None and method in ("adam", "sgd"):
        learning_rate = DEFAULT_LEARNING_RATE
    free = o["bounds"] is None and o["loss"] == "linear"  # where trf's additions to scipy's step apply
    accelerated, acceleration_from = _acceleration(o["acceleration"], free)
    solver = make_solver(
        method, ftol=o["ftol"], xtol=o["xtol"], gtol=o["gtol"], settle=o["settle"], fatol=o["fatol"], max_steps=max_steps, learning_rate=learning_rate,
        initial_damping=o["initial_damping"], x_scale=x_scale,
        acceleration=accelerated and o["loss"] == "linear", acceleration_from=acceleration_from, secant=(free if o["secant"] is None else o["secant"]) and o["loss"] == "linear", two_dimensional=o["subspace"] == "2d", differentiable=adjoint.kind == "unroll",
    )  # fmt: skip
    history = o["history"]
    if history is True:
        if not isinstance(max_steps, int):
            raise ValueError("`history=True` records max_steps + 1 rows and needs a concrete max_steps; pass history=k for k rows.")
        history = max_steps + 1
    monitor = _driver.Monitor(history=int(history), verbose=o["verbose"], progress=_validate.boolean("progress", o["progress"]))
    return Setup(_tracing.choose_jacobian(fun, spec), solver, adjoint, monitor)


def _is_optax(method):
    import optax

    return isinstance(method, optax.GradientTransformation)

