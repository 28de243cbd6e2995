""":class:`Problem`: a loaded PEtab problem (``_load``) as functions of its estimated
parameters (simulate, nll, fit, multistart, profile, summary, plots), with the defaults
of its fits."""

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from petab.v1 import C

from .. import _multistart, _validate, _xla, fit_batch, least_squares
from . import _checkpoint, _output, _profiles, _starts, _verify


# The default method for PEtab problems: trust-region reflective.  Their parameters are
# bounded (log10 scale, often [1e-5, 1e5]) and optima sit on bounds (Boehm: two of nine);
# trf holds the box itself, where Levenberg-Marquardt's change of variables (sin) flattens
# the cost at a bound and creeps onto it.  And trf's scaling is fixed (x_scale = 1: one
# unit on the estimation scale, a decade on log10), where MINPACK's running maximum of
# the column norms keeps the noise parameters' huge columns from a far start (a small σ)
# for the whole fit and freezes them.  Measured on 16 Boehm starts
# (benchmarks/results/petab_methods.md): trf ended all 16 at local optima in 244 s; lm
# with x_scale = 1 15 of 16 in 482 s; lm with MINPACK's scaling 6 of 16 (the others
# stopped early by xtol or ran to max_steps: the freeze).
METHOD = "trf"

# trf's trust-region subproblem in Coleman & Li's two-dimensional subspace (``subspace``),
# as Fides solves it: where the Gauss-Newton step leaves the region, the best step on its
# edge in the plane of that step and the gradient, where scipy's exact solution follows
# the curve of (JᵀJ + λI)⁻¹g.  From a far start, which local optimum a fit reaches
# depends on those first steps.  Measured on Bruno_JExpBot2016, 1,000 starts (seeds
# 3-12, paired with Fides's on the same starts; benchmarks/results/petab_1000_starts.md):
# exact 633 successes against Fides's 680 (McNemar p = 0.002), the plane 711 (p = 0.03,
# now ahead), in 21% fewer steps; Boehm_JProteomeRes2014 30 → 32, Fides 23.  Neither a
# first radius of 1 (Fides's), Levenberg-Marquardt, nor Fides's step back from a bound
# had closed Bruno's gap (605, 600, 633; petab_summary.md).
SUBSPACE = "2d"

# The stopping test on the cost, as pyPESTO's optimisers state it for the NLL (Fides:
# |ΔNLL| < 1e-8 + 1e-8·|NLL|), in fitfleet's terms: ``ftol=0`` and the absolute
# ``fatol = FTOL·(1 + |NLL|)`` with the NLL at the nominal parameters.  fitfleet's
# ftol is relative to the cost F = NLL − offset, which means nothing for a likelihood:
# F holds a constant ½C per data point whose σ depends on the parameters (``_model``:
# C keeps √(2 ln σ + C) real as σ → 0, ~350 per point; Armistead's F ≈ 20,000 where
# NLL ≈ −302: ftol = 1e-8 would stop at steps lowering the NLL by 2e-4), and where σ is
# fixed F can be tiny (Rahman's 0.018 at NLL 21: 1e-8·F asks for 2e-10).  And
# ``settle=False``: the drift of a non-identifiable parameter along its flat valley
# (toward a bound, lowering the NLL by ~1e-6 a step) is not worth the hundreds of steps
# that fitfleet's settled-parameters test spends on it.
FTOL = 1e-8

# A fit's step budget, unless ``max_steps`` is given: Fides's 1,000 iterations (each one
# trial point, as a fitfleet step is), with the stopping test above also as pyPESTO's
# optimisers state it; fitfleet's own default is 100·(n + 1).  The fits that reach it
# crawl: Crauste's 16 of 300 starts at 1,300 steps took half of the multi-start's steps
# and ended 4.8 to 121 above the best, but for one that had come within the success
# threshold of it by step 69.
MAX_STEPS = 1000

