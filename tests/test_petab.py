"""fitfleet.petab against the reference tool chain (AMICI's simulations and likelihoods
of six PEtab benchmark problems, tests/data/petab/README.md), a problem with a
closed-form solution (tests/petab_toy.py) and the best optima known for the benchmarks."""

import json
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("petab")
pytest.importorskip("libsbml")
pytest.importorskip("diffrax")
pytest.importorskip("scipy")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pandas as pd  # noqa: E402
import petab_toy as toy  # noqa: E402
from conftest import count_compilations  # noqa: E402

import fitfleet as ff  # noqa: E402
import fitfleet.petab as fp  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "petab"
_REFERENCE = json.loads((DATA / "reference_values.json").read_text())  # README.md there
AMICI_NLL, BEST_NLL = _REFERENCE["amici_nominal"], _REFERENCE["best_known"]
CHEAP = {"Rahman_MBS2016"}  # in the default run; the others are slow (each compiles for ~10 s)
PROBLEMS = [pytest.param(p, marks=() if p in CHEAP else pytest.mark.slow) for p in AMICI_NLL]
_LOADED = {}


def load(name):
    if name not in _LOADED:
        _LOADED[name] = fp.load(DATA / name)
    return _LOADED[name]


def amici_table(name, sim):
    """AMICI's simulation and ours, rows matched (AMICI's table may be in another order)."""
    ref = pd.read_csv(DATA / name / f"amiciSimulation_{name}.tsv", sep="\t")
    keys = [k for k in ("observableId", "simulationConditionId", "time", "replicateId", "datasetId", "noiseParameters") if k in ref]
    ours = sim.sort_values(keys, kind="stable").reset_index(drop=True)
    ref = ref.sort_values(keys, kind="stable").reset_index(drop=True)
    same = lambda df: df[keys].fillna("").astype(str).to_numpy()  # noqa: E731  (NaN: no noise parameters)
    assert (same(ours) == same(ref)).all()
    return ours, ref


def assert_matches(ours, ref, mask=None):
    """Relative 1e-5, with an absolute floor of 1e-8 × the observable's range."""
    mask = np.ones(len(ours), bool) if mask is None else mask
    span = ref.groupby("observableId")["simulation"].transform(lambda s: s.max() - s.min())
    tol = 1e-5 * np.abs(ref.simulation) + 1e-8 * span
    bad = mask & ~(np.abs(ours.simulation - ref.simulation) <= tol)
    assert not bad.any(), pd.DataFrame({"ours": ours.simulation[bad], "amici": ref.simulation[bad], "t": ours.time[bad]})


@pytest.mark.parametrize("name", PROBLEMS)
def test_simulation_at_nominal_matches_amici(name, x64):
    prob = load(name)
    ours, ref = amici_table(name, prob.simulate(prob.nominal))
    if name == "Crauste_CellSystems2017":
        # AMICI's CVODES at rtol 1e-8 is 1.4% off after day 8 (data README); there an
        # accurate solution of the model by scipy is the reference, which fitfleet
        # matches at a tighter tolerance; at the default one to 0.3% (the pathogen's
        # collapse amplifies the solver's error: the NLL is still within 2e-7).
        assert_matches(ours, ref, ours.time.to_numpy() <= 8)
        accurate = ref.assign(simulation=_accurate_simulation(prob, ours))
        np.testing.assert_allclose(ours.simulation, accurate.simulation, rtol=3e-3)
        tight = fp.load(DATA / name, rtol=1e-10, state_scales=1.0)
        assert_matches(amici_table(name, tight.simulate(tight.nominal))[0], accurate)
    else:
        assert_matches(ours, ref)


@pytest.mark.parametrize("name", PROBLEMS)
def test_nll_at_nominal_matches_amici(name, x64):
    prob = load(name)
    nll = float(prob.nll(prob.nominal))
    if name == "Crauste_CellSystems2017":
        # petab's own likelihood of the accurate simulation (see above).
        sim = prob.simulate(prob.nominal)
        sim["simulation"] = _accurate_simulation(prob, sim)
        p = prob.petab_problem
        expected = -_petab_llh(p, sim)
        assert abs(nll - AMICI_NLL[name]) < 2e-5 * abs(AMICI_NLL[name])  # AMICI's, within its error
    else:
        expected = AMICI_NLL[name]
    assert nll == pytest.approx(expected, rel=1e-6, abs=0)


