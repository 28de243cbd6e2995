"""The ODE solver of fitfleet.petab: diffrax's Kvaerno5 against fitfleet's Rodas5P, per
PEtab problem, in one process on the same points.

    python benchmarks/petab_solver.py [--points 4] [--repeats 7] [--problems Boehm_JProteomeRes2014]

Writes benchmarks/results/petab_solver.md.  Per problem and solver: the time of one
residual evaluation and of one forward-mode Jacobian (``jax.jacfwd``, what every fit
step costs), compiled, as the median over ``--repeats`` rounds that alternate between
the solvers, summed over the nominal parameters and ``--points - 1`` starts drawn as
``prob.sample_starts`` does; the compile time of the Jacobian; and the accuracy at
the nominal parameters: the NLL's distance from a Kvaerno5 solve at rtol 1e-12, and
the Jacobian's largest column error relative to the column's norm, against the same
solve.  Rows: Kvaerno5 at rtol 1e-8 (the earlier default), Rodas5P at 1e-8, and
Rodas5P at the tolerances ``load``'s rule chooses, ``rtol`` and the state scales
(``fitfleet.petab._tolerances``).
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]  # petab.py here shadows `petab`

import jax

jax.config.update("jax_enable_x64", True)  # a script: its choice

import diffrax  # noqa: E402
import numpy as np  # noqa: E402

import fitfleet.petab as fp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "petab"
PROBLEMS = [p.name for p in sorted(DATA.iterdir()) if (p / f"{p.name}.yaml").is_file()]


def programs(prob):
    def fun(x):
        return prob.fun(x, *prob.args)

    return jax.jit(fun), jax.jit(jax.jacfwd(fun))


def run(names, n_points, repeats):
    rows = []
    for name in names:
        reference = fp.load(DATA / name, solver=diffrax.Kvaerno5(), rtol=1e-12)
        chosen, plain = fp.load(DATA / name), fp.load(DATA / name, rtol=1e-8)
        factor = float(np.max(chosen.state_scales / plain.state_scales))  # the rule's tightening of atol
        rule = f"Rodas5P, rtol {float(chosen.model.rtol):g}" + (f", scales ×{factor:g}" if factor != 1 else "") + " (the rule's)"
        setups = {"Kvaerno5, rtol 1e-8": fp.load(DATA / name, solver=diffrax.Kvaerno5(), rtol=1e-8), "Rodas5P, rtol 1e-8": plain, rule: chosen}
        if float(chosen.model.rtol) == 1e-8 and factor == 1:
            del setups[rule]
        nominal = np.asarray(reference.nominal)
        points = [nominal] + list(np.asarray(reference.sample_starts(n_points - 1, jax.random.key(0))))
        nll_ref = float(reference.nll(nominal))
        jac_ref = np.asarray(programs(reference)[1](nominal))
        compiled, times = {}, {k: ([], []) for k in setups}
        for label, prob in setups.items():
            f, J = programs(prob)
            jax.block_until_ready(f(nominal))
            t = time.perf_counter()
            jax.block_until_ready(J(nominal))
            compiled[label] = time.perf_counter() - t
            for x in points:  # every point once before timing
                jax.block_until_ready(J(x))
            setups[label] = (prob, f, J)
        for _ in range(repeats):
            for label, (prob, f, J) in setups.items():
                for k, fn in enumerate((f, J)):
                    t = time.perf_counter()
                    for x in points:
                        jax.block_until_ready(fn(x))
                    times[label][k].append(time.perf_counter() - t)
        for label, (prob, f, J) in setups.items():
            jac = np.asarray(J(nominal))
            col = np.linalg.norm(jac - jac_ref, axis=0) / np.maximum(np.linalg.norm(jac_ref, axis=0), np.finfo(float).tiny)
            rows.append((name, label, 1e3 * statistics.median(times[label][0]), 1e3 * statistics.median(times[label][1]),
                         compiled[label], abs(float(prob.nll(nominal)) - nll_ref), float(np.max(col))))  # fmt: skip
            print(*rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "petab_solver.md"))
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    rows = run(args.problems.split(","), args.points, args.repeats)
    base = {name: (f, J) for name, label, f, J, *_ in rows if label.startswith("Kvaerno5")}
    lines = [
        "# PEtab ODE solves: diffrax Kvaerno5 against fitfleet's Rodas5P",
        "",
        f"Command: `python benchmarks/petab_solver.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {jax.default_backend()}; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; load average at start {load_start:.2f}, "
        f"at end {os.getloadavg()[0]:.2f}.  ",
        f"Versions: jax {jax.__version__}, diffrax {diffrax.__version__}, numpy {np.__version__}.",
        "",
        f"Times: one evaluation at each of {args.points} points (the nominal parameters and starts drawn as "
        "`prob.sample_starts` does), summed, compiled; the median of "
        f"{args.repeats} rounds alternating between the rows.  Accuracy at the nominal parameters against "
        "Kvaerno5 at rtol 1e-12 (the Jacobian: the largest column error over the column's norm).  See the "
        "script's docstring.",
        "",
        "| problem | solver | residual ms | Jacobian ms | Jacobian ÷ Kvaerno5's | compile s (Jacobian) | NLL error | Jacobian error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, label, f, J, c, e_nll, e_jac in rows:
        lines.append(f"| {name} | {label} | {f:.2f} | {J:.2f} | {J / base[name][1]:.2f} | {c:.1f} | {e_nll:.1e} | {e_jac:.1e} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
