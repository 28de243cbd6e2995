"""The ODE solver's tolerances, by one rule for every problem.

Relative tolerance ``rtol`` (default 1e-8, the reference tool chain's; raised to 100 ε
in low precision).  Absolute tolerance per state ``atol_i = rtol · s_i``, with ``s_i``
the state's scale: the largest ``|x_i(t)|`` over the measurement time span of every
condition at the nominal parameters, from one pilot solve on the host (scipy's LSODA
on a numpy translation of the same sympy model, no compilation), floored at
``1e-3 · max_j s_j``: a state a thousand times smaller than the largest one is held to
the absolute accuracy ``rtol · 1e-3 · max_j s_j``, not to its own relative accuracy,
which would force tiny steps for states that hardly enter the observables (Boehm's
cytoplasmic dimers, 1e-4 of the largest state: 1711 solver steps at the nominal
parameters with a floor of 1e-6, 231 with 1e-3, the NLL the same to 1e-8).

Why per state: the benchmark models mix states of very different sizes (Armistead:
1e-4 to 1; Rahman: 1e4 to 1e7) and a state's absolute error matters relative to its own
size (Armistead's noise is proportional to its smallest state).  A state then carries
about ``rtol`` relative accuracy down to its own scale and absolute accuracy
``rtol · s_i`` below it, which a single absolute tolerance cannot give both a large and
a small state.  The scales come from the nominal parameters; other parameters keep them
(the rule does not chase each start), which is what makes one compiled program serve
every start.
"""

import warnings

import numpy as np
import sympy as sp

from ._sbml import TIME, symbol

FLOOR = 1e-3


def state_scales(ode, layout):
    """``s_i`` of the module docstring, one per state (ones where the pilot fails)."""
    from scipy.integrate import solve_ivp

    states = [symbol(s) for s in ode.states]
    params = [symbol(p) for p in layout.parameters]
    rhs = sp.lambdify([TIME, states, params], list(ode.rhs), modules="numpy")
    initial = sp.lambdify([params], list(ode.initial), modules="numpy")
    x_lin = np.array([_unscale(v, s) for v, s in zip(layout.nominal, layout.scales)])
    pool = np.concatenate([x_lin, layout.constants])
    scale = np.zeros(len(states))
    for c in range(len(layout.condition_ids)):
        theta = pool[layout.theta_index[c]]
        y0 = np.broadcast_to(np.asarray(initial(theta), np.float64), (len(states),)).copy()
        override = layout.initial_index[c] >= 0
        y0[override] = pool[layout.initial_index[c][override]]
        t1 = float(layout.times[c].max())
        scale = np.maximum(scale, np.abs(y0))
        if t1 <= 0 or not np.all(np.isfinite(y0)):
            continue
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            fun = lambda t, y, theta=theta: np.asarray(np.broadcast_arrays(*rhs(t, y, theta)), np.float64)  # noqa: E731
            sol = solve_ivp(fun, (0.0, t1), y0, method="LSODA", rtol=1e-6, atol=1e-12 * max(1.0, np.max(np.abs(y0))))
        if sol.success and np.all(np.isfinite(sol.y)):
            scale = np.maximum(scale, np.max(np.abs(sol.y), axis=1))
    top = np.max(scale, initial=0.0)
    if not np.isfinite(top) or top == 0:
        return np.ones(len(states))
    return np.maximum(scale, FLOOR * top)


def _unscale(value, scale):
    return {"lin": value, "log": np.exp(value), "log10": 10.0**value}[scale]
