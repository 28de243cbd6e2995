"""Multi-starts on the six PEtab problems of tests/data/petab: fitfleet, scipy and the
reference tool chain (pyPESTO + AMICI + Fides) from the same starts (issue 20 §2).

    python benchmarks/petab.py --reference-python /path/to/refvenv/bin/python
    python benchmarks/petab.py --reference-json benchmarks/results/petab_reference.json
    python benchmarks/petab.py --problems Perelson_Science1996 --starts 4 --seeds 0 \
        --reference-python /path/to/refvenv/bin/python --reference-out /tmp/ref.json

Writes ``--out`` (default ``benchmarks/results/petab.md``) and, after a new reference run,
``--reference-out`` (default ``benchmarks/results/petab_reference.json``).
``--fitfleet-options '{"secant": false}'`` (JSON) changes fitfleet's options.
``--skip-reference``, ``--skip-scipy`` and ``--skip-fitfleet`` leave rows out (scipy's
row runs the starts one by one on one core: at 300 starts it takes long).

Starts: ``prob.sample_starts(n, jax.random.key(seed))`` for each seed, pooled (default
3 × 100): uniform on the estimation scale within the PEtab bounds (pyPESTO's default)
unless the parameter table has an ``initializationPriorType``.  Every method gets the
same start matrix; the reference maps its columns to its own parameter order by id.

Methods, each a row per problem:

* fitfleet: ``prob._fit_starts(starts, prob._options(FITFLEET_OPTIONS), check=True)``
  in float64, all starts in one call: what ``prob.multistart`` runs (``fit_batch`` with
  trf, its subproblem in Fides's plane, the PEtab bounds, forward-mode Jacobians,
  pyPESTO's stopping test: ``Problem._options``; then each stop checked against a finer ODE solve and continued
  where it fails, ``fitfleet.petab._verify``; ``--no-check`` leaves that out).  The call
  is made twice: "run" is the second call's wall time, "compile" the first's minus it
  (as for scipy).  Until the third session of 2026-12-05, fitfleet's rows were
  Levenberg-Marquardt's (``fit_batch`` was given only the bounds and ``jac="fwd"``), and
  "compile" was the wall time during which any compilation was in progress, which also
  took the engine's background compilation out of the run time (optimistic).
* scipy trf: ``scipy.optimize.least_squares(method="trf")`` at scipy's defaults on
  fitfleet's residual ``jit(prob.fun)`` and Jacobian ``jit(jacfwd(prob.fun))``, the
  same bounds, the starts one after another in this process (one core); "compile" is
  the first call of both minus a second.
* pyPESTO + Fides and pyPESTO ls_trf: ``benchmarks/petab_reference.py`` (its docstring
  says how to set up its venv), run in a subprocess by ``--reference-python``, on
  pyPESTO's MultiProcessEngine (2 processes); "compile" is AMICI's model import and C++
  build.  Its JSON (all problems) is kept in ``--reference-out`` so that a later run can
  reuse it with ``--reference-json`` (checked against the start matrix's digest).

Every final point is scored by its negative log-likelihood (pyPESTO's objective: fitfleet
``cost + prob.offset``; the reference re-evaluates AMICI's NLL at each end point).  A
start succeeds when it ends within χ²₁(0.95)/2 = 1.92 of the best known NLL
(tests/data/petab/README.md); the fraction's 95% interval is Wilson's.  Seconds per
success = run wall time / successes (compile excluded for every method).
"""

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

# This file's folder holds petab.py, which would shadow the `petab` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import jax
import jax.numpy as jnp
import numpy as np
import scipy
import scipy.optimize
import scipy.stats

jax.config.update("jax_enable_x64", True)  # a script, not the library

import fitfleet as ff
import fitfleet.petab as fp

