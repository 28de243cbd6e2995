"""The PEtab tables (read by ``petab``) as index arrays into one vector of values.

Every number the simulation needs, a model parameter in a condition, a species'
initial value, an observable's or noise formula's placeholder in a measurement row, is
an entry of

    pool = [x_lin (the estimated parameters, linear scale), constants]

so the whole PEtab parameter mapping is a set of integer arrays built once on the host,
and one gather per quantity on the device.  A table entry is a number (a constant), the
id of an estimated parameter (its entry in ``x_lin``) or of a fixed one (its nominal
value, a constant); a model quantity no table mentions keeps the SBML model's value.

A simulation ("experiment") is a pair (pre-equilibration condition, simulation
condition), the first possibly absent.  Pre-equilibration (PEtab v1): the model runs
from its initial values under the pre-equilibration condition to a steady state; the
simulation condition then sets its parameters and re-initialises the states its
condition-table row gives a value (not NaN), the others keep their steady-state values,
and time restarts at 0.
"""

from dataclasses import dataclass, field

import numpy as np
import petab.v1 as petab
import sympy as sp
from petab.v1 import C

from ._sbml import TIME, symbol

SCALES = ("lin", "log", "log10")


@dataclass(frozen=True)
class Observable:
    """The measurement rows of one observable and its formulas.

    ``rows``: positions in the measurement table; ``condition``/``time``: each row's
    simulation condition and index into that condition's time grid; ``observable_index``/
    ``noise_index``: (rows, placeholders) indices into the pool.
    """

    id: str
    formula: sp.Expr
    noise: sp.Expr
    placeholders: tuple
    noise_placeholders: tuple
    transformation: str
    rows: np.ndarray
    condition: np.ndarray
    time: np.ndarray
    observable_index: np.ndarray
    noise_index: np.ndarray
    variable_sigma: bool


@dataclass(frozen=True)
class Prior:
    """An objective prior as a residual, ``r = (t(v) − mean)/sd`` with ``v`` the
    parameter on its estimation scale (``on_scale``) or its linear value, and ``t = ln``
    (``log``) or the identity: ``−ln(prior density) = ½r² + a constant``.  A normal
    prior has ``t`` the identity; a log-normal one (ln v ~ N(μ, σ²)), completing the
    square, ``(ln v − μ)²/2σ² + ln v = ½((ln v − (μ − σ²))/σ)² + μ − σ²/2``."""

    index: int  # among the estimated parameters
    on_scale: bool
    log: bool
    mean: float
    sd: float


@dataclass(frozen=True)
class Layout:
    names: tuple  # estimated parameters, in parameter-table order
    scales: tuple
    lower: np.ndarray  # on the estimation scale
    upper: np.ndarray
    nominal: np.ndarray  # NaN where the table gives none (allowed for estimated parameters)
    priors: tuple  # (initializationPriorType, its parameters) per estimated parameter
    objective_priors: tuple  # Prior per estimated parameter with a normal or log-normal one
    prior_offset: float  # the objective priors' constant terms (fixed parameters' priors included)
    constants: np.ndarray  # the pool's constant part (linear scale)
    parameters: tuple  # ids of the model's constant quantities (the columns of theta_index)
    condition_ids: tuple  # per experiment: its simulation condition
    theta_index: np.ndarray  # (conditions, parameters) into the pool
    initial_index: np.ndarray  # (conditions, states) into the pool, -1: the model's initial value
    times: np.ndarray  # (conditions, T): each condition's measurement times, padded with its last
    preequilibration_ids: tuple  # the distinct pre-equilibration conditions
    preequilibration: np.ndarray  # (conditions,) index into those, -1: none
    preequilibration_theta_index: np.ndarray  # (pre-equilibrations, parameters)
    preequilibration_initial_index: np.ndarray  # (pre-equilibrations, states)
    observables: tuple = field(default_factory=tuple)
    measurements: np.ndarray = None  # (rows,) in table order

    @property
    def reference(self):
        """Where ``load``'s rules look: ``nominal``, else the middle of the bounds."""
        return np.where(np.isnan(self.nominal), (self.lower + self.upper) / 2, self.nominal)


