"""Many fits at once: fitfleet against its peers, side by side, on the same data.

    python benchmarks/batch.py            # full run (about 15 minutes on 2 cores)
    python benchmarks/batch.py --quick    # smaller sizes, fewer repeats
    python benchmarks/batch.py --only gauss2d,stragglers

Writes ``benchmarks/results/batch.md``.  Every timing is the median of several runs;
in sections 1 and 2 the runs of the methods compared take turns, so that load from
elsewhere on a shared machine hits them alike.  The first call of each program (tracing
+ XLA compilation + one run) is reported separately as "first call", and compile time
is the first call minus the median run.

Sections (see issue #3): (1) Gpufit's 2D Gaussian benchmark in float32, (2) a 1D
Gaussian peak in float64, (3) stragglers, (4) multi-start on NIST's higher-difficulty
problems, (5) scaling with the number of fits and compile time per model.  Section
``trf`` (issue #22, not in the default run) times ``method="trf"`` against ``"lm"`` on
the workloads of sections 1-4:

    python benchmarks/batch.py --only trf --out benchmarks/results/batch_trf.md
"""

import argparse
import importlib.metadata
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)  # a script, not the library: float64 available;
# every array below carries an explicit dtype.

import equinox as eqx  # noqa: E402
import jaxopt  # noqa: E402
import optimistix as optx  # noqa: E402
import scipy  # noqa: E402
from scipy.optimize import least_squares as scipy_least_squares  # noqa: E402

import fitfleet as ff  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import nist  # noqa: E402

OUT = HERE / "results" / "batch.md"


# --------------------------------------------------------------------------- timing


def block(tree):
    return jax.block_until_ready(tree)


def settle():
    """Wait until fitfleet's background compilation (the tail's program, which a first
    call of fit_batch leaves compiling) is done; seconds waited."""
    t0 = time.perf_counter()
    ff.wait_for_compilation()
    return time.perf_counter() - t0


def timed_pair(fn_a, fn_b, repeats):
    """Medians of ``repeats`` calls of each, alternating (after a first call of each), so
    that the machine's load drifts alike for both; and fn_b's last result."""
    block(fn_a()), block(fn_b())
    settle()
    runs_a, runs_b = [], []
    for _ in range(repeats):
        for fn, runs in ((fn_a, runs_a), (fn_b, runs_b)):
            t0 = time.perf_counter()
            out = block(fn())
            runs.append(time.perf_counter() - t0)
    return statistics.median(runs_a), statistics.median(runs_b), out


def timed(fn, repeats):
    """(first call, median of the next ``repeats`` calls) in seconds; fn() -> result.
    The repeats start once any background compilation has finished."""
    t0 = time.perf_counter()
    out = block(fn())
    first = time.perf_counter() - t0
    settle()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = block(fn())
        runs.append(time.perf_counter() - t0)
    return first, statistics.median(runs), out


def interleaved(fns, repeats):
    """``{name: (first call, median run, result)}``: every first call, then the runs
    taken in turn (a, b, c, a, b, c...), so that a burst of load on a shared machine
    hits every method alike rather than one of them."""
    out = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        result = block(fn())
        out[name] = [time.perf_counter() - t0, [], result]
        settle()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out[name][2] = block(fn())
            out[name][1].append(time.perf_counter() - t0)
    return {name: (first, statistics.median(runs), result) for name, (first, runs, result) in out.items()}


def fmt_rate(n, seconds):
    rate = n / seconds
    return f"{rate / 1e3:,.1f}k" if rate >= 1e3 else f"{rate:,.0f}"


# --------------------------------------------------------------------------- models


def gauss2d(p, xy, z):
    """Gpufit's GAUSS_2D: amplitude, x0, y0, width, offset on a 5x5 pixel grid."""
    x, y = xy
    arg = ((x - p[1]) ** 2 + (y - p[2]) ** 2) / (2 * p[3] ** 2)
    return p[0] * jnp.exp(-arg) + p[4] - z


def gauss2d_np(p, x, y, z):
    arg = ((x - p[1]) ** 2 + (y - p[2]) ** 2) / (2 * p[3] ** 2)
    return p[0] * np.exp(-arg) + p[4] - z


def gauss2d_jac_np(p, x, y, z):
    arg = ((x - p[1]) ** 2 + (y - p[2]) ** 2) / (2 * p[3] ** 2)
    e = np.exp(-arg)
    g = p[0] * e
    return np.stack([e, g * (x - p[1]) / p[3] ** 2, g * (y - p[2]) / p[3] ** 2, g * 2 * arg / p[3], np.ones_like(x)], 1)