def test_every_supported_feature_at_once_matches_amici(x64):
    """A synthetic problem that uses every SBML and PEtab feature the benchmark problems
    use only some of (``benchmarks/petab_features.py`` lists them: compartments and
    transport, an amount species, a boundary input, a function definition, ``piecewise``
    in time, a local parameter, assignment and rate rules, initial assignments, numeric
    and parameter overrides, three noise models, state-dependent noise).  AMICI at rtol
    1e-12 is the reference.  At the default tolerance the simulation and the NLL match
    as the benchmark problems' do."""
    name = "fitfleet_features"
    default = load(name)
    assert_matches(*amici_table(name, default.simulate(default.nominal)))
    assert float(default.nll(default.nominal)) == pytest.approx(_REFERENCE["synthetic"][name], rel=1e-5, abs=0)


@pytest.mark.slow
def test_every_supported_feature_at_once_matches_amici_tightly(x64):
    """The synthetic problem at fitfleet's rtol 1e-12: the simulation matches AMICI's to
    1e-8 and the NLL to 1e-8 (measured 3e-10 and 1e-9; 9e-8 for the NLL at rtol 1e-10,
    9e-9 at 1e-11), so what differs at the default tolerance is the ODE solver's error,
    not the model's meaning; and the gradient (forward-mode sensitivities through every
    feature) is the NLL's central difference (measured 1e-5; a difference of an adaptive
    solve is noisy, rtol/h, hence the tight solve)."""
    name = "fitfleet_features"
    tight = fp.load(DATA / name, rtol=1e-12)
    ours, ref = amici_table(name, tight.simulate(tight.nominal))
    np.testing.assert_allclose(ours.simulation, ref.simulation, rtol=1e-8)
    assert float(tight.nll(tight.nominal)) == pytest.approx(_REFERENCE["synthetic"][name], rel=1e-8, abs=0)
    x, h = jnp.asarray(tight.nominal) + 0.05, 1e-4
    nll = jax.jit(tight.nll)
    central = [(float(nll(x.at[i].add(h))) - float(nll(x.at[i].add(-h)))) / (2 * h) for i in range(x.size)]
    np.testing.assert_allclose(jax.grad(tight.nll)(x), central, rtol=1e-4, atol=1e-4)


