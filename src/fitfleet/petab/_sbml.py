"""An SBML model as a symbolic ODE system (python-libsbml reads it, sbmlmath turns its
MathML into sympy).

SBML's meaning, as simulators implement it (SBML L3V2 specification, sections 4.11
and 4.13; AMICI does the same):

- A species' symbol denotes its concentration unless ``hasOnlySubstanceUnits``, then
  its amount.  A reaction's kinetic law is an amount per time, so a concentration
  species changes by ``Σ stoichiometry · v / V`` with ``V`` its compartment's (constant)
  size.  ``initialAmount`` of a concentration species is divided by ``V``,
  ``initialConcentration`` of an amount species multiplied by it.
- Assignment rules hold at every time: their targets are substituted everywhere.
  Rate rules make their targets states.  Boundary and constant species are not changed
  by reactions (they are states with zero derivative unless a rate rule drives them, so
  that initial assignments and PEtab condition overrides treat them like any species).
- Initial assignments give values at t = 0 (a parameter's holds for all time, as it
  has no rule: there are no events).

Everything not listed raises ``NotImplementedError`` naming the feature: events,
algebraic rules, ``delay``/``rateOf``, fast reactions, variable stoichiometry,
conversion factors, compartments whose size changes while they hold species, and
SBML packages that change the model's meaning (``comp``).
"""

from dataclasses import dataclass

import libsbml
import sbmlmath
import sympy as sp

TIME = sp.Symbol("time", real=True)  # PEtab formulas name time `time`; SBML uses a csymbol


def symbol(name):
    return sp.Symbol(name, real=True)


@dataclass(frozen=True)
class OdeModel:
    """``d states/dt = rhs(time, states, constants)`` from ``states(0) = initial(constants)``.

    Attributes:
        states: ids of the state variables.
        rhs, initial: one sympy expression per state, in the symbols of ``states``,
            ``constants`` and ``TIME`` (``initial`` only in ``constants``).
        constants: id -> the SBML model's value for every time-constant quantity a
            PEtab table may set (parameters and compartment sizes without rules or
            initial assignments).
        rules: id -> expression for every assignment-rule target and every constant
            defined by an initial assignment, in states, constants and ``TIME``.
        species: ids of the species (all of them are states).
        compartments: ids of the compartments.
    """

    states: tuple
    rhs: tuple
    initial: tuple
    constants: dict
    rules: dict
    species: tuple
    compartments: tuple = ()

    def expand(self, expr):
        """``expr`` with rule targets replaced by their definitions."""
        return expr.xreplace({symbol(k): v for k, v in self.rules.items()})