def gauss2d_data(n, seed, dtype):
    rng = np.random.default_rng(seed)
    grid = np.arange(5.0)
    x, y = (a.ravel() for a in np.meshgrid(grid, grid, indexing="ij"))
    truth = np.stack(
        [rng.uniform(8, 12, n), rng.uniform(1.6, 2.4, n), rng.uniform(1.6, 2.4, n), rng.uniform(0.8, 1.2, n), rng.uniform(0.5, 1.5, n)], 1
    )
    z = gauss2d_np(truth.T[:, :, None], x, y, 0.0)
    z = z + 0.1 * rng.normal(size=z.shape)
    x0 = truth * rng.uniform(0.9, 1.1, truth.shape)
    return dict(xy=np.stack([x, y]).astype(dtype), z=z.astype(dtype), x0=x0.astype(dtype), truth=truth)


def peak1d(p, x, y):
    return p[0] * jnp.exp(-0.5 * ((x - p[1]) / p[2]) ** 2) + p[3] - y


def peak1d_np(p, x, y):
    return p[0] * np.exp(-0.5 * ((x - p[1]) / p[2]) ** 2) + p[3] - y


def peak1d_jac_np(p, x, y):
    u = (x - p[1]) / p[2]
    e = np.exp(-0.5 * u**2)
    return np.stack([e, p[0] * e * u / p[2], p[0] * e * u**2 / p[2], np.ones_like(x)], 1)