def test_nll_matches_petab_likelihood_of_the_simulation(x64):
    """The likelihood formula against petab's implementation (log10-normal: Perelson is
    slow to compile, so the toy's log-normal observable stands in by default)."""
    prob = load("Rahman_MBS2016")
    x = prob.nominal + 0.1
    sim = prob.simulate(x)
    parameter_df = prob.petab_problem.parameter_df.copy()
    parameter_df.loc[list(prob.names), "nominalValue"] = [_unscale(v, s) for v, s in zip(x, prob.scales)]
    expected = -_petab_llh(prob.petab_problem, sim, parameter_df)
    assert float(prob.nll(x)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow  # the command line's test reaches Perelson's in the default run
def test_fit_from_nominal_reaches_the_best_known_optimum(x64):
    prob = load("Rahman_MBS2016")
    res = prob.fit(prob.nominal)
    assert res.success, res.message
    assert abs(float(res.cost) + prob.offset - BEST_NLL["Rahman_MBS2016"]) < 1e-3
    assert float(prob.nll(res.params)) == pytest.approx(float(res.cost) + prob.offset, rel=1e-10)
    assert np.all((res.params >= prob.lower) & (res.params <= prob.upper))


@pytest.mark.slow
def test_boehm_fit_from_nominal_reaches_the_best_known_optimum(x64):
    prob = load("Boehm_JProteomeRes2014")
    res = prob.fit(prob.nominal)
    assert res.success, res.message
    assert abs(float(res.cost) + prob.offset - BEST_NLL["Boehm_JProteomeRes2014"]) < 1e-3
    log10 = dict(zip(prob.names, np.asarray(res.params)))
    assert log10["k_exp_hetero"] < -4.99 and log10["k_imp_homo"] > 4.99  # on their bounds


@pytest.mark.slow
def test_problem_without_nominal_values_matches_amici(x64):
    """Korkut_eLIFE2015 gives no nominal values (110 estimated parameters): at the middle
    of the bounds, where ``load``'s rules look then, the simulation and the NLL are
    AMICI's there (tests/data/petab/README.md)."""
    name = "Korkut_eLIFE2015"
    prob = load(name)
    assert np.isnan(prob.nominal).all() and len(prob.names) == 110
    x = (prob.lower + prob.upper) / 2
    assert_matches(*amici_table(name, prob.simulate(x)))
    assert float(prob.nll(x)) == pytest.approx(_REFERENCE["amici_middle_of_bounds"][name], rel=1e-6)


@pytest.mark.slow
def test_an_oscillator_from_the_collection_matches_amici(x64):
    """Borghans_BiophysChem1997, not among the six: a calcium oscillator (its error grows
    with every cycle) observed through an offset and a scale.  At the nominal parameters
    the simulation and the NLL are AMICI's at rtol 1e-12 (tests/data/petab/README.md;
    the collection's own reference value, AMICI's at its defaults, is 2.4e-5 off)."""
    name = "Borghans_BiophysChem1997"
    prob = load(name)
    assert_matches(*amici_table(name, prob.simulate(prob.nominal)))
    assert float(prob.nll(prob.nominal)) == pytest.approx(_REFERENCE["amici_nominal_tight"][name], rel=1e-6)


# --- the closed-form problem ------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_problem(tmp_path_factory):
    return fp.load(toy.write(tmp_path_factory.mktemp("toy")))


def _toy_linear(prob, x):
    return {n: _unscale(v, s) for n, v, s in zip(prob.names, np.asarray(x, np.float64), prob.scales)}


def test_toy_simulation_and_nll_match_the_closed_form(toy_problem, x64):
    """Amount/concentration conversions, condition overrides of a compartment, a
    parameter and an initial concentration, a rate rule, an assignment rule, an initial
    assignment, a boundary species, placeholders, log-normal noise and σ ∝ state."""
    prob = toy_problem
    for x in (prob.nominal, prob.nominal + np.array([0.3, 0.4, -0.5, 0.2])):
        h, _ = toy.expected(_toy_linear(prob, x))
        np.testing.assert_allclose(prob.simulate(x).simulation, h, rtol=1e-5)
        assert float(prob.nll(x)) == pytest.approx(toy.reference_nll(_toy_linear(prob, x)), rel=1e-6)


def test_the_tolerance_rule_tightens_until_the_nll_is_resolved(toy_problem, x64):
    """``_tolerances.resolved_tolerances``: asked to resolve the NLL to a finer stopping
    test, it tightens the absolute tolerances (the state scales) first and ``rtol`` only
    once they are at ``SCALE_MIN`` of their own, and the NLL at its choice is that close
    to the closed form; at a test it already meets it keeps what it starts from; with
    the scales held it tightens ``rtol`` alone."""
    from fitfleet.petab import _tolerances

    prob = toy_problem
    model = eqx.tree_at(lambda m: m.rtol, prob.model, np.array(1e-6))
    scales = np.asarray(model.state_scales)
    x, y = prob.nominal, prob.measurements
    exact = toy.reference_nll(_toy_linear(prob, x))

    def error(rtol, s):
        return abs(float(_tolerances.nll_at(model, jnp.asarray(x), jnp.asarray(y), jnp.asarray(rtol), jnp.asarray(s))) - exact)

    rtol, s = _tolerances.resolved_tolerances(model, x, y, 1.0)
    assert rtol == 1e-6 and np.array_equal(s, scales)
    for ftol in (1e-11, 1e-12):  # the toy at rtol 1e-6 is already 1.6e-8 off (measured)
        assert error(1e-6, scales) > 10 * ftol * (1 + abs(exact))  # so there is something to tighten
        for free in (True, False):
            rtol, s = _tolerances.resolved_tolerances(model, x, y, ftol, scales=free)
            assert error(rtol, s) <= 10 * ftol * (1 + abs(exact))
            assert rtol <= 1e-6 and np.all(s <= scales) and (rtol < 1e-6 or np.any(s < scales))
            if rtol < 1e-6:  # rtol moves only once the scales cannot
                np.testing.assert_allclose(s, scales * (_tolerances.SCALE_MIN if free else 1), rtol=1e-12)


@pytest.mark.slow
def test_conditions_one_after_another_or_side_by_side_agree(toy_problem, tmp_path, x64):
    """The toy's two conditions solved one after another and side by side (vmap): the
    same residuals and forward-mode Jacobian, each condition's solve being the same to
    the solver's accuracy (batched and single matrix products round differently, which can
    move an accepted step: measured 6e-10 relative); a bad ``conditions`` is refused
    before anything loads."""
    folder = toy.write(tmp_path)
    probs = [fp.load(folder, conditions=c) for c in ("sequential", "parallel")]
    assert [p.model.settings.sequential for p in probs] == [True, False]
    assert probs[0].fun != probs[1].fun  # distinct compiled programs
    x = jnp.asarray(toy_problem.nominal) + jnp.array([0.3, 0.4, -0.5, 0.2])
    y = jnp.asarray(toy_problem.measurements)
    r = [p.fun(x, y, *p.args[1:]) for p in probs]
    J = [jax.jacfwd(lambda x, p=p: p.fun(x, y, *p.args[1:]))(x) for p in probs]
    np.testing.assert_allclose(r[0], r[1], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(J[0], J[1], rtol=1e-7, atol=1e-7)
    with pytest.raises(ValueError, match="`conditions`"):
        fp.load(folder, conditions="vmap")


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the rule chooses side by side on accelerators")
def test_conditions_rule_on_cpu(x64):
    """``conditions="auto"``: Bruno's six conditions, whose solves take unequal numbers of
    steps, one after another; Armistead's two, which take the same, side by side
    (``benchmarks/results/petab_conditions.md``)."""
    assert fp.load(DATA / "Bruno_JExpBot2016").model.settings.sequential
    assert not fp.load(DATA / "Armistead_CellDeathDis2024").model.settings.sequential


def test_toy_stops_as_pypesto_does(toy_problem, x64):
    """The default stopping test is pyPESTO's on the NLL, |ΔNLL| < 1e-8·(1 + |NLL|)
    (NLL at the nominal parameters), as fitfleet's absolute ``fatol``; settle off;
    Fides's budget of 1,000 iterations, whatever the number of parameters (fitfleet's
    own is 100·(n + 1)), trf's acceleration from step 100 on; overridable."""
    prob = toy_problem
    nll = float(prob.nll(jnp.asarray(prob.nominal)))
    options = prob._options({})
    assert options["settle"] is False and options["ftol"] == 0 and options["fatol"] == pytest.approx(1e-8 * (1 + abs(nll)))
    assert options["max_steps"] == 1000 != 100 * (len(prob.names) + 1)
    assert options["acceleration"] == 100  # trf's, from a tenth of the budget on
    given = {"ftol": 1e-6, "fatol": 0.0, "settle": True, "max_steps": 50, "acceleration": False}
    assert prob._options(given) == {**options, **given}


@pytest.mark.slow
def test_toy_fit_stops_where_the_nll_falls_by_less_than_pypestos_test(toy_problem, x64):
    prob = toy_problem
    res = prob.fit(prob.nominal + 0.3, history=True)
    assert int(res.status) == ff.Status.FTOL
    nlls = np.asarray(res.history.cost[: int(res.history.length)]) + prob.offset
    assert 0 < nlls[-2] - nlls[-1] <= prob._options({})["fatol"]


def test_a_stop_on_the_solvers_error_is_checked_and_continued(toy_problem, x64, monkeypatch):
    """At rtol 1e-4 the toy's fit from nominal + 0.3 stops (ftol) with its NLL 2e-6 off
    the closed form, 7 times the stopping test ``fatol``: the ODE solver's error.
    Checked (the default, ``fitfleet.petab._verify``), it continues at tolerances 100
    times tighter, with the same compiled program, and ends within the test of the
    closed form.  Allowed no continuation, it is ``MODEL_INACCURATE``, not a success."""
    from fitfleet.petab import _verify

    p = toy_problem
    loose = fp._problem.Problem(p.path, p.petab_problem, p.ode, p.layout, p.model.with_tolerances(np.array(1e-4), p.model.state_scales))
    x0 = loose.nominal + 0.3

    def error(res):
        return float(res.cost) + loose.offset - toy.reference_nll(_toy_linear(loose, res.params))

    plain = loose.fit(x0, check=False)
    assert plain.success and abs(error(plain)) > 2 * loose._fatol
    with count_compilations() as compiled:
        checked = loose.fit(x0)
    assert checked.success and abs(error(checked)) <= loose._fatol
    assert int(checked.n_steps) > int(plain.n_steps)
    assert "_solve" not in compiled  # least_squares's program, reused at the tighter tolerances
    # A fit whose own stopping test is looser than the solver's error is not continued.
    looser = {"fatol": 100 * abs(error(plain))}
    assert int(loose.fit(x0, **looser).n_steps) == int(loose.fit(x0, check=False, **looser).n_steps)
    # The finer NLLs side by side (an accelerator's way, padded to a power of two) and one
    # at a time (CPU's) agree with each other and with the closed form.
    x = np.stack([np.asarray(plain.params), loose.nominal, x0])
    nlls = {}
    for side_by_side in (True, False):
        monkeypatch.setattr(_verify, "SIDE_BY_SIDE", side_by_side)
        nlls[side_by_side] = _verify._nlls(loose, x, p.args[1:], jnp.float64)
    np.testing.assert_allclose(nlls[True], nlls[False], rtol=1e-9)
    np.testing.assert_allclose(nlls[True], [toy.reference_nll(_toy_linear(loose, xi)) for xi in x], rtol=1e-7)
    monkeypatch.setattr(_verify, "ROUNDS", 0)
    inaccurate = loose.fit(x0)
    assert int(inaccurate.status) == ff.Status.MODEL_INACCURATE and not inaccurate.success
    np.testing.assert_array_equal(inaccurate.params, plain.params)


def test_secant_model_on_for_every_problem(toy_problem, x64):
    """trf's secant model is on where some σ depends on the parameters or the states
    (the toy's σ = sd·A) and where every σ is fixed (Rahman), and overridable."""
    assert toy_problem._options({})["secant"] is True
    assert toy_problem._options({"secant": False})["secant"] is False
    assert load("Rahman_MBS2016")._options({})["secant"] is True


def test_toy_in_float32(toy_problem):
    """Without x64 everything is float32 (rtol raised to 100 ε ≈ 1.2e-5)."""
    prob = toy_problem
    x = np.asarray(prob.nominal, np.float32)
    h, _ = toy.expected(_toy_linear(prob, x))
    sim = prob._now().simulation(jnp.asarray(x))
    assert sim.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(sim), h, rtol=2e-4)
    assert float(prob.nll(x)) == pytest.approx(toy.reference_nll(_toy_linear(prob, x)), rel=1e-4)
    # The tolerance rule tightens nothing in float32: its solves are at their floor, and
    # no tolerance resolves the NLL to 1e-8 relative there.
    from fitfleet.petab import _tolerances, _verify

    rtol, scales = _tolerances.resolved_tolerances(prob.model, x, prob.measurements, 1e-8)
    assert rtol == float(prob.model.rtol) and np.array_equal(scales, prob.model.state_scales)
    # Nor is a fit's end checked against a finer solve: none exists (``_verify``).
    results = object()
    assert _verify.checked(prob, results, None, jnp.float32, {}) is results


def test_one_problem_fits_in_float32_and_float64_in_turn(tmp_path):
    """A problem fitted without x64, then with it, then without again gives each
    precision's answer (JAX 0.10 keeps a closed-over numpy array in the precision it was
    first traced in; the second precision's fit failed to compile, ``Problem.__init__``)."""
    prob = fp.load(toy.write(tmp_path))
    start = prob.nominal + np.array([0.3, 0.4, -0.5, 0.2])
    first = prob.fit(np.asarray(start, np.float32))
    with jax.enable_x64(True):
        res = prob.fit(start)
        best = toy.reference_nll(_toy_linear(prob, res.params))
        assert res.cost.dtype == jnp.float64 and bool(res.success)
        assert float(res.cost) + prob.offset == pytest.approx(best, rel=1e-8)
        assert float(prob.nll(res.params)) == pytest.approx(best, rel=1e-8)
    again = prob.fit(np.asarray(start, np.float32))
    assert again.cost.dtype == first.cost.dtype == jnp.float32
    assert float(again.cost) == float(first.cost)
    assert float(again.cost) + prob.offset == pytest.approx(best, rel=1e-4)  # the float32 offset (``offset_for``)


def test_toy_sum_of_squares_is_the_nll_and_stays_finite(toy_problem, x64):
    """½‖r‖² + offset = nll anywhere; r and its Jacobian are finite for σ at both bounds
    and for σ far below 1e-100 (a state decayed to ~1e-174)."""
    prob = toy_problem
    starts = jnp.asarray(prob.sample_starts(4, jax.random.key(3)))
    jac = jax.jit(jax.jacfwd(prob.fun))
    for x in starts:
        r = prob.residual(x)
        assert float(prob.nll(x)) == pytest.approx(0.5 * float(r @ r) + prob.offset, rel=1e-10)
    extremes = [np.where(np.array(prob.names) == "sd_A", b, prob.nominal) for b in (prob.lower, prob.upper)]
    extremes.append(np.where(np.array(prob.names) == "k", prob.upper, prob.nominal))  # k = 100: A(4) ≈ 1e-174
    for x in extremes:
        r = prob.residual(x)
        J = jac(jnp.asarray(x), *prob.args)
        assert np.all(np.isfinite(r)) and np.all(np.isfinite(J)), x
        n_sigma = sum(o.variable_sigma * len(o.rows) for o in prob.model.observables)
        sigma_terms, fisher_rows = r[len(toy.ROWS) :][:n_sigma], r[len(toy.ROWS) :][n_sigma:]
        assert np.all(sigma_terms >= math.sqrt(2) - 1e-12) and np.all(fisher_rows == 0)


def test_fisher_rows_make_gauss_newton_the_fisher_information(toy_problem, x64):
    """``JᵀJ`` of the residual is the Fisher information of the data in expectation
    (``_model``'s module docstring), for σ ∝ a state: averaged over the data sets with
    every r = +1 and every r = −1 (E r = 0, E r² = 1 exactly), it is
    ``Σ ∇τ(h)∇τ(h)ᵀ/σ² + 2 Σ ∇ln σ ∇ln σᵀ``, plus the σ terms' own ``∇ln σ ∇ln σᵀ/s²``.
    Without the Fisher rows the σ block holds half of it."""
    prob, model = toy_problem, toy_problem.model
    x = jnp.asarray(prob.nominal) + jnp.array([0.3, 0.4, -0.5, 0.2])
    tau = {"lin": lambda v: v, "log": jnp.log, "log10": jnp.log10}

    def per_observable(x):
        return [(tau[o.transformation](h), jnp.log(jnp.abs(sigma))) for o, (h, sigma) in zip(model.observables, model.predict(x))]

    parts, slopes = per_observable(x), jax.jit(jax.jacfwd(per_observable))(x)  # jit: one program, not op by op
    expected = jnp.zeros((x.size, x.size))
    for o, (t_h, log_sigma), (dt_h, dlog_sigma) in zip(model.observables, parts, slopes):
        expected += (dt_h / jnp.exp(log_sigma)[:, None]).T @ (dt_h / jnp.exp(log_sigma)[:, None])
        if o.variable_sigma:
            s2 = 2 * log_sigma - jnp.log(jnp.finfo(x.dtype).tiny) + 2
            expected += dlog_sigma.T @ (dlog_sigma * (2 + 1 / s2)[:, None])
    jtj, jac = [], jax.jit(jax.jacfwd(prob.fun))
    for sign in (1, -1):
        y = np.zeros(len(toy.ROWS))
        for o, (t_h, log_sigma) in zip(model.observables, parts):
            t_y = t_h + sign * jnp.exp(log_sigma)  # r = (τ(y) − τ(h))/σ = ±1
            y[np.asarray(o.rows)] = {"lin": t_y, "log": jnp.exp(t_y), "log10": 10**t_y}[o.transformation]
        J = jac(x, jnp.asarray(y), *prob.args[1:])
        jtj.append(J.T @ J)
    np.testing.assert_allclose(0.5 * (jtj[0] + jtj[1]), expected, rtol=1e-9, atol=1e-9 * float(jnp.max(jnp.abs(expected))))


def test_toy_nll_gradient_and_no_recompilation(toy_problem, x64):
    prob = toy_problem
    x = jnp.asarray(prob.nominal)
    g = jax.grad(prob.nll)(x)
    step = 1e-6
    fd = [(float(prob.nll(x.at[i].add(step))) - float(prob.nll(x.at[i].add(-step)))) / (2 * step) for i in range(x.size)]
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6)
    x = jnp.asarray(prob.nominal + 0.01)
    with count_compilations() as compiled:
        prob.nll(x), prob.simulate(x), jax.grad(prob.nll)(x)
    assert compiled == []