# fit_batch options on top of the PEtab problem's own (``Problem._options``: method="trf",
# subspace="2d", bounds=(prob.lower, prob.upper), jac="fwd", ftol, settle=False and max_steps=1000 as pyPESTO stops); {} means fitfleet's defaults for PEtab, what
# ``prob.multistart`` runs.  Change them here (they are printed in the results).
FITFLEET_OPTIONS = {}
CHECK = True  # --no-check: no end-point check (``fitfleet.petab._verify``)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "petab"
RESULTS = ROOT / "benchmarks" / "results"
PROBLEMS = ["Armistead_CellDeathDis2024", "Boehm_JProteomeRes2014", "Bruno_JExpBot2016", "Crauste_CellSystems2017", "Perelson_Science1996", "Rahman_MBS2016"]
_REFERENCE = json.loads((DATA / "reference_values.json").read_text())  # tests/data/petab/README.md
BEST_NLL, AMICI_NOMINAL = _REFERENCE["best_known"], _REFERENCE["amici_nominal"]
SCIPY_STATUS = {0: "max_nfev", 1: "gtol", 2: "ftol", 3: "xtol", 4: "ftol and xtol"}
THRESHOLD = 1.92  # χ²₁(0.95)/2
REFERENCE_SCRIPT = Path(__file__).with_name("petab_reference.py")
REFERENCE_ROWS = {"fides": "pyPESTO + AMICI + Fides", "ls_trf": "pyPESTO + AMICI, scipy ls_trf"}


def starts_digest(starts):
    """As ``petab_reference.starts_digest`` (the same rounding), without importing it."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(np.round(np.asarray(starts, np.float64), 12)).tobytes()).hexdigest()[:16]


def wilson(k, n, z=1.959964):
    if n == 0:
        return math.nan, math.nan
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def run_fitfleet(prob, starts):
    options = prob._options(FITFLEET_OPTIONS)  # what prob.multistart runs (with --fitfleet-options)
    x0 = jnp.asarray(starts, jnp.float64)
    walls = []
    for first in (True, False):  # the first call compiles (and runs); the second only runs
        t = time.perf_counter()
        res = prob._fit_starts(x0, options, check=CHECK)
        jax.block_until_ready(res.cost)
        if first:  # the tail program compiles in the background: not into the second call
            ff.wait_for_compilation()
        walls.append(time.perf_counter() - t)
    wall, run_s = walls
    compile_s = max(wall - run_s, 0.0)
    nll = np.asarray(res.cost, np.float64) + prob.offset
    messages = [str(ff.Status(int(s)).name).lower() for s in np.asarray(res.status)]
    return {"nll": np.where(np.isfinite(nll), nll, np.nan), "exits": messages, "wall_s": wall, "compile_s": compile_s, "run_s": run_s, "procs": os.cpu_count()}


def run_scipy(prob, starts):
    y = tuple(jnp.asarray(a, jnp.float64) for a in prob.args)
    fun = jax.jit(lambda x: prob.fun(x, *y))
    jac = jax.jit(jax.jacfwd(lambda x: prob.fun(x, *y)))
    x = jnp.asarray(starts[0], jnp.float64)
    t = time.perf_counter()
    jax.block_until_ready((fun(x), jac(x)))
    first = time.perf_counter() - t
    t = time.perf_counter()
    jax.block_until_ready((fun(x), jac(x)))
    compile_s = max(first - (time.perf_counter() - t), 0.0)
    f = lambda x: np.asarray(fun(x), np.float64)
    j = lambda x: np.asarray(jac(x), np.float64)
    nll, exits = [], []
    t = time.perf_counter()
    for x0 in starts:
        try:
            r = scipy.optimize.least_squares(f, x0, jac=j, bounds=(prob.lower, prob.upper), method="trf")
            nll.append(r.cost + prob.offset if np.isfinite(r.cost) else np.nan)
            exits.append(SCIPY_STATUS.get(r.status, f"status {r.status}"))
        except (ValueError, np.linalg.LinAlgError) as e:  # a non-finite residual at x0 or mid-fit
            nll.append(np.nan)
            exits.append("raised: " + str(e).split(".")[0][:40])
    wall = time.perf_counter() - t
    return {"nll": np.asarray(nll), "exits": exits, "wall_s": wall + compile_s, "compile_s": compile_s, "run_s": wall, "procs": 1}


def run_reference(args, name, prob, starts):
    """The reference's JSON for this problem: reused from --reference-json, or run."""
    if args.reference_json:
        saved = json.loads(Path(args.reference_json).read_text())["problems"].get(name)
        if saved is None or saved["starts_digest"] != starts_digest(starts):
            raise SystemExit(f"--reference-json {args.reference_json}: no run of {name} from these starts (other --starts/--seeds?)")
        return saved
    with tempfile.TemporaryDirectory(prefix="petab_bench_") as folder:
        npz, out = Path(folder) / "starts.npz", Path(folder) / "reference.json"
        np.savez(npz, starts=np.asarray(starts, np.float64), names=np.asarray(prob.names))
        command = [args.reference_python, str(REFERENCE_SCRIPT), "--problem", str(DATA / name), "--starts", str(npz), "--out", str(out), "--procs", str(args.procs), "--optimizers", args.reference_optimizers]
        print("  $", " ".join(command), flush=True)
        subprocess.run(command, check=True)
        return json.loads(out.read_text())