def peak1d_data(n, seed, n_far=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(-10.0, 10.0, 64)
    truth = np.stack([rng.uniform(2, 5, n), rng.uniform(-2, 2, n), rng.uniform(1, 2.5, n), rng.uniform(-0.5, 0.5, n)], 1)
    y = peak1d_np(truth.T[:, :, None], x, 0.0) + 0.05 * rng.normal(size=(n, x.size))
    x0 = truth * rng.uniform(0.8, 1.2, truth.shape)
    far = rng.choice(n, n_far, replace=False)
    return dict(x=x, y=y, x0=x0, truth=truth, far=far)


# --------------------------------------------------------------------------- peers


def optimistix_batch(fun, rtol, atol, max_steps):
    solver = optx.LevenbergMarquardt(rtol=rtol, atol=atol)

    @jax.jit
    def run(x0, shared, data):
        def one(p, d):
            sol = optx.least_squares(lambda q, a: fun(q, *a), solver, p, (shared, d), max_steps=max_steps, throw=False)
            return sol.value, sol.stats["num_steps"]

        return jax.vmap(one)(x0, data)

    return run


def jaxopt_batch(fun, tol, max_steps):
    @jax.jit
    def run(x0, shared, data):
        def one(p, d):
            lm = jaxopt.LevenbergMarquardt(lambda q, a, b: fun(q, a, b), maxiter=max_steps, tol=tol, xtol=tol, gtol=tol, solver="cholesky")
            out = lm.run(p, shared, d)
            return out.params, out.state.iter_num

        return jax.vmap(one)(x0, data)

    return run


def scipy_loop(fun_np, jac_np, x0, shared, data, **options):
    out = []
    for p, d in zip(x0, data):
        out.append(scipy_least_squares(fun_np, p, jac=jac_np or "2-point", args=(*shared, d), method="lm", **options).x)
    return np.asarray(out)


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


def section_gauss2d(report, n, repeats, n_scipy):
    report.add(f"## 1. Gpufit's 2D Gaussian: 5x5 pixels, 5 parameters, {n:,} fits, float32", "")
    report.add(
        "Starts within ±10% of the truth, stop at a relative cost change of 1e-4, at most 20 steps. "
        "fitfleet: `ftol=1e-4, xtol=gtol=0, max_steps=20`; optimistix LM: `rtol=1e-4, atol=1e-6`; "
        "jaxopt LM: `tol=xtol=gtol=1e-4`, Cholesky; scipy: `method='lm', ftol=1e-4, xtol=gtol=1e-15, max_nfev=20`, "
        f"analytic Jacobian, timed on {n_scipy} fits and extrapolated.",
        "",
    )
    d = gauss2d_data(n, 0, np.float32)
    xy, z, x0 = jnp.asarray(d["xy"]), jnp.asarray(d["z"]), jnp.asarray(d["x0"])
    rows = []

    def accuracy(params):
        err = np.abs(np.asarray(params, np.float64) - d["truth"][: len(params)])[:, 1]
        return f"{np.median(err):.3f}"

    opt = optimistix_batch(gauss2d, 1e-4, 1e-6, 20)
    jo = jaxopt_batch(gauss2d, 1e-4, 20)
    timings = interleaved(
        {
            "fitfleet": lambda: ff.fit_batch(gauss2d, x0, (xy, z), shared_args=(0,), ftol=1e-4, xtol=0, gtol=0, max_steps=20),
            "optimistix": lambda: opt(x0, xy, z),
            "jaxopt": lambda: jo(x0, xy, z),
        },
        repeats,
    )
    first, run, res = timings["fitfleet"]
    ff_rate = n / run
    rows.append(["fitfleet `fit_batch`", fmt_rate(n, run), f"{first - run:.2f}", f"{float(jnp.mean(res.n_steps)):.1f}", accuracy(res.params)])
    first, run, (params, steps) = timings["optimistix"]
    ox_rate = n / run
    rows.append(["optimistix LM, jit+vmap", fmt_rate(n, run), f"{first - run:.2f}", f"{float(jnp.mean(steps)):.1f}", accuracy(params)])
    first, run, (params, steps) = timings["jaxopt"]
    jo_rate = n / run
    rows.append(["jaxopt LM, jit+vmap", fmt_rate(n, run), f"{first - run:.2f}", f"{float(jnp.mean(steps)):.1f}", accuracy(params)])

    xy_np, z_np, x0_np = d["xy"].astype(np.float64), d["z"][:n_scipy].astype(np.float64), d["x0"][:n_scipy].astype(np.float64)
    t0 = time.perf_counter()
    params = scipy_loop(gauss2d_np, gauss2d_jac_np, x0_np, (xy_np[0], xy_np[1]), z_np, ftol=1e-4, xtol=1e-15, gtol=1e-15, max_nfev=20)
    sp_rate = n_scipy / (time.perf_counter() - t0)
    rows.append(["scipy `least_squares(method='lm')` loop", fmt_rate(sp_rate, 1), "-", "-", accuracy(params)])

    report.table(["method", "fits/s", "compile s", "mean steps", "median abs error of x0 (px)"], rows)
    report.add(
        f"fitfleet / optimistix: **{ff_rate / ox_rate:.1f}×** (target ≥ 10×); fitfleet / jaxopt: {ff_rate / jo_rate:.1f}×; "
        f"fitfleet / scipy: **{ff_rate / sp_rate:.0f}×** (target ≥ 100×).",
        "",
    )
    return dict(fitfleet=ff_rate, optimistix=ox_rate, jaxopt=jo_rate, scipy=sp_rate)


def section_peak1d(report, n, repeats, n_scipy):
    report.add(f"## 2. 1D Gaussian peak: 64 points, 4 parameters, {n:,} fits, float64", "")
    report.add(
        "Starts within ±20% of the truth; tolerances 1e-10 (fitfleet `ftol=xtol=gtol=1e-10`; optimistix `rtol=atol=1e-10`; "
        "scipy `ftol=xtol=gtol=1e-10`, analytic Jacobian); at most 200 steps.",
        "",
    )
    d = peak1d_data(n, 1)
    x, y, x0 = jnp.asarray(d["x"]), jnp.asarray(d["y"]), jnp.asarray(d["x0"])
    rows = []

    def accuracy(params):
        return f"{np.median(np.abs(np.asarray(params) - d['truth'][: len(params)])[:, 1]):.4f}"

    tol = dict(ftol=1e-10, xtol=1e-10, gtol=1e-10, max_steps=200)
    opt = optimistix_batch(peak1d, 1e-10, 1e-10, 200)
    timings = interleaved({"fitfleet": lambda: ff.fit_batch(peak1d, x0, (x, y), shared_args=(0,), **tol), "optimistix": lambda: opt(x0, x, y)}, repeats)
    first, run, res = timings["fitfleet"]
    ff_rate = n / run
    rows.append(["fitfleet `fit_batch`", fmt_rate(n, run), f"{first - run:.2f}", f"{float(jnp.mean(res.n_steps)):.1f}", accuracy(res.params)])
    first, run, (params, steps) = timings["optimistix"]
    ox_rate = n / run
    rows.append(["optimistix LM, jit+vmap", fmt_rate(n, run), f"{first - run:.2f}", f"{float(jnp.mean(steps)):.1f}", accuracy(params)])
    t0 = time.perf_counter()
    params = scipy_loop(peak1d_np, peak1d_jac_np, d["x0"][:n_scipy], (d["x"],), d["y"][:n_scipy], ftol=1e-10, xtol=1e-10, gtol=1e-10)
    sp_rate = n_scipy / (time.perf_counter() - t0)
    rows.append(["scipy `least_squares(method='lm')` loop", fmt_rate(sp_rate, 1), "-", "-", accuracy(params)])
    report.table(["method", "fits/s", "compile s", "mean steps", "median abs error of center"], rows)
    report.add(f"fitfleet / optimistix: **{ff_rate / ox_rate:.1f}×** (target ≥ 5×); fitfleet / scipy: {ff_rate / sp_rate:.0f}×.", "")
    return dict(fitfleet=ff_rate, optimistix=ox_rate, scipy=sp_rate)


def straggler_data(n, seed, n_far):
    """NIST MGH10 (16 points, 3 parameters): n data sets simulated at the certified
    parameters with NIST's residual SD; easy starts within ±0.5% of the truth (about 4
    steps), ``n_far`` starts at NIST's Start 1, which needs about 300 LM steps."""
    prob = nist.load("MGH10")
    rng = np.random.default_rng(seed)
    clean = np.asarray(prob.model(prob.certified, prob.x))
    y = clean + prob.certified_residual_sd * rng.normal(size=(n, clean.size))
    x0 = prob.certified * rng.uniform(0.995, 1.005, (n, 3))
    far = rng.choice(n, n_far, replace=False)
    x0[far] = prob.start1
    return prob, y, x0, far


def section_stragglers(report, n, repeats):
    report.add(f"## 3. Stragglers: {n:,} fits, 1% of them start far away (float64)", "")
    prob, y, x0, far = straggler_data(n, 2, n // 100)
    easy_x0 = x0.copy()
    easy_x0[far] = prob.certified * 1.002
    fun = prob.residual()
    x, y = jnp.asarray(prob.x), jnp.asarray(y)
    report.add(
        f"NIST MGH10's model (16 points, 3 parameters) on {n:,} simulated data sets; easy starts within ±0.5% of the truth "
        f"(about 4 steps), {len(far)} starts at NIST's Start 1 (about 300 steps). Default tolerances (1e-8). "
        "Wall time of the batch with the far starts over the same batch with every start easy (medians of calls of the two "
        "batches alternating, so that both see the same load).",
        "",
    )
    rows = []
    ratios = {}
    for name, make in [
        ("fitfleet `fit_batch`", lambda x0_: (lambda: ff.fit_batch(fun, x0_, (x, y), shared_args=(0,), max_steps=1000))),
        ("fitfleet, plain `vmap(least_squares)`", lambda x0_: (lambda: _vmapped_ls(fun, x0_, x, y))),
        ("optimistix LM, jit+vmap", lambda x0_: (lambda: _optx_nist(fun)(jnp.asarray(x0_), x, y))),
    ]:
        t_easy, t_mixed, out = timed_pair(make(easy_x0), make(x0), repeats)
        steps = out.n_steps if hasattr(out, "n_steps") else out[1]
        ratios[name] = t_mixed / t_easy
        rows.append([name, f"{t_easy * 1e3:.1f}", f"{t_mixed * 1e3:.1f}", f"**{t_mixed / t_easy:.2f}×**", int(np.max(np.asarray(steps)[far]))])
    report.table(["method", "all easy (ms)", "with 1% far (ms)", "ratio (target ≤ 2×)", "steps of the far fits"], rows)
    return ratios


_VMAPPED = {}


def _vmapped_ls(fun, x0, x, y):
    if fun not in _VMAPPED:
        _VMAPPED[fun] = jax.jit(jax.vmap(lambda p, yy: ff.least_squares(fun, p, (x, yy), max_steps=1000), in_axes=(0, 0)))
    return _VMAPPED[fun](jnp.asarray(x0), y)


_OPTX = {}


def _optx_nist(fun, max_steps=1000):
    """optimistix LM under jit+vmap for fun(b, x, y) with x shared and y batched or shared."""
    key = (fun, max_steps)
    if key not in _OPTX:
        solver = optx.LevenbergMarquardt(rtol=1e-8, atol=1e-8)

        @jax.jit
        def run(x0, x, y):
            def one(p, yy):
                sol = optx.least_squares(lambda q, a: fun(q, *a), solver, p, (x, yy), max_steps=max_steps, throw=False)
                return sol.value, sol.stats["num_steps"]

            return jax.vmap(one, in_axes=(0, 0 if y.ndim == 2 else None))(x0, y)

        _OPTX[key] = run
    return _OPTX[key]


SECOND_CALLS = 5  # the second call is timed this many times, with new starts each, and the median kept
MULTISTART_PROBLEMS = ["MGH09", "MGH10", "Thurber", "BoxBOD", "Rat42", "Eckerle4", "Rat43", "Bennett5"]


def numpy_model(prob):
    """NIST's model written once in jax.numpy, evaluated with numpy instead (same formula,
    no JAX dispatch in scipy's loop)."""
    import types

    model = prob.model
    shim = dict(model.__globals__, jnp=np, _prep=lambda b, x: (np.asarray(b, np.float64), np.asarray(x, np.float64)))
    return types.FunctionType(model.__code__, shim, model.__name__, model.__defaults__, model.__closure__)


def box(start, decades=3.0):
    """Log-uniform box spanning ``decades`` around each start value, sign kept."""
    a, b = start * 10 ** (-decades / 2), start * 10 ** (decades / 2)
    return np.minimum(a, b), np.maximum(a, b)


def section_multistart(report, sizes, n_scipy):
    report.add("## 4. Multi-start on NIST's higher-difficulty problems (float64)", "")
    report.add(
        "Starts drawn log-uniformly (Latin hypercube in log space) within three decades around NIST's Start 1 "
        "(from Start1/10^1.5 to Start1·10^1.5, signs kept). fitfleet `multistart(..., log_scale=True)` with default "
        "tolerances (1e-8); scipy `least_squares(method='lm')` (defaults, finite-difference Jacobian, numpy residual) "
        f"in a loop over the same starts (timed on {n_scipy} starts, extrapolated); optimistix LM (`rtol=atol=1e-8`, "
        "1000 steps) under jit+vmap on the same starts. *First call* includes tracing and compilation; *second call* "
        f"uses new starts (a new key, same shapes; median of {SECOND_CALLS} such calls). *Found*: fraction of starts whose fit reaches the certified "
        "optimum (LRE ≥ 4 in every parameter). The tail's program (for the last few running fits) compiles in the "
        "background after the first call's programs; the second call starts once it is ready (column *tail compile after "
        "1st*: how long after the first call returned). *Steps per fit*: fitfleet's mean `n_steps` (one trial point "
        "each); *nfev per fit*: scipy's mean `nfev` (residual evaluations at trial points, finite differences not "
        "counted): the work each did. Their step budgets differ: fitfleet's default is 100·(n+1) steps, scipy's 100·n "
        "evaluations.",
        "",
    )
    rows = []
    summary = []
    for name in MULTISTART_PROBLEMS:
        prob = nist.load(name)
        fun = prob.residual()
        model_np = numpy_model(prob)
        resid_np = lambda b, x, y, m=model_np: y - m(b, x)  # noqa: E731
        lo, hi = box(prob.start1)
        x, y = jnp.asarray(prob.x), jnp.asarray(prob.y)
        for m in sizes:
            found = lambda params: np.mean([nist.lre(p, prob.certified) >= 4 for p in np.asarray(params)])  # noqa: E731
            t0 = time.perf_counter()
            ms = ff.multistart(fun, lo, hi, m, (x, y), log_scale=True, key=jax.random.key(1))
            block((ms.results, ms.best))  # the rest (optima, p*) is host values already
            first = time.perf_counter() - t0
            background = settle()
            seconds = []
            for k in range(SECOND_CALLS):  # new starts each time
                t0 = time.perf_counter()
                ms = ff.multistart(fun, lo, hi, m, (x, y), log_scale=True, key=jax.random.key(2 + k))
                block((ms.results, ms.best))
                seconds.append(time.perf_counter() - t0)
            second = statistics.median(seconds)
            starts = np.asarray(ms.starts)
            ff_found = found(ms.results.params)

            k = min(m, n_scipy)
            # ms.starts is sorted by fitfleet's final cost: time scipy on a random subset.
            subset = np.random.default_rng(0).permutation(m)[:k]
            t0 = time.perf_counter()
            sp, sp_nfev = [], []
            for s in starts[subset]:
                with np.errstate(all="ignore"):
                    try:
                        out = scipy_least_squares(resid_np, s, args=(prob.x, prob.y), method="lm")
                        sp.append(out.x)
                        sp_nfev.append(out.nfev)
                    except ValueError:  # "Residuals are not finite in the initial point."
                        sp.append(np.full_like(s, np.nan))
            t_scipy = (time.perf_counter() - t0) * m / k
            sp_found = found(sp)  # over the timed subset

            opt = _optx_nist(fun)
            t0 = time.perf_counter()
            block(opt(jnp.asarray(starts[::-1].copy()), x, y))
            ox_first = time.perf_counter() - t0
            t0 = time.perf_counter()
            ox_params, _ = block(opt(jnp.asarray(starts), x, y))
            ox_second = time.perf_counter() - t0
            ox_found = found(ox_params)
            rows.append(
                [name, m, f"{first:.2f}", f"{background:.2f}", f"{second * 1e3:.0f}", f"{t_scipy:.2f}", f"{ox_first:.2f}", f"{ox_second * 1e3:.0f}",
                 f"**{t_scipy / second:.0f}×**", f"{t_scipy / first:.1f}×", f"{np.mean(ms.results.n_steps):.0f}", f"{np.mean(sp_nfev):.0f}",
                 f"{ff_found:.2f}", f"{sp_found:.2f}", f"{ox_found:.2f}",
                 f"{ms.p_star:.2f}", len(ms.optima)]
            )  # fmt: skip
            summary.append(dict(name=name, m=m, second_ratio=t_scipy / second, first_ratio=t_scipy / first))
    report.table(
        ["problem", "starts", "fitfleet 1st (s)", "tail compile after 1st (s)", "fitfleet 2nd (ms)", "scipy loop (s)", "optimistix 1st (s)", "optimistix 2nd (ms)",
         "scipy / fitfleet 2nd (target ≥ 50×)", "scipy / fitfleet 1st (target > 1× at 256)", "steps per fit: fitfleet", "nfev per fit: scipy",
         "found: fitfleet", "found: scipy",
         "found: optimistix", "fitfleet p*", "optima"],
        rows,
    )  # fmt: skip
    return summary


def section_scaling(report, sizes, repeats):
    report.add("## 5. Scaling: Gpufit's 2D Gaussian (float32) from few to many fits", "")
    rows = []
    for n in sizes:
        d = gauss2d_data(n, 3, np.float32)
        xy, z, x0 = jnp.asarray(d["xy"]), jnp.asarray(d["z"]), jnp.asarray(d["x0"])
        reps = repeats if n <= 100_000 else 1
        first, run, res = timed(lambda: ff.fit_batch(gauss2d, x0, (xy, z), shared_args=(0,), ftol=1e-4, xtol=0, gtol=0, max_steps=20), reps)
        rows.append([f"{n:,}", fmt_rate(n, run), f"{run:.3f}", f"{first:.2f}", f"{float(jnp.mean(res.success)):.3f}"])
    report.table(["fits", "fits/s", "run (s)", "first call (s)", "fraction converged"], rows)


def compile_cases():
    """``{model: (first call of fit_batch, x64)}`` on 2,000 fits: a shape no other section
    uses, so the first call compiles afresh."""
    g = gauss2d_data(2000, 5, np.float32)
    p = peak1d_data(2000, 5)
    prob, y, x0, _ = straggler_data(2000, 5, 0)
    fun = prob.residual()
    return {
        "2D Gaussian, 5 params, float32": (lambda: ff.fit_batch(gauss2d, g["x0"], (g["xy"], g["z"]), shared_args=(0,), ftol=1e-4, max_steps=20), False),
        "1D Gaussian, 4 params, float64": (lambda: ff.fit_batch(peak1d, p["x0"], (p["x"], p["y"]), shared_args=(0,)), True),
        "NIST MGH10, 3 params, float64": (lambda: ff.fit_batch(fun, x0, (prob.x, y), shared_args=(0,)), True),
    }  # fmt: skip


# A new process that enables JAX's persistent compilation cache (a user's choice, never
# fitfleet's) in ``argv[1]`` and times the first call of one of compile_cases().
FRESH_PROCESS = """
import sys, time, jax
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
sys.path.insert(0, sys.argv[3])
import batch
fn, x64 = batch.compile_cases()[sys.argv[2]]
with jax.enable_x64(x64):
    t0 = time.perf_counter()
    batch.block(fn())
    print(time.perf_counter() - t0)
"""


def first_call_in_new_process(name, cache_dir):
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(cache_dir), name, str(HERE)], capture_output=True, text=True, check=True
    )
    return float(out.stdout.split()[-1])