def test_toy_starts_follow_the_initialization_priors(toy_problem):
    prob = toy_problem
    starts = prob.sample_starts(2000, jax.random.key(0))
    assert np.all((starts >= prob.lower) & (starts <= prob.upper))
    # k: parameterScaleUniform; k2: normal(1, 0.5) truncated to [0, 5] (linear scale)
    assert abs(np.mean(starts[:, 0]) - np.mean([prob.lower[0], prob.upper[0]])) < 0.1
    n = statistics.NormalDist()
    truncated_mean = 1 + 0.5 * (n.pdf(-2) - n.pdf(8)) / (n.cdf(8) - n.cdf(-2))
    assert abs(np.mean(starts[:, 1]) - truncated_mean) < 0.03
    np.testing.assert_array_equal(starts[:5], prob.sample_starts(5, jax.random.key(0)))


@pytest.mark.slow
def test_toy_multistart_reaches_the_fit_from_nominal(toy_problem, x64):
    prob = toy_problem
    ms = prob.multistart(4, key=jax.random.key(1))
    best = prob.fit(prob.nominal)
    assert ms.n_starts == 4 and ms.starts.shape == (4, len(prob.names))
    assert float(ms.best.cost) == pytest.approx(float(best.cost), rel=1e-6)
    assert np.all((np.asarray(ms.results.params) >= prob.lower) & (np.asarray(ms.results.params) <= prob.upper))


