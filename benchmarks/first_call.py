"""Time to first result: the first call of a fit, a profile and an ODE fit in a new
Python process, with and without JAX's persistent compilation cache
(``fitfleet.enable_compilation_cache``, opt-in).

Each case runs in fresh subprocesses: without the cache, then with an empty cache (which
it fills), then with that cache warm; repeated, medians reported.  The time is the first
call's wall time inside the process (imports excluded), then the second call's.

Run:  python benchmarks/first_call.py [--repeats 3]   ->  benchmarks/results/first_call.md
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile

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
    "ODE fit (diffrax Kvaerno5, forward sensitivities)": """
import diffrax
t = jnp.linspace(0.0, 10.0, 30); y = 0.7 / (0.3 - 0.7) * (jnp.exp(-0.7 * t) - jnp.exp(-0.3 * t))
def b(k):
    rates = lambda _, s, k: jnp.stack([-k[0] * s[0], k[0] * s[0] - k[1] * s[1]])
    sol = diffrax.diffeqsolve(diffrax.ODETerm(rates), diffrax.Kvaerno5(), 0.0, 10.0, 0.05, jnp.array([1.0, 0.0]), args=k,
        saveat=diffrax.SaveAt(ts=t), stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-10),
        adjoint=diffrax.ForwardMode(), throw=False)
    return sol.ys[:, 1]
f = lambda k, y: b(k) - y
run = lambda: ff.least_squares(f, jnp.array([0.5, 0.2]), (y,))
""",
}

CHILD = """
import json, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import fitfleet as ff
ff.set_compile_notice(None)
cache = sys.argv[1]
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


def child(code, cache):
    out = subprocess.run([sys.executable, "-c", code, cache], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    rows = []
    for name, setup in CASES.items():
        code = CHILD.format(setup=setup)
        results = {"no cache": [], "cache, cold": [], "cache, warm": []}
        for _ in range(opts.repeats):
            with tempfile.TemporaryDirectory() as cache:
                results["no cache"].append(child(code, "none"))
                results["cache, cold"].append(child(code, cache))
                results["cache, warm"].append(child(code, cache))
        row = [name] + [f"{statistics.median(t[0] for t in v):.2f} s" for v in results.values()]
        row.append(f"{statistics.median(t[1] for t in results['no cache']) * 1e3:.1f} ms")
        rows.append(row)
        print(" | ".join(row), flush=True)
    head = "| case | first call, no cache | first call, empty cache | first call, warm cache | second call |"
    lines = [
        "# Time to first result",
        "",
        f"Command: `python benchmarks/first_call.py --repeats {opts.repeats}` (medians; each call in a new process; "
        "float64, CPU).",
        "",
        head,
        "|---|---|---|---|---|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        "The cache is JAX's persistent compilation cache, turned on by `ff.enable_compilation_cache()`: a new",
        "process still traces the program (a fraction of the first call) but loads the compiled code.",
        "The ODE fit gains nothing: JAX does not write a program with host callbacks to the cache (\"Not writing",
        "persistent cache entry ... because it uses host callbacks\" in its debug log), and diffrax's implicit",
        "solver checks its linear solves with equinox's run-time errors, which are host callbacks.",
    ]
    out = pathlib.Path(__file__).resolve().parent / "results" / "first_call.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
