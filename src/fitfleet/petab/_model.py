"""The PEtab problem as JAX functions of the estimated parameters: ODE solves of all
conditions in one program, observables, residuals and the negative log-likelihood.

Likelihood (pyPESTO's and AMICI's objective, with its normalisation constants).  A data
point y with simulated observable h, noise σ and observableTransformation τ (lin, log,
log10; τ(h) = h, ln h, log10 h) contributes

    nll_i = ½ r_i² + ½ ln(2π σ_i²) + J_i,    r_i = (τ(y_i) − τ(h_i)) / σ_i,

with J_i = 0 (lin), ln y_i (log-normal), ln(y_i ln 10) (log10-normal): the change of
variables from τ(y) back to y.

Sum of squares.  fitfleet minimises F = ½‖ρ‖².  Every data point gives ρ_i = r_i.  Where
σ is constant (a number, a fixed parameter) ln σ_i is a constant.  Where σ depends on
the parameters or the states (an observable whose noise formula involves an estimated
parameter or a state, Armistead's σ = a·state), each of its data points also gives

    s_i = √( ln max(σ_i², τ_min) − ln τ_min + 2 ),    ½ s_i² = ln|σ_i| + K,
    K = 1 − ½ ln τ_min,

with τ_min the smallest normal number of the dtype (2.2e-308 in float64: K = 355.2;
1.2e-38 in float32: K = 44.7).  The argument of the root is ≥ 2 for every σ the dtype
can square, so s is real and ≥ √2, and ∂s/∂ln σ = 1/s ≤ 1/√2: finite for σ → 0 (down to
1e-154 in float64, where σ² underflows; below that the clamp holds s at √2 with a zero
derivative, and r = (τ(y) − τ(h))/σ has long overflowed) and for σ → ∞ (s grows like
√(2 ln σ)).  A smaller K chosen from the parameter bounds (as a hand-written
likelihood might) would not do: a σ that follows a simulated state has no bound.  The Gauss-Newton model of ½ s² = ln σ + K
is ln σ + K + Δ + Δ²/(2 s²) for a step Δ in ln σ: nearly the exact (linear) term, as
s² ≥ 2 and typically s² ≈ 2K, so the large K makes the quadratic model more faithful,
not less.  Then

    nll(x) = ½‖ρ(x)‖² + offset,
    offset = Σ_i (½ ln 2π + J_i) + Σ_{σ constant} ln|σ_i| − K · #{σ variable},

which ``Problem.offset`` holds.

Fisher rows.  Gauss-Newton's model of the NLL is ``JᵀJ``; where σ is constant that is
the Fisher information of the data (Fisher scoring, what pyPESTO's Fides uses first), but
not where σ varies.  With ℓ = ln σ_i, ``∂r_i/∂ℓ = −r_i`` and ``∂s_i/∂ℓ = 1/s_i``, so the
data point's ``JᵀJ`` holds ``(r_i² + 1/s_i²)∇ℓ∇ℓᵀ`` against the Fisher information's
``2∇ℓ∇ℓᵀ`` (E r² = 1): half of it at a fit, none where σ is far too large (r ≈ 0), where
the model is then flat in ℓ and its steps throw σ down by decades with the other
parameters held (a far start), before they have been fitted.  So each such data point
also gives a Fisher row ``f_i = ℓ_i − stop_gradient(ℓ_i)``: its value is 0 (the sum of
squares and its gradient ``Jᵀρ`` are unchanged), its Jacobian row ``∇ℓ_i``, which adds the
missing ``∇ℓ∇ℓᵀ``: ``JᵀJ`` is then the Fisher information in expectation, up to the
``1/s_i² ≤ ½`` (≈ 1/(2K) in practice).  (So ``jax.jacfwd(prob.fun)`` is not the
difference quotient of ``prob.fun`` in those rows, by design.)  Measured, 300 starts
of ``benchmarks/petab.py`` without → with them (``benchmarks/results/petab.md`` →
``petab_fisher.md``; Fides in brackets): Perelson 109 → 135 successes (131) in 18.2 →
12.3 s, Armistead 293 → 297 (297) in 150.9 → 139.0 s, Boehm 13 → 8 (9) in 104.3 →
91.7 s; on another 300 starts each (seeds 3-5), Perelson 115 → 146, Boehm 9 → 8.

Objective priors (pyPESTO's negative log-posterior)
add one residual each after these and their constants to the offset
(``_tables.Prior``).  The constant K per σ-dependent data point inflates F,
so fitfleet's relative stopping tests (``ftol``: a decrease relative to F; ``gtol``: a
cosine with ‖ρ‖) are looser in NLL units than on F = NLL; the fits from the nominal
parameters still end within 1e-5 of the best known optima
(``benchmarks/results/petab_import.md``).

ODE solves: every condition has the same state vector and right-hand side, so one
program solves them all (their times padded to equal length with their last time; see
``_solve``), either one condition after another (``lax.map``) or side by side
(``vmap``; ``Settings.sequential``, chosen by ``fitfleet.petab.load``).  Side by side,
an adaptive solve steps every condition until the slowest one is done: Bruno's six
conditions take 6 to 160 steps each from a random start, so that 58% of the work is
padding.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._codegen import Generated
from ._sbml import TIME, symbol


STEADY = 0.01  # pre-equilibration ends where the rates are below STEADY × the tolerances


class Settings(eqx.Module):
    """The ODE solver, its step budget, and whether the conditions are solved one after
    another (``fitfleet.petab.load``, ``_tolerances``)."""

    solver: diffrax.AbstractSolver
    max_steps: int
    sequential: bool = False


class ObservableFns(eqx.Module):
    observable: Generated = eqx.field(static=True)
    noise: Generated = eqx.field(static=True)
    transformation: str = eqx.field(static=True)
    variable_sigma: bool = eqx.field(static=True)
    rows: tuple = eqx.field(static=True)  # positions in the measurement table
    condition: jax.Array
    time: jax.Array
    observable_index: jax.Array
    noise_index: jax.Array


class Model(eqx.Module):
    """Pure functions of ``x`` (the estimated parameters on their estimation scale) and
    ``y`` (the measurements in table order)."""

    rhs: Generated = eqx.field(static=True)
    initial: Generated = eqx.field(static=True)
    scale_groups: tuple = eqx.field(static=True)  # (log indices, log10 indices)
    settings: Settings = eqx.field(static=True)
    observables: tuple
    constants: jax.Array
    theta_index: jax.Array
    initial_index: jax.Array
    times: jax.Array
    rtol: jax.Array  # the solver's relative tolerance (data, so that ``_tolerances`` can try others)
    state_scales: jax.Array  # atol = rtol · state_scales (``_tolerances``)
    # Pre-equilibration (``_tables``): per experiment, which steady state it starts from
    # (-1: none), and the pre-equilibration conditions' parameters and initial states.
    preequilibration: jax.Array
    preequilibration_theta_index: jax.Array
    preequilibration_initial_index: jax.Array
    steady_experiments: tuple = eqx.field(static=True, default=())  # those with measurements at t = inf
    priors: tuple = eqx.field(static=True, default=())  # ``_tables.Prior``s of the objective
    prior_offset: float = eqx.field(static=True, default=0.0)

    def with_tolerances(self, rtol, state_scales):
        """This model solving at ``rtol`` and ``atol = rtol · state_scales`` (arrays,
        traced or not)."""
        return eqx.tree_at(lambda m: (m.rtol, m.state_scales), self, (rtol, state_scales))

    def pool(self, x):
        x_lin = x
        log, log10 = self.scale_groups
        if log:
            x_lin = x_lin.at[np.array(log)].set(jnp.exp(x[np.array(log)]))
        if log10:
            x_lin = x_lin.at[np.array(log10)].set(10.0 ** x[np.array(log10)])
        return jnp.concatenate([x_lin, self.constants.astype(x.dtype)])

    def _vector_field(self, t, state, theta):
        f = self.rhs(jnp.reshape(t, (1,)).astype(state.dtype), state, theta)
        # Nothing non-finite may reach the implicit solver's linear solves: lineax's
        # tangent solves (forward mode) raise on it, which would end a whole batch.  A
        # non-finite rate, or a state past ``big`` (a finite-time blow-up on its way
        # to overflow), becomes a huge finite rate instead: the step's error estimate
        # is then huge, the controller rejects it and shrinks the step, and at ``dtmin``
        # the solve stops as failed (NaN, see ``_solve``).  No accepted step sees it.
        big = jnp.finfo(state.dtype).max ** (1 / 3)
        ok = jnp.isfinite(f) & (jnp.max(jnp.abs(state)) < big)
        return jnp.where(ok, f, big)

    def _solve(self, theta, y0, ts):
        return self._diffeqsolve(theta, y0, ts[-1], diffrax.SaveAt(ts=ts))

    def _steady_state(self, theta, y0):
        """The states where the solve from ``y0`` first has ``‖f/(atol + rtol·|y|)‖_rms
        < STEADY`` (AMICI's test for a steady state, tightened: what is left to move
        is about ``f`` times the slowest time scale), or NaN if it does not get there.  Its
        derivatives are those of the solve (forward sensitivities integrated along,
        which AMICI falls back to): they also hold where conservation laws make the
        Jacobian of ``f`` singular, unlike the implicit function theorem's."""
        rtol, atol = self._tolerances(y0.dtype)

        def steady(t, y, args, **_):
            f = self._vector_field(t, y, args)
            return jnp.sqrt(jnp.mean((f / (atol + rtol * jnp.abs(y))) ** 2)) < STEADY

        return self._diffeqsolve(theta, y0, jnp.asarray(jnp.inf, y0.dtype), diffrax.SaveAt(t1=True), diffrax.Event(steady))[0]

    def _tolerances(self, dtype):
        rtol = jnp.maximum(jnp.asarray(self.rtol, dtype), 100 * float(jnp.finfo(dtype).eps))
        return rtol, rtol * self.state_scales.astype(dtype)

    def _diffeqsolve(self, theta, y0, t1, saveat, event=None):
        s = self.settings
        eps = float(jnp.finfo(y0.dtype).eps)
        rtol, atol = self._tolerances(y0.dtype)
        valid = jnp.all(jnp.isfinite(y0)) & jnp.all(jnp.isfinite(theta))
        y0, theta = jnp.where(valid, y0, 0), jnp.where(valid, theta, 1)
        span = jnp.where(jnp.isfinite(t1), jnp.maximum(t1, 1), 1)
        controller = diffrax.PIDController(
            rtol=rtol, atol=atol, pcoeff=0.3, icoeff=0.3, dtmin=max(1e-14, 10 * eps) * span, force_dtmin=False
        )
        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(self._vector_field), s.solver, t0=jnp.zeros((), y0.dtype), t1=t1, dt0=None, y0=y0,
            args=theta, saveat=saveat, stepsize_controller=controller, event=event,
            adjoint=diffrax.ForwardMode(), max_steps=s.max_steps, throw=False,
        )  # fmt: skip
        # A failed solve (step budget, dtmin, a non-finite start) is NaN, which
        # fitfleet reads as a failed evaluation, never a number that looks valid.
        done = diffrax.RESULTS.successful if event is None else diffrax.RESULTS.event_occurred
        return jnp.where(valid & (solution.result == done), solution.ys, jnp.nan)

    def states(self, x):
        """(conditions, times, states) at every condition's measurement times, the
        condition parameters (conditions, parameters) and the pool."""
        theta, y0, pool = self.initial_states(x)
        conditions = (theta, y0, finite_times(self.times.astype(x.dtype)))
        if self.settings.sequential and theta.shape[0] > 1:
            ys = jax.lax.map(lambda c: self._solve(*c), conditions)
        else:
            ys = jax.vmap(self._solve)(*conditions)
        if self.steady_experiments:  # steady-state measurements (time = inf)
            k = np.array(self.steady_experiments)
            steady = jax.lax.map(lambda c: self._steady_state(*c), (theta[k], y0[k]))
            ys = ys.at[k].set(jnp.where(jnp.isinf(self.times[k])[..., None], steady[:, None, :], ys[k]))
        return ys, theta, pool

    def initial_states(self, x):
        """Per condition: its parameters (conditions, parameters) and initial states
        (conditions, states), and the pool."""
        pool = self.pool(x)
        theta = pool[self.theta_index]
        y0 = self.initial(theta.T).T
        override = self.initial_index >= 0
        y0 = jnp.where(override, pool[jnp.where(override, self.initial_index, 0)], y0)
        if self.preequilibration_theta_index.shape[0]:  # module ``_tables``' docstring
            theta_pre = pool[self.preequilibration_theta_index]
            y_pre = self.initial(theta_pre.T).T
            given = self.preequilibration_initial_index >= 0
            y_pre = jnp.where(given, pool[jnp.where(given, self.preequilibration_initial_index, 0)], y_pre)
            steady = jax.lax.map(lambda c: self._steady_state(*c), (theta_pre, y_pre))
            after = (self.preequilibration >= 0)[:, None] & ~override
            y0 = jnp.where(after, steady[jnp.maximum(self.preequilibration, 0)], y0)
        return theta, y0, pool

    def predict(self, x):
        """Per observable: (h, σ) at its rows."""
        return self._observe(*self.states(x))

    def _observe(self, ys, theta, pool):
        out = []
        for o in self.observables:
            t = self.times.astype(pool.dtype)[o.condition, o.time][None]
            args = (t, ys[o.condition, o.time].T, theta[o.condition].T, pool[o.observable_index].T)
            h = o.observable(*args)[0]
            sigma = o.noise(*args, pool[o.noise_index].T)[0]
            out.append((h, sigma))
        return out

    def simulation(self, x):
        """The observables in measurement-table order."""
        return self._table_order([h for h, _ in self.predict(x)])

    def residual(self, x, y):
        """ρ(x): the weighted residuals in table order, the σ terms, the Fisher rows, then
        the priors' (module docstring)."""
        tiny = jnp.finfo(x.dtype).tiny
        r, s, fisher = [], [], []
        for o, (h, sigma) in zip(self.observables, self.predict(x)):
            r.append(_weighted(o.transformation, y[np.asarray(o.rows)], h, sigma))
            if o.variable_sigma:
                log_sigma2 = jnp.log(jnp.maximum(sigma * sigma, tiny))
                s.append(jnp.sqrt(log_sigma2 - jnp.log(tiny) + 2))
                half = 0.5 * log_sigma2  # ln|σ|
                fisher.append(half - jax.lax.stop_gradient(half))  # 0, with the slope of ln|σ|
        return jnp.concatenate([self._table_order(r), *s, *fisher, self._prior_residual(x)])

    def _prior_residual(self, x):
        """The objective priors' residuals (``_tables.Prior``), after the data's."""
        pool = self.pool(x)
        r = []
        for p in self.priors:
            v = x[p.index] if p.on_scale else pool[p.index]
            r.append(((jnp.log(v) if p.log else v) - p.mean) / p.sd)
        return jnp.stack(r) if r else jnp.zeros((0,), x.dtype)

    def nll(self, x, y):
        """The negative log-likelihood (module docstring), exactly."""
        total = 0.0
        for o, (h, sigma) in zip(self.observables, self.predict(x)):
            data = y[np.asarray(o.rows)]
            r = _weighted(o.transformation, data, h, sigma)
            total += jnp.sum(0.5 * r * r + 0.5 * jnp.log(2 * np.pi * sigma * sigma) + _jacobian_term(o.transformation, data))
        return total + 0.5 * jnp.sum(self._prior_residual(x) ** 2) + self.prior_offset

    def offset(self, x, y):
        """``nll - ½‖residual‖²``, from the constant terms alone (module docstring);
        no ODE solve: a constant σ does not depend on the states."""
        K = 1 - 0.5 * jnp.log(jnp.finfo(x.dtype).tiny)
        pool = self.pool(x)
        theta = pool[self.theta_index]
        ys = jnp.zeros((*self.times.shape, self.initial_index.shape[1]), x.dtype)
        total = 0.0
        for o, (_, sigma) in zip(self.observables, self._observe(ys, theta, pool)):
            data = y[np.asarray(o.rows)]
            total += jnp.sum(0.5 * jnp.log(2 * np.pi) + _jacobian_term(o.transformation, data))
            total += -K * data.size if o.variable_sigma else jnp.sum(0.5 * jnp.log(sigma**2))
        return total + self.prior_offset

    def _table_order(self, parts):
        rows = np.concatenate([o.rows for o in self.observables])
        return jnp.concatenate(parts)[np.argsort(rows, kind="stable")]