@pytest.mark.parametrize(
    "feature, options, match",
    [
        ({"event": True}, {}, "events"),
        ({"preequilibration": True}, {}, "pre-equilibration .* preequilibration=True"),
        ({"preequilibration": True}, {"preequilibration": True}, "compartment's size after pre-equilibration"),
        ({"prior": True}, {}, "objective priors .* priors=True"),
        ({"prior": "laplace"}, {"priors": True}, "objectivePriorType 'laplace'"),
        ({"noise": "laplace"}, {}, "laplace"),
    ],
)
def test_unsupported_features_are_named(tmp_path, feature, options, match):
    with pytest.raises(NotImplementedError, match=match):
        fp.load(toy.write(tmp_path, **feature), lint=False, **options)


@pytest.mark.slow
def test_missing_nominal_values_use_the_middle_of_the_bounds(toy_problem, tmp_path, x64):
    """PEtab lets an estimated parameter's nominal value be empty (Korkut_eLIFE2015 gives
    none).  ``nominal`` keeps NaN there, ``fit()`` asks for a start, and the load-time
    rules (state scales, tolerances) look at the middle of the bounds on the estimation
    scale: the same as a table whose nominal values are that middle, never NaN."""
    missing = fp.load(toy.write(tmp_path / "missing", nominal=dict.fromkeys(toy.NOMINAL)))
    middle = (toy_problem.lower + toy_problem.upper) / 2
    stated = fp.load(toy.write(tmp_path / "middle", nominal=_toy_linear(toy_problem, middle)))
    assert np.isnan(missing.nominal).all()
    np.testing.assert_allclose(stated.nominal, middle, rtol=1e-12)
    assert float(missing.model.rtol) == float(stated.model.rtol)
    np.testing.assert_allclose(missing.state_scales, stated.state_scales, rtol=1e-12)
    assert missing.offset == pytest.approx(stated.offset, rel=1e-12) and math.isfinite(missing.offset)
    assert missing._fatol == pytest.approx(fp._problem.FTOL * (1 + len(toy.ROWS)), rel=1e-12)  # its docstring says why
    with pytest.raises(ValueError, match=r"`x0`: .*no nominal value for 4 of the 4 .*sample_starts"):
        missing.fit()
    res = missing.fit(toy_problem.nominal)  # checked against a finer solve: a NaN offset would fail it
    assert res.success and float(missing.nll(res.params)) < float(missing.nll(toy_problem.nominal))


