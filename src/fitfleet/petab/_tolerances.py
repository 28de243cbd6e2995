"""The ODE solver's tolerances, by one rule for every problem.

Relative tolerance ``rtol`` (default 1e-8, the reference tool chain's; raised to 100 ε
in low precision).  Absolute tolerance per state ``atol_i = rtol · s_i``, with ``s_i``
the state's scale: the largest ``|x_i(t)|`` over the measurement time span of every
condition at the nominal parameters, from one pilot solve on the host (below), floored
at ``1e-3 · max_j s_j``: a state a thousand times smaller than the largest one is held
to the absolute accuracy ``rtol · 1e-3 · max_j s_j``, not to its own relative accuracy,
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

The pilot solve needs magnitudes only, so it runs at ``PILOT_RTOL`` = 1e-6 in numpy on a
``sympy.lambdify`` translation of the same model: no compilation, milliseconds per
problem.  Its method is Shampine & Reichelt's ``ode23s``, a Rosenbrock (W-)method of
order 2 with an order-3 error estimate, L-stable (the models are stiff), with
finite-difference Jacobians (one vectorised right-hand-side call per step):

    d = 1/(2 + √2),  e32 = 6 + √2,  W = I − h d J,  T ≈ ∂f/∂t,
    k1 = W⁻¹ (f(t, y) + h d T)
    k2 = W⁻¹ (f(t + h/2, y + h k1/2) − k1) + k1
    y⁺ = y + h k2
    k3 = W⁻¹ (f(t + h, y⁺) − e32 (k2 − F1) − 2 (k1 − F0) + h d T)
    error ≈ h (k1 − 2 k2 + k3) / 6

with ``F0``, ``F1`` the first two right-hand sides.  A condition whose pilot fails
(non-finite values, the step budget) contributes its initial values only; no scale at
all gives ones.

Reference: L. F. Shampine & M. W. Reichelt, "The MATLAB ODE Suite", SIAM J. Sci.
Comput. 18 (1997), section 3.
"""

import math
import warnings

import numpy as np
import sympy as sp

from ._sbml import TIME, symbol

FLOOR = 1e-3
PILOT_RTOL = 1e-6
PILOT_STEPS = 20_000


def state_scales(ode, layout):
    """``s_i`` of the module docstring, one per state (ones where no pilot succeeds)."""
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

        def f(t, y, theta=theta):  # y: (states, columns)
            return np.stack(np.broadcast_arrays(*rhs(t, y, theta), y[0])[:-1]).astype(np.float64)

        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            top = largest_values(f, y0, t1)
        if top is not None:
            scale = np.maximum(scale, top)
    top = np.max(scale, initial=0.0)
    if not np.isfinite(top) or top == 0:
        return np.ones(len(states))
    return np.maximum(scale, FLOOR * top)


def largest_values(f, y0, t1, rtol=PILOT_RTOL, max_steps=PILOT_STEPS):
    """``max |y_i(t)|`` over the accepted steps of an ``ode23s`` solve of
    ``dy/dt = f(t, y)`` on ``[0, t1]`` (module docstring); ``None`` if it fails.
    ``f(t, Y)`` evaluates the columns of ``Y`` (states, k) at once."""
    d, e32 = 1 / (2 + math.sqrt(2)), 6 + math.sqrt(2)
    n = y0.size
    sqrt_eps = math.sqrt(np.finfo(np.float64).eps)
    t, y, top = 0.0, y0.astype(np.float64), np.abs(y0).astype(np.float64)
    h, h_min = 1e-6 * t1, 1e-14 * t1
    for _ in range(max_steps):
        if t >= t1:
            return top
        h = min(h, t1 - t)
        atol = 1e-6 * max(float(top.max()), 1e-9)  # relative to the largest state so far
        # F0, the Jacobian's columns and ∂f/∂t in one call.
        delta = sqrt_eps * np.maximum(np.abs(y), atol / rtol)
        dt = sqrt_eps * max(t, h)
        columns = np.concatenate([y[:, None], y[:, None] + np.diag(delta)], axis=1)
        values = f(t, columns)
        F0 = values[:, 0]
        J = (values[:, 1:] - F0[:, None]) / delta
        T = (f(t + dt, y[:, None])[:, 0] - F0) / dt
        if not (np.all(np.isfinite(F0)) and np.all(np.isfinite(J)) and np.all(np.isfinite(T))):
            return None
        W = np.eye(n) - h * d * J
        try:
            Winv = np.linalg.inv(W)
        except np.linalg.LinAlgError:
            h /= 10
            if h < h_min:
                return None
            continue
        k1 = Winv @ (F0 + h * d * T)
        F1 = f(t + 0.5 * h, (y + 0.5 * h * k1)[:, None])[:, 0]
        k2 = Winv @ (F1 - k1) + k1
        y_new = y + h * k2
        F2 = f(t + h, y_new[:, None])[:, 0]
        k3 = Winv @ (F2 - e32 * (k2 - F1) - 2 * (k1 - F0) + h * d * T)
        err = h / 6 * (k1 - 2 * k2 + k3)
        ratio = float(np.max(np.abs(err) / (atol + rtol * np.maximum(np.abs(y), np.abs(y_new)))))
        if not (np.isfinite(ratio) and np.all(np.isfinite(y_new))):
            ratio = math.inf
        if ratio <= 1:
            t, y = t + h, y_new
            top = np.maximum(top, np.abs(y))
            h *= min(5.0, 0.8 * ratio ** (-1 / 3)) if ratio > 0 else 5.0
        else:
            h *= max(0.1, 0.8 * ratio ** (-1 / 3)) if np.isfinite(ratio) else 0.1
            if h < h_min:
                return None
    return top if t >= t1 else None


def _unscale(value, scale):
    return {"lin": value, "log": np.exp(value), "log10": 10.0**value}[scale]