def load_sbml(document):
    """The :class:`OdeModel` of a ``libsbml.SBMLDocument``."""
    _check_document(document)
    model = document.getModel()
    _check_unsupported(model)

    compartments = {c.getId(): c for c in model.getListOfCompartments()}
    parameters = {p.getId(): p for p in model.getListOfParameters()}
    species = {s.getId(): s for s in model.getListOfSpecies()}
    assignment, rate = {}, {}
    for rule in model.getListOfRules():
        if rule.isAlgebraic():
            raise NotImplementedError("SBML algebraic rules are not supported.")
        (assignment if rule.isAssignment() else rate)[rule.getVariable()] = _math(rule)
    initial_assignments = {a.getSymbol(): _math(a) for a in model.getListOfInitialAssignments()}

    for cid in set(assignment) | set(rate):
        if cid in compartments and any(s.getCompartment() == cid for s in species.values()):
            raise NotImplementedError(f"compartment {cid!r} changes size (a rule) while it holds species.")
    rules = _resolve(assignment, "assignment rules")

    # States: every species without an assignment rule, and every rate-rule target.
    states = [s for s in species if s not in assignment] + [v for v in rate if v not in species]
    size = {cid: symbol(cid) for cid in compartments}
    rhs = {s: sp.Integer(0) for s in states}
    for v, expr in rate.items():
        rhs[v] = expr
    for reaction in model.getListOfReactions():
        flux = _kinetic_law(reaction)
        for sign, refs in ((-1, reaction.getListOfReactants()), (1, reaction.getListOfProducts())):
            for ref in refs:
                s = species[ref.getSpecies()]
                if s.getId() in rate or s.getId() in assignment or s.getBoundaryCondition() or s.getConstant():
                    continue
                change = sign * _stoichiometry(ref, model) * flux
                if not s.getHasOnlySubstanceUnits():
                    change = change / size[s.getCompartment()]
                rhs[s.getId()] += change

    # Constants, and the quantities defined by initial assignments.
    constants, derived = {}, {}
    for pid, p in parameters.items():
        if pid in assignment or pid in rate:
            continue
        if pid in initial_assignments:
            derived[pid] = initial_assignments[pid]
        elif p.isSetValue():
            constants[pid] = p.getValue()
        else:
            raise ValueError(f"SBML parameter {pid!r} has no value and no initial assignment.")
    for cid, c in compartments.items():
        if cid in assignment or cid in rate:
            continue
        if cid in initial_assignments:
            derived[cid] = initial_assignments[cid]
        elif c.isSetSize():
            constants[cid] = c.getSize()
        else:
            raise ValueError(f"SBML compartment {cid!r} has no size and no initial assignment.")

    initial = {}
    for sid in states:
        if sid in initial_assignments:
            initial[sid] = initial_assignments[sid]
        elif sid in species:
            initial[sid] = _species_initial(species[sid], size)
        elif sid in parameters and parameters[sid].isSetValue():
            initial[sid] = sp.Float(parameters[sid].getValue())
        elif sid in compartments and compartments[sid].isSetSize():
            initial[sid] = sp.Float(compartments[sid].getSize())
        else:
            raise ValueError(f"SBML rate-rule target {sid!r} has no initial value.")

    # At t = 0 rules and initial values are one system of definitions; solve it by
    # substitution, then express the derived constants in constants alone.
    at_zero = _resolve({**initial, **rules, **derived}, "initial assignments", {TIME: sp.Integer(0)})
    derived = {k: at_zero[k] for k in derived}
    rules = {k: v.xreplace({symbol(d): e for d, e in derived.items()}) for k, v in {**rules, **derived}.items()}
    expand = {symbol(k): v for k, v in rules.items()}
    model_rhs = tuple(rhs[s].xreplace(expand) for s in states)
    model_initial = tuple(at_zero[s] for s in states)

    known = {symbol(s) for s in states} | {symbol(c) for c in constants} | {TIME}
    for what, exprs in (("the ODE right-hand side", model_rhs), ("initial values", model_initial)):
        unknown = set().union(*(e.free_symbols for e in exprs)) - known
        if unknown:
            raise ValueError(f"SBML {what} use undefined symbols {sorted(map(str, unknown))}.")
    return OdeModel(tuple(states), model_rhs, model_initial, constants, rules, tuple(species), tuple(compartments))


def _check_document(document):
    errors = [document.getError(i) for i in range(document.getNumErrors())]
    fatal = [e.getMessage().strip() for e in errors if e.getSeverity() >= libsbml.LIBSBML_SEV_ERROR]
    if fatal:
        raise ValueError("the SBML file does not parse: " + "; ".join(fatal[:3]))
    if document.getModel() is None:
        raise ValueError("the SBML document has no model.")
    # A declared but unused 'comp' namespace (Armistead's) changes nothing.
    comp = document.getPlugin("comp"), document.getModel().getPlugin("comp")
    if comp[0] is not None and (comp[0].getNumModelDefinitions() or comp[0].getNumExternalModelDefinitions()) or (
        comp[1] is not None and comp[1].getNumSubmodels()
    ):
        raise NotImplementedError("the SBML 'comp' package (submodels) is not supported.")
    if document.getModel().getNumFunctionDefinitions():
        properties = libsbml.ConversionProperties()
        properties.addOption("expandFunctionDefinitions", True)
        if document.convert(properties) != libsbml.LIBSBML_OPERATION_SUCCESS:
            raise ValueError("libsbml could not expand the SBML function definitions.")