def test_points_by_id_stacked_or_seeded(toy_problem, x64):
    prob = toy_problem
    x = np.asarray(prob.nominal)
    stack = np.stack([x, x + 0.01, x - 0.02])
    rows = [float(prob.nll(row)) for row in stack]
    np.testing.assert_allclose(prob.nll(stack), rows, rtol=1e-12)
    np.testing.assert_allclose(prob.nll(stack.reshape(3, 1, -1))[:, 0], rows, rtol=1e-12)
    np.testing.assert_allclose(prob.residual(stack)[1], prob.residual(stack[1]), rtol=1e-12)
    by_id = dict(zip(reversed(prob.names), reversed(x.tolist())))
    assert float(prob.nll(by_id)) == rows[0]
    np.testing.assert_array_equal(prob.sample_starts(5, 3), prob.sample_starts(5, jax.random.key(3)))


def test_bad_input_is_a_clear_error(toy_problem, tmp_path):
    with pytest.raises(ValueError, match="4 entries"):
        toy_problem.nll(np.zeros(3))
    with pytest.raises(ValueError, match=r"unknown \['kk'\], missing \['k'\]"):
        toy_problem.nll({"kk": 1.0, "k2": 1.0, "sd_A": 0.0, "scale_A": 0.0})
    with pytest.raises(ValueError, match="one point"):
        toy_problem.simulate(np.zeros((2, 4)))
    with pytest.raises(TypeError, match="`key`"):
        toy_problem.multistart(2, key="seed")
    with pytest.raises(FileNotFoundError, match="path"):
        fp.load(tmp_path / "missing.yaml")
    (tmp_path / "table.tsv").write_text("observableId\ttime\n")
    with pytest.raises(ValueError, match="not a PEtab yaml"):
        fp.load(tmp_path / "table.tsv")
    # The multi-start's own options, before any fit (or draw of starts) compiles:
    with count_compilations() as compiled:
        for options, match in ((dict(threshold=-1.0), "`threshold`"), (dict(rtol=-1.0), "`rtol`"), (dict(check="yes"), "`check`")):
            with pytest.raises(ValueError if "check" not in options else TypeError, match=match):
                toy_problem.multistart(2, key=0, **options)
        with pytest.raises(FileNotFoundError, match="does not exist"):
            toy_problem.multistart(2, key=0, checkpoint=tmp_path / "no such folder" / "run.npz")
    assert compiled == []


