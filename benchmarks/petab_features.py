"""A small synthetic PEtab problem that uses, at once, the SBML and PEtab features the
benchmark collection's six problems in ``tests/data/petab`` use only some of, and its
reference simulation by AMICI (the field's tool), for ``tests/test_petab.py``.

    python benchmarks/petab_features.py write            # the PEtab files (any venv with libsbml, petab)
    /path/to/refvenv/bin/python benchmarks/petab_features.py reference
        # AMICI 1.0.1 + pyPESTO 0.7.0 (benchmarks/petab_reference.py says how to install them):
        # amiciSimulation_<id>.tsv and the NLL at the nominal parameters in reference_values.json

Written to ``tests/data/petab/fitfleet_features/``.  The features:

- SBML: two compartments of different sizes (one by an initial assignment from a
  parameter that a condition overrides), a transport reaction between them (a
  concentration species in each: the kinetic law is an amount per time), a species with
  ``hasOnlySubstanceUnits`` (its symbol is an amount), a boundary species (an input set
  per condition), a function definition (a Hill function), ``piecewise`` in time, a
  reaction-local parameter, an assignment rule (a total used by an observable), a rate
  rule (an input that decays), initial assignments (of a species and through a
  parameter), a reaction on a fixed parameter.
- PEtab: two conditions overriding a boundary species, parameters (one sets a
  compartment's size) and the initial amount of an amount species; an observable of
  ``time``; a numeric noise formula; a fixed (not estimated) log10-scaled parameter;
  observable parameters given by parameter ids in one
  condition and by numbers in the other; noise parameters likewise; a noise formula
  that depends on a simulated quantity; normal, log-normal and log10-normal noise;
  ``lin``, ``log`` and ``log10`` parameter scales; replicate measurements.

The reference is AMICI's simulation at rtol 1e-12, atol 1e-16, so that the test
measures fitfleet's accuracy (rtol 1e-8), not the reference's.
"""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

# Run as a script, this folder comes first on the path, and its petab.py (fitfleet's
# benchmark) would shadow the petab package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

ID = "fitfleet_features"
DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "petab"
FOLDER = DATA / ID
TIMES = [0.0, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 12.0]


def sbml():
    import libsbml

    doc = libsbml.SBMLDocument(3, 2)
    m = doc.createModel()
    m.setId(ID)
    for cid, size in (("cyt", 1.0), ("nuc", 0.4)):
        c = m.createCompartment()
        c.setId(cid), c.setSize(size), c.setConstant(True), c.setSpatialDimensions(3)

    def parameter(pid, value, constant=True):
        p = m.createParameter()
        p.setId(pid), p.setValue(value), p.setConstant(constant)

    for pid, value in (("k1", 2.0), ("K_m", 0.8), ("n_hill", 2.0), ("k2", 0.7), ("k_imp", 0.5), ("k_deg", 0.3),
                       ("A0", 1.5), ("k_rr", 0.1), ("frac", 0.2), ("k_leak", 0.05), ("V_nuc", 0.4)):  # fmt: skip
        parameter(pid, value)
    parameter("u", 1.0, constant=False)  # rate rule: a decaying input
    parameter("total", 0.0, constant=False)  # assignment rule

    def species(sid, compartment, initial, amount=False, boundary=False):
        s = m.createSpecies()
        s.setId(sid), s.setCompartment(compartment), s.setHasOnlySubstanceUnits(amount)
        s.setBoundaryCondition(boundary), s.setConstant(False)
        (s.setInitialAmount if amount else s.setInitialConcentration)(initial)

    species("S", "cyt", 1.0, boundary=True)
    species("A", "cyt", 0.0)
    species("B", "cyt", 0.0)
    species("C", "nuc", 0.0)
    species("D", "nuc", 0.1, amount=True)

    f = m.createFunctionDefinition()
    f.setId("hill")
    f.setMath(libsbml.parseL3Formula("lambda(x, K, n, x^n / (K^n + x^n))"))

    for target, formula in (("A", "A0"), ("B", "frac * A0"), ("nuc", "V_nuc")):
        a = m.createInitialAssignment()
        a.setSymbol(target), a.setMath(libsbml.parseL3Formula(formula))
    r = m.createRateRule()
    r.setVariable("u"), r.setMath(libsbml.parseL3Formula("-k_rr * u"))
    r = m.createAssignmentRule()
    r.setVariable("total"), r.setMath(libsbml.parseL3Formula("A + B + C * nuc / cyt"))

    def reaction(rid, reactants, products, law, local=None, modifiers=()):
        x = m.createReaction()
        x.setId(rid), x.setReversible(False)
        for sid in modifiers:
            x.createModifier().setSpecies(sid)
        for sid in reactants:
            ref = x.createReactant()
            ref.setSpecies(sid), ref.setStoichiometry(1.0), ref.setConstant(True)
        for sid in products:
            ref = x.createProduct()
            ref.setSpecies(sid), ref.setStoichiometry(1.0), ref.setConstant(True)
        kl = x.createKineticLaw()
        for pid, value in (local or {}).items():
            lp = kl.createLocalParameter()
            lp.setId(pid), lp.setValue(value)
        kl.setMath(libsbml.parseL3Formula(law))

    reaction("production", [], ["A"], "cyt * k1 * u * hill(S, K_m, n_hill)", modifiers=["S"])
    reaction("conversion", ["A"], ["B"], "cyt * k2 * A * piecewise(1, time < 3, 0.4)")
    reaction("import", ["B"], ["C"], "cyt * k_imp * B")
    reaction("binding", ["C"], ["D"], "nuc * k_loc * C", local={"k_loc": 0.6})
    reaction("decay", ["D"], [], "k_deg * D")
    reaction("leak", ["A"], [], "cyt * k_leak * A")
    return libsbml.writeSBMLToString(doc)