def reference_rows(ref):
    rows = {}
    for which, entry in ref["optimizers"].items():
        # the NLL re-evaluated at the end point; pyPESTO's own fval where that failed
        nll = np.asarray([s["nll"] if s["nll"] is not None else s["fval"] if s["fval"] is not None else np.nan for s in entry["starts"]])
        exits = [short_message(s["message"]) for s in entry["starts"]]
        rows[REFERENCE_ROWS.get(which, which)] = {"nll": nll, "exits": exits, "wall_s": ref["compile_s"] + entry["wall_s"], "compile_s": ref["compile_s"], "run_s": entry["wall_s"], "procs": ref["procs"]}
    return rows


def cut(row, subset, n):
    """A reference row restricted to the starts ``subset`` (of ``n``), its run time
    pro-rated by the number of starts."""
    if len(subset) == n:
        return row
    run_s = row["run_s"] * len(subset) / n
    return dict(row, nll=row["nll"][subset], exits=[row["exits"][i] for i in subset], run_s=run_s, wall_s=row["compile_s"] + run_s)


def short_message(message):
    words = str(message).replace("`", "").replace(".", "").split()
    return " ".join(words[:5])[:40]


def summarise(name, row):
    nll, n = row["nll"], len(row["nll"])
    finite = nll[np.isfinite(nll)]
    k = int(np.sum(finite <= BEST_NLL[name] + THRESHOLD))
    lo, hi = wilson(k, n)
    best = float(finite.min()) if finite.size else math.nan
    exits = ", ".join(f"{m} {c}" for m, c in Counter(row["exits"]).most_common(3))
    ok = np.isfinite(nll) & (nll <= BEST_NLL[name] + THRESHOLD)
    return {"n": n, "k": k, "ok": ok, "lo": lo, "hi": hi, "best": best, "per_success": row["run_s"] / k if k else math.inf, "exits": exits, **{key: row[key] for key in ("wall_s", "compile_s", "run_s", "procs")}}


def paired(s, fides):
    """Successes paired by start against Fides's: the starts where only this method
    succeeds, where only Fides does, and McNemar's exact (binomial) two-sided p."""
    if fides is None or s is fides:
        return "–"
    alone, alone_fides = int(np.sum(s["ok"] & ~fides["ok"])), int(np.sum(~s["ok"] & fides["ok"]))
    p = scipy.stats.binomtest(alone, alone + alone_fides, 0.5).pvalue if alone + alone_fides else 1.0
    return f"{alone} / {alone_fides}, p = {p:.2g}"


def fmt_ratio(a, b):
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return "–"
    return f"{a / b:.2f}"


def table(results, args):
    lines = [
        "| problem | method | procs | best NLL | best − best known | successes | fraction [95% CI] | fraction ÷ Fides's | paired with Fides: alone / Fides alone | wall s | compile s | run s | s per success | s/success ÷ Fides's | exits (most common) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        fides = rows.get(REFERENCE_ROWS["fides"])
        for method, s in rows.items():
            ratio = fmt_ratio(s["per_success"], fides["per_success"]) if fides else "–"
            fraction = fmt_ratio(s["k"] / s["n"], fides["k"] / fides["n"]) if fides else "–"
            lines.append(
                f"| {name} | {method} | {s['procs']} | {s['best']:.7f} | {s['best'] - BEST_NLL[name]:+.2e} | {s['k']}/{s['n']} | {s['k'] / s['n']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}] | {fraction} | {paired(s, fides)} "
                f"| {s['wall_s']:.1f} | {s['compile_s']:.1f} | {s['run_s']:.1f} | {s['per_success']:.2f} | {ratio} | {s['exits']} |"
            )
    return "\n".join(lines)


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} CPU cores, {jax.devices()[0].platform}"