@pytest.mark.slow
def test_a_float32_fit_under_x64_reports_its_own_nll(tmp_path, x64):
    """The residual's constant (√(2 ln σ + C) stays real as σ → 0) is the dtype's, so a
    float32 fit's NLL under x64 is its cost plus the float32 offset, and the summary
    says so (it said the cost plus the float64 offset, thousands off).  A problem of
    its own: the module's was fitted in float32 with x64 off (``test_toy_in_float32``),
    and switching x64 on in one process does not mix with it (the closing notes)."""
    prob = fp.load(toy.write(tmp_path))
    res = prob.fit(np.asarray(prob.nominal, np.float32), check=False)
    assert res.cost.dtype == jnp.float32 and prob.offset_for(jnp.float32) != prob.offset
    nll = float(prob.nll(np.asarray(res.params, np.float64)))
    assert float(res.cost) + prob.offset_for(res.cost.dtype) == pytest.approx(nll, abs=1e-2)  # float32 round-off of a cost of ~10³
    batch = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], res)
    ms = ff._multistart.summarise(batch, np.asarray(res.params)[None], absolute_sigma=True)
    best = float(re.search(r"\[\[Best fit\]\] NLL (\S+),", prob.summary(ms)).group(1))
    assert best == pytest.approx(nll, abs=1e-2)  # float32 round-off of a cost of ~10³