def compile_times(report):
    import tempfile

    report.add("## Compile time per model (first call minus a second call, same shapes)", "")
    rows = []
    for name, (fn, x64) in compile_cases().items():
        with jax.enable_x64(x64):
            t0 = time.perf_counter()
            block(fn())
            first = time.perf_counter() - t0
            background = settle()
            _, run, _ = timed(fn, 3)
        with tempfile.TemporaryDirectory() as cache:
            cold = first_call_in_new_process(name, cache)  # fills the cache
            warm = first_call_in_new_process(name, cache)
        rows.append([name, f"{first - run:.2f}", f"{background:.2f}", f"{run * 1e3:.1f}", f"{cold:.2f}", f"{warm:.2f}"])
    report.add(
        "A first call of `fit_batch` on a new model or shape traces four programs (initialisation, round, results, "
        "tail) on the calling thread and compiles them on two worker threads; the tail's program compiles last, in "
        "the background, and the first call does not wait for it (the round's program runs the tail meanwhile). "
        "Compile = first call minus the median of later calls; *tail ready* = how long after the first call returned "
        "the tail's program finished compiling. The last two columns time the first call in a new Python process "
        "that enables JAX's persistent compilation cache (`jax_compilation_cache_dir`, "
        "`jax_persistent_cache_min_compile_time_secs=0`): with the cache empty, then with the cache the first "
        "process filled (tracing remains; compilation becomes a lookup).",
        "",
    )
    report.table(
        ["model (2,000 fits)", "compile (s)", "tail ready (s)", "run (ms)", "new process, empty cache: 1st call (s)", "new process, warm cache: 1st call (s)"],
        rows,
    )  # fmt: skip


