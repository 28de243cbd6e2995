"""PEtab problems with several simulation conditions: solved one after another or side by
side (``fitfleet.petab.load(..., conditions=...)``), in one process on the same starts.

    python benchmarks/petab_conditions.py [--starts 16] [--repeats 3] [--problems Bruno_JExpBot2016]

Writes benchmarks/results/petab_conditions.md.  Per problem and setting: the first call
(compilation and the run), the median of ``--repeats`` further calls (the runs
alternating between the settings, so that load on a shared machine hits both alike),
the steps of all starts, and how many starts end within 1.92 of the best NLL any start
reached.  Also the lane count behind it: each condition's ODE steps at every start, the
work side by side (conditions × the slowest condition's steps) against one after another
(the sum).  By default every problem in tests/data/petab with more than one condition.
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

import fitfleet as ff  # noqa: E402
import fitfleet.petab  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "petab"
SETTINGS = ("parallel", "sequential")


def ode_steps(prob, x):
    """(starts, conditions): each condition's accepted ODE steps at each start."""
    m = prob.model

    def one(theta, y0, ts):
        s = m.settings
        controller = diffrax.PIDController(rtol=m.rtol, atol=m.rtol * m.state_scales, pcoeff=0.3, icoeff=0.3)
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(m._vector_field), s.solver, t0=0.0, t1=ts[-1], dt0=None, y0=y0, args=theta,
            saveat=diffrax.SaveAt(ts=ts), stepsize_controller=controller, max_steps=s.max_steps, throw=False,
        )  # fmt: skip
        return sol.stats["num_steps"]

    def per_start(x):
        theta, y0, _ = m.initial_states(x)
        return jax.vmap(one)(theta, y0, m.times)

    return np.asarray(jax.jit(jax.vmap(per_start))(x))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--problems", default="")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows, lanes = [], []
    for folder in sorted(DATA.iterdir()) if not args.problems else [DATA / p for p in args.problems.split(",")]:
        if not folder.is_dir():
            continue
        probs = {c: ff.petab.load(folder, conditions=c) for c in SETTINGS}
        if len(probs["parallel"].layout.condition_ids) < 2 and not args.problems:
            continue
        x0 = probs["parallel"].sample_starts(args.starts, jax.random.key(args.seed))
        steps = ode_steps(probs["parallel"], x0)
        lanes.append([folder.name, str(steps.shape[1]), f"{steps.shape[1] * steps.max(axis=1).sum()}", f"{steps.sum()}",
                      f"{steps.sum() / (steps.shape[1] * steps.max(axis=1).sum()):.2f}"])  # fmt: skip
        fit = {c: (lambda p=p: ff.fit_batch(p.fun, x0, p._data(x0), shared_args=True, **p._options({}))) for c, p in probs.items()}
        first, runs, out = {}, {c: [] for c in SETTINGS}, {}
        for c in SETTINGS:
            clock = time.perf_counter()
            out[c] = jax.block_until_ready(fit[c]())
            first[c] = time.perf_counter() - clock
        for _ in range(args.repeats):
            for c in SETTINGS:
                clock = time.perf_counter()
                out[c] = jax.block_until_ready(fit[c]())
                runs[c].append(time.perf_counter() - clock)
        nll = {c: np.asarray(out[c].cost) + probs[c].offset for c in SETTINGS}
        best = min(float(np.min(v)) for v in nll.values())
        base = statistics.median(runs["parallel"])
        for c in SETTINGS:
            run = statistics.median(runs[c])
            rows.append([folder.name, c, f"{first[c]:.1f}", f"{run:.2f}", f"{run / base:.2f}", str(int(np.sum(out[c].n_steps))),
                         str(int(np.sum(nll[c] < best + 1.92)))])  # fmt: skip
            print(rows[-1], flush=True)
    command = "python benchmarks/petab_conditions.py" + "".join(
        f" --{k} {v}" for k, v in (("starts", args.starts), ("repeats", args.repeats), ("seed", args.seed), ("problems", args.problems)) if v != ""
    )
    table = lambda header, body: ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in body]  # noqa: E731
    lines = [
        "# PEtab: several simulation conditions, one after another or side by side",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {jax.default_backend()}; jax {jax.__version__}; "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; load average at start {load:.1f} (shared cores: compare within the table).",
        "",
        f"`{args.starts}` starts (`prob.sample_starts`, seed {args.seed}), `fit_batch` with `prob._options({{}})` (what "
        "`prob.multistart` runs), float64. First call: compilation and the run; run: the median of the later calls, "
        "alternating between the settings. Found: starts within 1.92 of the best NLL either setting reached.",
        "",
        *table(["problem", "setting", "first call (s)", "run (s)", "run ÷ parallel", "steps", "found"], rows),
        "",
        "ODE steps at the starts themselves (adaptive solves without sensitivities): side by side every condition "
        "steps as often as the slowest one; one after another each takes its own.",
        "",
        *table(["problem", "conditions", "side by side: conditions × slowest", "one after another: sum", "useful fraction"], lanes),
        "",
    ]
    out_path = ROOT / "benchmarks" / "results" / "petab_conditions.md"
    out_path.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
