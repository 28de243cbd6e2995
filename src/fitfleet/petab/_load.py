"""``load``: a PEtab problem in, a :class:`~fitfleet.petab._problem.Problem` out.  The
tables and the SBML model are read and translated to JAX here, once; the ODE solver's
tolerances are chosen by ``_tolerances``'s rule."""

import dataclasses
from pathlib import Path

import jax
import numpy as np
import petab.v1 as petab
import yaml

from . import _model, _sbml, _tables, _tolerances
from ._problem import FTOL, Problem
from ._rosenbrock import Rodas5P


def load(path, *, solver=None, rtol=None, state_scales=None, max_steps=10_000, conditions="auto", lint=True, preequilibration=False, priors=False):
    """Load a PEtab v1 problem (its yaml file, or the folder that holds exactly one).

    The SBML model is translated to JAX once, here; nothing compiles until the first
    evaluation.  The rules below look at "the nominal parameters": the parameter
    table's nominal values, and where it gives none for an estimated parameter (PEtab
    allows that), the middle of its bounds on the estimation scale, the mean of the
    default starts (``Problem.nominal`` keeps NaN there; the fits' stopping test then
    scales with the number of measurements, ``Problem._fatol``).

    Args:
        path: the problem's yaml file or its folder.
        solver: a diffrax solver; default ``fitfleet.petab.Rodas5P()``, an L-stable
            Rosenbrock method (``fitfleet.petab._rosenbrock``): the benchmark models are
            stiff somewhere inside their bounds (Boehm's import rate reaches 1e5/min),
            and multi-starts go there.
        rtol: the relative tolerance of the ODE solver (raised to 100 ε in float32).
            Default: by the rule of ``fitfleet.petab._tolerances``: 1e-8, with the
            absolute tolerances (``state_scales``, if not given) and then ``rtol``
            tightened tenfold at a time until the NLL at the nominal parameters agrees
            with a solve 100 times tighter to within the fits' stopping test,
            ``1e-8·(1 + |NLL|)``.  An ``rtol`` given is used as it is, with the
            ``state_scales`` given or found.
        state_scales: per state (or one number), the magnitude below which a state's
            absolute error is controlled: ``atol_i = rtol · state_scales[i]``.  Default:
            by the rule of ``fitfleet.petab._tolerances`` (each state's largest value
            at the nominal parameters, from a pilot solve with ``solver``, made smaller
            where the rule above needs it); ``Problem.state_scales`` holds them.
        max_steps: the ODE solver's step budget per condition; a solve that needs more
            fails (NaN residuals, which a fit treats as a rejected point).
        conditions: how a problem with several simulation conditions solves them:
            ``"sequential"`` (one after another), ``"parallel"`` (side by side, under
            ``vmap``: each adaptive solve then steps as often as the slowest condition
            needs), or ``"auto"``: parallel on an accelerator, whose kernels cost their
            launches rather than their width; on CPU sequential where, at the nominal
            parameters, the conditions' solves take so unequal numbers of steps that
            side by side most of the work would be padding (the rule and its
            measurements: ``fitfleet.petab._tolerances``).
        lint: run ``petab.lint_problem`` first and refuse a problem with errors.
        preequilibration: simulate pre-equilibration and steady-state measurements
            (``time = inf``) by fitfleet's steady-state solve (``_model``; checked
            against the PEtab test suite's closed forms, not yet against AMICI on
            benchmark problems).  Off by default: a problem that needs them raises.
        priors: add the parameter table's objective priors, making ``nll`` pyPESTO's
            negative log-posterior (``_tables.Prior``).  Off by default: a problem
            with priors raises rather than be fitted without them.

    The Jacobian comes from forward-mode sensitivities through the solver
    (``diffrax.ForwardMode``, so ``jax.jacfwd``; ``nll`` also has a reverse-mode
    gradient built on them), and a failed solve returns NaN rather than raising.

    Returns:
        A :class:`Problem`.

    Raises:
        NotImplementedError: for a PEtab or SBML feature outside what the benchmark
            collection's ODE problems use (events, Laplace noise or priors,
            algebraic rules, a compartment resized after pre-equilibration, ...),
            naming it.
    """
    if conditions not in ("auto", "sequential", "parallel"):
        raise ValueError(f"`conditions` must be 'auto', 'sequential' or 'parallel'; got {conditions!r}.")
    path = Path(path)
    if path.is_dir():
        yamls = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
        if len(yamls) != 1:
            raise ValueError(f"`path` {str(path)!r} is a folder with {len(yamls)} yaml files; pass the problem's yaml file.")
        path = yamls[0]
    if not path.is_file():
        raise FileNotFoundError(f"`path`: no PEtab yaml file {str(path)!r}.")
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"`path` {str(path)!r} is not a PEtab yaml file: pass the problem's yaml (which names its tables and model) or its folder.")
    try:
        problem = petab.Problem.from_yaml(str(path))
    except yaml.YAMLError as error:
        raise ValueError(f"`path` {str(path)!r} is not a readable PEtab yaml file: {error}") from error
    if problem.model is None or not hasattr(problem.model, "sbml_document"):
        raise NotImplementedError("only PEtab problems with an SBML model are supported.")
    if lint and petab.lint_problem(problem):
        raise ValueError(f"petab.lint_problem found errors in {str(path)!r} (logged above); pass lint=False to load it anyway.")
    ode = _sbml.load_sbml(problem.model.sbml_document)
    layout = _tables.build(problem, ode, preequilibration=preequilibration, priors=priors)
    settings = _model.Settings(solver or Rodas5P(), int(max_steps), conditions == "sequential")
    model = _model.build_model(ode, layout, settings, _tolerances.RTOL if rtol is None else float(rtol), np.ones(len(ode.states)))
    scales_given = state_scales is not None
    if not scales_given:
        state_scales = _tolerances.state_scales(model, layout.reference)
    state_scales = np.broadcast_to(np.asarray(state_scales, np.float64), (len(ode.states),))
    model = model.with_tolerances(model.rtol, np.array(state_scales))
    if conditions == "auto" and jax.default_backend() == "cpu" and _tolerances.sequential_conditions(model, layout.reference):
        model = dataclasses.replace(model, settings=dataclasses.replace(settings, sequential=True))
    if rtol is None:
        rtol, state_scales = _tolerances.resolved_tolerances(model, layout.reference, layout.measurements, FTOL, scales=not scales_given)
        model = model.with_tolerances(np.array(rtol), np.array(state_scales))
    return Problem(path, problem, ode, layout, model)