def build(problem, model, preequilibration=False, priors=False):
    """The :class:`Layout` of a ``petab.v1.Problem`` whose SBML model is ``model``;
    ``preequilibration``, ``priors``: ``fitfleet.petab.load``'s."""
    par = problem.parameter_df
    cond = problem.condition_df
    meas = problem.measurement_df.reset_index(drop=True)
    obs = problem.observable_df
    _check_unsupported(problem, par, meas, preequilibration, priors)

    estimated = par.index[par[C.ESTIMATE] == 1].tolist()
    scales = tuple(str(par.at[p, C.PARAMETER_SCALE]) for p in estimated)
    for p, s in zip(estimated, scales):
        if s not in SCALES:
            raise ValueError(f"parameter {p!r}: parameterScale must be one of {SCALES}; got {s!r}.")
    on_scale = lambda column: np.array([petab.scale(float(par.at[p, column]) if column in par else np.nan, s) for p, s in zip(estimated, scales)])  # noqa: E731
    lower, upper, nominal = on_scale(C.LOWER_BOUND), on_scale(C.UPPER_BOUND), on_scale(C.NOMINAL_VALUE)

    pool = _Pool({p: i for i, p in enumerate(estimated)}, par)
    rules = set(model.rules)
    constants = list(model.constants) + [p for p in par.index if p not in model.constants and p not in rules]
    for p in par.index:
        if p in rules or p in model.states:
            raise ValueError(f"parameter table entry {p!r} is an SBML state or rule target; PEtab v1 sets only constants there.")

    # Experiments: only those the measurements simulate, in order of appearance.
    pre = meas[C.PREEQUILIBRATION_CONDITION_ID] if C.PREEQUILIBRATION_CONDITION_ID in meas else [""] * len(meas)
    pairs = [(str(p) if _present(p) else "", str(sim)) for p, sim in zip(pre, meas[C.SIMULATION_CONDITION_ID])]
    experiments = tuple(dict.fromkeys(pairs))
    condition_ids = tuple(sim for _, sim in experiments)
    preequilibration_ids = tuple(dict.fromkeys(p for p, _ in experiments if p))
    for column in cond.columns:
        if column == C.CONDITION_NAME:
            continue
        if column in rules:
            raise ValueError(f"condition table column {column!r} is an SBML assignment-rule target or defined by an initial assignment; it cannot be overridden.")
        if column not in constants and column not in model.states:
            raise ValueError(f"condition table column {column!r} is not a parameter, compartment or species of the model.")
    def condition(ids, kind):
        """(parameters, initial states) index arrays of the conditions ``ids``."""
        theta_index = np.empty((len(ids), len(constants)), np.int64)
        initial_index = np.full((len(ids), len(model.states)), -1, np.int64)
        for c, cid in enumerate(ids):
            if cid not in cond.index:
                raise ValueError(f"{kind} condition {cid!r} of the measurement table is not in the condition table.")
            row = cond.loc[cid]
            for k, name in enumerate(constants):
                entry = row.get(name, np.nan)
                if _present(entry):
                    theta_index[c, k] = pool.index(entry, f"condition {cid!r}, column {name!r}")
                elif name in par.index:
                    theta_index[c, k] = pool.index(name, "parameter table")
                else:
                    theta_index[c, k] = pool.constant(model.constants[name])
            for s, name in enumerate(model.states):
                entry = row.get(name, np.nan)
                if _present(entry):
                    initial_index[c, s] = pool.index(entry, f"condition {cid!r}, column {name!r}")
        return theta_index, initial_index

    theta_index, initial_index = condition(condition_ids, "simulation")
    pre_theta_index, pre_initial_index = condition(preequilibration_ids, "pre-equilibration")
    preequilibration = np.array([preequilibration_ids.index(p) if p else -1 for p, _ in experiments], np.int64)
    for p, sim in experiments:
        resized = [c for c in model.compartments if p and c in cond.columns and str(cond.at[p, c]) != str(cond.at[sim, c])]
        if resized:
            raise NotImplementedError(f"pre-equilibration condition {p!r} and simulation condition {sim!r} give compartments {resized} different sizes; changing a compartment's size after pre-equilibration is not supported.")

    # Each experiment's time grid.
    position = {pair: i for i, pair in enumerate(experiments)}
    cidx = np.array([position[pair] for pair in pairs], np.int64)
    t = meas[C.TIME].to_numpy(np.float64)
    grids = [np.unique(t[cidx == c]) for c in range(len(condition_ids))]
    width = max(g.size for g in grids)
    times = np.stack([np.pad(g, (0, width - g.size), mode="edge") for g in grids])
    tidx = np.array([np.searchsorted(grids[c], ti) for c, ti in zip(cidx, t)])

    observables = []
    known = {symbol(s) for s in model.states} | {symbol(k) for k in constants} | {TIME}
    for oid in dict.fromkeys(meas[C.OBSERVABLE_ID]):
        if oid not in obs.index:
            raise ValueError(f"observable {oid!r} of the measurement table is not in the observable table.")
        rows = np.flatnonzero(meas[C.OBSERVABLE_ID].to_numpy() == oid)
        observables.append(_observable(oid, obs.loc[oid], meas, rows, cidx, tidx, pool, model, known, constants, theta_index))

    objective_priors, prior_offset = [], 0.0
    for name in par.index if priors else ():
        prior, constant = _objective_prior(par.loc[name], estimated.index(name) if name in estimated else None)
        objective_priors.append(prior)
        prior_offset += constant

    return Layout(
        names=tuple(estimated),
        scales=scales,
        lower=lower,
        upper=upper,
        nominal=nominal,
        priors=tuple(_prior(par.loc[p]) for p in estimated),
        objective_priors=tuple(p for p in objective_priors if p is not None),
        prior_offset=prior_offset,
        constants=np.asarray(pool.values, np.float64),
        parameters=tuple(constants),
        condition_ids=condition_ids,
        theta_index=theta_index,
        initial_index=initial_index,
        preequilibration_ids=preequilibration_ids,
        preequilibration=preequilibration,
        preequilibration_theta_index=pre_theta_index,
        preequilibration_initial_index=pre_initial_index,
        times=times,
        observables=tuple(observables),
        measurements=meas[C.MEASUREMENT].to_numpy(np.float64),
    )


