"""Robustness on the Moré–Garbow–Hillstrom least-squares test set, float64.

Every problem of ``tests/mgh.py`` (the 35 sum-of-squares problems of MGH 1981, some at
several sizes) from the standard start x0 and the harder 10·x0 and 100·x0, fitted by
fitfleet's LM, GN and TRF and by scipy's ``least_squares`` with ``method="lm"`` (MINPACK)
and ``"trf"``, each at default tolerances and at ftol = xtol = gtol = 1e-12.  "best of
fitfleet" counts a run as reached when any of fitfleet's methods (default tolerances)
reached the best cost. scipy gets
the exact Jacobian (``jax.jacfwd``, jitted once per problem, called through numpy).

A run *reaches the best cost* when its final cost c (½‖r‖², every method reports the
same quantity) satisfies c <= best·(1 + 1e-6), best being the lowest cost any run found
for that (problem, start), or when c <= min(1e-20·max(1, cost at the start), 1e-12) (a
zero-residual problem solved to round-off; the cap keeps starts whose cost is 1e30 and
more from calling 1e10 zero). fitfleet "worse" than scipy means a cost higher by more
than that margin.

    python benchmarks/mgh.py            # writes benchmarks/results/mgh.md
"""

import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # a benchmark script is a user: its choice

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
from scipy.optimize import least_squares as scipy_least_squares  # noqa: E402

import fitfleet as ff  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import mgh  # noqa: E402

FACTORS = (1, 10, 100)
TIGHT = 1e-12
REL = 1e-6  # relative margin on the cost
ZERO = 1e-20  # cost <= min(ZERO·max(1, cost at start), ZERO_CAP) counts as zero
ZERO_CAP = 1e-12  # (without the cap a start cost of 1e33 would let 1e13 count as zero)

SCIPY_STATUS = {-1: "improper input", 0: "max_nfev", 1: "gtol", 2: "ftol", 3: "xtol", 4: "ftol+xtol"}


class Run:
    __slots__ = ("cost", "status", "message", "steps", "nfev", "success", "seconds")

    def __init__(self, cost, status, message, steps, nfev, success, seconds):
        self.cost, self.status, self.message = cost, status, message
        self.steps, self.nfev, self.success, self.seconds = steps, nfev, success, seconds


def fitfleet_solver(method, tight):
    options = dict(method=method)
    if tight:
        options.update(ftol=TIGHT, xtol=TIGHT, gtol=TIGHT)

    def solve(prob, x0, compiled):
        t0 = time.perf_counter()
        res = ff.least_squares(prob.fun, jnp.asarray(x0), **options)
        cost = float(res.cost)
        code = ff.Status(int(res.status))
        return Run(cost, code.name.lower(), res.message, int(res.n_steps), int(res.n_fev),
                   bool(code.success), time.perf_counter() - t0)

    return solve


def scipy_solver(method, tight):
    tol = TIGHT if tight else 1e-8

    def solve(prob, x0, compiled):
        f, jac = compiled
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = scipy_least_squares(f, x0, jac=jac, method=method, ftol=tol, xtol=tol, gtol=tol)
        # res.cost is ½‖r‖² at res.x, as fitfleet's
        return Run(float(res.cost), SCIPY_STATUS.get(res.status, str(res.status)), res.message,
                   int(res.njev) if res.njev is not None else -1, int(res.nfev), bool(res.success),
                   time.perf_counter() - t0)

    return solve


SOLVERS = {
    "ff LM": fitfleet_solver("lm", False),
    "ff LM tight": fitfleet_solver("lm", True),
    "ff GN": fitfleet_solver("gn", False),
    "ff GN tight": fitfleet_solver("gn", True),
    "ff TRF": fitfleet_solver("trf", False),
    "ff TRF tight": fitfleet_solver("trf", True),
    "scipy lm": scipy_solver("lm", False),
    "scipy lm tight": scipy_solver("lm", True),
    "scipy trf": scipy_solver("trf", False),
    "scipy trf tight": scipy_solver("trf", True),
}
FITFLEET = ("ff LM", "ff GN", "ff TRF")
SCIPY = ("scipy lm", "scipy trf")


def failed(exc):
    return Run(math.nan, "error", f"{type(exc).__name__}: {exc}", 0, 0, False, 0.0)


def compile_for_scipy(prob):
    f = jax.jit(prob.fun)
    J = jax.jit(jax.jacfwd(prob.fun))
    return (lambda x: np.asarray(f(x)), lambda x: np.asarray(J(x)))