# trf's geodesic acceleration (``acceleration=k``), from a tenth of the step budget on.
# Most PEtab fits converge in a few dozen steps, where the acceleration costs steps or
# successes (from the first step: Boehm +14% steps, Bruno 191 → 182 successes of 300);
# the fits that run on crawl along a curved valley, the radius cycling at 1e-3 decades,
# and there it takes long steps (Crauste's 83 starts that ran 100 steps or more:
# 31,138 → 22,233 steps, 328 → 255 s, the same successes; ``_solvers._curvature``).
ACCELERATION_FROM = MAX_STEPS // 10

# trf's structured secant model (``secant``, off by default with bounds) is on.  A
# likelihood fitted from far starts is a large-residual problem.  Where σ depends on
# the parameters or the states it is one by construction: with s = ln σ, r = (y − h)/σ
# has ∂²r/∂s² = r and ∂²r/∂s∂θ = −∂r/∂θ, so Σ rᵢ∇²rᵢ, which Gauss-Newton leaves out, is
# as large as JᵀJ in every direction that involves σ, at any fit.  Where σ is fixed it
# is one wherever the model misses the data, as at most local optima: Crauste's fits
# that ran to the step budget zig-zagged along curved valleys at NLL 270-310, every
# step accepted and none growing the radius (the crawl the secant model is for,
# ``docs/fitting_guide.md``).  Measured (benchmarks/results/petab_summary.md), off → on:
# 60 starts, Boehm 756 → 86 s, Armistead 156 → 69 s, Perelson 7.3 → 4.9 s; 300 starts
# where σ is fixed (session 21), Crauste 118.6 → 90.6 s (fits at the step budget
# 10 → 1), Bruno 25.4 → 27.6 s, Rahman 62.8 → 64.6 s, the same successes (Bruno 204 → 208).