def tables():
    conditions = pd.DataFrame({"conditionId": ["low", "high"], "S": [1.0, 2.5], "k_rr": [0.1, 0.25], "D": [0.1, 0.3], "V_nuc": [0.4, 0.5]})
    observables = pd.DataFrame({
        "observableId": ["obs_A", "obs_C", "obs_total", "obs_D", "obs_B"],
        "observableFormula": ["observableParameter1_obs_A * A + observableParameter2_obs_A", "C", "total", "D", "B * exp(-0.05 * time)"],
        "observableTransformation": ["lin", "log", "lin", "log10", "lin"],
        "noiseFormula": ["noiseParameter1_obs_A", "sigma_C", "noiseParameter1_obs_total * (total + 0.05)", "noiseParameter1_obs_D", "0.05"],
        "noiseDistribution": ["normal", "normal", "normal", "normal", "normal"],
    })  # fmt: skip
    parameters = pd.DataFrame({
        "parameterId": ["k1", "K_m", "k2", "k_imp", "k_deg", "A0", "frac", "scale_A", "offset_A", "sigma_A", "sigma_C", "rel_total", "k_leak"],
        "parameterScale": ["log10", "log10", "log", "lin", "log10", "log10", "lin", "lin", "lin", "log10", "log10", "log", "log10"],
        "lowerBound": [1e-2, 1e-2, 1e-2, 0.01, 1e-3, 1e-2, 0.0, 0.1, -1.0, 1e-3, 1e-3, 1e-3, 1e-3],
        "upperBound": [1e2, 1e2, 1e2, 5.0, 1e1, 1e2, 1.0, 10.0, 1.0, 1e1, 1e1, 1e1, 1.0],
        "nominalValue": [2.0, 0.8, 0.7, 0.5, 0.3, 1.5, 0.2, 1.2, 0.1, 0.1, 0.15, 0.08, 0.05],
        "estimate": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0],
    })  # fmt: skip
    parameters.insert(1, "parameterName", parameters.parameterId)
    rng = np.random.default_rng(0)
    rows = []
    for condition in ("low", "high"):
        for t in TIMES:
            for obs in ("obs_A", "obs_C", "obs_total", "obs_D", "obs_B"):
                if obs in ("obs_C", "obs_D") and t == 0.0:
                    continue  # a log observable of a state that starts at 0
                o_par = {"obs_A": "scale_A;offset_A" if condition == "low" else "1.5;0.0"}.get(obs, "")
                n_par = {"obs_A": "sigma_A" if condition == "low" else "0.2", "obs_total": "rel_total", "obs_D": "0.1"}.get(obs, "")
                value = float(np.exp(rng.normal(0, 0.5)))  # replaced by `reference`'s simulated data
                rows.append([obs, condition, t, value, o_par, n_par])
                if obs == "obs_A" and t == 4.0:  # a replicate
                    rows.append([obs, condition, t, value * 1.1, o_par, n_par])
    measurements = pd.DataFrame(rows, columns=["observableId", "simulationConditionId", "time", "measurement", "observableParameters", "noiseParameters"])
    return conditions, observables, parameters, measurements


