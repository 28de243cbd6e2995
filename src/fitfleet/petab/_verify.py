"""A fit's stop, checked against a finer ODE solve, and continued where it fails.

A fit stops when a test on the NLL holds (``fatol``: a step changed it by less than
``FTOL·(1 + |NLL|)``) or its steps became tiny (``xtol``), and both trust the NLL and its
gradient as the ODE solver computes them.  ``_tolerances`` chose the solver's tolerances so
that the NLL at the nominal parameters agrees with a solve ``FINER`` times tighter to
within that test.  A multi-start goes far from the nominal point, and where the solution
is more sensitive the solver's error can exceed the test.  Then steps are accepted and
rejected on noise, and a fit can stop at a point that is not stationary.  An example is
Crauste_CellSystems2017's start 104 (300 starts, seeds 0-2).  It stopped by ``xtol`` at
NLL 1706.72.  The accurate NLL there is 1805.01, and the computed gradient points
uphill, so every step from that point had been rejected.  Of the 210 Crauste fits with a
success status (session 16's run), 29 had an NLL off the finer solve's by more than the
test.

So the rule is applied again at each fit's end.  For every fit with a success status,
the NLL is solved again with both tolerances ``FINER`` times tighter (``rtol`` not below
``_tolerances.RTOL_MIN``): one more solve per fit.  Where the two NLLs differ by more than
``FTOL·(1 + |NLL|)`` at the nominal parameters (``Problem._fatol``; or the fit's own
stopping test on the cost, where that is looser), the fit continues from its end at the
tighter tolerances, with a step budget of its own.  It reuses the compiled program,
because the tolerances are the residual's data.  Its new end is checked the same way,
up to ``ROUNDS`` continuations.  A fit gets ``Status.MODEL_INACCURATE``, not a
success, where its last check still fails, or where the finer solve fails (there is
nothing to continue from).  A continued fit's steps and evaluations are summed over its
stages; its ``history`` (``history=``) is its first stage's.  On CPU the finer NLLs come
from ``_tolerances.nll_at``, the program the rule compiled at load, one point at a time;
on an accelerator side by side (``_nlls``).  In low precision, where ``rtol`` is already
at its floor of 100 ε, nothing tighter exists, so no check is made (as in
``_tolerances``).

Measured on Crauste's 300 starts (a probe, seeds 0-2): 32 fits were continued, in 44 s
against the fits' 346 s.  Start 104 went on to 190.966, a success, in 423 steps; 149,
already within the success threshold, to 191.020; the others took 2 to 239 steps (and
moved by 1e-4 to 290 over both continuations below), and 12 of them failed their second
check.  A second continuation at rtol 1e-12 (``ROUNDS = 2``) took 46 s more and left
those 12 no better off: 11 stopped by ``xtol`` again after 4 to 29 steps.  So there is
one continuation.  In
``benchmarks/results/petab.md`` (session 17's run) the check cost no time that stood
out from the noise on any of the six problems, and Crauste gained a fifth success.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .. import _xla
from .._status import Status
from ._tolerances import FINER, RTOL_MIN, nll_at

ROUNDS = 1  # continuations at most (module docstring)
SIDE_BY_SIDE = None  # the finer NLLs vmapped (True), one at a time (False), or by the backend (``_nlls``)
_COUNTERS = ("n_steps", "n_fev", "n_jev")
_REPLACED = ("params", "cost", "residual", "jac", "grad", "status")


def checked(problem, results, refit, dtype, options):
    """``results`` (a batched Result, fitted at ``problem``'s tolerances with ``options``),
    each fit with a success status checked as in the module docstring, against the
    rule's test or, where looser, the fit's own (``ftol·F + fatol`` in ``options``).
    ``refit(x0, data)`` fits the rows ``x0`` with the residual's data ``data``
    (``problem._data`` at other tolerances) and returns a batched Result.  Returns
    ``results`` itself where every check passed, else a Result of jax arrays."""
    rtol, scales = float(problem.args[1]), np.asarray(problem.args[2], np.float64)
    given = results
    floor = max(RTOL_MIN, 100 * float(jnp.finfo(dtype).eps))
    if rtol <= floor * (1 + 1e-9):
        return results
    pending = np.flatnonzero(np.asarray(results.success))
    for stage in range(ROUNDS + 1):
        if pending.size == 0:
            break
        finer = (max(rtol / FINER, floor), scales / FINER)
        x = np.asarray(results.params)[pending]
        fine = _nlls(problem, x, finer, dtype)
        cost = np.asarray(results.cost)[pending]
        test = np.maximum(problem._fatol, float(options.get("ftol") or 0) * np.abs(cost) + float(options.get("fatol") or 0))
        off = ~(np.abs(cost + problem.offset_for(dtype) - fine) <= test)
        go_on = off & np.isfinite(fine) & (stage < ROUNDS)  # a failed finer solve: nothing to continue from
        results = _marked(results, pending[off & ~go_on])
        pending = pending[go_on]
        if pending.size == 0:
            break
        x0 = jnp.asarray(np.asarray(results.params)[pending], dtype)
        results = _merged(results, pending, refit(x0, problem._data(x0, finer)))
        pending = pending[np.asarray(results.success)[pending]]
        rtol, scales = finer
    return results if results is given else jax.tree_util.tree_map(jnp.asarray, results)


def _nlls(problem, x, tolerances, dtype):
    """The NLL at each row of ``x`` at ``tolerances``.  On CPU one point at a time, by the
    program the tolerance rule compiled at load (side by side, an adaptive solve steps
    as often as the slowest row needs); on an accelerator side by side, in widths of a
    power of two (few compiled programs), where a point alone would cost its kernel
    launches at every solver step."""
    y, rtol, scales = problem._data(jnp.asarray(x, dtype), tolerances)
    if SIDE_BY_SIDE is False or (SIDE_BY_SIDE is None and jax.default_backend() == "cpu"):
        return np.array([float(nll_at(problem._now().model, jnp.asarray(xi, dtype), y, rtol, scales)) for xi in x])
    width = 1 << (len(x) - 1).bit_length()
    padded = np.concatenate([x, np.repeat(x[-1:], width - len(x), axis=0)])
    return np.asarray(_side_by_side(problem._now().model, jnp.asarray(padded, dtype), y, rtol, scales))[: len(x)]


@_xla.filter_jit
def _side_by_side(model, x, y, rtol, scales):
    return jax.vmap(model.with_tolerances(rtol, scales).nll, in_axes=(0, None))(x, y)


def _marked(results, rows):
    """``results`` with ``rows``' status ``MODEL_INACCURATE``."""
    if rows.size == 0:
        return results
    status = np.array(results.status)
    status[rows] = Status.MODEL_INACCURATE
    return dataclasses.replace(results, status=status)


def _merged(results, rows, again):
    """``results`` with ``rows`` continued by ``again``: its end, and the counts summed."""
    fields = {name: np.array(getattr(results, name)) for name in _REPLACED + _COUNTERS}
    for name in _REPLACED:
        fields[name][rows] = getattr(again, name)
    for name in _COUNTERS:
        fields[name][rows] += getattr(again, name)
    return dataclasses.replace(results, **fields)
