"""fitfleet on an accelerator, beside optimistix and a 45-line reference LM, in one run.

    python benchmarks/accelerator.py               # GPU: the sizes of issue 19's check (about 5 minutes on an H200)
    python benchmarks/accelerator.py --small       # CPU: the same workloads at small sizes
    python benchmarks/accelerator.py --only steps,gauss2d

The workloads of the project's GPU check (``../shared/gpu/run.sh``; issue 19): Gpufit's
2D Gaussian in float32, a 1D Gaussian peak in float64, stragglers (1% far starts),
multi-start on NIST's MGH10, BoxBOD and Bennett5, a single fit's latency; and ``steps``,
the cost of one batched step: HLO operations of the loop body (a CPU proxy of a GPU's
kernel count) and the latency of one step at 1,024 fits, for fitfleet's step, the lean
prototypes of ``lean_lm.py``, the reference LM (``ref_lm.py``) and optimistix.

``fit_batch`` runs its default path for the device (on GPU/TPU the device program); on
CPU the table adds the accelerator path forced there (``ff.engine_settings``).  Timings
are medians of calls after a first one (``first``: tracing, compilation and one run).
Writes ``benchmarks/results/accelerator.md`` on an accelerator, ``accelerator_cpu.md``
on CPU.
"""

import argparse
import contextlib
import dataclasses
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)  # a script: float64 available; every array has its dtype
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE)]  # tests first: its nist and mgh modules

import optimistix as optx  # noqa: E402

import fitfleet as ff  # noqa: E402
import lean_lm  # noqa: E402
import nist  # noqa: E402
from fitfleet import _setup  # noqa: E402
from fitfleet._engine import programs, runtime  # noqa: E402
from ref_lm import ref_lm  # noqa: E402

DEVICE = jax.devices()[0]
ON_CPU = DEVICE.platform == "cpu"


def block(x):
    return jax.block_until_ready(x)


def timed(fn, repeats=3):
    """(first call, median of ``repeats`` later calls, last result), seconds."""
    t0 = time.perf_counter()
    out = block(fn())
    first = time.perf_counter() - t0
    ff.wait_for_compilation()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = block(fn())
        runs.append(time.perf_counter() - t0)
    return first, statistics.median(runs), out


def x32():
    return jax.enable_x64(False)


# --------------------------------------------------------------------------- models (as in batch.py and the GPU check)


def gauss2d(p, xy, z):
    x, y = xy
    arg = ((x - p[1]) ** 2 + (y - p[2]) ** 2) / (2 * p[3] ** 2)
    return p[0] * jnp.exp(-arg) + p[4] - z