class _Pool:
    """Indices into ``[x_lin, constants]``; constants are appended as they are met."""

    def __init__(self, estimated, parameter_df):
        self.estimated, self.par, self.values = estimated, parameter_df, []

    def constant(self, value):
        self.values.append(float(value))
        return len(self.estimated) + len(self.values) - 1

    def index(self, entry, where):
        entry = petab.core.to_float_if_float(entry)
        if isinstance(entry, (int, float, np.number)):
            return self.constant(entry)
        if entry in self.estimated:
            return self.estimated[entry]
        if entry in self.par.index:
            return self.constant(self.par.at[entry, C.NOMINAL_VALUE])
        raise ValueError(f"{where}: {entry!r} is neither a number nor a parameter of the parameter table.")


def _present(entry):
    return not (entry is None or (isinstance(entry, float) and np.isnan(entry)) or entry == "")


def _observable(oid, spec, meas, rows, cidx, tidx, pool, model, known, constants, theta_index):
    formula_text, noise_text = spec[C.OBSERVABLE_FORMULA], spec.get(C.NOISE_FORMULA, np.nan)
    if not _present(noise_text):
        raise ValueError(f"observable {oid!r} has no noiseFormula.")
    transformation = spec.get(C.OBSERVABLE_TRANSFORMATION, np.nan)
    transformation = "lin" if not _present(transformation) else str(transformation)
    distribution = spec.get(C.NOISE_DISTRIBUTION, np.nan)
    distribution = "normal" if not _present(distribution) else str(distribution)
    if transformation not in SCALES:
        raise ValueError(f"observable {oid!r}: observableTransformation must be one of {SCALES}; got {transformation!r}.")
    if distribution != "normal":
        raise NotImplementedError(f"observable {oid!r}: noiseDistribution {distribution!r} is not supported (only 'normal', with observableTransformation lin/log/log10).")
    placeholders = tuple(petab.get_formula_placeholders(str(formula_text), oid, "observable"))
    noise_placeholders = tuple(petab.get_formula_placeholders(str(noise_text), oid, "noise"))
    formula = model.expand(_sympify(formula_text))
    noise = model.expand(_sympify(noise_text))
    allowed = known | {symbol(p) for p in placeholders + noise_placeholders}
    for what, expr in (("observableFormula", formula), ("noiseFormula", noise)):
        unknown = expr.free_symbols - allowed
        if unknown:
            raise ValueError(f"observable {oid!r}: {what} uses {sorted(map(str, unknown))}, which are not model quantities, parameters or its placeholders.")

    def overrides(column, names):
        index = np.zeros((rows.size, len(names)), np.int64)
        for i, r in enumerate(rows):
            entries = petab.split_parameter_replacement_list(meas.at[r, column]) if column in meas else []
            if len(entries) != len(names):
                raise ValueError(f"measurement row {r} ({oid}): {column} has {len(entries)} values, the formula has {len(names)} placeholders {list(names)}.")
            index[i] = [pool.index(e, f"measurement row {r}, {column}") for e in entries]
        return index

    observable_index = overrides(C.OBSERVABLE_PARAMETERS, placeholders)
    noise_index = overrides(C.NOISE_PARAMETERS, noise_placeholders)
    # σ depends on x when it involves a state, an estimated model parameter in one of
    # these rows' conditions, or a placeholder some row maps to an estimated parameter.
    n_est = len(pool.estimated)
    syms = noise.free_symbols
    est_params = {constants[k] for k in np.flatnonzero((theta_index[np.unique(cidx[rows])] < n_est).any(axis=0))}
    placeholder_est = [p for j, p in enumerate(noise_placeholders) if (noise_index[:, j] < n_est).any()]
    placeholder_est += [p for j, p in enumerate(placeholders) if (observable_index[:, j] < n_est).any()]
    variable = bool(syms & ({symbol(s) for s in model.states} | {symbol(p) for p in est_params} | {symbol(p) for p in placeholder_est}))
    return Observable(oid, formula, noise, placeholders, noise_placeholders, transformation, rows, cidx[rows], tidx[rows], observable_index, noise_index, variable)


