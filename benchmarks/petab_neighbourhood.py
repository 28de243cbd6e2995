"""Is there a lower optimum near the best one fitfleet finds?  Restarts around it.

    python benchmarks/petab_neighbourhood.py Crauste_CellSystems2017 --out benchmarks/results/petab_crauste_neighbourhood.md

A multi-start that never reaches a problem's best known NLL leaves two explanations:
the lower basin is rare among uniform starts, or it is not there (the best known value
came from another version of the problem or from a simulation error).  This script
looks where a lower basin would most likely be, next to the best fit: it fits from the
nominal parameters, then from ``--n`` points drawn around that fit, for each ``--sigmas``
(Gaussian on the estimation scale, clipped to the bounds), by ``fit_batch`` with
``prob.multistart``'s options (``Problem._options``: trf, pyPESTO's stopping test), in
float64.  It reports the lowest NLL and how many restarts ended below the fit from the
nominal parameters (by more than 1e-3), within 1e-3 of it, or within the success
threshold (1.92) of the best known NLL.
"""

import argparse
import datetime
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

# This file's folder holds petab.py, which would shadow the `petab` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)  # a script, not the library

import fitfleet as ff
import fitfleet.petab as fp

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "petab"
_spec = importlib.util.spec_from_file_location("petab_benchmark", Path(__file__).with_name("petab.py"))
petab_benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(petab_benchmark)  # its machine() description
BEST_KNOWN = json.loads((DATA / "reference_values.json").read_text())["best_known"]
THRESHOLD = 1.92  # χ²₁(0.95)/2


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("problem", help="a folder of tests/data/petab")
    parser.add_argument("--sigmas", default="0.3,1.0", help="comma-separated spreads, in estimation-scale units")
    parser.add_argument("--n", type=int, default=250, help="restarts per spread")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    prob = fp.load(DATA / args.problem)
    options = prob._options({})
    nominal_fit = prob.fit(prob.nominal)
    centre = np.asarray(nominal_fit.params)
    reference = float(nominal_fit.cost) + prob.offset
    best_known = BEST_KNOWN.get(args.problem)
    rng = np.random.default_rng(args.seed)
    rows = []
    for sigma in (float(s) for s in args.sigmas.split(",")):
        x0 = np.clip(centre + sigma * rng.standard_normal((args.n, centre.size)), prob.lower, prob.upper)
        t = time.perf_counter()
        res = ff.fit_batch(prob.fun, jnp.asarray(x0), prob.args, shared_args=True, **options)
        nll = np.asarray(res.cost) + prob.offset
        wall = time.perf_counter() - t
        finite = np.isfinite(nll)
        lowest = int(np.nanargmin(np.where(finite, nll, np.inf)))
        rows.append({
            "sigma": sigma, "wall": wall, "lowest": float(nll[lowest]), "x": np.asarray(res.params)[lowest],
            "below": int(np.sum(finite & (nll < reference - 1e-3))), "same": int(np.sum(finite & (np.abs(nll - reference) <= 1e-3))),
            "success": None if best_known is None else int(np.sum(finite & (nll <= best_known + THRESHOLD))),
            "nonfinite": int(np.sum(~finite)),
        })  # fmt: skip
        print(f"σ={sigma}: lowest {rows[-1]['lowest']:.7f} ({wall:.0f} s)", flush=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip() or "?"
    lines = [
        f"# Restarts around the best fit: {args.problem}",
        "",
        f"Command: `python benchmarks/petab_neighbourhood.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {petab_benchmark.machine()}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"fitfleet {commit}, jax {jax.__version__}, float64.  ",
        f"Fit from the nominal parameters: NLL {reference:.7f} ({ff.Status(int(nominal_fit.status)).name.lower()}, {int(nominal_fit.n_steps)} steps); "
        f"best known {best_known if best_known is not None else '?'}.  ",
        f"Restarts: {args.n} per spread σ, Gaussian around that fit on the estimation scale, clipped to the bounds (seed {args.seed}); "
        "fitted with `prob.multistart`'s options.",
        "",
        "| σ | restarts | lowest NLL | lowest − fit from nominal | below it (by > 1e-3) | within 1e-3 of it | within 1.92 of the best known | non-finite | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sigma']:g} | {args.n} | {r['lowest']:.7f} | {r['lowest'] - reference:+.2e} | {r['below']} | {r['same']} | "
            f"{'?' if r['success'] is None else r['success']} | {r['nonfinite']} | {r['wall']:.0f} |"
        )
    lines += ["", "Lowest point per σ (estimation scale):", ""]
    lines += [f"- σ = {r['sigma']:g}: " + ", ".join(f"{n} {v:.3f}" for n, v in zip(prob.names, r["x"])) for r in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
