"""A small PEtab problem with a closed-form solution, written to a folder by the tests.

SBML (level 3): compartment V (size 2); species A (concentration, initialAmount 4, so
A(0) = 4/V), B (hasOnlySubstanceUnits: an amount, initialConcentration 3, so B(0) = 3V),
C (boundary species, initial assignment C = 2 a0); reactions A -> ∅ at k·A·V (amount per
time) and ∅ -> B at k2; parameter p with rate rule dp/dt = r (p(0) = 0), q with
assignment rule q = 2 A.  So

    A(t) = A(0) e^{-k t},  B(t) = B(0) + k2 t,  C = 2 a0,  p(t) = r t,  q = 2 A.

PEtab: condition c1 keeps the model's values (r = 1.5); c2 sets V = 4 (A(0) = 1,
B(0) = 12) and r = 2.5 and starts A at concentration 5 instead.  Observables:
obs_A = scale·A (observableParameter) with noise sd·A (an estimated noise parameter times
a state); obs_B = B + p + q, log-normal with σ 0.05; obs_C = C·time + offset with a
numeric σ, normal.
"""

import math

import libsbml
import numpy as np
import pandas as pd

NOMINAL = {"k": 0.3, "k2": 0.5, "sd_A": 0.1, "scale_A": 2.0}
FIXED = {"a0": 1.5, "offset_C": 0.25}
SCALES = {"k": "log10", "k2": "lin", "sd_A": "log10", "scale_A": "log"}
BOUNDS = {"k": (1e-3, 1e2), "k2": (0.0, 5.0), "sd_A": (1e-3, 1e3), "scale_A": (0.1, 10.0)}
ROWS = [  # observable, condition, time, data
    *[("obs_A", "c1", t, d) for t, d in [(0.0, 4.1), (0.5, 3.3), (1.0, 3.1), (2.0, 2.2), (4.0, 1.3)]],
    *[("obs_A", "c2", t, d) for t, d in [(0.5, 8.9), (3.0, 4.2)]],
    *[("obs_B", "c1", t, d) for t, d in [(0.0, 10.5), (1.0, 9.8), (4.0, 10.9)]],
    *[("obs_B", "c2", t, d) for t, d in [(0.5, 24.0), (3.0, 23.1)]],
    *[("obs_C", "c1", t, d) for t, d in [(1.0, 3.2), (2.0, 6.4)]],
]


def expected(params):
    """Per row of ``ROWS``: the closed-form observable and σ at linear-scale ``params``."""
    k, k2, sd, scale = (params[n] for n in ("k", "k2", "sd_A", "scale_A"))
    init = {"c1": (4 / 2, 3 * 2, 1.5), "c2": (5.0, 3 * 4, 2.5)}  # A(0), B(0), r
    h, sigma = [], []
    for obs, cond, t, _ in ROWS:
        a0, b0, r = init[cond]
        a = a0 * math.exp(-k * t)
        if obs == "obs_A":
            h.append(scale * a), sigma.append(sd * a)
        elif obs == "obs_B":
            h.append(b0 + k2 * t + r * t + 2 * a), sigma.append(0.05)
        else:
            h.append(2 * FIXED["a0"] * t + FIXED["offset_C"]), sigma.append(0.4)
    return np.array(h), np.array(sigma)


def reference_nll(params):
    """The NLL written out (normal; log-normal for obs_B with its ln y Jacobian term)."""
    h, sigma = expected(params)
    total = 0.0
    for (obs, _, _, y), hi, si in zip(ROWS, h, sigma):
        if obs == "obs_B":
            total += 0.5 * math.log(2 * math.pi) + math.log(si) + 0.5 * ((math.log(y) - math.log(hi)) / si) ** 2 + math.log(y)
        else:
            total += 0.5 * math.log(2 * math.pi) + math.log(si) + 0.5 * ((y - hi) / si) ** 2  # log σ, not log σ²: σ² underflows
    return total


