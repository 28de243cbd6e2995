"""The reference tool chain for ``benchmarks/petab.py``: pyPESTO + AMICI + Fides on one
PEtab problem from a given start matrix, run in its OWN virtual environment (not
fitfleet's), writing JSON.

Set-up (once; AMICI compiles its C++ library during the install, about 2–5 minutes on
2 cores; ``swig`` comes from PyPI into the venv, which is why the venv is activated)::

    sudo apt-get install libhdf5-dev        # or your system's HDF5 development package
    python3 -m venv /path/to/refvenv
    . /path/to/refvenv/bin/activate
    pip install amici==1.0.1 pypesto==0.7.0 fides==0.8.0 petab==0.8.2

AMICI must find HDF5 when it is built: pyPESTO's MultiProcessEngine pickles the
objective, which stores AMICI's solver settings as HDF5; an AMICI built without it fails
every start with "Pickling the AmiciObjective requires an AMICI installation with HDF5
support" (then ``pip install --force-reinstall --no-deps --no-cache-dir amici==1.0.1``
after installing HDF5).

Then ``benchmarks/petab.py --reference-python /path/to/refvenv/bin/python`` calls this
script once per problem.  By hand::

    /path/to/refvenv/bin/python benchmarks/petab_reference.py \\
        --problem tests/data/petab/Boehm_JProteomeRes2014 --starts starts.npz --out ref.json

``--starts``: an ``.npz`` with ``starts`` (n, d) on the estimation scale and ``names``
(d,) the parameter ids of its columns; the columns are mapped to pyPESTO's parameter
order by id, never by position.  The script puts its interpreter's folder first on
``PATH`` (AMICI's model build calls ``swig``), compiles the model into a fresh temporary
folder (so the compile time is measured every run) and runs, on
``pypesto.engine.MultiProcessEngine(n_procs=--procs)``:

* ``fides``: ``pypesto.optimize.FidesOptimizer()`` with pyPESTO's defaults (hybrid
  FIM → BFGS Hessian, AMICI forward sensitivities);
* ``ls_trf``: ``pypesto.optimize.ScipyOptimizer(method="ls_trf")`` (scipy's
  ``least_squares(method="trf")``, pyPESTO's defaults) on AMICI's residuals with
  ``set_add_sigma_residuals(True)``: one extra residual per data point carries the
  ``log σ`` term, so parameter-dependent noise is fitted as the likelihood says.

AMICI's solver keeps pyPESTO's defaults (CVODES BDF, rtol 1e-8, atol 1e-16).  Each
start's final NLL is re-evaluated at its end point with the plain (Fides) objective, so
both optimizers report the same objective, pyPESTO's full negative log-likelihood.
Per start the JSON holds the NLL, pyPESTO's ``fval``, evaluation counts, exit flag and
message and the optimizer's own wall time; per optimizer the multi-start's wall time
(process pool, pickling and all); per problem the import and compile times and the NLL
at the nominal parameters (the sanity check against tests/data/petab/README.md).
"""

import argparse
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# This file's folder holds petab.py, which would shadow the `petab` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one process per core: no nested BLAS threads

_t0 = time.perf_counter()
import numpy as np
import petab.v1 as petab
import pypesto
import pypesto.optimize
import pypesto.petab
from pypesto.petab.objective_creator import AmiciObjectiveCreator

IMPORT_S = time.perf_counter() - _t0


class SigmaResidualsCreator(AmiciObjectiveCreator):
    """pyPESTO's objective builder, whose models add the σ residuals: workers rebuild
    the model from the builder when the objective is unpickled, so a setting made on
    the parent's model alone would be lost there."""

    def _create_model(self):
        model = super()._create_model()
        model.set_add_sigma_residuals(True)
        return model


def starts_digest(starts):
    """The start matrix's identity (its columns in the caller's order), to check a
    reused reference JSON belongs to the same starts."""
    return hashlib.sha256(np.ascontiguousarray(np.round(np.asarray(starts, np.float64), 12)).tobytes()).hexdigest()[:16]


def full(problem, xs):
    """Starts (n, dim) as pyPESTO's full vectors (the fixed parameters filled in)."""
    return np.stack([problem.get_full_vector(x, problem.x_fixed_vals) for x in xs])


def yaml_of(path):
    if os.path.isdir(path):
        yamls = sorted(f for f in os.listdir(path) if f.endswith((".yaml", ".yml")))
        if len(yamls) != 1:
            raise SystemExit(f"--problem {path!r}: expected one yaml file in the folder, found {yamls}")
        return os.path.join(path, yamls[0])
    return path