class Problem:
    """A PEtab problem as functions of the estimated parameters ``x`` on their
    estimation scale (``lin``, ``log`` or ``log10`` per parameter, as the parameter
    table says).

    Attributes:
        names, scales: the estimated parameters, in parameter-table order.
        lower, upper, nominal: their bounds and nominal values on the estimation scale
            (``nominal`` is NaN where the parameter table gives none).
        measurements: the measurement table's values, in its row order.
        fun, args: the residual ``fun(x, *args)`` for fitfleet (module docstring of
            ``fitfleet.petab._model``: ``nll(x) = ½‖fun(x, *args)‖² + offset``), with
            ``args = (measurements, rtol, state_scales)``: the ODE solver's tolerances
            are data, so a fit continued at tighter ones (``_verify``) reuses the
            compiled program.  Where
            σ is estimated, the rows after the σ terms are 0 with a non-zero Jacobian
            (the Fisher rows: ``JᵀJ`` is then the Fisher information); so the Hessian
            of the NLL is ``jax.hessian(nll)``, not that of ``½‖fun‖²``.
        petab_problem: the ``petab.v1.Problem`` it was loaded from.
    """

    def __init__(self, path, petab_problem, ode, layout, model):
        self.path, self.petab_problem, self.ode, self.layout, self.model = path, petab_problem, ode, layout, model
        self.names, self.scales = layout.names, layout.scales
        self.lower, self.upper, self.nominal = layout.lower, layout.upper, layout.nominal
        self.measurements = layout.measurements
        self.state_scales = np.asarray(model.state_scales)
        # The functions below close over the model's numpy arrays, and ``args`` goes to
        # compiled programs: one copy of each per precision (x64 off, on), none shared.
        # JAX 0.10 keeps a numpy array converted to the precision it was first traced
        # in, and the same array traced in the other fails to compile or to run
        # (``jax.jit(lambda x: x * c)`` under x32, then x64).
        self._precisions = tuple(_Precision.of(model, self.measurements) for _ in range(2))
        self.fun = _Residual(tuple(p.model for p in self._precisions), json.dumps(self._fingerprint(tolerances=False), sort_keys=True))
        self._offset = {}

    @property
    def args(self):
        return self._now().args

    def _now(self):
        """The arrays and functions for the caller's precision (``__init__``)."""
        return self._precisions[_x64()]

    def __repr__(self):
        return f"<fitfleet.petab.Problem {self.path.stem}: {len(self.names)} parameters, {self.measurements.size} measurements, {len(self.layout.condition_ids)} conditions, {len(self.ode.states)} states>"

    def _x(self, x, name="x"):
        if isinstance(x, Mapping):  # by parameter id
            unknown, missing = set(x) - set(self.names), [n for n in self.names if n not in x]
            if unknown or missing:
                raise ValueError(f"`{name}`: a mapping must give every estimated parameter {list(self.names)} by id; unknown {sorted(unknown)}, missing {missing}.")
            x = [x[n] for n in self.names]
        x = jnp.asarray(x)
        if x.shape[-1:] != (len(self.names),):
            raise ValueError(f"`{name}` must have {len(self.names)} entries (the estimated parameters {list(self.names)}) in its last axis; got shape {x.shape}.")
        return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(float)

    def nll(self, x):
        """The negative log-likelihood at ``x`` (estimation scale; a point, a mapping
        from parameter id to value, or points stacked along leading axes); jit, vmap
        and grad work (the gradient by forward-mode sensitivities)."""
        x = self._x(x)
        return _rows(self._now().nll, x, jnp.asarray(self.measurements, x.dtype))

    def residual(self, x):
        """``fun(x, *args)``: the residual vector fitfleet minimises (at a point, or
        at points stacked along leading axes)."""
        x = self._x(x)
        return _rows(self._now().residual, x, jnp.asarray(self.measurements, x.dtype))

    @property
    def offset(self):
        """``nll(x) − ½‖residual(x)‖²``, the same for every ``x``, for the residual in the
        default precision (float64 if enabled; ``offset_for``)."""
        return self.offset_for(jnp.result_type(float))

    def offset_for(self, dtype):
        """``offset`` for the residual evaluated in ``dtype`` (a Result's ``cost.dtype``):
        the constant that keeps √(2 ln σ + C) real as σ → 0 is the dtype's (``_model``),
        so a float32 fit's costs under x64 need the float32 offset."""
        dtype = jnp.dtype(dtype)
        if dtype not in self._offset:
            x = jnp.asarray(self.layout.reference, dtype)
            self._offset[dtype] = float(self._now().model.offset(x, jnp.asarray(self.measurements, dtype)))  # eager: small
        return self._offset[dtype]

    def simulate(self, x):
        """The measurement table with a ``simulation`` column: the observables at ``x``."""
        x = self._x(x)
        if x.ndim != 1:
            raise ValueError(f"`x` must be one point of shape ({len(self.names)},) (a table per point: call simulate per row); got shape {x.shape}.")
        table = self.petab_problem.measurement_df.reset_index(drop=True).copy()
        table[C.SIMULATION] = np.asarray(self._now().simulation(x), np.float64)
        return table

    def fit(self, x0=None, *, check=True, **options):
        """``fitfleet.least_squares`` on the problem from ``x0`` (default: the nominal
        parameters), with the parameter table's bounds and forward-mode Jacobians, by
        trust-region reflective unless ``method`` says otherwise (``METHOD``), its
        subproblem solved in a plane unless ``subspace`` says otherwise (``SUBSPACE``),
        stopping as pyPESTO's optimisers do unless ``ftol``/``fatol``/``settle``/
        ``max_steps`` say otherwise (``FTOL``, ``MAX_STEPS``), with trf's secant model
        unless ``secant`` says otherwise, and its acceleration
        from step ``ACCELERATION_FROM`` on unless ``acceleration`` says otherwise (the
        comments at the top of this module).
        ``check``: where the fit stops with a success status, check its NLL against an
        ODE solve 100 times tighter and, if they disagree by more than the stopping
        test, continue at tighter tolerances (``fitfleet.petab._verify``).
        ``options`` go to ``least_squares``.  The NLL at the result: ``res.cost +
        self.offset`` (``self.offset_for(res.cost.dtype)`` for a start of another
        precision than the default), or ``self.nll(res.params)``."""
        if x0 is None and np.isnan(self.nominal).any():
            missing = [n for n, v in zip(self.names, self.nominal) if np.isnan(v)]
            named = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise ValueError(f"`x0`: the parameter table gives no nominal value for {len(missing)} of the {len(self.names)} estimated parameters ({named}); pass a start, e.g. prob.sample_starts(1, key)[0].")
        x0 = self._x(self.nominal if x0 is None else x0, "x0")
        if x0.ndim != 1:
            raise ValueError(f"`x0` must be one point of shape ({len(self.names)},); use multistart for many.")
        options, check = self._options(options), _validate.boolean("check", check)
        res = self._named(least_squares(self.fun, x0, self._data(x0), **options))
        if not check:
            return res
        one = lambda r: jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], r)  # noqa: E731
        refit = lambda x, data: one(least_squares(self.fun, x[0], data, **options))  # noqa: E731
        batched = one(res)
        checked = _verify.checked(self, batched, refit, x0.dtype, options)
        return res if checked is batched else jax.tree_util.tree_map(lambda a: a[0], checked)

    def multistart(self, n_starts, key=None, *, checkpoint=None, checkpoint_every=None, progress=False, rtol=1e-3, threshold=None, dtype=None, check=True, **options):
        """``n_starts`` fits from starts drawn by :meth:`sample_starts`, by
        ``fitfleet.fit_batch``, summarised as a ``fitfleet.MultiStartResult`` (its
        costs are ``nll − offset``; its Results carry the parameter names and bounds).

        A start succeeds when it ends within ``threshold`` of the best NLL, by default
        χ²₁(0.95)/2 = 1.92 (the cost is a negative log-likelihood: ``absolute_sigma``).
        ``checkpoint``: a file that the finished starts are committed to, chunk by chunk
        (``checkpoint_every`` starts, default a tenth, at least 32); an interrupted run
        called again with it skips them (``fitfleet.petab._checkpoint``).  ``progress``
        shows a bar (needs tqdm).  ``rtol``: the grouping of optima.  ``check``: each
        fit's stop checked against a finer ODE solve, as in :meth:`fit`.  ``options`` go
        to ``fit_batch`` (``method``, ``max_steps``, ``ftol``, ...).
        """
        if isinstance(n_starts, bool) or not isinstance(n_starts, (int, np.integer)) or n_starts < 1:
            raise ValueError(f"`n_starts` must be a positive integer; got {n_starts!r}.")
        _multistart.check_grouping(rtol, threshold, True)  # before anything compiles
        check = _validate.boolean("check", check)
        if checkpoint is not None and not Path(checkpoint).parent.is_dir():
            raise FileNotFoundError(f"`checkpoint` {str(checkpoint)!r}: the folder {str(Path(checkpoint).parent)!r} does not exist.")
        dtype = dtype or jnp.result_type(float)
        options = self._options(options)
        x0 = self.sample_starts(n_starts, key).astype(dtype)
        fit = functools.partial(self._fit_starts, options=options, check=check)
        if checkpoint is None:
            results = fit(x0, progress=progress)
        else:
            fingerprint = dict(self._fingerprint(), options=_canonical(options), check=check, dtype=np.dtype(dtype).name)
            results = _checkpoint.run(fit, x0, Path(checkpoint), fingerprint, checkpoint_every, progress)
        return _multistart.summarise(results, x0, rtol, threshold, absolute_sigma=True)

    def profile(self, fit, names=None, *, progress=False, **options):
        """Profile likelihoods of the estimated parameters (all, or ``names``) at
        ``fit`` (a ``MultiStartResult``: its best fit; a ``Result``; or parameters to
        fit from first), on the estimation scale, with their 95% intervals and a
        verdict each (``Profile.verdict_text``): identifiable, practically
        non-identifiable (reaches a bound, or one-sided when the optimum sits on one),
        or structurally non-identifiable (flat).  The threshold is χ²₁(0.95) in
        ``Δ = 2 ΔNLL``.  One compiled program serves every parameter
        (``fitfleet.petab._profiles``).  The refits stop as :meth:`fit`'s fits do.
        ``options`` go to ``fitfleet.profile`` (``n_points``, ``level``, ``max_steps``,
        ...; ``grid``: a dict {name: values}).

        Returns:
            A dict {name: ``fitfleet.Profile``} in the order profiled.
        """
        return _profiles.profiles(self, fit, names, progress=progress, **options)

    def describe(self, dtype=None):
        """What a results file needs to be read without the model (JSON-able): the
        problem's id and yaml, the parameters (names, scales, bounds and nominal values
        on the estimation scale), the NLL's offset (for fits in ``dtype``, default the
        default precision's: ``offset_for``) and the number of measurements."""
        offset = self.offset if dtype is None else self.offset_for(dtype)
        return {
            "problem": self.path.stem, "yaml": str(self.path), "names": list(self.names), "scales": list(self.scales),
            "lower": self.lower.tolist(), "upper": self.upper.tolist(), "nominal": self.nominal.tolist(),
            "offset": offset, "n_measurements": int(self.measurements.size),
        }  # fmt: skip

    def summary(self, ms, profiles=None):
        """A text report of a multi-start (NLL values) and of profiles, if given
        (``fitfleet.petab.summary``)."""
        return _output.summary(ms, self.describe(_cost_dtype(ms, profiles)), profiles)

    def plots(self, ms=None, profiles=None, folder=None):
        """The waterfall, parameter and profile plots (``fitfleet.petab.plots``)."""
        return _output.plots(ms, self.describe(_cost_dtype(ms, profiles)), profiles, folder)

    def sample_starts(self, n_starts, key=None):
        """(n_starts, n) starting points on the estimation scale, drawn from each
        parameter's initializationPriorType (default ``parameterScaleUniform``: uniform
        between the bounds on the estimation scale, pyPESTO's default), truncated to
        the bounds; ``key``: a ``jax.random`` key or a whole-number seed (default
        ``jax.random.key(0)``)."""
        key = _validate.random_key("key", key)
        u = np.asarray(jax.random.uniform(key, (int(n_starts), len(self.names)), jnp.float32), np.float64)
        u = np.clip(u, 1e-12, 1 - 1e-12)
        columns = [
            _starts.sample(u[:, j], kind, params, lo, hi, scale)
            for j, ((kind, params), lo, hi, scale) in enumerate(zip(self.layout.priors, self.lower, self.upper, self.scales))
        ]
        return np.clip(np.stack(columns, axis=1), self.lower, self.upper) if columns else np.zeros((int(n_starts), 0))

    def _fit_starts(self, x0, options, check, progress=False):
        """The fits from the rows of ``x0`` by ``fit_batch`` with the completed
        ``options`` (``_options``), checked by ``_verify`` if ``check``: what
        :meth:`multistart` runs."""

        def fit(x0, data, progress=False):
            return self._named(fit_batch(self.fun, x0, data, shared_args=True, progress=progress, **options))

        results = fit(x0, self._data(x0), progress)
        return _verify.checked(self, results, fit, x0.dtype, options) if check else results

    def _data(self, x0, tolerances=None):
        """``args`` in ``x0``'s dtype, with the tolerances ``(rtol, state_scales)`` if given."""
        return tuple(jnp.asarray(a, x0.dtype) for a in (self.measurements, *(tolerances or self.args[1:])))

    def _named(self, res):
        return dataclasses.replace(res, names=tuple(self.names))

    def _fingerprint(self, tolerances=True):
        """The problem's identity for checkpoints: its tables and model by content, and
        the ODE settings (without the tolerances: the residual's identity, which takes
        them as data)."""
        p = self.petab_problem
        digest = hashlib.sha256()
        for table in (p.measurement_df, p.condition_df, p.observable_df, p.parameter_df):
            digest.update(table.to_csv().encode())
        digest.update(p.model.to_sbml_str().encode())
        s = self.model.settings
        identity = {"problem": digest.hexdigest(), "ode": f"{s.solver!r} max_steps={s.max_steps} sequential={s.sequential}"}
        return {**identity, "rtol": float(self.model.rtol), "state_scales": self.state_scales.tolist()} if tolerances else identity

    def _options(self, options):
        options = dict(options)
        options.setdefault("method", METHOD)
        options.setdefault("bounds", (self.lower, self.upper))
        options.setdefault("subspace", SUBSPACE)
        options.setdefault("jac", "fwd")  # the ODE solves differentiate in forward mode only
        options.setdefault("settle", False)  # FTOL's comment
        options.setdefault("ftol", 0.0)
        options.setdefault("max_steps", MAX_STEPS)
        options.setdefault("acceleration", ACCELERATION_FROM)
        options.setdefault("secant", True)  # see the comment at the top
        if "fatol" not in options:
            options["fatol"] = self._fatol
        return options

    @functools.cached_property
    def _fatol(self):
        """``FTOL·(1 + |NLL|)`` at the nominal parameters (FTOL's comment), which in the
        benchmark problems sit at a published optimum.  Where the table gives no nominal
        values, ``FTOL·(1 + m)`` for m measurements: a fit that explains its data has an
        NLL of order one per data point (½r² ≈ ½ plus ln σ + ½ ln 2π), while at the
        middle of the bounds, where ``load``'s rules then look, it can be far from that
        (Korkut_eLIFE2015: 4.0e6 there, 63 at its best fit of eight starts)."""
        if np.isnan(self.nominal).any():
            return FTOL * (1 + self.measurements.size)
        nll = float(self.nll(jnp.asarray(self.nominal, jnp.result_type(float))))
        return FTOL * (1 + abs(nll)) if math.isfinite(nll) else FTOL