def worse(a, b, zero_tol):
    """Cost a worse than cost b: higher by more than the margin (NaN counts as worse)."""
    if not math.isfinite(a):
        return math.isfinite(b)
    if not math.isfinite(b):
        return False
    return a > b + REL * abs(b) and a > zero_tol


def fmt(c):
    return "nan" if not math.isfinite(c) else f"{c:.6g}"


def source_version():
    """The commit fitfleet ran from, and whether src/ had uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown version"
    return f"commit {head}" + (" with uncommitted changes in src/" if dirty else "")


def main():
    t_start = time.perf_counter()
    rows = []  # (prob, factor, cost0, {solver: Run})
    seconds = {name: 0.0 for name in SOLVERS}
    for prob in mgh.PROBLEMS:
        compiled = compile_for_scipy(prob)
        for factor in FACTORS:
            x0 = prob.start(factor)
            r0 = compiled[0](x0)
            cost0 = 0.5 * float(r0 @ r0)
            runs = {}
            for name, solve in SOLVERS.items():
                try:
                    runs[name] = solve(prob, x0, compiled)
                except Exception as exc:  # a crash scores as a failure and says so
                    print(f"{name} failed on {prob.name} x{factor}: {exc}", file=sys.stderr)
                    runs[name] = failed(exc)
                seconds[name] += runs[name].seconds
            rows.append((prob, factor, cost0, runs))
        print(f"{prob.name:42} done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    names = list(SOLVERS)
    reached = {name: 0 for name in names}
    reached_any = 0  # by the best of fitfleet's methods (default tolerances), per run
    flagged = []  # fitfleet default-tolerance runs worse than a scipy default run
    flagged_tight = []
    table_cost, table_detail = [], []
    for prob, factor, cost0, runs in rows:
        # a start whose cost overflows (Jennrich-Sampson at 100·x0) gets the cap
        zero_tol = min(ZERO * max(1.0, cost0), ZERO_CAP) if math.isfinite(cost0) else ZERO_CAP
        finite = [r.cost for r in runs.values() if math.isfinite(r.cost)]
        best = min(finite) if finite else math.nan
        hit = {}
        for name in names:
            c = runs[name].cost
            hit[name] = math.isfinite(c) and (c <= best + REL * abs(best) or c <= zero_tol)
            reached[name] += hit[name]
        reached_any += any(hit[name] for name in FITFLEET)
        lm_worse = worse(runs["ff LM"].cost, runs["scipy lm"].cost, zero_tol)
        for suffix, sink in (("", flagged), (" tight", flagged_tight)):
            for ffname in FITFLEET:
                ffname += suffix
                against = [sp + suffix for sp in SCIPY if worse(runs[ffname].cost, runs[sp + suffix].cost, zero_tol)]
                if against:
                    sink.append((prob, factor, cost0, ffname, against, runs))
        mark = "⚠ **LM worse than scipy lm**" if lm_worse else ""
        cells = []
        for name in names:
            c = fmt(runs[name].cost)
            cells.append(f"{c} ✓" if hit[name] else f"**{c}** ✗")
        table_cost.append(
            f"| {prob.number} | {prob.name} | {factor} | {fmt(cost0)} | {fmt(best)} | "
            + " | ".join(cells) + f" | {mark} |"
        )
        detail = [f"{runs[n].status} {runs[n].steps}/{runs[n].nfev}" for n in names]
        table_detail.append(f"| {prob.name} | {factor} | " + " | ".join(detail) + " |")

    total = len(rows)
    summary = "; ".join(f"{n} {reached[n]}/{total} = {reached[n] / total:.2f}" for n in names)
    print("\nreached the best cost:", summary, f"; best of fitfleet {reached_any}/{total}")
    for name in names:
        print(f"  {name:16} {reached[name]:4d}/{total} = {reached[name] / total:.3f}   ({seconds[name]:.1f} s)")

    def flag_lines(items):
        out = []
        for prob, factor, cost0, ffname, against, runs in items:
            suffix = " tight" if ffname.endswith("tight") else ""
            ra = runs[ffname]
            out.append(
                f"| {prob.name} | {factor} | {fmt(cost0)} | {ffname} | {fmt(ra.cost)} | "
                + " | ".join(fmt(runs[sp + suffix].cost) for sp in SCIPY)
                + f" | {', '.join(against)} | {ra.message} | {ra.steps} | {ra.nfev} |"
            )
        return out

    flag_header = [
        "| problem | start | cost at start | fitfleet | cost | scipy lm | scipy trf | worse than | "
        "fitfleet status | steps | fev |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    print(f"\nfitfleet (default tolerances) worse than scipy (default): {len(flagged)}")
    for line in flag_lines(flagged):
        print(line)
    print(f"\nfitfleet tight worse than scipy tight: {len(flagged_tight)}")
    for line in flag_lines(flagged_tight):
        print(line)

    wall = time.perf_counter() - t_start
    lines = [
        "# Moré–Garbow–Hillstrom least-squares problems: robustness from x0, 10·x0, 100·x0",
        "",
        "Produced by `python benchmarks/mgh.py` (float64; problems in `tests/mgh.py`, MGH 1981, "
        "at the dimensions listed; start factor 10 and 100 multiply the standard x0, except "
        "Watson's x0 = 0, where they are 10·1 and 100·1 as in MINPACK). "
        f"fitfleet {ff.__version__ if hasattr(ff, '__version__') else ''} at {source_version()}; "
        f"jax {jax.__version__}, scipy {scipy.__version__}.",
        "",
        "Costs are ½‖r‖² at the end of each run. ✓: reached the best cost any run found for that "
        f"(problem, start), within a relative {REL:g}, or is below min({ZERO:g}·max(1, cost at start), "
        f"{ZERO_CAP:g}) (zero to round-off). ✗ and bold: did not. ⚠: fitfleet LM ended with a cost higher than "
        f"scipy's lm (MINPACK) by more than that margin.",
        "",
        "Methods: fitfleet `least_squares` `method=\"lm\"`/`\"gn\"`/`\"trf\"` with defaults "
        "(`ftol=xtol=gtol=1e-8`, `max_steps=100·(n+1)`); scipy `least_squares` "
        "`method=\"lm\"`/`\"trf\"` with `ftol=xtol=gtol=1e-8` and default `max_nfev`, exact "
        f"Jacobian from `jax.jacfwd`; *tight*: ftol = xtol = gtol = {TIGHT:g} for both.",
        "",
        f"**Reached the best cost ({total} problem/start pairs):** "
        + "; ".join(f"{n} {reached[n]}/{total} ({reached[n] / total:.2f})" for n in names)
        + f"; **best of fitfleet's LM, GN, TRF per run {reached_any}/{total} ({reached_any / total:.2f})**",
        "",
        f"Wall time {wall:.0f} s in all; per method (including fitfleet's compilation, once per "
        "problem and method): " + ", ".join(f"{n} {seconds[n]:.0f} s" for n in names) + ".",
        "",
        "## fitfleet worse than scipy",
        "",
        f"Default tolerances (fitfleet LM/GN/TRF against scipy lm/trf): {len(flagged)} runs "
        f"({sum(r[3] == 'ff LM' for r in flagged)} LM, {sum(r[3] == 'ff GN' for r in flagged)} GN, "
        f"{sum(r[3] == 'ff TRF' for r in flagged)} TRF). "
        "Costs in the scipy columns are at the same tolerances.",
        "",
        *flag_header,
        *flag_lines(flagged),
        "",
        f"Tight tolerances (fitfleet tight against scipy tight): {len(flagged_tight)} runs "
        f"({sum(r[3] == 'ff LM tight' for r in flagged_tight)} LM, "
        f"{sum(r[3] == 'ff GN tight' for r in flagged_tight)} GN, "
        f"{sum(r[3] == 'ff TRF tight' for r in flagged_tight)} TRF).",
        "",
        *flag_header,
        *flag_lines(flagged_tight),
        "",
        "## Final costs",
        "",
        "| # | problem | start | cost at start | best | " + " | ".join(names) + " | |",
        "|---|---|---|---|---|" + "---|" * len(names) + "---|",
        *table_cost,
        "",
        "## Stopping reason and work",
        "",
        "Each cell: status, then steps/evaluations (fitfleet: `n_steps`/`n_fev`; scipy: "
        "`njev`/`nfev`). fitfleet statuses are `ff.Status` names; scipy's: max_nfev (0), gtol "
        "(1), ftol (2), xtol (3), ftol+xtol (4).",
        "",
        "| problem | start | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
        *table_detail,
    ]
    out = Path(__file__).parent / "results" / "mgh.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out} ({wall:.0f} s)")


if __name__ == "__main__":
    main()