def write():
    FOLDER.mkdir(parents=True, exist_ok=True)
    (FOLDER / f"model_{ID}.xml").write_text(sbml())
    names = {"conditions": f"experimentalCondition_{ID}.tsv", "observables": f"observables_{ID}.tsv",
             "parameters": f"parameters_{ID}.tsv", "measurements": f"measurementData_{ID}.tsv"}  # fmt: skip
    for (key, file), df in zip(names.items(), tables()):
        df.to_csv(FOLDER / file, sep="\t", index=False)
    (FOLDER / f"{ID}.yaml").write_text(
        "format_version: 1\n"
        f"parameter_file: {names['parameters']}\n"
        "problems:\n"
        f"- condition_files:\n  - {names['conditions']}\n"
        f"  measurement_files:\n  - {names['measurements']}\n"
        f"  observable_files:\n  - {names['observables']}\n"
        f"  sbml_files:\n  - model_{ID}.xml\n"
    )
    import petab.v1 as petab

    problem = petab.Problem.from_yaml(FOLDER / f"{ID}.yaml")
    if petab.lint_problem(problem):
        raise SystemExit("petab's linter rejects the problem (see above)")
    print("wrote", FOLDER)


def reference():
    import tempfile

    import amici.sim.sundials.petab.v1 as amici_petab
    import petab.v1 as petab
    import pypesto.petab

    def simulate(problem, folder):
        importer = pypesto.petab.PetabImporter(problem, output_folder=folder, model_name=ID)
        objective = importer.create_problem(verbose=False).objective
        objective.amici_solver.set_relative_tolerance(1e-12)
        objective.amici_solver.set_absolute_tolerance(1e-16)
        objective.amici_solver.set_max_steps(10**6)
        out = objective(np.asarray(problem.x_nominal_free_scaled, float), return_dict=True)
        return amici_petab.rdatas_to_simulation_df(out["rdatas"], objective.amici_model, problem.measurement_df), float(out["fval"])

    path = FOLDER / f"{ID}.yaml"
    with tempfile.TemporaryDirectory() as folder:
        # The measurements: AMICI's simulation at the nominal parameters with 10% noise
        # (so that the likelihood is that of a plausible data set), then the reference.
        problem = petab.Problem.from_yaml(path)
        sim, _ = simulate(problem, folder)
        rows = problem.measurement_df.reset_index(drop=True)
        keys = ["observableId", "simulationConditionId", "time"]
        merged = rows[keys].merge(sim.drop_duplicates(keys)[keys + ["simulation"]], on=keys, how="left")
        noise = np.exp(0.1 * np.random.default_rng(1).standard_normal(len(rows)))
        rows["measurement"] = merged["simulation"].to_numpy() * noise
        rows.to_csv(FOLDER / f"measurementData_{ID}.tsv", sep="\t", index=False)
        problem = petab.Problem.from_yaml(path)
        sim, nll = simulate(problem, folder)
    sim.to_csv(FOLDER / f"amiciSimulation_{ID}.tsv", sep="\t", index=False)
    # In reference_values.json's "synthetic" (not a benchmark problem: no best known
    # optimum), the one value replaced in place, the file's other numbers as written.
    path = DATA / "reference_values.json"
    text, count = re.subn(rf'("{ID}": )[^\s,}}]+', rf"\g<1>{nll!r}", path.read_text())
    if count != 1:
        raise SystemExit(f'add "synthetic": {{"{ID}": 0}} to {path} first')
    path.write_text(text)
    print("NLL at nominal", nll, "->", json.loads(text)["synthetic"][ID])


if __name__ == "__main__":
    {"write": write, "reference": reference}[sys.argv[1]]()