class _Precision(NamedTuple):
    """A problem's model (arrays of its own), ``args`` and compiled functions for one
    precision (``Problem.__init__``)."""

    model: object
    args: tuple
    nll: object
    simulation: object
    residual: object

    @classmethod
    def of(cls, model, measurements):
        model = jax.tree_util.tree_map(np.array, model)
        args = (np.array(measurements), np.array(model.rtol, np.float64), np.array(model.state_scales, np.float64))
        return cls(model, args, _xla.filter_jit(_nll_with_gradient(model)), _xla.filter_jit(model.simulation), _xla.filter_jit(model.residual))


class _Residual:
    """``fun(x, y, rtol, state_scales)``, the model's residual at those tolerances, equal
    (and hashing equal) for problems of the same content and ODE settings but the
    tolerances (``Problem._fingerprint``): fitfleet keys its compiled programs on
    ``fun``, so loading a problem again, or at other tolerances, reuses them.  (A plain
    object, not the Model's bound method, whose arrays equinox would warn about as a
    static field.)"""

    def __init__(self, models, key):
        self.models, self.key = models, key  # per precision (``Problem.__init__``)

    def __call__(self, x, y, rtol, state_scales):
        return self.models[_x64()].with_tolerances(rtol, state_scales).residual(x, y)

    def __eq__(self, other):
        return type(other) is type(self) and other.key == self.key

    def __hash__(self):
        return hash(self.key)