def _sympify(text):
    expr = petab.math.sympify_petab(text)
    return expr.xreplace({s: symbol(s.name) for s in expr.free_symbols})


def _prior(row):
    kind = row.get(C.INITIALIZATION_PRIOR_TYPE, np.nan)
    kind = C.PARAMETER_SCALE_UNIFORM if not _present(kind) else str(kind)
    if kind not in C.PRIOR_TYPES:
        raise ValueError(f"parameter {row.name!r}: initializationPriorType must be one of {C.PRIOR_TYPES}; got {kind!r}.")
    params = row.get(C.INITIALIZATION_PRIOR_PARAMETERS, np.nan)
    if kind in (C.PARAMETER_SCALE_UNIFORM,) and not _present(params):
        return kind, ()
    if not _present(params):
        if kind in (C.UNIFORM,):
            return kind, (float(row[C.LOWER_BOUND]), float(row[C.UPPER_BOUND]))
        raise ValueError(f"parameter {row.name!r}: initializationPriorType {kind!r} needs initializationPriorParameters.")
    return kind, tuple(float(v) for v in str(params).split(C.PARAMETER_SEPARATOR))


def _objective_prior(row, index):
    """``(Prior or None, constant)`` of a parameter-table row's objective prior, as
    pyPESTO adds it to its objective (``pypesto.objective.priors``): a density on the
    linear value unless the type starts with ``parameterScale`` (no Jacobian of the
    scale), ``parameterScaleUniform`` left out.  A fixed parameter's prior is a
    constant.  Laplace priors (not differentiable at their mode) raise."""
    kind = row.get(C.OBJECTIVE_PRIOR_TYPE, np.nan)
    if not _present(kind) or kind == C.PARAMETER_SCALE_UNIFORM:
        return None, 0.0
    kind, name, scale = str(kind), row.name, str(row[C.PARAMETER_SCALE])
    if kind not in (C.NORMAL, C.PARAMETER_SCALE_NORMAL, C.LOG_NORMAL, C.UNIFORM):
        raise NotImplementedError(f"parameter {name!r}: objectivePriorType {kind!r} is not supported (normal, parameterScaleNormal, logNormal, uniform and parameterScaleUniform are).")
    params = row.get(C.OBJECTIVE_PRIOR_PARAMETERS, np.nan)
    if not _present(params):
        raise ValueError(f"parameter {name!r}: objectivePriorType {kind!r} needs objectivePriorParameters.")
    a, b = (float(v) for v in str(params).split(C.PARAMETER_SEPARATOR))
    if kind == C.UNIFORM:  # ln(b − a) inside [a, b], infinite outside
        if not a <= float(row[C.LOWER_BOUND]) <= float(row[C.UPPER_BOUND]) <= b:
            raise NotImplementedError(f"parameter {name!r}: a uniform objective prior on [{a}, {b}] narrower than the parameter's bounds is not supported.")
        return None, float(np.log(b - a))
    on_scale, log = kind == C.PARAMETER_SCALE_NORMAL, kind == C.LOG_NORMAL
    constant = 0.5 * np.log(2 * np.pi * b * b) + ((a - 0.5 * b * b) if log else 0.0)
    prior = Prior(index, on_scale, log, a - b * b if log else a, b)
    if index is None:  # fixed: the residual at the nominal value, a constant too
        value = float(row[C.NOMINAL_VALUE])
        value = petab.scale(value, scale) if on_scale else value
        r = ((np.log(value) if log else value) - prior.mean) / b
        return None, float(constant + 0.5 * r * r)
    return prior, float(constant)