def main():
    global CHECK
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default=",".join(PROBLEMS), help="comma-separated problem ids (default: all six)")
    parser.add_argument("--starts", type=int, default=100, help="starts per seed (default 100)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, pooled (default 0,1,2)")
    parser.add_argument("--skip-reference", action="store_true", help="no pyPESTO rows")
    parser.add_argument("--skip-fitfleet", action="store_true")
    parser.add_argument("--skip-scipy", action="store_true")
    parser.add_argument("--reference-python", help="the python of the reference venv (petab_reference.py's docstring)")
    parser.add_argument("--reference-json", help="reuse a previous reference run (its --reference-out file)")
    parser.add_argument("--reference-out", default=str(RESULTS / "petab_reference.json"), help="where a new reference run's JSON goes")
    parser.add_argument("--reference-optimizers", default="fides,ls_trf")
    parser.add_argument("--procs", type=int, default=2, help="processes for pyPESTO's MultiProcessEngine")
    parser.add_argument("--out", default=str(RESULTS / "petab.md"))
    parser.add_argument("--fitfleet-options", default="{}", metavar="JSON", help='options for fitfleet on top of prob.multistart\'s, e.g. \'{"secant": false}\'')
    parser.add_argument("--subset", type=int, default=None, metavar="K", help="fit only the first K starts of each seed; the reference rows are cut to the same starts (their run time pro-rated)")
    parser.add_argument("--no-check", action="store_true", help="fitfleet without its end-point check (fitfleet.petab._verify)")
    args = parser.parse_args()
    FITFLEET_OPTIONS.update(json.loads(args.fitfleet_options))
    CHECK = not args.no_check
    names = [p for p in args.problems.split(",") if p]
    unknown = [p for p in names if p not in BEST_NLL]
    if unknown:
        raise SystemExit(f"--problems: unknown {unknown}; choose from {PROBLEMS}")
    seeds = [int(s) for s in args.seeds.split(",")]
    want_reference = not args.skip_reference
    if want_reference and not (args.reference_python or args.reference_json):
        raise SystemExit("the reference needs --reference-python PATH (its venv's python) or --reference-json FILE; or pass --skip-reference")

    load_start, started = os.getloadavg(), datetime.datetime.now(datetime.UTC)
    results, references, notes = {}, {}, []
    for name in names:
        print(name, flush=True)
        t = time.perf_counter()
        prob = fp.load(DATA / name)
        load_s = time.perf_counter() - t
        starts = np.concatenate([prob.sample_starts(args.starts, jax.random.key(seed)) for seed in seeds])
        per_seed = args.starts if args.subset is None else min(args.subset, args.starts)
        subset = np.concatenate([i * args.starts + np.arange(per_seed) for i in range(len(seeds))])
        rows = {}
        if want_reference:
            ref = run_reference(args, name, prob, starts)
            references[name] = ref
            if not args.reference_json:  # after every problem: an interrupted run keeps the finished ones
                combined = {"created": started.isoformat(timespec="seconds"), "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "load_average": load_start, "machine": machine(), "problems": references}
                Path(args.reference_out).write_text(json.dumps(combined, separators=(",", ":")))
            rows.update({method: cut(row, subset, len(starts)) for method, row in reference_rows(ref).items()})
            notes.append(f"{name}: AMICI NLL at nominal {ref['nll_nominal']:.7f} (README {AMICI_NOMINAL[name]:.7f}); AMICI import + compile {ref['compile_s']:.1f} s; fitfleet load {load_s:.1f} s")
            print(f"  AMICI NLL at nominal {ref['nll_nominal']:.7f}, README {AMICI_NOMINAL[name]:.7f}", flush=True)
        if not args.skip_scipy:
            rows["scipy trf (fitfleet's residual)"] = run_scipy(prob, starts[subset])
        if not args.skip_fitfleet:
            rows["fitfleet"] = run_fitfleet(prob, starts[subset])
        results[name] = {method: summarise(name, row) for method, row in rows.items()}
        for method, s in results[name].items():
            print(f"  {method}: best {s['best']:.6f}, {s['k']}/{s['n']} successes, run {s['run_s']:.1f} s, compile {s['compile_s']:.1f} s", flush=True)
        write_report(args, results, references, notes, load_start, started, seeds)  # after each problem: a long run keeps what it has


def write_report(args, results, references, notes, load_start, started, seeds):
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, cwd=ROOT, capture_output=True, text=True).stdout.strip()
    versions = f"fitfleet {git or '?'}, jax {jax.__version__}, numpy {np.__version__}, scipy {scipy.__version__}, Python {platform.python_version()}"
    if references:
        v = next(iter(references.values()))["versions"]
        versions += "; reference: " + ", ".join(f"{k} {val}" for k, val in v.items())
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    reuse = ""
    if args.reference_json:
        saved = json.loads(Path(args.reference_json).read_text())
        ends = [f"{v['load_average_end'][0]:.2f}" for v in saved["problems"].values() if "load_average_end" in v]
        ends = f", after each problem {', '.join(ends)}" if ends else ""
        runs = "; ".join(  # one run, or several merged (``runs``: petab_reference_fides_same_machine.json)
            f"run {r['created']}, load average then {r['load_average'][0]:.2f}, `{r['command']}`" for r in saved.get("runs", [saved])
        )
        reuse = f"Reference rows reused from `{args.reference_json}` ({runs}{ends}).  \n"
    if os.environ.get("EQX_ON_ERROR"):
        reuse += f"Run with `EQX_ON_ERROR={os.environ['EQX_ON_ERROR']}` (equinox's run-time checks, e.g. lineax's on a singular Newton matrix, give NaN instead of raising: no bisection reruns of the batch).  \n"
    subset_note = "" if args.subset is None else f"**Subset: fitfleet and scipy fit only the first {args.subset} starts of each seed; the reference rows are cut to those starts, their run time pro-rated by the number of starts.**  \n"
    text = f"""# PEtab multi-starts: fitfleet, scipy and pyPESTO + AMICI + Fides

Command: `{command}`  
Machine: {machine()}; {started.strftime('%Y-%m-%d %H:%M')} UTC.  
Load average at start: {load_start[0]:.2f}, at end: {os.getloadavg()[0]:.2f} (other processes share the cores: times are upper bounds).  
Versions: {versions}.  
{reuse}Starts: {args.starts} per seed × seeds {seeds} = {args.starts * len(seeds)} per problem, `prob.sample_starts` (uniform on the estimation scale within the bounds), the same matrix for every method.  {subset_note}
fitfleet options: `prob._fit_starts(starts, prob._options({FITFLEET_OPTIONS!r}), check={CHECK})`, i.e. what `prob.multistart` runs (`fit_batch` with method="trf", subspace="2d", bounds=(prob.lower, prob.upper), jac="fwd", ftol, settle=False and max_steps=1000 as pyPESTO stops, unless given; with `check=True` each stop is checked against a finer ODE solve and continued where it fails), float64.

Success: final NLL within {THRESHOLD} of the best known (tests/data/petab/README.md); the interval is Wilson's 95%.
"paired with Fides": the starts (the same for every row) from which only this row succeeds / only Fides does, and McNemar's exact two-sided p (the binomial test on those two counts).
"compile": fitfleet's and scipy's first call minus a second (the run);
the reference's AMICI model import and C++ build (once per problem, shared by its two rows).  "wall" = compile + run;
s per success = run / successes.
The reference runs on pyPESTO's MultiProcessEngine with {args.procs} processes; scipy runs one start after another
in one process; fitfleet as its engine decides (one thread per core on CPU).  See the module docstring of
`benchmarks/petab.py` for the exact set-up of every method.

{table(results, args)}
"""
    if notes:
        text += "\nSanity (AMICI's NLL at the nominal parameters against tests/data/petab/README.md):\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    Path(args.out).write_text(text)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
