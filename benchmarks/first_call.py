"""Time to first result: the first call of a fit, a profile and an ODE fit in a new
Python process, with and without JAX's persistent compilation cache
(``fitfleet.enable_compilation_cache``, opt-in).

Each case runs in fresh subprocesses: without the cache, then with an empty cache (which
it fills), then with that cache warm; repeated, medians reported.  The time is the first
call's wall time inside the process (imports and the case's set-up excluded), then the
second call's.  ``--source`` compares fitfleet trees (each a ``src`` folder put first on
the children's ``PYTHONPATH``), alternating between them in every repeat.

Run:  python benchmarks/first_call.py [--repeats 3] [--only TEXT] [--no-cache-only]
          [--source PATH ...] [--out FILE]   ->  benchmarks/results/first_call.md
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

ODE = """
import diffrax
t = jnp.linspace(0.0, 10.0, 30); y = 0.7 / (0.3 - 0.7) * (jnp.exp(-0.7 * t) - jnp.exp(-0.3 * t))
def b(k):
    rates = lambda _, s, k: jnp.stack([-k[0] * s[0], k[0] * s[0] - k[1] * s[1]])
    sol = diffrax.diffeqsolve(diffrax.ODETerm(rates), diffrax.Kvaerno5(), 0.0, 10.0, 0.05, jnp.array([1.0, 0.0]), args=k,
        saveat=diffrax.SaveAt(ts=t), stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-10),
        adjoint=diffrax.ForwardMode(), throw=False)
    return sol.ys[:, 1]
"""
CASES = {
    "least_squares (Michaelis-Menten)": """
S = jnp.linspace(0.1, 30.0, 40); V = 29 * S / (6 + S) + 0.1 * jnp.sin(S)
f = lambda p, S, v: p[0] * S / (p[1] + S) - v  # one function: a new lambda per call would compile again
run = lambda: ff.least_squares(f, jnp.array([10.0, 10.0]), (S, V))
""",
    "profile (Michaelis-Menten, 21 points)": """
S = jnp.linspace(0.1, 30.0, 40); V = 29 * S / (6 + S) + 0.1 * jnp.sin(S)
f = lambda p, S, v: (p[0] * S / (p[1] + S) - v) / 0.1
fit = ff.least_squares(f, jnp.array([10.0, 10.0]), (S, V))
run = lambda: ff.profile(f, fit, (S, V), index=1, absolute_sigma=True)
""",
    "ODE fit (diffrax Kvaerno5, forward sensitivities)": ODE + """
f = lambda k, y: b(k) - y
run = lambda: ff.least_squares(f, jnp.array([0.5, 0.2]), (y,))
""",
    "profile (the ODE fit's rate, 21 points)": ODE + """
y = y + 0.01 * jnp.sin(t)
f = lambda k, y: (b(k) - y) / 0.01
fit = ff.least_squares(f, jnp.array([0.5, 0.2]), (y,))
run = lambda: ff.profile(f, fit, (y,), index=0, absolute_sigma=True)
""",
    "PEtab profiles (Perelson 1996, all 3 parameters)": """
import pathlib, fitfleet.petab
prob = fitfleet.petab.load(pathlib.Path(ROOT) / "tests" / "data" / "petab" / "Perelson_Science1996")
fit = prob.fit(prob.nominal)
run = lambda: [p.values for p in prob.profile(fit).values()]
""",
}

CHILD = """
import json, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import fitfleet as ff
ff.set_compile_notice(None)
cache, ROOT = sys.argv[1], {root!r}
if cache != "none":
    ff.enable_compilation_cache(cache)
{setup}
times = []
for _ in range(2):
    t0 = time.perf_counter()
    jax.block_until_ready(run())
    times.append(time.perf_counter() - t0)
print(json.dumps(times))
"""


ROOT = pathlib.Path(__file__).resolve().parent.parent


def child(code, cache, source=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (source, os.environ.get("PYTHONPATH")))))
    out = subprocess.run([sys.executable, "-c", code, cache], capture_output=True, text=True, check=True, env=env if source else None)
    return json.loads(out.stdout.strip().splitlines()[-1])


def commit(source):
    """The commit of a fitfleet tree (``source``: its ``src`` folder; None: this one)."""
    where = pathlib.Path(source).parent if source else ROOT
    return subprocess.run(["git", "-C", str(where), "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", help="run the cases whose name contains this text")
    parser.add_argument("--no-cache-only", action="store_true", help="skip the runs with the persistent cache")
    parser.add_argument("--source", action="append", help="a fitfleet `src` folder to time (repeatable); default: this tree")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "first_call.md"))
    opts = parser.parse_args()
    sources = opts.source or [None]
    modes = ["no cache"] + ([] if opts.no_cache_only else ["cache, cold", "cache, warm"])
    rows = []
    for name, setup in CASES.items():
        if opts.only and opts.only not in name:
            continue
        code = CHILD.format(setup=setup, root=str(ROOT))
        results = {(source, mode): [] for source in sources for mode in modes}
        for _ in range(opts.repeats):
            for source in sources:  # alternating
                with tempfile.TemporaryDirectory() as cache:
                    for mode in modes:
                        results[source, mode].append(child(code, "none" if mode == "no cache" else cache, source))
        for source in sources:
            row = [name, commit(source)] + [f"{statistics.median(t[0] for t in results[source, mode]):.2f} s" for mode in modes]
            row.append(f"{statistics.median(t[1] for t in results[source, 'no cache']) * 1e3:.1f} ms")
            rows.append(row)
            print(" | ".join(row), flush=True)
    heads = {"no cache": "first call, no cache", "cache, cold": "first call, empty cache", "cache, warm": "first call, warm cache"}
    command = " ".join(["python benchmarks/first_call.py", *sys.argv[1:]])
    lines = [
        "# Time to first result",
        "",
        f"Command: `{command}` (medians of {opts.repeats}; each call in a new process; float64, CPU; "
        f"load average at the end {os.getloadavg()[0]:.2f}).",
        "",
        "| case | fitfleet | " + " | ".join(heads[m] for m in modes) + " | second call |",
        "|---|---|" + "---|" * len(modes) + "---|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        "The cache is JAX's persistent compilation cache, turned on by `ff.enable_compilation_cache()`: a new",
        "process still traces the program (a fraction of the first call) but loads the compiled code.",
        "The ODE fit gains nothing: JAX does not write a program with host callbacks to the cache (\"Not writing",
        "persistent cache entry ... because it uses host callbacks\" in its debug log), and diffrax's implicit",
        "solver checks its linear solves with equinox's run-time errors, which are host callbacks.",
    ]
    out = pathlib.Path(opts.out)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
