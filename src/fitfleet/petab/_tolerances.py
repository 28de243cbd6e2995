"""The ODE solver's settings, by one rule for every problem: the tolerances, and whether
the conditions are solved one after another.

The tolerances (``resolved_tolerances``).  They start at ``rtol`` = 1e-8, the reference
tool chain's (raised to 100 ε in low precision), and ``atol_i = rtol · s_i`` with the
state scales ``s_i`` below, and are tightened tenfold at a time while the NLL at the
nominal parameters differs from the NLL solved with both ``FINER`` = 100 times tighter
by more than the fits' stopping test on the NLL, ``FTOL·(1 + |NLL|)`` (``_problem.FTOL``
= 1e-8): a fit should not stop on, or be steered by, the solver's error.  The absolute
tolerances are tightened first, the scales down to ``SCALE_MIN`` = 1e-3 of their own
(a tighter absolute tolerance costs steps only while some state is small), then
``rtol``, down to ``RTOL_MIN`` = 1e-12 (a tighter one costs at every step).  In low
precision, where 1e-8 is already below the floor of 100 ε, nothing is tightened.  Most
problems keep the start; a problem whose solution amplifies the solver's error gets
what it needs.
Crauste_CellSystems2017's effector and memory cells start at zero and grow 10⁴- to
10⁵-fold, and an error made while they are small grows with them: at the start its NLL
at the nominal parameters is 0.033 off the accurate 190.963978.  With the scales ÷1000
it is 9.4e-7 off in 362 solver steps; by ``rtol`` alone it took 1e-11 (4e-8 off, 776
steps), and its forward-mode Jacobian cost 1.5× as much over five points
(``benchmarks/results/petab_summary.md``, session 13).  The synthetic all-features
problem gets ``rtol`` 1e-9 and the scales ÷1000; the five other test problems keep the
start (Boehm's NLL there is 8e-8 off a Kvaerno5 solve at 1e-12).  The rule costs one
more compiled program at load (the NLL with the tolerances as data: ~2 s) and a few
solves.  An ``rtol`` given to ``load`` is used as it is; ``state_scales`` given are
not tightened.  The rule's NLLs come from a program compiled as the fits' are
(``nll_at``): with XLA's default options instead, Borghans_BiophysChem1997's NLL at the
start agreed with the finer solve to the test (a calcium oscillator: the solver's error
grows with every cycle) while the fits' program was 1.8e-6 off the accurate
−83.3236954 (the test: 8.4e-7), and Oliveira_NatCommun2021's by 0.57 at NLL 9.6e6 (the
test: 0.096).  Measured by the fits' program, the rule gives them the scales ÷10
(2.6e-7 off) and ``rtol`` 1e-9 with the scales ÷1000 (5e-5 off), and the six test
problems the same tolerances as before (``benchmarks/results/petab_summary.md``,
session 23).

Absolute tolerance per state ``atol_i = rtol · s_i``, with ``s_i``
the state's scale: the largest ``|x_i(t)|`` over ``[0, last measurement time]`` of every
condition at the nominal parameters, from a pilot solve at load time (below), floored
at ``1e-3 · max_j s_j``: a state a thousand times smaller than the largest one is held
to the absolute accuracy ``rtol · 1e-3 · max_j s_j``, not to its own relative accuracy,
which would force tiny steps for states that hardly enter the observables (Boehm's
cytoplasmic dimers, 1e-4 of the largest state: 1711 solver steps at the nominal
parameters with a floor of 1e-6, 231 with 1e-3, the NLL the same to 1e-8).

Except for growth: an error made while a state is small grows with it, so a state that
grows by G from a nonzero start carries a relative error of about ``rtol · G`` from its
start at the scale above.  Where G exceeds ``1/FLOOR`` (more than the floor accepts,
``rtol/FLOOR`` relative) the state's scale is its smallest nonzero initial value
instead.  Bertozzi_PNAS2020 (not among the test problems): the infected fraction grows
1.5e9-fold from 2.6e-10, and at the scale of its peak its simulation was 21% off
AMICI's; resolved from its start, it agrees to 4e-7 (the NLL 126.914098, AMICI at rtol
1e-10 126.914146, itself 3.8e-4 off the closed form early on).  The six test problems
have no state growing more than 780-fold, so their scales are unchanged (capping every
growing state at its start would cost Rahman 46% more solver steps at its nominal
parameters, Crauste 40%, for no change in their NLLs beyond 1e-7).

Why per state: the benchmark models mix states of very different sizes (Armistead:
1e-4 to 1; Rahman: 1e4 to 1e7) and a state's absolute error matters relative to its own
size (Armistead's noise is proportional to its smallest state).  A state then carries
about ``rtol`` relative accuracy down to its own scale and absolute accuracy
``rtol · s_i`` below it, which a single absolute tolerance cannot give both a large and
a small state.  The scales come from the nominal parameters; other parameters keep them
(the rule does not chase each start), which is what makes one compiled program serve
every start.

The pilot.  It needs magnitudes only, so it solves with the problem's own diffrax
solver (default Rodas5P, L-stable: the models are stiff) at loose tolerances, in two
passes that share one compiled program (the tolerances are traced arguments):

    s⁰ = max_c |x(0)|                          (floored as above; ones if all zero)
    pass 1: rtol 1e-4, atol = 1e-4 · s⁰   →   s¹ = floor(max(s⁰, max_t |x(t)|))
    pass 2: rtol 1e-6, atol = 1e-6 · s¹   →   s  = floor(max(s⁰, max_t |x(t)|))

with ``max_t`` over the accepted steps (``SaveAt(steps=True)``).  Loose then tight:
before any solve a state that starts at zero has no scale, so pass 1 holds every state
to the absolute accuracy of the largest initial state, which is cheap and robust and
finds each state's magnitude; pass 2 then controls each state relative to that
magnitude, so the maxima of small states (down to the floor) are resolved rather than
left as pass 1's noise.  Pass 2 is one step of the fixed-point iteration
``s ← max_t |x(t; atol = rtol · s)|``, started where it already nearly holds.  A
condition whose pass fails (the step budget ``PILOT_STEPS``, a non-finite value)
contributes pass 1's values, or its initial values if both fail.

One after another or side by side (``sequential_conditions``, for ``load``'s
``conditions="auto"`` on CPU).  Side by side (``vmap``) an adaptive solve steps every
condition as often as the slowest one needs; one after another (``lax.map``) each takes
its own steps, but a step of one condition costs more than its share of a step of
several side by side.  Measured (``benchmarks/results/petab_conditions.md``, 16 starts):
Armistead's two conditions take the same steps (98% of the side-by-side work is
useful) and run 1.23× longer one after another; Bruno's six take 6 to 160 steps each
(42% useful) and run in 0.58× the time.  So a vmapped step of n conditions costs about
0.7-0.8·n single ones, and one after another wins where less than that fraction of the
side-by-side work is useful.  The rule: at the nominal parameters, the final
tolerances and the state scales, a solve of each condition (the pilot's program again,
nothing new to compile) gives its steps ``nᵢ``; the conditions are solved one after
another where ``Σnᵢ / (n · max nᵢ) < USEFUL_MIN``.  The nominal point understates the
spread of a multi-start's points (Bruno: 65% useful there, 42% over 16 starts), hence a
threshold at the top of the measured break-even.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _xla
from ._model import finite_times

FLOOR = 1e-3
PILOT_RTOLS = (1e-4, 1e-6)
RTOL = 1e-8  # where ``resolved_tolerances`` starts: the reference tool chain's (CVODES in AMICI)
RTOL_MIN = 1e-12
SCALE_MIN = FLOOR  # the rule tightens atol_i down to rtol · SCALE_MIN · s_i before it tightens rtol
FINER = 100  # the reference solve of the rtol rule: this much tighter
PILOT_STEPS = 4096
USEFUL_MIN = 0.8


def state_scales(model, nominal):
    """``s_i`` of the module docstring, one per state, for ``model`` (an ``_model.Model``)
    at the estimated parameters ``nominal`` (estimation scale)."""
    x = jnp.asarray(nominal, jnp.result_type(float))
    _, y0, _ = model.initial_states(x)
    tops = np.abs(np.asarray(y0, np.float64))  # (conditions, states): the last good pass's maxima
    tops[~np.isfinite(tops)] = 0.0
    start = np.min(np.where(tops > 0, tops, np.inf), axis=0, initial=np.inf)  # smallest nonzero |x_i(0)|
    scale = _resolving_growth(_floored(np.max(tops, axis=0, initial=0.0)), start)
    for rtol in PILOT_RTOLS:
        top, ok, _ = _pilot(model, x, jnp.asarray(rtol, x.dtype), jnp.asarray(scale, x.dtype))
        tops[np.asarray(ok)] = np.maximum(tops, np.asarray(top, np.float64))[np.asarray(ok)]
        scale = _resolving_growth(_floored(np.max(tops, axis=0, initial=0.0)), start)
    return scale


def sequential_conditions(model, nominal):
    """Whether ``model``'s conditions are best solved one after another on CPU (module
    docstring): fewer than ``USEFUL_MIN`` of the side-by-side steps at ``nominal`` would
    be useful.  One condition, or a failed solve: ``False``."""
    if model.times.shape[0] < 2:
        return False
    x = jnp.asarray(nominal, jnp.result_type(float))
    _, ok, steps = _pilot(model, x, jnp.asarray(model.rtol, x.dtype), jnp.asarray(model.state_scales, x.dtype))
    steps = np.asarray(steps, np.float64)
    if not np.all(np.asarray(ok)) or steps.max() == 0:
        return False
    return bool(steps.sum() / (steps.size * steps.max()) < USEFUL_MIN)


def resolved_tolerances(model, nominal, measurements, ftol, scales=True):
    """The solver's tolerances by the rule of the module docstring: ``(rtol, state
    scales)``, the first pair of the ladder (the scales ÷10 down to ``SCALE_MIN`` of
    ``model.state_scales``, if ``scales``; then ``rtol`` ÷10 down to ``RTOL_MIN``) whose
    NLL at ``nominal`` is within ``ftol·(1 + |NLL|)`` of the NLL solved with both
    ``FINER`` times tighter.  The last pair tried where an NLL is not finite."""
    x = jnp.asarray(nominal, jnp.result_type(float))
    y = jnp.asarray(measurements, x.dtype)
    floor = max(RTOL_MIN, 100 * float(jnp.finfo(x.dtype).eps))

    def nll(rtol, scale):
        return float(nll_at(model, x, y, jnp.asarray(rtol, x.dtype), jnp.asarray(scale, x.dtype)))

    rtol, scale = float(model.rtol), np.asarray(model.state_scales, np.float64)
    if rtol <= floor * (1 + 1e-9):  # low precision: the solves are at their floor, the NLL at its round-off
        return rtol, scale
    factor, factor_min = 1.0, SCALE_MIN if scales else 1.0
    while rtol > floor * (1 + 1e-9) or factor > factor_min * (1 + 1e-9):
        coarse, fine = nll(rtol, factor * scale), nll(rtol / FINER, factor * scale / FINER)
        if not (np.isfinite(coarse) and np.isfinite(fine)) or abs(coarse - fine) <= ftol * (1 + abs(fine)):
            break
        if factor > factor_min * (1 + 1e-9):
            factor = float("%.6g" % (factor / 10))
        else:
            rtol = max(float("%.6g" % (rtol / 10)), floor)
    return rtol, factor * scale


@_xla.filter_jit
def nll_at(model, x, y, rtol, scales):
    """The NLL at ``x`` solved at ``rtol`` and ``atol = rtol · scales`` (one program for
    all tolerances: they are traced).  Compiled as the fits' programs are
    (``_xla.filter_jit``): XLA:CPU's options change the solver's rounding, and where the
    solution amplifies it two compilations of one solve differ by the solver's error
    itself (module docstring), so the rule measures the program the fits run."""
    return model.with_tolerances(rtol, scales).nll(x, y)


def _resolving_growth(scale, start):
    """A state that grows more than ``1/FLOOR``-fold from a nonzero start gets its start
    as its scale (module docstring)."""
    return np.where(scale > start / FLOOR, start, scale)


def _floored(values):
    top = np.max(values, initial=0.0)
    if not np.isfinite(top) or top == 0:
        return np.ones_like(values)
    return np.maximum(values, FLOOR * top)


@eqx.filter_jit
def _pilot(model, x, rtol, scales):
    """Per condition: ``max_t |x_i(t)|`` over the accepted steps of a solve on
    ``[0, t_last]`` at ``rtol`` and ``atol = rtol · scales``, whether it succeeded
    (t_last = 0 counts as success: the initial values are the answer), and its steps."""
    theta, y0, _ = model.initial_states(x)
    t_last = jnp.max(finite_times(model.times.astype(x.dtype)), axis=1)
    eps = float(jnp.finfo(x.dtype).eps)
    rtol = jnp.maximum(rtol, 100 * eps)

    def solve(theta, y0, t1):
        span = jnp.where(t1 > 0, t1, 1)  # a condition measured at t = 0 only: skip it below
        controller = diffrax.PIDController(rtol=rtol, atol=rtol * scales, dtmin=max(1e-14, 10 * eps) * jnp.maximum(span, 1), force_dtmin=False)
        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(model._vector_field), model.settings.solver, t0=jnp.zeros((), x.dtype), t1=span, dt0=None,
            y0=y0, args=theta, saveat=diffrax.SaveAt(t0=True, steps=True), stepsize_controller=controller,
            max_steps=PILOT_STEPS, throw=False,
        )  # fmt: skip
        # Unused step slots hold inf: they are not values.
        ys = jnp.where(jnp.isfinite(solution.ys), jnp.abs(solution.ys), 0)
        ok = (solution.result == diffrax.RESULTS.successful) & jnp.all(jnp.isfinite(y0))
        steps = jnp.where(t1 > 0, solution.stats["num_steps"], 0)
        return jnp.where(t1 > 0, jnp.max(ys, axis=0), jnp.abs(y0)), ok | (t1 <= 0), steps

    return jax.vmap(solve)(theta, y0, t_last)
