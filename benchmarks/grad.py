"""Cost of differentiating a batch of fits: value+grad against value alone.

A batch of independent fits (Michaelis-Menten, 2 parameters, and a Gaussian peak on a
baseline, 4 parameters), each on its own noisy data set.  The outer loss is the mean
squared error of the fitted parameters against the truth, differentiated with respect
to every data point of every fit (what a training loop through the fit needs).

Timed, in one process on the same data, each jitted once:

- fitfleet value:            ``vmap(least_squares)`` → params
- fitfleet value+grad:       ``value_and_grad`` of the loss, implicit adjoint
- fitfleet value+grad unroll: the same, ``adjoint="unroll"`` (checkpointed loop)
- optimistix value / value+grad: ``optx.least_squares`` with ``LevenbergMarquardt`` and
  its ``ImplicitAdjoint``, vmapped, same tolerances (1e-8 in float64, 1e-6 in float32)

Compile time (first call) is reported apart from run time (median of ``--repeat`` calls,
each ``block_until_ready``).  The gradients of fitfleet and optimistix are compared.

Usage:  python benchmarks/grad.py [--batch 1024] [--repeat 7] [--dtype float64] [--out FILE]
"""

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

import fitfleet as ff


def michaelis_menten(p, x):
    return p[0] * x / (p[1] + x)


def gaussian_peak(p, x):
    return p[0] * jnp.exp(-0.5 * ((x - p[1]) / p[2]) ** 2) + p[3]


def problems(batch, rng):
    x = np.linspace(0.2, 30.0, 24)
    true = np.stack([rng.uniform(20, 40, batch), rng.uniform(3, 9, batch)], 1)
    yield "Michaelis-Menten (n=2, m=24)", michaelis_menten, x, true, np.array([30.0, 6.0])
    x = np.linspace(-5.0, 5.0, 40)
    true = np.stack(
        [rng.uniform(2, 4, batch), rng.uniform(-1, 1, batch), rng.uniform(0.8, 1.5, batch), rng.uniform(0, 1, batch)],
        1,
    )
    yield "Gaussian peak (n=4, m=40)", gaussian_peak, x, true, np.array([3.0, 0.0, 1.0, 0.5])


def timed(fn, *args, repeat):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - start)
    run = statistics.median(runs)
    return out, first - run, run


def contenders(model, x, x0, true):
    """name -> jitted function of the batch of data Y; value-only ones return
    (params, converged), value+grad ones (loss, gradient)."""
    tol = 1e-8 if x.dtype == jnp.float64 else 1e-6  # float32: above round-off

    def residual(p, x, y):
        return model(p, x) - y

    def loss(params):
        return jnp.mean(((params - true) / true) ** 2)

    def fitfleet(adjoint):
        def one(y):
            res = ff.least_squares(residual, x0, (x, y), adjoint=adjoint, ftol=tol, xtol=tol, gtol=tol)
            return res.params, res.success

        return jax.vmap(one)

    solver = optx.LevenbergMarquardt(rtol=tol, atol=tol)

    def optimistix(Y):
        def one(y):
            sol = optx.least_squares(lambda p, a: residual(p, *a), solver, x0, args=(x, y), max_steps=256, throw=False)
            return sol.value, sol.result == optx.RESULTS.successful

        return jax.vmap(one)(Y)

    grad = lambda f: jax.jit(jax.value_and_grad(lambda Y: loss(f(Y)[0])))  # noqa: E731
    return {
        "fitfleet value": jax.jit(fitfleet("implicit")),
        "fitfleet value+grad (implicit)": grad(fitfleet("implicit")),
        "fitfleet value+grad (unroll)": grad(fitfleet("unroll")),
        "optimistix value": jax.jit(optimistix),
        "optimistix value+grad (ImplicitAdjoint)": grad(optimistix),
    }


def rows(opts, dtype):
    rng = np.random.default_rng(0)
    for name, model, x, true, x0 in problems(opts.batch, rng):
        clean = jax.vmap(lambda p: model(p, x))(jnp.asarray(true, dtype))
        Y = clean + 0.02 * jnp.abs(clean).max() * jnp.asarray(rng.normal(size=clean.shape), dtype)
        base, reference = {}, None
        for what, fn in contenders(model, jnp.asarray(x, dtype), jnp.asarray(x0, dtype), jnp.asarray(true, dtype)).items():
            try:
                out, compile_s, run_s = timed(fn, Y, repeat=opts.repeat)
            except Exception as e:  # report, and keep measuring the others
                yield f"| {name} | {dtype} | {what} | failed: {type(e).__name__}: {str(e).splitlines()[0][:80]} | | | | |"
                continue
            library = what.split()[0]
            base.setdefault(library, run_s)
            diff = converged = ""
            if "grad" in what:
                g = np.asarray(out[1])
                reference = g if reference is None else reference
                diff = f"{np.max(np.abs(g - reference)) / np.max(np.abs(reference)):.1e}"
            else:
                converged = f"{float(np.mean(out[1])):.3f}"
            ratio = run_s / base[library]
            yield f"| {name} | {dtype} | {what} | {compile_s:.2f} | {1e3 * run_s:.1f} | {ratio:.2f} | {converged} | {diff} |"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dtype", nargs="+", choices=["float32", "float64"], default=["float64", "float32"])
    parser.add_argument("--out", default=None, help="write the markdown table here")
    opts = parser.parse_args()

    lines = [
        "# Value+grad through a batch of fits vs value alone",
        "",
        f"Command: `python benchmarks/grad.py {' '.join(sys.argv[1:])}`".rstrip() + "  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__}, "
        f"optimistix {optx.__version__ if hasattr(optx, '__version__') else '?'}, "
        f"batch of {opts.batch} fits, median of {opts.repeat} runs.",
        "",
        "The gradient is of the mean squared relative error of the fitted parameters, with "
        "respect to all data points of all fits. *ratio* = run time / run time of the same "
        "library's value alone; *converged* = fraction of fits reporting success; *grad vs "
        "fitfleet* = max relative difference of the gradient from fitfleet's implicit one. "
        "Tolerances 1e-8 in float64, 1e-6 in float32, for both libraries.",
        "",
        "| problem | dtype | what | compile (s) | run (ms) | ratio | converged | grad vs fitfleet |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for dtype in opts.dtype:
        with jax.enable_x64(dtype == "float64"):
            for row in rows(opts, jnp.dtype(dtype)):
                print(row, flush=True)
                lines.append(row)
    text = "\n".join(lines) + "\n"
    print(text)
    if opts.out:
        with open(opts.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