def _check_unsupported(problem, par, meas, preequilibration, priors):
    if not preequilibration:
        if C.PREEQUILIBRATION_CONDITION_ID in meas and meas[C.PREEQUILIBRATION_CONDITION_ID].map(_present).any():
            raise NotImplementedError("pre-equilibration (preequilibrationConditionId in the measurement table) is not supported by default; load(..., preequilibration=True) (--preequilibration on the command line) simulates it by fitfleet's steady-state solve.")
        if np.isinf(meas[C.TIME].to_numpy(np.float64)).any():
            raise NotImplementedError("steady-state measurements (time = inf) are not supported by default; load(..., preequilibration=True) (--preequilibration on the command line) simulates them by fitfleet's steady-state solve.")
    if not priors and C.OBJECTIVE_PRIOR_TYPE in par:
        # A fixed parameter's prior is a constant of the objective: left out unless asked for.
        kinds = (par[C.ESTIMATE] == 1) & par[C.OBJECTIVE_PRIOR_TYPE].map(lambda k: _present(k) and k != C.PARAMETER_SCALE_UNIFORM)
        if kinds.any():
            raise NotImplementedError(f"objective priors (objectivePriorType of {par.index[kinds].tolist()}) are not supported by default; load(..., priors=True) (--priors on the command line) adds them as pyPESTO does (its negative log-posterior).")
    if (meas[C.TIME].to_numpy(np.float64) < 0).any():
        raise ValueError("the measurement table has negative times; PEtab simulations start at t = 0.")
    if getattr(problem, "mapping_df", None) is not None and len(problem.mapping_df):
        raise NotImplementedError("PEtab mapping tables are not supported.")
    if getattr(problem, "extensions_config", None):
        raise NotImplementedError(f"PEtab extensions {list(problem.extensions_config)} are not supported.")
