"""fit_batch on a 2-core CPU: a batch's parts one after the other, or at once.

On the CPU path a batch runs as one part per core (``fitfleet._engine.host``), unless a
program makes a batched LAPACK call that jaxlib may split over XLA's thread pool
(``_xla.lapack_split_ratio``): then the parts run one after the other.  Two changes let
PEtab problems run both parts at once: trf's step for more than eight parameters takes
a written-out Jacobi SVD (``_linalg.svd_jacobi``, up to 32 parameters) instead of
LAPACK's; and the engine narrows its blocks where that keeps a step's LAPACK calls (an
implicit ODE solver's LU and sensitivity solves) below the work jaxlib splits
(``host.NARROWING``).  This script measures what they buy: the same multi-start run
as before (the blocks as laid out, the parts one after the other) and now, each
compiled by a first call, then alternating.

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

NARROWEST = host.NARROWEST

ROOT = Path(__file__).resolve().parents[1]


def run(prob, x0):
    clock = time.perf_counter()
    res = ff.fit_batch(prob.fun, x0, prob.args, shared_args=True, **prob._options({}))
    return time.perf_counter() - clock, int(np.sum(np.asarray(res.n_steps))), np.asarray(res.cost)


def compiled(prob, x0, before):
    """The engine's programs for this multi-start, as before (blocks as laid out, parts
    one after the other: the LAPACK SVD made every n > 8 trf step split) or now; and the
    first call's time (it compiles)."""
    ff.clear_caches()
    host.NARROWEST = 10**9 if before else NARROWEST
    first = run(prob, x0)[0]
    host.NARROWEST = NARROWEST
    (programs,) = host._EXECUTABLES.values()
    if before:
        programs["serial"] = True
    return dict(host._EXECUTABLES), programs["round"].blocks[0], programs["serial"], first


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", nargs="+", default=["Boehm_JProteomeRes2014", "Rahman_MBS2016", "Bruno_JExpBot2016"])
    parser.add_argument("--starts", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = []
    for name in args.problems:
        prob = ff.petab.load(ROOT / "tests" / "data" / "petab" / name)
        x0 = prob.sample_starts(args.starts, jax.random.key(1))
        engines = {before: compiled(prob, x0, before) for before in (True, False)}
        expected = {}
        times = {True: [], False: []}
        for _ in range(args.repeats):
            for before in (True, False):
                host._EXECUTABLES.clear()
                host._EXECUTABLES.update(engines[before][0])
                wall, steps, cost = run(prob, x0)
                np.testing.assert_array_equal(cost, expected.setdefault(before, cost))  # the same programs, the same fits
                times[before].append(wall)
                print(name, "before" if before else "now", f"{wall:.1f} s", steps, "steps", flush=True)
        one, both = statistics.median(times[True]), statistics.median(times[False])
        differ = float(np.max(np.abs(expected[True] - expected[False]) / np.abs(expected[True])))
        (_, block, _, first_before), (_, narrowed, serial, first_now) = engines[True], engines[False]
        now = f"{narrowed} fits, parts {'one after the other' if serial else 'at once'}"
        rows.append(f"| {name} | {len(prob.names)} | {args.starts} | {steps} | {block} fits, one after the other | {one:.1f} | {now} | {both:.1f} | {one / both:.2f} | {first_before:.0f} / {first_now:.0f} | {differ:.0e} |")
    lines = [
        "# fit_batch's parts on a 2-core CPU: one after the other, or at once",
        "",
        f"Command: `python benchmarks/parts.py --problems {' '.join(args.problems)} --starts {args.starts} --repeats {args.repeats}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores; jax {jax.__version__}; {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; load average at start {load:.1f}.",
        "",
        (
            "The PEtab problem's multi-start (its defaults: trf, bounds, forward-mode Jacobians) from the same starts, "
            "run as before (blocks as laid out, the batch's two parts one after the other, as a LAPACK SVD in trf's step "
            "forced for more than eight parameters) and now (the written-out Jacobi SVD; blocks narrowed where a step's "
            f"LAPACK calls would split), alternating; median of {args.repeats} runs each, after a first call each that "
            "compiles the programs (its time, compilation included, shown apart; the before variant's comes first "
            "in the process and also pays for what JAX compiles once, so compare the run times)."
        ),
        "",
        "| problem | parameters | starts | steps (all starts) | before: blocks | s | now: blocks | s | speed-up | first call before / now, s | costs differ by (relative) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    out = ROOT / "benchmarks" / "results" / "parts.md"
    out.write_text("\n".join(lines))
    print(out.read_text())


if __name__ == "__main__":
    main()
