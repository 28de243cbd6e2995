"""The PEtab importer on the six benchmark problems of tests/data/petab: accuracy against
the reference tool chain (AMICI 1.0.1 via pyPESTO 0.7.0), compile and run times of a
simulation and of its Jacobian, and the fit from the nominal parameters.

    python benchmarks/petab_import.py              # all six (about 10 minutes on 2 cores)
    python benchmarks/petab_import.py --only Boehm_JProteomeRes2014,Rahman_MBS2016

Writes ``benchmarks/results/petab_import.md``.  Timings are medians of repeated calls;
"compile" is the first call (tracing + XLA compilation + one run) minus the median run.
The batched Jacobian evaluates 32 random starts (uniform on the estimation scale) in one
vmapped program, the form the multi-start uses; its time is per start.  AMICI's figures
for Boehm (issue 20, same kind of machine, one core): 0.7 ms per simulation, 7.2 ms with
forward sensitivities, 19 s to compile the model.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

jax.config.update("jax_enable_x64", True)  # a script, not the library
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]  # petab.py here shadows `petab`

import fitfleet.petab as fp  # noqa: E402
from fitfleet import _xla  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "petab"
_REFERENCE = json.loads((DATA / "reference_values.json").read_text())  # tests/data/petab/README.md
AMICI_NLL, BEST_NLL = _REFERENCE["amici_nominal"], _REFERENCE["best_known"]
BATCH = 32


def timed(f, *args, repeats=7):
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    first = time.perf_counter() - t
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        runs.append(time.perf_counter() - t)
    run = statistics.median(runs)
    return max(first - run, 0.0), run


def max_relative_error(prob, name):
    sim = prob.simulate(prob.nominal)
    ref = pd.read_csv(DATA / name / f"amiciSimulation_{name}.tsv", sep="\t")
    keys = [k for k in ("observableId", "simulationConditionId", "time", "replicateId", "datasetId", "noiseParameters") if k in ref]
    a = sim.sort_values(keys, kind="stable").reset_index(drop=True).simulation.to_numpy()
    b = ref.sort_values(keys, kind="stable").reset_index(drop=True).simulation.to_numpy()
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def run(name):
    t = time.perf_counter()
    prob = fp.load(DATA / name)
    load = time.perf_counter() - t
    x = jnp.asarray(prob.nominal)
    y = prob._data(x)  # the measurements and the ODE tolerances
    residual = _xla.filter_jit(prob.fun)
    jacobian = _xla.filter_jit(jax.jacfwd(prob.fun))
    batched = _xla.filter_jit(jax.vmap(jax.jacfwd(prob.fun), in_axes=(0, *[None] * len(y))))
    starts = jnp.asarray(prob.sample_starts(BATCH, jax.random.key(0)))
    compile_r, run_r = timed(residual, x, *y)
    compile_j, run_j = timed(jacobian, x, *y)
    compile_b, run_b = timed(batched, starts, *y, repeats=3)
    finite = int(np.sum(np.all(np.isfinite(np.asarray(batched(starts, *y))), axis=(1, 2))))
    nll = float(prob.nll(x))
    t = time.perf_counter()
    res = prob.fit(x)
    fit_first = time.perf_counter() - t
    t = time.perf_counter()
    res = prob.fit(x)
    fit_run = time.perf_counter() - t
    fit_nll = float(res.cost) + prob.offset
    row = {
        "problem": name,
        "states": len(prob.ode.states),
        "conditions": len(prob.layout.condition_ids),
        "load s": f"{load:.2f}",
        "max rel. error vs AMICI": f"{max_relative_error(prob, name):.1e}",
        "NLL(nominal) − AMICI": f"{nll - AMICI_NLL[name]:+.1e}",
        "compile: residual / Jacobian / batch s": f"{compile_r:.1f} / {compile_j:.1f} / {compile_b:.1f}",
        "residual ms": f"{1e3 * run_r:.2f}",
        "Jacobian ms": f"{1e3 * run_j:.2f}",
        f"Jacobian ×{BATCH} starts, ms per start (finite)": f"{1e3 * run_b / BATCH:.2f} ({finite})",
        "fit from nominal: s first / again, steps": f"{fit_first:.1f} / {fit_run:.2f}, {int(res.n_steps)}",
        "fit NLL − best known": f"{fit_nll - BEST_NLL[name]:+.1e} ({res.message.split(':')[0]})",
    }
    print(row, flush=True)
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    names = [n for n in AMICI_NLL if not args.only or n in args.only.split(",")]
    load_avg = os.getloadavg()[0]
    rows = [run(n) for n in names]
    table = pd.DataFrame(rows)
    header = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in r) + " |\n" for r in table.itertuples(index=False))
    out = ROOT / "benchmarks" / "results" / "petab_import.md"
    out.write_text(
        "# fitfleet.petab: the six benchmark problems\n\n"
        f"Command: `python benchmarks/petab_import.py{' --only ' + args.only if args.only else ''}`  \n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores; jax {jax.__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.  \n"
        f"Load average at start: {load_avg:.1f} (other processes share the cores: times are upper bounds).\n\n"
        "Solver: diffrax Kvaerno5, rtol 1e-8, per-state atol (``fitfleet.petab._tolerances``), "
        "ForwardMode; Jacobians by `jax.jacfwd`; fit: `prob.fit(prob.nominal)` (Levenberg-Marquardt, "
        "fitfleet defaults).  Errors against AMICI: Crauste's AMICI table is itself 1.4% off after "
        "day 8 (tests/data/petab/README.md).\n\n" + header + body
    )
    print(out.read_text())


if __name__ == "__main__":
    sys.exit(main())