# --- helpers --------------------------------------------------------------------------


def _unscale(v, scale):
    return {"lin": v, "log": math.exp(v), "log10": 10.0**v}[scale]


def _petab_llh(problem, sim, parameter_df=None):
    import petab.v1 as petab

    return petab.calculate_llh(problem.measurement_df, sim, problem.observable_df, parameter_df if parameter_df is not None else problem.parameter_df)


def _accurate_simulation(prob, table):
    """The model solved by scipy's DOP853 at rtol 1e-13 from the same translation."""
    import sympy as sp
    from scipy.integrate import solve_ivp

    from fitfleet.petab._sbml import TIME, symbol

    ode, layout = prob.ode, prob.layout
    assert len(layout.condition_ids) == 1 and len(layout.observables) == len(set(table.observableId))
    pool = np.concatenate([[_unscale(v, s) for v, s in zip(prob.nominal, prob.scales)], layout.constants])
    theta = pool[layout.theta_index[0]]
    states, params = [symbol(s) for s in ode.states], [symbol(p) for p in layout.parameters]
    rhs = sp.lambdify([TIME, states, params], list(ode.rhs))
    y0 = np.asarray(sp.lambdify([params], list(ode.initial))(theta), np.float64)
    ts = np.unique(table.time)
    sol = solve_ivp(lambda t, y: rhs(t, y, theta), (0, ts[-1]), y0, method="DOP853", rtol=1e-13, atol=1e-20, t_eval=ts)
    out = np.empty(len(table))
    for o in layout.observables:
        f = sp.lambdify([states], o.formula)
        for i in np.flatnonzero(table.observableId.to_numpy() == o.id):
            out[i] = f(sol.y[:, np.searchsorted(ts, table.time.iloc[i])])
    return out
