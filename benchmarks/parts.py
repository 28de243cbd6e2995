"""fit_batch on a 2-core CPU: a batch's parts one after the other, or at once.

On the CPU path a batch runs as one part per core (``fitfleet._engine.host``), unless a
program makes a batched LAPACK call that jaxlib may split over XLA's thread pool
(``_xla.lapack_may_split``): then the parts run one after the other.  trf's step for
more than eight parameters used to take LAPACK's SVD; it now takes a written-out
Jacobi SVD (``_linalg.svd_jacobi``) up to ``JACOBI_MAX`` parameters, so PEtab
problems of 9-32 parameters run both parts at once.  This script measures what that
buys: the same multi-start, with the same compiled programs, run with the parts one
after the other (as before) and at once, alternating, after a first call that compiles.

    python benchmarks/parts.py [--problems Boehm_JProteomeRes2014 ...] [--starts 16] [--repeats 2]

Writes benchmarks/results/parts.md.
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

import numpy as np  # noqa: E402

import fitfleet as ff  # noqa: E402
import fitfleet.petab  # noqa: E402
from fitfleet._engine import host  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(prob, x0, serial):
    for programs in host._EXECUTABLES.values():  # the same executables, run either way
        programs["serial"] = serial
    clock = time.perf_counter()
    res = ff.fit_batch(prob.fun, x0, prob.args, shared_args=True, **prob._options({}))
    return time.perf_counter() - clock, int(np.sum(np.asarray(res.n_steps))), np.asarray(res.cost)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", nargs="+", default=["Boehm_JProteomeRes2014", "Rahman_MBS2016"])
    parser.add_argument("--starts", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = []
    for name in args.problems:
        prob = ff.petab.load(ROOT / "tests" / "data" / "petab" / name)
        x0 = prob.sample_starts(args.starts, jax.random.key(1))
        ff.clear_caches()
        first = run(prob, x0, False)[0]  # compiles (and runs) the programs
        expected = None
        times = {True: [], False: []}
        for _ in range(args.repeats):
            for serial in (True, False):
                wall, steps, cost = run(prob, x0, serial)
                expected = cost if expected is None else expected
                np.testing.assert_array_equal(cost, expected)  # the same fits either way
                times[serial].append(wall)
                print(name, "one after the other" if serial else "at once", f"{wall:.1f} s", steps, "steps", flush=True)
        one, both = statistics.median(times[True]), statistics.median(times[False])
        rows.append(f"| {name} | {len(prob.names)} | {args.starts} | {steps} | {one:.1f} | {both:.1f} | {one / both:.2f} | {first:.0f} |")
    lines = [
        "# fit_batch's parts on a 2-core CPU: one after the other, or at once",
        "",
        f"Command: `python benchmarks/parts.py --problems {' '.join(args.problems)} --starts {args.starts} --repeats {args.repeats}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores; jax {jax.__version__}; {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; load average at start {load:.1f}.",
        "",
        (
            "The PEtab problem's multi-start (its defaults: trf, bounds, forward-mode Jacobians) from the same starts, "
            "with the same compiled programs, run with the batch's two parts one after the other (what a LAPACK SVD "
            "in trf's step forced for more than eight parameters) and at once (the written-out Jacobi SVD), alternating; "
            f"median of {args.repeats} runs each, after a first call that compiles the programs (its time, compilation included, shown apart)."
        ),
        "",
        "| problem | parameters | starts | steps (all starts) | one after the other, s | at once, s | speed-up | first call (compiles), s |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    out = ROOT / "benchmarks" / "results" / "parts.md"
    out.write_text("\n".join(lines))
    print(out.read_text())


if __name__ == "__main__":
    main()