def gauss2d_data(n, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.arange(5.0)
    x, y = (a.ravel() for a in np.meshgrid(grid, grid, indexing="ij"))
    truth = np.stack([rng.uniform(8, 12, n), rng.uniform(1.6, 2.4, n), rng.uniform(1.6, 2.4, n), rng.uniform(0.8, 1.2, n), rng.uniform(0.5, 1.5, n)], 1)
    arg = ((x - truth[:, 1:2]) ** 2 + (y - truth[:, 2:3]) ** 2) / (2 * truth[:, 3:4] ** 2)
    z = truth[:, 0:1] * np.exp(-arg) + truth[:, 4:5] + 0.1 * rng.normal(size=(n, 25))
    x0 = truth * rng.uniform(0.9, 1.1, truth.shape)
    return np.stack([x, y]).astype(np.float32), z.astype(np.float32), x0.astype(np.float32), truth


def peak1d(p, x, y):
    return p[0] * jnp.exp(-0.5 * ((x - p[1]) / p[2]) ** 2) + p[3] - y


def peak1d_data(n, seed=1):
    rng = np.random.default_rng(seed)
    x = np.linspace(-10.0, 10.0, 64)
    truth = np.stack([rng.uniform(2, 5, n), rng.uniform(-2, 2, n), rng.uniform(1, 2.5, n), rng.uniform(-0.5, 0.5, n)], 1)
    y = truth[:, 0:1] * np.exp(-0.5 * ((x - truth[:, 1:2]) / truth[:, 2:3]) ** 2) + truth[:, 3:4] + 0.05 * rng.normal(size=(n, 64))
    return x, y, truth * rng.uniform(0.8, 1.2, truth.shape), truth


GAUSS2D = dict(ftol=1e-4, xtol=0, gtol=0, max_steps=20)
PEAK1D = dict(ftol=1e-10, xtol=1e-10, gtol=1e-10, max_steps=200)


# --------------------------------------------------------------------------- the peers


def optimistix_batch(fun, rtol, atol, max_steps, shared_axis=0):
    solver = optx.LevenbergMarquardt(rtol=rtol, atol=atol)

    @jax.jit
    def run(x0, shared, data):
        def one(p, d):
            sol = optx.least_squares(lambda q, a: fun(q, *a), solver, p, (shared, d), max_steps=max_steps, throw=False)
            return sol.value, sol.stats["num_steps"]

        return jax.vmap(one, in_axes=(0, shared_axis))(x0, data)

    return run


def reference_batch(fun, maxit, tol):
    return jax.jit(jax.vmap(lambda p, shared, d: ref_lm(lambda q: fun(q, shared, d), p, maxit=maxit, tol=tol), in_axes=(0, None, 0)))


def vmapped_least_squares(fun, **options):
    return jax.jit(jax.vmap(lambda p, shared, d: ff.least_squares(fun, p, (shared, d), **options), in_axes=(0, None, 0)))


def fitfleet_paths():
    """fit_batch's default path, and on CPU the accelerator path forced there too."""
    paths = {"fit_batch": contextlib.nullcontext}
    if ON_CPU:
        paths["fit_batch, accelerator path"] = lambda: ff.engine_settings(path="accelerator")
    return paths


# --------------------------------------------------------------------------- sections


class Report:
    def __init__(self):
        self.lines = []

    def add(self, *lines):
        for line in lines:
            print(line, flush=True)
            self.lines.append(line)

    def table(self, header, rows):
        self.add("| " + " | ".join(header) + " |", "|" + "---|" * len(header))
        for row in rows:
            self.add("| " + " | ".join(str(c) for c in row) + " |")
        self.add("")


def rate(n, seconds):
    r = n / seconds
    return f"{r / 1e6:.2f}M" if r >= 1e6 else f"{r / 1e3:.1f}k"


def throughput(report, title, sizes, make, runs, error, x64):
    """One table: fits/s of each method at each size."""
    report.add(f"## {title}", "")
    rows = []
    for n in sizes:
        data = make(n)
        for name, fn in runs(*data).items():
            try:
                with jax.enable_x64(x64):
                    first, run, out = timed(fn, repeats=2 if n >= 10**7 else 3)
                params = out.params if hasattr(out, "params") else out[0]
                steps = out.n_steps if hasattr(out, "n_steps") else out[1]
                rows.append([f"{n:,}", name, rate(n, run), f"{run * 1e3:.1f}", f"{first:.2f}", f"{float(np.mean(np.asarray(steps))):.1f}", error(params, data)])
            except Exception as e:  # report and go on (memory, say)
                rows.append([f"{n:,}", name, "failed", f"{type(e).__name__}: {str(e)[:80]}", "", "", ""])
            print(rows[-1], flush=True)
    report.table(["fits", "method", "fits/s", "run (ms)", "first (s)", "mean steps", "median error"], rows)


def section_gauss2d(report, small):
    def runs(xy, z, x0, truth):
        out = {name: (lambda c=ctx: _with(c, lambda: ff.fit_batch(gauss2d, x0, (xy, z), shared_args=(0,), **GAUSS2D))) for name, ctx in fitfleet_paths().items()}
        out["jit(vmap(least_squares))"] = lambda f=vmapped_least_squares(gauss2d, **GAUSS2D): f(x0, xy, z)
        out["optimistix LM, jit(vmap)"] = lambda f=optimistix_batch(gauss2d, 1e-4, 1e-6, 20): f(x0, xy, z)
        out["reference LM, jit(vmap)"] = lambda f=reference_batch(gauss2d, 20, 1e-4): f(x0, xy, z)
        return out

    def make(n):
        xy, z, x0, truth = gauss2d_data(n)
        with x32():
            return jnp.asarray(xy), jnp.asarray(z), jnp.asarray(x0), truth

    error = lambda params, d: f"{np.median(np.abs(np.asarray(params, np.float64)[:, 1] - d[3][:, 1])):.3f}"  # noqa: E731
    sizes = [1000, 10_000] if small else [100_000, 1_000_000, 10_000_000]
    throughput(report, "Gpufit's 2D Gaussian, float32 (5x5 pixels, 5 parameters; ftol 1e-4, 20 steps)", sizes, make, runs, error, False)


def section_peak1d(report, small):
    def runs(x, y, x0, truth):
        out = {name: (lambda c=ctx: _with(c, lambda: ff.fit_batch(peak1d, x0, (x, y), shared_args=(0,), **PEAK1D))) for name, ctx in fitfleet_paths().items()}
        out["jit(vmap(least_squares))"] = lambda f=vmapped_least_squares(peak1d, **PEAK1D): f(x0, x, y)
        out["optimistix LM, jit(vmap)"] = lambda f=optimistix_batch(peak1d, 1e-10, 1e-10, 200): f(x0, x, y)
        out["reference LM, jit(vmap)"] = lambda f=reference_batch(peak1d, 200, 1e-10): f(x0, x, y)
        return out

    def make(n):
        x, y, x0, truth = peak1d_data(n)
        return jnp.asarray(x), jnp.asarray(y), jnp.asarray(x0), truth

    error = lambda params, d: f"{np.median(np.abs(np.asarray(params)[:, 1] - d[3][:, 1])):.4f}"  # noqa: E731
    sizes = [1024, 10_000] if small else [1024, 100_000, 1_000_000]
    throughput(report, "1D Gaussian peak, float64 (64 points, 4 parameters; tolerances 1e-10, 200 steps)", sizes, make, runs, error, True)


def _with(context, fn):
    with context():
        return fn()


def straggler_data(n):
    prob = nist.load("MGH10")
    rng = np.random.default_rng(2)
    clean = np.asarray(prob.model(prob.certified, prob.x))
    y = clean + prob.certified_residual_sd * rng.normal(size=(n, clean.size))
    x0 = prob.certified * rng.uniform(0.995, 1.005, (n, 3))
    far = rng.choice(n, n // 100, replace=False)
    mixed = x0.copy()
    mixed[far] = prob.start1
    return prob, jnp.asarray(prob.x), jnp.asarray(y), x0, mixed, far


def section_stragglers(report, small):
    n = 4096 if small else 100_000
    prob, x, y, easy, mixed, far = straggler_data(n)
    fun = prob.residual()
    report.add(f"## Stragglers: NIST MGH10, {n:,} fits, 1% from NIST's Start 1 (float64)", "")
    report.add(
        "*Added*: the batch with the far starts minus the all-easy batch; *bound*: the far fits' steps times one "
        f"batched step's latency at {len(far):,} fits (from the `steps` measure); target: added ≤ 1.5 × bound.",
        "",
    )
    latency = step_latency(fun, jnp.asarray(mixed[far]), (x, y[far]), dict(max_steps=1000))
    rows = []
    opt = optimistix_batch(fun, 1e-8, 1e-8, 1000)
    methods = {name: (lambda s, c=ctx: _with(c, lambda: ff.fit_batch(fun, s, (x, y), shared_args=(0,), max_steps=1000))) for name, ctx in fitfleet_paths().items()}
    methods["optimistix LM, jit(vmap)"] = lambda s: opt(jnp.asarray(s), x, y)
    for name, make in methods.items():
        _, t_easy, _ = timed(lambda: make(easy))
        _, t_mixed, out = timed(lambda: make(mixed))
        steps = np.asarray(out.n_steps if hasattr(out, "n_steps") else out[1])[far].max()
        bound = steps * latency if name.startswith("fit_batch") else float("nan")
        rows.append([name, f"{t_easy * 1e3:.1f}", f"{t_mixed * 1e3:.1f}", f"{t_mixed / t_easy:.2f}×", int(steps), f"{(t_mixed - t_easy) * 1e3:.1f}", f"{bound * 1e3:.1f}", f"{(t_mixed - t_easy) / bound:.2f}"])
        print(rows[-1], flush=True)
    report.table(["method", "all easy (ms)", "1% far (ms)", "ratio", "far steps", "added (ms)", "bound (ms)", "added / bound"], rows)


def section_syncs(report, small):
    """Host synchronisations per call: the engine's program launches and device-to-host
    reads (``runtime.counting``), by batch size and path."""
    sizes = (1024, 4096, 16384) if small else (1024, 100_000, 1_000_000)
    report.add("## Host synchronisations per call (NIST MGH10, 1% far starts, float64)", "")
    report.add(
        "Program launches and device-to-host reads of one `fit_batch` call after a first one, counted by "
        "`fitfleet._engine.runtime.counting()` (every engine launch and fetch goes through it, from any thread). "
        "*Rounds*: the far fits' steps (the accelerator path's rounds run inside its one program).",
        "",
    )
    rows = []
    for n in sizes:
        prob, x, y, easy, mixed, far = straggler_data(n)
        fun = prob.residual()
        for name, ctx in fitfleet_paths().items():
            with ctx():
                block(ff.fit_batch(fun, mixed, (x, y), shared_args=(0,), max_steps=1000))
                with runtime.counting() as c:
                    out = block(ff.fit_batch(fun, mixed, (x, y), shared_args=(0,), max_steps=1000))
            rows.append([f"{n:,}", name, int(np.asarray(out.n_steps)[far].max()), c.launches, c.fetches])
            print(rows[-1], flush=True)
    report.table(["fits", "path", "far steps", "launches", "fetches"], rows)


def section_multistart(report, small):
    sizes = [256, 4096] if small else [1024, 65_536, 1_048_576]
    report.add("## Multi-start, NIST problems, log-uniform starts over three decades (float64)", "")
    report.add("fitfleet `multistart(..., log_scale=True)` (second call, new starts) against optimistix's LM under jit(vmap) on the same starts.", "")
    rows = []
    for pname in ("MGH10", "BoxBOD", "Bennett5"):
        prob = nist.load(pname)
        fun = prob.residual()
        s1 = np.asarray(prob.start1, np.float64)
        lo, hi = np.minimum(s1 * 10**-1.5, s1 * 10**1.5), np.maximum(s1 * 10**-1.5, s1 * 10**1.5)
        x, y = jnp.asarray(prob.x), jnp.asarray(prob.y)
        opt = optimistix_batch(fun, 1e-8, 1e-8, 1000, shared_axis=None)
        for m in sizes:
            if pname == "Bennett5" and m > 65_536:
                continue
            keys = iter(range(1, 100))
            run = lambda: (lambda ms: (ms.results, ms.best, ms))(ff.multistart(fun, lo, hi, m, (x, y), log_scale=True, key=jax.random.key(next(keys))))  # noqa: E731
            first, second, (_, _, ms) = timed(run, repeats=2)
            starts = jnp.asarray(ms.starts)
            o_first, o_run, (o_params, _) = timed(lambda: opt(starts, x, y), repeats=2)
            found = lambda params: np.mean([nist.lre(p, prob.certified) >= 4 for p in np.asarray(params)[:20_000]])  # noqa: E731
            rows.append([pname, f"{m:,}", f"{first:.2f}", f"{second * 1e3:.0f}", f"{o_first:.2f}", f"{o_run * 1e3:.0f}", f"**{o_run / second:.1f}×**", f"{found(ms.results.params):.2f}", f"{found(o_params):.2f}"])
            print(rows[-1], flush=True)
    report.table(["problem", "starts", "fitfleet 1st (s)", "fitfleet 2nd (ms)", "optimistix 1st (s)", "optimistix (ms)", "optimistix / fitfleet", "found: fitfleet", "found: optimistix"], rows)


def section_single(report, small):
    x, y, x0, _ = peak1d_data(1, 3)
    x, y, p0 = jnp.asarray(x), jnp.asarray(y[0]), jnp.asarray(x0[0])
    rows = []
    first, run, res = timed(lambda: ff.least_squares(peak1d, p0, (x, y)), repeats=20)
    rows.append(["least_squares, eager", f"{first:.2f}", f"{run * 1e3:.2f}"])
    f = jax.jit(lambda yy: ff.least_squares(peak1d, p0, (x, yy)).params)
    first, run, _ = timed(lambda: f(y), repeats=20)
    rows.append(["least_squares inside jit", f"{first:.2f}", f"{run * 1e3:.2f}"])
    g = jax.jit(jax.grad(lambda yy: ff.least_squares(peak1d, p0, (x, yy)).params[1]))
    first, run, _ = timed(lambda: g(y), repeats=20)
    rows.append(["grad through a fit (implicit), jit", f"{first:.2f}", f"{run * 1e3:.2f}"])
    report.add("## One fit: latency (1D peak, float64)", "")
    report.table(["call", "first (s)", "later calls (ms)"], rows)


# --------------------------------------------------------------------------- one batched step


def engine_step(fun, x0, args, options, keep_running=False):
    """fit_batch's vmapped step, its data and first states, for fits ``x0`` (batch, n)
    with ``args = (shared, batched)``; ``keep_running``: every tolerance 0 (which
    ``fit_batch`` refuses), so that fits keep stepping."""
    spec, solver, _, monitor = _setup.prepare(fun, x0[0], (args[0], args[1][0]), options)
    if keep_running:
        zero = np.zeros((), solver.tol.ftol.dtype)
        solver = eqx.tree_at(lambda s: (s.tol.ftol, s.tol.xtol, s.tol.gtol, s.tol.max_steps), solver, (zero, zero, zero, np.int32(10**6)))
    mask = (False, True)
    template = dataclasses.replace(spec, args=(args[0], None))
    statics = (fun, solver, template, mask, False, monitor)
    data = (x0, (args[1],), None)
    state = jax.vmap(lambda d: programs.init_one(statics, d))(data)
    return programs.batched_step(statics), data, state


def step_latency(fun, x0, args, options, steps=20, repeats=5):
    """Seconds per step of fitfleet's vmapped step on the fits ``x0`` (all kept running:
    tolerances 0), from ``steps`` steps in one loop."""
    vstep, data, state = engine_step(fun, x0, args, options, keep_running=True)
    loop = jax.jit(lambda d, s: jax.lax.fori_loop(0, steps, lambda i, s: vstep(d, s), s))
    _, run, _ = timed(lambda: loop(data, state), repeats)
    return run / steps


HLO_BOOKKEEPING = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast"}


def hlo_counts(jitted, *args, loop_body=False):
    """The size of one step's program: (StableHLO operations as lowered, HLO
    instructions after XLA's fusion outside fused computations, ``while`` loops), counted
    over the whole program, or with ``loop_body`` over the body of its outermost loop.
    Called functions and nested loops' bodies count once."""
    lowered = jitted.lower(*args)
    ops = _stablehlo_ops(lowered.as_text(), loop_body)
    kernels, loops = _hlo_instructions(lowered.compile().as_text(), loop_body)
    return ops, kernels, loops


def _stablehlo_ops(text, loop_body):
    funcs, name = {}, None
    for line in text.splitlines():
        header = re.match(r'\s*func\.func (?:public |private )?@("[^"]+"|[\w$.\-]+)', line)
        if header:
            name = header.group(1)
            funcs[name] = []
        elif name is not None:
            if line.rstrip() == "  }":
                name = None
            else:
                funcs[name].append(line)

    def count(lines):
        n = 0
        for line in lines:
            call = re.search(r'(?<!custom_)call @("[^"]+"|[\w$.\-]+)', line)
            if call:
                n += count(funcs[call.group(1)])
            elif re.search(r"\bstablehlo\.(?!return)\w+", line):
                n += 1
        return n

    lines = funcs["main"]
    if loop_body:  # the lines of the first while loop's `do` region
        start = next(i for i, line in enumerate(lines) if "stablehlo.while" in line)
        do = next(i for i in range(start, len(lines)) if re.match(r"\s*\} do \{", lines[i]))
        depth, end = 1, do + 1
        while depth:
            depth += lines[end].count("{") - lines[end].count("}")
            end += 1
        lines = lines[do + 1 : end - 1]
    return count(lines)


def _hlo_instructions(text, loop_body):
    computations, name, entry = {}, None, None
    for line in text.splitlines():
        header = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if header:
            name = header.group(2)
            computations[name] = []
            entry = name if header.group(1) else entry
        elif line.startswith("}"):
            name = None
        elif name is not None:
            computations[name].append(line)

    def count(name):
        n, loops = 0, 0
        for line in computations[name]:
            op = re.match(r"\s+(?:ROOT )?%?[\w.\-]+ = .*? ([a-z][\w\-]*)\(", line)
            if not op or op.group(1) in HLO_BOOKKEEPING:
                continue
            n += 1
            called = []
            if op.group(1) == "while":
                loops += 1
                called = re.findall(r"(?:condition|body)=%?([\w.\-]+)", line)
            elif op.group(1) in ("call", "conditional"):
                called = re.findall(r"(?:to_apply|branch_computations=\{|true_computation|false_computation)=?%?([\w.\-]+)", line)
            for callee in called:
                if callee in computations:
                    more, more_loops = count(callee)
                    n, loops = n + more, loops + more_loops
        return n, loops

    if loop_body:
        line = next(line for line in computations[entry] if re.search(r" while\(", line))
        body = re.search(r"body=%?([\w.\-]+)", line).group(1)
        cond = re.search(r"condition=%?([\w.\-]+)", line).group(1)
        (nb, lb), (nc, lc) = count(body), count(cond)
        return nb + nc, lb + lc
    return count(entry)


def mgh10_starts(n):
    """NIST MGH10 from multi-start's log-uniform starts (three decades around Start 1),
    as (fun, (x, y per fit, starts))."""
    prob = nist.load("MGH10")
    s1 = np.asarray(prob.start1, np.float64)
    rng = np.random.default_rng(4)
    starts = s1 * 10 ** rng.uniform(-1.5, 1.5, (n, s1.size))
    return prob.residual(), (np.asarray(prob.x), np.broadcast_to(np.asarray(prob.y), (n, prob.y.size)), starts, None)


# "current": the solver's Cholesky loop (the fit alone, the CPU path); "spectral": its
# vectorised() search (the accelerator path).
STEP_VARIANTS = ("current", "spectral")  # lean_lm.VARIANTS has the other prototypes


def section_steps(report, small):
    """One batched step at 1,024 fits: its size (HLO) and its latency."""
    report.add("## One batched step at 1,024 fits: size and latency", "")
    report.add(
        "*StableHLO ops*: operations of one vmapped step as lowered (a nested loop's body counted once); *HLO "
        f"instructions*: top-level instructions of the step after XLA:{DEVICE.platform.upper()}'s fusion (outside fused "
        "computations: about the kernels a GPU launches per step, more per iteration of a nested loop); *loops*: "
        "`while` loops inside one step; *run per step*: with the solver's damping search, a `while_loop` that under "
        "`vmap` runs until the slowest fit's search converges, its body's instructions once per trip (trips: mean over "
        "the first 20 steps of the fits' own run of the most factorisations any running fit needed; per fit: the mean). "
        "*Latency*: one step of 1,024 fits, all kept running (tolerances 0), from a loop of 20 steps; optimistix: its "
        "whole solve (20 steps) / 20. Variants of fitfleet's LM: `lean_lm.py`.",
        "",
    )
    rows = []
    cases = {
        "2D Gaussian f32": (gauss2d, gauss2d_data(1024), False, GAUSS2D),
        "1D peak f64": (peak1d, peak1d_data(1024), True, PEAK1D),
        "MGH10 f64, multi-start": (*mgh10_starts(1024), True, dict(max_steps=400)),
    }
    for label, (fun, data, x64, options) in cases.items():
        with jax.enable_x64(x64):
            dtype = jnp.float64 if x64 else jnp.float32
            shared, batched, x0 = (jnp.asarray(a, dtype) for a in data[:3])
            for variant in STEP_VARIANTS:
                lean_lm.fresh()
                with lean_lm.use(variant):
                    vstep, d, s = engine_step(fun, x0, (shared, batched), options, keep_running=True)
                    ops, kernels, loops = hlo_counts(jax.jit(vstep), d, s)
                    effective = f"{kernels}"
                    if loops:  # the damping loop runs to its slowest fit's search
                        real = engine_step(fun, x0, (shared, batched), options)  # the fits' own tolerances
                        jstep = jax.jit(real[0])
                        states = [real[2]]
                        for _ in range(20):
                            states.append(jstep(real[1], states[-1]))
                        trips, per_fit = lean_lm.search_statistics(states)
                        unrolled = int(variant.split("-")[1].split("+")[0]) if "+" in variant else 0
                        runs = sum(max(0, t - unrolled) for t in trips) / max(1, len(trips))
                        inner, _ = _hlo_instructions(jax.jit(vstep).lower(d, s).compile().as_text(), loop_body=True)
                        effective = f"{kernels + (runs - 1) * inner:.0f} ({runs:.2f} trips of {inner}; searches: {per_fit:.2f} factorisations per fit, {max(trips, default=0)} at most)"
                    latency = step_latency(fun, x0, (shared, batched), options)
                rows.append([label, f"fitfleet LM, damping search: {variant}", ops, kernels, loops, effective, f"{latency * 1e6:.0f}"])
                print(rows[-1], flush=True)
            lean_lm.fresh()
            loop = jax.jit(lambda p: ref_lm_fixed(fun, p, shared, batched, 20))
            ops, kernels, loops = hlo_counts(loop, x0, loop_body=True)
            _, run, _ = timed(lambda: loop(x0), 5)
            rows.append([label, "reference LM", ops, kernels, loops, kernels, f"{run / 20 * 1e6:.0f}"])
            opt = optimistix_batch(fun, 0.0, 0.0, 20)
            _, run, _ = timed(lambda: opt(x0, shared, batched), 5)
            rows.append([label, "optimistix LM", "-", "-", "-", "-", f"{run / 20 * 1e6:.0f}"])
            print(rows[-2:], flush=True)
    report.table(["model", "step", "StableHLO ops", "HLO instructions", "loops", "HLO instructions run per step", "latency (µs)"], rows)


def ref_lm_fixed(fun, p, shared, batched, steps):
    return jax.vmap(lambda q, d: ref_lm(lambda u: fun(u, shared, d), q, maxit=steps, tol=0.0))(p, batched)


SECTIONS = {"syncs": section_syncs, "steps": section_steps, "gauss2d": section_gauss2d, "peak1d": section_peak1d, "stragglers": section_stragglers, "multistart": section_multistart, "single": section_single}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="small sizes (CPU)")
    parser.add_argument("--only", default="", help="comma-separated sections: " + ",".join(SECTIONS))
    parser.add_argument("--out", default=None)
    opts = parser.parse_args()
    only = [s for s in opts.only.split(",") if s] or list(SECTIONS)
    report = Report()
    command = "python benchmarks/accelerator.py" + (" --small" if opts.small else "") + (f" --only {opts.only}" if opts.only else "")
    report.add(
        "# fitfleet on an accelerator (issue 19)",
        "",
        f"Command: `{command}`  ",
        f"Device: {DEVICE.platform}, {DEVICE.device_kind} ({len(jax.devices())} device(s)); host {platform.machine()}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start; jax {jax.__version__}, "
        f"optimistix {optx.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
    )
    for name in only:
        SECTIONS[name](report, opts.small)
    default = "accelerator_cpu.md" if ON_CPU else "accelerator.md"
    out = Path(opts.out) if opts.out else HERE / "results" / default
    if opts.out or not opts.only:
        out.write_text("\n".join(report.lines) + "\n")


if __name__ == "__main__":
    main()