def finite_times(times):
    """``times`` (conditions, T) with t = inf (a steady state, solved apart) replaced by
    the condition's last finite time (0 if none)."""
    last = jnp.max(jnp.where(jnp.isfinite(times), times, 0), axis=-1, keepdims=True)
    return jnp.where(jnp.isfinite(times), times, last)


def _weighted(transformation, y, h, sigma):
    if transformation == "log":
        return (jnp.log(y) - jnp.log(h)) / sigma
    if transformation == "log10":
        return (jnp.log10(y) - jnp.log10(h)) / sigma
    return (y - h) / sigma


def _jacobian_term(transformation, y):
    if transformation == "log":
        return jnp.log(y)
    if transformation == "log10":
        return jnp.log(y * np.log(10))
    return jnp.zeros_like(y)


def build_model(ode, layout, settings, rtol, state_scales):
    """The :class:`Model` of an ``_sbml.OdeModel`` and a ``_tables.Layout``."""
    states = [symbol(s) for s in ode.states]
    params = [symbol(p) for p in layout.parameters]
    rhs = Generated([[TIME], states, params], ode.rhs)
    initial = Generated([params], ode.initial)
    observables = []
    for o in layout.observables:
        groups = [[TIME], states, params, [symbol(p) for p in o.placeholders]]
        observables.append(
            ObservableFns(
                observable=Generated(groups, [o.formula]),
                noise=Generated(groups + [[symbol(p) for p in o.noise_placeholders]], [o.noise]),
                transformation=o.transformation,
                variable_sigma=o.variable_sigma,
                rows=tuple(o.rows.tolist()),
                condition=o.condition.astype(np.int32),
                time=o.time.astype(np.int32),
                observable_index=o.observable_index.astype(np.int32),
                noise_index=o.noise_index.astype(np.int32),
            )
        )
    scales = np.asarray(layout.scales)
    return Model(
        rhs=rhs,
        initial=initial,
        scale_groups=(tuple(np.flatnonzero(scales == "log").tolist()), tuple(np.flatnonzero(scales == "log10").tolist())),
        settings=settings,
        observables=tuple(observables),
        constants=np.asarray(layout.constants),
        theta_index=layout.theta_index.astype(np.int32),
        initial_index=layout.initial_index.astype(np.int32),
        times=np.asarray(layout.times),
        rtol=np.asarray(rtol, np.float64),
        state_scales=np.asarray(state_scales, np.float64),
        preequilibration=layout.preequilibration.astype(np.int32),
        preequilibration_theta_index=layout.preequilibration_theta_index.astype(np.int32),
        preequilibration_initial_index=layout.preequilibration_initial_index.astype(np.int32),
        steady_experiments=tuple(np.flatnonzero(np.isinf(layout.times).any(axis=1)).tolist()),
        priors=layout.objective_priors,
        prior_offset=layout.prior_offset,
    )