def sbml(event=False):
    doc = libsbml.SBMLDocument(3, 2)
    m = doc.createModel()
    m.setId("toy")
    c = m.createCompartment()
    c.setId("V"), c.setSize(2.0), c.setConstant(True)
    for sid, kind, value, boundary in (("A", "amount", 4.0, False), ("B", "concentration", 3.0, False), ("C", "concentration", 1.0, True)):
        s = m.createSpecies()
        s.setId(sid), s.setCompartment("V"), s.setConstant(False), s.setBoundaryCondition(boundary)
        s.setHasOnlySubstanceUnits(sid == "B")
        s.setInitialAmount(value) if kind == "amount" else s.setInitialConcentration(value)
    for pid, value, constant in (("k", 1.0, True), ("k2", 1.0, True), ("r", 1.5, True), ("a0", 0.0, True), ("p", 0.0, False), ("q", 0.0, False)):
        p = m.createParameter()
        p.setId(pid), p.setValue(value), p.setConstant(constant)
    _math(m.createInitialAssignment(), "C", "2 * a0")
    _math(m.createRateRule(), "p", "r")
    _math(m.createAssignmentRule(), "q", "2 * A")
    for rid, reactant, product, law in (("R1", "A", None, "k * A * V"), ("R2", None, "B", "k2")):
        r = m.createReaction()
        r.setId(rid), r.setReversible(False)
        if reactant:
            ref = r.createReactant()
            ref.setSpecies(reactant), ref.setStoichiometry(1.0), ref.setConstant(True)
        if product:
            ref = r.createProduct()
            ref.setSpecies(product), ref.setStoichiometry(1.0), ref.setConstant(True)
        r.createKineticLaw().setMath(libsbml.parseL3Formula(law))
    if event:
        e = m.createEvent()
        e.setId("E"), e.setUseValuesFromTriggerTime(True)
        trigger = e.createTrigger()
        trigger.setMath(libsbml.parseL3Formula("time > 1")), trigger.setPersistent(True), trigger.setInitialValue(False)
        _math(e.createEventAssignment(), "A", "1")
    return libsbml.writeSBMLToString(doc)


def _math(element, variable, formula):
    element.setSymbol(variable) if hasattr(element, "setSymbol") else element.setVariable(variable)
    element.setMath(libsbml.parseL3Formula(formula))


def write(folder, event=False, noise="normal", preequilibration=False, prior=False, nominal=None):
    """Write the problem (optionally with an unsupported feature) and return its yaml;
    ``nominal``: the estimated parameters' nominal values (linear scale; ``None`` for
    an empty cell, which PEtab allows), default ``NOMINAL``."""
    nominal = NOMINAL if nominal is None else nominal
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.xml").write_text(sbml(event))
    parameters = [
        {"parameterId": n, "parameterScale": SCALES[n], "lowerBound": BOUNDS[n][0], "upperBound": BOUNDS[n][1], "nominalValue": v, "estimate": 1}
        for n, v in nominal.items()
    ] + [{"parameterId": n, "parameterScale": "lin", "lowerBound": 0.0, "upperBound": 10.0, "nominalValue": v, "estimate": 0} for n, v in FIXED.items()]
    parameters = pd.DataFrame(parameters)
    parameters["initializationPriorType"] = ["parameterScaleUniform", "normal", "", "", "", ""]
    parameters["initializationPriorParameters"] = ["", "1.0;0.5", "", "", "", ""]
    if prior:  # True: a normal prior; or the objectivePriorType's name
        parameters["objectivePriorType"] = ["normal" if prior is True else prior, "", "", "", "", ""]
        parameters["objectivePriorParameters"] = ["0;1", "", "", "", "", ""]
    conditions = pd.DataFrame({"conditionId": ["c1", "c2"], "V": [2.0, 4.0], "r": [1.5, 2.5], "A": [np.nan, 5.0]})
    observables = pd.DataFrame({
        "observableId": ["obs_A", "obs_B", "obs_C"],
        "observableFormula": ["observableParameter1_obs_A * A", "B + p + q", "C * time + offset_C"],
        "noiseFormula": ["noiseParameter1_obs_A * A", "noiseParameter1_obs_B", "0.4"],
        "observableTransformation": ["lin", "log", "lin"],
        "noiseDistribution": [noise, "normal", "normal"],
    })  # fmt: skip
    measurements = pd.DataFrame({
        "observableId": [r[0] for r in ROWS],
        "simulationConditionId": [r[1] for r in ROWS],
        "time": [r[2] for r in ROWS],
        "measurement": [r[3] for r in ROWS],
        "observableParameters": ["scale_A" if r[0] == "obs_A" else "" for r in ROWS],
        "noiseParameters": ["sd_A" if r[0] == "obs_A" else "0.05" if r[0] == "obs_B" else "" for r in ROWS],
    })  # fmt: skip
    if preequilibration:
        measurements["preequilibrationConditionId"] = "c1"
    for name, table in (("parameters", parameters), ("conditions", conditions), ("observables", observables), ("measurements", measurements)):
        table.to_csv(folder / f"{name}.tsv", sep="\t", index=False)
    (folder / "toy.yaml").write_text(
        "format_version: 1\nparameter_file: parameters.tsv\nproblems:\n- condition_files: [conditions.tsv]\n"
        "  measurement_files: [measurements.tsv]\n  observable_files: [observables.tsv]\n  sbml_files: [model.xml]\n"
    )
    return folder / "toy.yaml"