def _x64():
    """Whether the caller traces with x64 on (``enable_x64`` is thread-local)."""
    return bool(jnp.result_type(float) == jnp.float64)


def _rows(fn, x, y):
    """``fn(x, y)`` at a point ``x``, or at each point of a stack (leading axes)."""
    for _ in range(x.ndim - 1):
        fn = jax.vmap(fn, in_axes=(0, None))
    return fn(x, y)


def _cost_dtype(ms, profiles):
    """The precision the costs of a multi-start (or, without one, of profiles) were
    computed in; None when there is neither."""
    if ms is not None:
        return np.asarray(ms.results.cost).dtype
    if profiles:
        return np.asarray(next(iter(profiles.values())).cost).dtype
    return None


def _canonical(options):
    """Fit options as JSON-able text, to compare runs."""
    plain = lambda v: v.tolist() if isinstance(v, np.ndarray) else [plain(u) for u in v] if isinstance(v, (list, tuple)) else v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)  # noqa: E731
    return {k: plain(v) for k, v in sorted(options.items())}


def _nll_with_gradient(model):
    """``nll(x, y)`` whose reverse-mode gradient in ``x`` comes from forward-mode
    sensitivities (diffrax.ForwardMode has no reverse mode)."""

    @jax.custom_vjp
    def nll(x, y):
        return model.nll(x, y)

    def forward(x, y):
        grad, value = jax.jacfwd(lambda x: (model.nll(x, y),) * 2, has_aux=True)(x)
        return value, (grad, y)

    def backward(saved, g):
        grad, y = saved
        return g * grad, jnp.zeros_like(y)

    nll.defvjp(forward, backward)
    return nll
