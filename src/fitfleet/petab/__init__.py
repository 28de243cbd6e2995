"""PEtab problems in fitfleet: ``load`` a PEtab v1 problem (SBML model, measurement,
condition, observable and parameter tables) and simulate, evaluate and fit it.

    prob = fitfleet.petab.load("Boehm_JProteomeRes2014/Boehm_JProteomeRes2014.yaml")
    prob.names, prob.lower, prob.upper, prob.nominal   # on the estimation scale
    prob.nll(prob.nominal)                             # pyPESTO's objective
    prob.simulate(prob.nominal)                        # measurement table + `simulation`
    res = prob.fit(prob.nominal)                       # fitfleet.least_squares
    ms = prob.multistart(100, key=jax.random.key(0),   # fitfleet.fit_batch, in chunks
                         checkpoint="run.npz", progress=True)  # committed: a rerun resumes
    profiles = prob.profile(ms, progress=True)         # {name: Profile}, with verdicts
    print(prob.summary(ms, profiles))                  # best NLL, found N times, exits, ...
    prob.plots(ms, profiles, folder="run/")            # waterfall, parameters, profiles
    ms.save("run/results.npz", info=prob.describe())   # fitfleet.MultiStartResult.load

The same path from the shell: ``python -m fitfleet.petab problem.yaml --starts 200
--out run/`` (``--help``; ``_cli``).

The tables are read by ``petab``, the SBML model by ``python-libsbml`` and ``sbmlmath``
into sympy (``_sbml``), the PEtab parameter mapping becomes index arrays (``_tables``),
sympy becomes JAX by ``sympy.lambdify`` (``_codegen``), and ``load`` (``_load``) puts
them together into a ``Problem`` (``_problem``: its methods and the defaults of its
fits).  diffrax solves the ODEs (``_model``, whose docstring has the likelihood and its
sum-of-squares form) with the Rosenbrock method ``Rodas5P`` (``_rosenbrock``) at
tolerances set by pilot solves (``_tolerances``); each fit's end is checked against a
finer solve (``_verify``).  Profiles (``_profiles``), checkpoints (``_checkpoint``) and
the report (``_output``) build on fitfleet's own ``profile``, ``fit_batch``,
``MultiStartResult`` and ``plot``.

Needs the ``petab`` extra: ``pip install fitfleet[petab]``.  Float64 is strongly
advised (``jax.config.update("jax_enable_x64", True)``): stiff ODE solves at tight
tolerances need it; fitfleet does not switch it on for you.
"""

from ._load import load
from ._problem import Problem
from ._rosenbrock import Rodas5P

__all__ = ["Problem", "Rodas5P", "load"]
