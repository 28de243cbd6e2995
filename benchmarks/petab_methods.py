"""Which fitfleet method for PEtab problems: the same multi-start of Boehm et al. (2014)
with trust-region reflective and Levenberg-Marquardt (MINPACK's running-maximum scaling,
and a fixed x_scale = 1 on the log10 estimation scale), side by side in one process.

    python benchmarks/petab_methods.py [--starts 16] [--seed 1]

Writes benchmarks/results/petab_methods.md: per method the wall time of the batch
(compilation included: the programs differ per method), the NLL each start ended at
(sorted), its steps and exit status.  A start "ends at a local optimum" when its NLL is
within 0.01 of one that trf or lm-x_scale-1 also reached with an FTOL/GTOL stop, a
crude but telling check: the MINPACK scaling's premature stops end elsewhere.
"""

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]  # petab.py here shadows `petab`

import jax

jax.config.update("jax_enable_x64", True)  # a script: its choice

import numpy as np  # noqa: E402

import fitfleet as ff  # noqa: E402
import fitfleet.petab  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"trf": dict(method="trf"), "lm, x_scale=1": dict(method="lm", x_scale=1.0), "lm, MINPACK scaling": dict(method="lm")}
BEST = 138.2219682


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    prob = ff.petab.load(ROOT / "tests" / "data" / "petab" / "Boehm_JProteomeRes2014")
    x0 = prob.sample_starts(args.starts, jax.random.key(args.seed))
    rows = {}
    for name, options in METHODS.items():
        clock = time.perf_counter()
        res = ff.fit_batch(prob.fun, x0, prob.args, shared_args=True, bounds=(prob.lower, prob.upper), jac="fwd", **options)
        nll = np.asarray(res.cost) + prob.offset
        rows[name] = (time.perf_counter() - clock, nll, np.asarray(res.n_steps), np.asarray(res.status))
        print(name, f"{rows[name][0]:.0f} s", np.round(np.sort(nll), 3).tolist(), flush=True)
    converged = [n for name in ("trf", "lm, x_scale=1") for n, s in zip(rows[name][1], rows[name][3]) if ff.Status(int(s)).name in ("FTOL", "GTOL")]
    lines = [
        "# PEtab: which method (Boehm_JProteomeRes2014, one multi-start, three methods)",
        "",
        f"Command: `python benchmarks/petab_methods.py --starts {args.starts} --seed {args.seed}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores; jax {jax.__version__}; {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
        f"load average at start {load:.1f} (shared cores: times are upper bounds, compare within the table).",
        "",
        f"{args.starts} starts uniform on the log10 scale within the bounds (`prob.sample_starts`, key {args.seed}); "
        f"`fit_batch` with the PEtab bounds and forward-mode Jacobians, defaults otherwise; a success ends within 1.92 of {BEST}.",
        "",
        "| method | wall s (with compile) | successes | ends at a local optimum | MAX_STEPS | steps (median / max) |",
        "|---|---|---|---|---|---|",
    ]
    for name, (wall, nll, steps, status) in rows.items():
        names = [ff.Status(int(s)).name for s in status]
        at_optimum = sum(any(abs(n - c) < 0.01 for c in converged) for n in nll)
        lines.append(f"| {name} | {wall:.0f} | {int(np.sum(nll < BEST + 1.92))} | {at_optimum} | {names.count('MAX_STEPS')} | {int(np.median(steps))} / {int(steps.max())} |")
    lines += ["", "End points (NLL, sorted) and exit status per start:", ""]
    for name, (wall, nll, steps, status) in rows.items():
        order = np.argsort(nll)
        lines.append(f"- {name}: " + ", ".join(f"{nll[i]:.3f} ({ff.Status(int(status[i])).name.lower()}, {int(steps[i])})" for i in order))
    out = ROOT / "benchmarks" / "results" / "petab_methods.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