def section_trf(report, repeats, quick):
    report.add("## trf against lm in `fit_batch`, on the workloads of sections 1-4", "")
    report.add(
        "Each row runs one workload with `method=\"lm\"` and with `method=\"trf\"` (same data, same options), "
        f"the calls alternating, medians of {repeats} runs after a first (compiling) call of each. "
        "Workloads: (1) 2D Gaussian, float32, `ftol=1e-4, xtol=gtol=0, max_steps=20`; (2) 1D Gaussian peak, float64, "
        "tolerances 1e-10; (3) MGH10 stragglers, 1% of the starts at NIST's Start 1, default tolerances, "
        "`max_steps=1000`; (4) `multistart(..., log_scale=True)` from 1,024 starts on section 4's NIST problems (starts drawn "
        "log-uniformly in a box; the fits themselves unbounded, in the parameters' own units). *Converged*: fraction with `success`; for multistart, *found*: "
        "fraction of starts reaching the certified optimum (LRE >= 4).",
        "",
    )
    rows = []
    n2d = 10_000 if quick else 100_000
    with jax.enable_x64(False):
        d = gauss2d_data(n2d, 0, np.float32)
        xy, z, x0 = jnp.asarray(d["xy"]), jnp.asarray(d["z"]), jnp.asarray(d["x0"])
        fns = {m: (lambda m=m: ff.fit_batch(gauss2d, x0, (xy, z), shared_args=(0,), method=m, ftol=1e-4, xtol=0, gtol=0, max_steps=20)) for m in ("lm", "trf")}
        rows.append(_trf_row(f"2D Gaussian, {n2d:,} fits, float32", interleaved(fns, repeats), lambda r: float(jnp.mean(r.success))))
    p = peak1d_data(1024, 1)
    x, y, x0 = jnp.asarray(p["x"]), jnp.asarray(p["y"]), jnp.asarray(p["x0"])
    tol = dict(ftol=1e-10, xtol=1e-10, gtol=1e-10, max_steps=200)
    fns = {m: (lambda m=m: ff.fit_batch(peak1d, x0, (x, y), shared_args=(0,), method=m, **tol)) for m in ("lm", "trf")}
    rows.append(_trf_row("1D Gaussian peak, 1,024 fits, float64", interleaved(fns, repeats), lambda r: float(jnp.mean(r.success))))
    prob, ys, x0, far = straggler_data(1024, 2, 10)
    fun, x, ys = prob.residual(), jnp.asarray(prob.x), jnp.asarray(ys)
    fns = {m: (lambda m=m: ff.fit_batch(fun, x0, (x, ys), shared_args=(0,), method=m, max_steps=1000)) for m in ("lm", "trf")}
    rows.append(_trf_row("MGH10 stragglers, 1,024 fits, float64", interleaved(fns, repeats), lambda r: float(jnp.mean(r.success))))
    for name in MULTISTART_PROBLEMS if not quick else ("BoxBOD",):
        prob = nist.load(name)
        fun, x, yy = prob.residual(), jnp.asarray(prob.x), jnp.asarray(prob.y)
        lo, hi = box(prob.start1)
        found = lambda ms, c=prob.certified: float(np.mean([nist.lre(q, c) >= 4 for q in np.asarray(ms.results.params)]))  # noqa: E731
        fns = {
            m: (lambda m=m: ff.multistart(fun, lo, hi, 1024, (x, yy), log_scale=True, method=m, key=jax.random.key(1)))
            for m in ("lm", "trf")
        }  # fmt: skip
        timings = interleaved(fns, repeats)
        row = _trf_row(f"multistart {name}, 1,024 starts, float64", timings, found, steps=lambda r: r.results.n_steps)
        rows.append(row + [_scipy_evaluations(prob, np.asarray(timings["trf"][2].starts))])
        if name == "Rat43":  # the scaling that makes trf crawl here, replaced (scipy's x_scale="jac")
            jac = dict(fns, trf=lambda: ff.multistart(fun, lo, hi, 1024, (x, yy), log_scale=True, method="trf", x_scale="jac", key=jax.random.key(1)))
            rows.append(_trf_row(f"multistart {name}, trf with `x_scale=\"jac\"`", interleaved(jac, repeats), found, steps=lambda r: r.results.n_steps))
    rows = [r if len(r) == 9 else r + ["–"] for r in rows]
    report.table(["workload", "lm (ms)", "trf (ms)", "trf / lm (target ≤ 2×)", "steps per fit: lm", "trf", "converged or found: lm", "trf",
                  "scipy on 200 of the starts: evaluations per fit, lm / trf"], rows)  # fmt: skip
    report.add(
        "The last column runs scipy's own `least_squares(method=\"lm\")` (MINPACK) and `method=\"trf\"` (default "
        "`x_scale`, as fitfleet's trf) with the exact Jacobian on 200 of the same starts: where scipy's trf needs about "
        "twice MINPACK's evaluations, a trf that follows scipy's algorithm takes about twice lm's steps, whatever a "
        "step costs. The last row replaces trf's default scaling (scipy's, `x_scale=1`) by scipy's `x_scale=\"jac\"` (running "
        "maximum of the Jacobian's column norms) on the same starts.",
        "",
    )


