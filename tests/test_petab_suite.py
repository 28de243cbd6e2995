"""fitfleet.petab against the PEtab test suite (``petabtests``: each case a small PEtab
problem with its simulation, χ² and log-likelihood at the nominal parameters, computed
in closed form; tests/data/petab/README.md gives their source).  The suite's own tolerances are
1e-3; its values are exact, so the simulations here are held to 1e-6.  Pre-equilibration,
steady-state measurements and objective priors are opt-in (``load``'s options)."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("petab")
pytest.importorskip("libsbml")
pytest.importorskip("diffrax")

import jax  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

import fitfleet as ff  # noqa: E402

SUITE = Path(__file__).resolve().parent / "data" / "petab" / "petabtests"
CASES = sorted(p.name for p in SUITE.iterdir() if p.is_dir())
PREEQUILIBRATION = ["0009", "0010", "0017", "0018"]  # their READMEs say what each tests
# In the default run (each case compiles its ODE solves, ~7 s): the plainest case, and
# partial pre-equilibration; the other cases and the gradients through
# pre-equilibration are slow.
CHEAP = {"0001", "0010"}
_slow_unless_cheap = lambda cases: [pytest.param(c, marks=() if c in CHEAP else pytest.mark.slow) for c in cases]  # noqa: E731
_LOADED = {}


def _case(case):
    if case not in _LOADED:
        folder = SUITE / case
        solution = yaml.safe_load((folder / f"_{case}_solution.yaml").read_text())
        reference = pd.concat([pd.read_csv(folder / f, sep="\t") for f in solution["simulation_files"]], ignore_index=True)
        _LOADED[case] = ff.petab.load(folder / f"_{case}.yaml", rtol=1e-10, preequilibration=True), solution, reference
    return _LOADED[case]


@pytest.mark.parametrize("case", _slow_unless_cheap(CASES))
def test_simulation_chi2_and_likelihood_match_the_suite(case, x64):
    import petab.v1 as petab

    prob, solution, reference = _case(case)
    sim = prob.simulate(prob.nominal)
    keys = [k for k in ("observableId", "preequilibrationConditionId", "simulationConditionId", "time") if k in reference]
    same = lambda df: df[keys].fillna("").astype(str).to_numpy()  # noqa: E731
    assert (same(sim) == same(reference)).all()
    np.testing.assert_allclose(sim["simulation"].to_numpy(float), reference["simulation"], rtol=0, atol=1e-6)
    p = prob.petab_problem
    chi2 = petab.calculate_chi2(p.measurement_df, sim, p.observable_df, p.parameter_df)
    assert chi2 == pytest.approx(solution["chi2"], rel=1e-6, abs=1e-9)
    assert -float(prob.nll(prob.nominal)) == pytest.approx(solution["llh"], rel=1e-6, abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("case", PREEQUILIBRATION)
def test_preequilibration_gradient_matches_central_differences(case, x64):
    prob, _, _ = _case(case)
    x = prob.nominal
    grad = np.asarray(jax.grad(prob.nll)(x))
    h = 1e-5
    fd = np.array([(prob.nll(x + h * e) - prob.nll(x - h * e)) / (2 * h) for e in np.eye(x.size)])
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6 * np.max(np.abs(fd)))


@pytest.mark.slow
def test_steady_state_measurements_match_the_closed_form(tmp_path, x64):
    """Case 0001 (A ⇌ B, rates k1, k2) with measurements at t = inf added, alone in one
    condition and beside finite times in another, and one after pre-equilibration: the
    steady state A = k2 (a0 + b0)/(k1 + k2) and its derivatives in closed form."""
    import shutil

    folder = tmp_path / "steady"
    shutil.copytree(SUITE / "0001", folder)
    (folder / "_conditions.tsv").write_text("conditionId\tk1\nc0\t0.8\nc1\t0.2\n")
    (folder / "_parameters.tsv").write_text(
        "parameterId\tparameterScale\tlowerBound\tupperBound\tnominalValue\testimate\n"
        "a0\tlin\t0\t10\t1.0\t1\nb0\tlin\t0\t10\t0.5\t1\nk2\tlin\t0\t10\t0.6\t1\n"
    )
    rows = [("", "c0", "0", 0.7), ("", "c0", "10", 0.1), ("", "c0", "inf", 0.4), ("", "c1", "inf", 0.6), ("c1", "c0", "1", 0.5)]
    (folder / "_measurements.tsv").write_text(
        "observableId\tpreequilibrationConditionId\tsimulationConditionId\ttime\tmeasurement\n"
        + "".join(f"obs_a\t{pre}\t{sim}\t{t}\t{y}\n" for pre, sim, t, y in rows)
    )
    prob = ff.petab.load(folder / "_0001.yaml", rtol=1e-10, preequilibration=True)

    def closed_form(p):
        a0, b0, k2 = p
        steady = lambda k1, total: k2 * total / (k1 + k2)  # noqa: E731
        a = lambda t, k1, a_start, total: steady(k1, total) + (a_start - steady(k1, total)) * np.exp(-(k1 + k2) * t)  # noqa: E731
        total = a0 + b0
        return np.array([a(0, 0.8, a0, total), a(10, 0.8, a0, total), steady(0.8, total), steady(0.2, total), a(1, 0.8, steady(0.2, total), total)])

    x = np.asarray(prob.nominal)
    np.testing.assert_allclose(prob.simulate(x)["simulation"].to_numpy(float), closed_form(x), rtol=1e-7)
    sigma = 0.5
    y = np.array([r[3] for r in rows])
    nll = lambda p: np.sum(0.5 * ((y - closed_form(p)) / sigma) ** 2 + 0.5 * np.log(2 * np.pi * sigma**2))  # noqa: E731
    assert float(prob.nll(x)) == pytest.approx(nll(x), rel=1e-8)
    fd = np.array([(nll(x + 1e-6 * e) - nll(x - 1e-6 * e)) / 2e-6 for e in np.eye(3)])
    np.testing.assert_allclose(np.asarray(jax.grad(prob.nll)(x)), fd, rtol=1e-5)


def test_objective_priors_are_pypestos(tmp_path, x64):
    """Objective priors of every supported type on parameters of every scale, one of
    them fixed: the NLL grows by their negative log densities (scipy's), as pyPESTO's
    objective does (``pypesto.petab.PetabImporter.create_prior``, pyPESTO 0.7.0:
    4.597572401182253 at the nominal parameters), and stays a sum of squares."""
    import sys

    from scipy import stats

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import petab_toy as toy

    def write(folder, priors):
        path = toy.write(folder, prior=True)
        par = pd.read_csv(folder / "parameters.tsv", sep="\t")
        if priors:  # k (log10), k2 (lin), sd_A (log10), scale_A (log), a0 (fixed), offset_C (fixed)
            par["objectivePriorType"] = ["normal", "logNormal", "parameterScaleNormal", "uniform", "normal", ""]
            par["objectivePriorParameters"] = ["0.5;0.2", "-1;0.7", "-0.5;0.3", "0.05;20", "1;0.5", ""]
        else:
            par = par.drop(columns=["objectivePriorType", "objectivePriorParameters"])
        par.to_csv(folder / "parameters.tsv", sep="\t", index=False)
        return ff.petab.load(path, lint=False, priors=True)

    prob, plain = write(tmp_path / "priors", True), write(tmp_path / "plain", False)

    def prior(x):
        k, k2, sd_a, _ = x  # on their scales: log10, lin, log10, log
        return -(stats.norm.logpdf(10**k, 0.5, 0.2) + stats.lognorm.logpdf(k2, 0.7, scale=np.exp(-1))
                 + stats.norm.logpdf(sd_a, -0.5, 0.3) + stats.uniform.logpdf(1.0, 0.05, 19.95) + stats.norm.logpdf(1.5, 1, 0.5))  # fmt: skip

    assert float(prob.nll(prob.nominal) - plain.nll(prob.nominal)) == pytest.approx(4.597572401182253, rel=1e-12)
    for x in (prob.nominal, prob.nominal + 0.1, prob.nominal - np.array([0.5, 0.3, 0.2, 0.1])):
        assert float(prob.nll(x) - plain.nll(x)) == pytest.approx(prior(x), rel=1e-10)
        assert 0.5 * float(np.sum(np.asarray(prob.residual(x)) ** 2)) + prob.offset == pytest.approx(float(prob.nll(x)), rel=1e-12)


GROWTH_SBML = """<?xml version="1.0" encoding="UTF-8"?>
<sbml xmlns="http://www.sbml.org/sbml/level3/version1/core" level="3" version="1">
  <model id="growth">
    <listOfCompartments><compartment id="c" size="1" constant="true"/></listOfCompartments>
    <listOfSpecies>
      <species id="X" compartment="c" initialConcentration="1e-10" hasOnlySubstanceUnits="false" boundaryCondition="false" constant="false"/>
      <species id="Y" compartment="c" initialConcentration="1" hasOnlySubstanceUnits="false" boundaryCondition="false" constant="false"/>
    </listOfSpecies>
    <listOfParameters><parameter id="k" value="2" constant="true"/></listOfParameters>
    <listOfRules>
      <rateRule variable="X"><math xmlns="http://www.w3.org/1998/Math/MathML"><apply><times/><ci>k</ci><ci>X</ci></apply></math></rateRule>
      <rateRule variable="Y"><math xmlns="http://www.w3.org/1998/Math/MathML"><apply><times/><cn>-0.1</cn><ci>Y</ci></apply></math></rateRule>
    </listOfRules>
  </model>
</sbml>
"""


def test_a_state_growing_from_a_tiny_start_is_resolved_from_its_start(tmp_path, x64):
    """X grows e^20-fold from 1e-10 (as an epidemic's infected fraction does in
    Bertozzi_PNAS2020): an absolute tolerance sized for its peak would leave its start
    unresolved, and the error grow with it (``_tolerances``)."""
    (tmp_path / "model.xml").write_text(GROWTH_SBML)
    (tmp_path / "conditions.tsv").write_text("conditionId\nc0\n")
    (tmp_path / "observables.tsv").write_text("observableId\tobservableFormula\tnoiseFormula\nobs_x\tX\t0.01\nobs_y\tY\t0.01\n")
    (tmp_path / "parameters.tsv").write_text("parameterId\tparameterScale\tlowerBound\tupperBound\tnominalValue\testimate\nk\tlog10\t0.1\t10\t2\t1\n")
    times = [1.0, 5.0, 10.0]
    (tmp_path / "measurements.tsv").write_text(
        "observableId\tsimulationConditionId\ttime\tmeasurement\n" + "".join(f"obs_{o}\tc0\t{t}\t0.5\n" for o in "xy" for t in times)
    )
    (tmp_path / "growth.yaml").write_text(
        "format_version: 1\nparameter_file: parameters.tsv\nproblems:\n- condition_files: [conditions.tsv]\n"
        "  measurement_files: [measurements.tsv]\n  observable_files: [observables.tsv]\n  sbml_files: [model.xml]\n"
    )
    prob = ff.petab.load(tmp_path / "growth.yaml")
    sim = prob.simulate(prob.nominal)["simulation"].to_numpy(float)
    exact = np.concatenate([1e-10 * np.exp(2 * np.array(times)), np.exp(-0.1 * np.array(times))])
    np.testing.assert_allclose(sim, exact, rtol=1e-5)