def run_optimizer(problem, optimizer, n_procs, nll):
    n = problem.x_guesses.shape[0]
    engine = pypesto.engine.MultiProcessEngine(n_procs=n_procs) if n_procs > 1 else pypesto.engine.SingleCoreEngine()
    t = time.perf_counter()
    result = pypesto.optimize.minimize(problem, optimizer, n_starts=n, ids=[str(i) for i in range(n)], engine=engine, progress_bar=False)
    wall = time.perf_counter() - t
    records = [None] * n
    for r in result.optimize_result.list:
        x = np.asarray(r.x)[problem.x_free_indices] if r.x is not None and len(r.x) == problem.dim_full else r.x
        value = float(nll(x)) if x is not None and np.all(np.isfinite(x)) else float("nan")
        records[int(r.id)] = {
            "nll": value if np.isfinite(value) else None,
            "fval": float(r.fval) if r.fval is not None and np.isfinite(r.fval) else None,
            "n_fval": r.n_fval, "n_grad": r.n_grad, "n_res": r.n_res, "n_sres": r.n_sres,
            "exitflag": None if r.exitflag is None else int(r.exitflag), "message": str(r.message),
            "time_s": float(r.time) if r.time is not None else None,
            "x": None if x is None else [round(float(v), 6) for v in x],  # estimation scale
        }  # fmt: skip
    return {"wall_s": wall, "starts": records}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", required=True, help="the PEtab yaml, or its folder")
    parser.add_argument("--starts", required=True, help=".npz with `starts` (n, d) and `names` (d,)")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--optimizers", default="fides,ls_trf", help="comma-separated: fides, ls_trf")
    parser.add_argument("--procs", type=int, default=2, help="processes of pyPESTO's MultiProcessEngine")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # AMICI's importer logs at DEBUG whatever the levels say, and pyPESTO logs a traceback
    # per failed start (a start where the model cannot be simulated): the JSON keeps
    # every start's message instead.
    logging.disable(logging.ERROR)

    saved = np.load(args.starts, allow_pickle=False)
    starts, names = np.asarray(saved["starts"], np.float64), [str(s) for s in saved["names"]]
    petab_problem = petab.Problem.from_yaml(yaml_of(args.problem))
    problem_id = os.path.basename(os.path.dirname(os.path.abspath(yaml_of(args.problem))))
    with tempfile.TemporaryDirectory(prefix="petab_reference_") as folder:
        t = time.perf_counter()
        importer = pypesto.petab.PetabImporter(petab_problem, output_folder=os.path.join(folder, "model"), model_name=f"ref_{problem_id}")
        problem = importer.create_problem(verbose=False)
        compile_s = time.perf_counter() - t
        free = [problem.x_names[i] for i in problem.x_free_indices]
        if sorted(free) != sorted(names):
            raise SystemExit(f"parameter ids differ: pyPESTO estimates {free}, the starts have {names}")
        xs = starts[:, [names.index(p) for p in free]]  # by id, into pyPESTO's order
        lb, ub = np.asarray(problem.lb, float), np.asarray(problem.ub, float)
        clipped = float(np.max(np.abs(np.clip(xs, lb, ub) - xs), initial=0.0))
        if clipped > 1e-9:
            raise SystemExit(f"starts lie outside pyPESTO's bounds by up to {clipped:g}")
        xs = np.clip(xs, lb, ub)
        problem.set_x_guesses(full(problem, xs))
        nominal = np.asarray(petab_problem.x_nominal_free_scaled, float)
        fides_objective = problem.objective
        nll = lambda x: fides_objective(np.asarray(x, float))

        out = {
            "problem": problem_id, "names": free, "starts_digest": starts_digest(starts), "n_starts": len(xs),
            "lower": lb.tolist(), "upper": ub.tolist(), "import_s": IMPORT_S, "compile_s": compile_s,
            "nll_nominal": float(nll(nominal)), "procs": args.procs,
            "versions": {m: importlib.metadata.version(m) for m in ("amici", "pypesto", "fides", "petab", "numpy", "scipy")},
            "python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
            "optimizers": {},
        }  # fmt: skip
        print(f"{problem_id}: compile {compile_s:.1f} s, NLL at nominal {out['nll_nominal']:.7f}", flush=True)
        for which in args.optimizers.split(","):
            if which == "fides":
                spec, run_problem = "FidesOptimizer() (pyPESTO defaults)", problem
            elif which == "ls_trf":
                creator = importer.create_objective_creator()
                creator.__class__ = SigmaResidualsCreator
                run_problem = importer.create_problem(objective=creator.create_objective(verbose=False))
                run_problem.set_x_guesses(full(problem, xs))
                spec = "ScipyOptimizer(method='ls_trf') (pyPESTO defaults), AMICI residuals + sigma residuals"
            else:
                raise SystemExit(f"--optimizers: unknown {which!r}; use fides, ls_trf")
            optimizer = pypesto.optimize.FidesOptimizer(verbose=logging.ERROR) if which == "fides" else pypesto.optimize.ScipyOptimizer(method="ls_trf")
            entry = run_optimizer(run_problem, optimizer, args.procs, nll)
            entry["optimizer"] = spec
            out["optimizers"][which] = entry
            values = [s["nll"] for s in entry["starts"] if s["nll"] is not None]
            print(f"  {which}: {len(xs)} starts in {entry['wall_s']:.1f} s, best {min(values, default=float('nan')):.7f}", flush=True)
    out["load_average_end"] = os.getloadavg()  # the start's is the caller's to record
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