def _scipy_evaluations(prob, starts, n=200):
    """Mean residual evaluations of scipy's lm and trf (exact Jacobian) from ``n`` of the starts."""
    model = numpy_model(prob)
    fun = lambda b: prob.y - model(b, prob.x)  # noqa: E731
    jac = jax.jit(jax.jacfwd(lambda b: prob.residual()(b, jnp.asarray(prob.x), jnp.asarray(prob.y))))
    jac_np = lambda b: np.asarray(jac(jnp.asarray(b)))  # noqa: E731
    counts = {}
    for method in ("lm", "trf"):
        nfev = []
        for x0 in starts[np.random.default_rng(0).permutation(len(starts))[:n]]:
            with np.errstate(all="ignore"):
                try:
                    nfev.append(scipy_least_squares(fun, x0, jac=jac_np, method=method).nfev)
                except (ValueError, np.linalg.LinAlgError):  # not finite at the start
                    pass
        counts[method] = float(np.mean(nfev))
    return f"{counts['lm']:.1f} / {counts['trf']:.1f}"


def _trf_row(label, timings, quality, steps=lambda r: r.n_steps):
    (_, t_lm, r_lm), (_, t_trf, r_trf) = timings["lm"], timings["trf"]
    return [label, f"{t_lm * 1e3:.1f}", f"{t_trf * 1e3:.1f}", f"**{t_trf / t_lm:.2f}×**", f"{float(np.mean(steps(r_lm))):.1f}",
            f"{float(np.mean(steps(r_trf))):.1f}", f"{quality(r_lm):.3f}", f"{quality(r_trf):.3f}"]  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    parser.add_argument("--only", default="", help="comma-separated sections: gauss2d,peak1d,stragglers,multistart,scaling,compile,trf")
    parser.add_argument("--out", default=str(OUT))
    opts = parser.parse_args()
    only = set(filter(None, opts.only.split(",")))
    want = lambda name: not only or name in only  # noqa: E731
    quick = opts.quick
    report = Report()
    command = "python benchmarks/batch.py" + (" --quick" if quick else "") + (f" --only {opts.only}" if only else "")
    command += f" --out {opts.out}" if opts.out != str(OUT) else ""
    report.add(
        "# fitfleet batch benchmark",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {jax.devices()[0].platform}; "
        f"jax {jax.__version__}, optimistix {optx.__version__}, jaxopt {importlib.metadata.version('jaxopt')}, scipy {scipy.__version__}, "
        f"equinox {eqx.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.  ",
        f"Load average at start: {os.getloadavg()[0]:.1f} (other processes share the cores; ratios are measured side by side).",
        "",
    )
    if want("gauss2d"):
        with jax.enable_x64(False):  # optimistix mixes in float64 in a float32 fit otherwise
                section_gauss2d(report, 10_000 if quick else 100_000, 2 if quick else 5, 200 if quick else 1000)
    if want("peak1d"):
        section_peak1d(report, 1024, 3 if quick else 7, 100 if quick else 300)
    if want("stragglers"):
        section_stragglers(report, 1024, 3 if quick else 7)
    if want("multistart"):
        section_multistart(report, [256] if quick else [256, 1024], 64 if quick else 256)
    if want("scaling"):
        with jax.enable_x64(False):
            section_scaling(report, [100, 1000, 10_000] if quick else [100, 1000, 10_000, 100_000, 1_000_000], 3)
    if want("compile"):
        compile_times(report)
    if "trf" in only:  # not part of the default run
        section_trf(report, 2 if quick else 5, quick)
    if not only or opts.out != str(OUT):
        Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.out).write_text("\n".join(report.lines) + "\n")


if __name__ == "__main__":
    main()