def _check_unsupported(model):
    if model.getNumEvents():
        raise NotImplementedError(f"SBML events are not supported ({model.getNumEvents()} in the model).")
    if model.isSetConversionFactor() or any(s.isSetConversionFactor() for s in model.getListOfSpecies()):
        raise NotImplementedError("SBML conversion factors are not supported.")
    for reaction in model.getListOfReactions():
        if reaction.isSetFast() and reaction.getFast():
            raise NotImplementedError(f"SBML fast reactions are not supported (reaction {reaction.getId()!r}).")


def _math(element):
    if element.getMath() is None:
        raise ValueError(f"SBML element {element.getId() or element.getElementName()!r} has no math.")
    return _canonical(sbmlmath.sbml_math_to_sympy(element))


def _canonical(expr):
    """Plain real symbols for SBML identifiers, ``TIME`` for time, numbers for constants."""
    for f in expr.atoms(sp.Function):
        if isinstance(type(f), sp.core.function.UndefinedFunction):
            raise NotImplementedError(f"SBML function {type(f).__name__!r} is not supported.")
    replace = {}
    for s in expr.free_symbols:
        if isinstance(s, sbmlmath.TimeSymbol):
            replace[s] = TIME
        elif isinstance(s, sbmlmath.CSymbol):
            try:
                replace[s] = sp.Float(float(s))
            except TypeError:
                raise NotImplementedError(f"SBML csymbol {s.name!r} is not supported.") from None
        else:
            replace[s] = symbol(s.name)
    return expr.xreplace(replace)


def _kinetic_law(reaction):
    law = reaction.getKineticLaw()
    if law is None or law.getMath() is None:
        raise ValueError(f"SBML reaction {reaction.getId()!r} has no kinetic law.")
    local = {p.getId(): p.getValue() for p in law.getListOfParameters()}
    local.update({p.getId(): p.getValue() for p in law.getListOfLocalParameters()})
    return _math(law).xreplace({symbol(k): sp.Float(v) for k, v in local.items()})


def _stoichiometry(ref, model):
    if ref.getLevel() < 3 and ref.isSetStoichiometryMath():
        raise NotImplementedError(f"SBML stoichiometryMath is not supported (species {ref.getSpecies()!r}).")
    rid = ref.getId() if ref.isSetId() else None
    if rid and (model.getRule(rid) is not None or model.getInitialAssignment(rid) is not None):
        raise NotImplementedError(f"SBML variable stoichiometry is not supported (species reference {rid!r}).")
    if ref.getLevel() >= 3 and not ref.isSetStoichiometry():
        raise ValueError(f"SBML species reference to {ref.getSpecies()!r} has no stoichiometry.")
    value = ref.getStoichiometry()
    return sp.Integer(int(value)) if float(value).is_integer() else sp.Float(value)


def _species_initial(s, size):
    compartment = size[s.getCompartment()]
    if s.isSetInitialConcentration():
        value = sp.Float(s.getInitialConcentration())
        return value * compartment if s.getHasOnlySubstanceUnits() else value
    if s.isSetInitialAmount():
        value = sp.Float(s.getInitialAmount())
        return value if s.getHasOnlySubstanceUnits() else value / compartment
    raise ValueError(f"SBML species {s.getId()!r} has no initial value, rule or initial assignment.")


def _resolve(definitions, what, extra=None):
    """``definitions`` (id -> expression) with every defined id substituted away."""
    subs = {symbol(k): v for k, v in definitions.items()}
    if extra:
        subs.update(extra)
    out = {}
    for k, v in definitions.items():
        for _ in range(len(definitions) + 1):
            new = v.xreplace(subs)
            if new == v:
                break
            v = new
        else:
            raise ValueError(f"SBML {what} define {k!r} in terms of itself.")
        out[k] = v
    return out
