"""Robustness from poor starts: starts spread over six decades on classic models.

Five classic nonlinear models, each fitted to one noisy data set (fixed seed) from
``N_STARTS`` starts.  Each start draws every parameter as ``truth_j · 10^U(−3, 3)``
(log-uniform over 1e-3..1e3 times the truth), with a random sign where the sign is
meaningful for the model (an amplitude, an offset, a position; not a rate, a
half-saturation constant or a Hill exponent, whose negative values are another model).

=====================  ======================================  ============================
model                  y(x)                                    signs drawn
=====================  ======================================  ============================
Michaelis-Menten       V·x / (K + x)                           V
exponential decay      A·exp(−k·x) + c                         A, c
Hill                   V / (1 + (K/x)^n)                       V
Gaussian peak          A·exp(−(x − μ)² / (2 s²))               A, μ, s
logistic               L / (1 + exp(−r·(x − x₀)))              L, r, x₀
=====================  ======================================  ============================

Methods: fitfleet ``least_squares`` ``method="lm"``, ``"gn"`` and ``"trf"``, scipy
``least_squares`` ``method="lm"`` (MINPACK) and ``"trf"``, all at their default
tolerances (ftol = xtol = gtol = 1e-8) and step budgets; scipy gets the same JAX
residual and exact Jacobian (``jax.jacfwd``), each jitted once per model.

A run *reaches the best* when its final cost (½‖r‖², whatever its status) is within a
relative ``RTOL`` = 1e-6 of the lowest cost any method found from any start on that
model (the global optimum as far as anyone found it).  Starts at which the residual or
the Jacobian is not finite (a Hill exponent of 2000 overflows) are left out: no method
can start there.  A run that raises (scipy ``trf`` on a Jacobian that turns non-finite
mid-fit) counts as not reaching the best.  *Success elsewhere*: runs that report success (fitfleet
``success``, scipy ``status > 0``) at a cost that is not the best: true local minima
(the Michaelis-Menten poles at K = −x_k enclose some) or false successes.

Robust losses (a second table): scipy's robust-regression example (the ``least_squares``
docstring: ``y = a + b·exp(c·t)``, 15 points on [0, 10], a = 0.5, b = 2, c = −1, noise
0.1, 3 outliers ×10, ``f_scale = 0.1``), ten data sets (``gen_data`` seeds 0-9), each
from ``x0 = ones`` (the start that used to fail), scipy's ``[1, 1, 0]`` and six starts
drawn as above within one decade; fitfleet ``lm``/``gn`` against scipy ``trf`` (scipy's
``lm`` has no robust losses).  A fit reaches the best when its cost is within ``RTOL``
of the lowest any method found for that data set.

    python benchmarks/starts.py            # writes benchmarks/results/starts.md
"""

import platform
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

N_STARTS = 128
DECADES = 3  # starts at truth · 10^U(−DECADES, DECADES)
RTOL = 1e-6
METHODS = ("fitfleet lm", "fitfleet gn", "fitfleet trf", "scipy lm", "scipy trf")


def michaelis_menten(p, x):
    return p[0] * x / (p[1] + x)


def exponential_decay(p, x):
    return p[0] * jnp.exp(-p[1] * x) + p[2]


def hill(p, x):
    return p[0] / (1 + (p[1] / x) ** p[2])


def gaussian_peak(p, x):
    return p[0] * jnp.exp(-0.5 * ((x - p[1]) / p[2]) ** 2)


def logistic(p, x):
    return p[0] / (1 + jnp.exp(-p[1] * (x - p[2])))


MODELS = {  # model, x, truth, noise sd, which parameters get a random sign
    "Michaelis-Menten": (michaelis_menten, np.linspace(0.1, 30, 20), [29.0, 6.0], 0.5, [True, False]),
    "exponential decay": (exponential_decay, np.linspace(0, 10, 30), [5.0, 0.4, 1.0], 0.05, [True, False, True]),
    "Hill": (hill, np.logspace(-1, 2, 25), [10.0, 3.0, 2.0], 0.2, [True, False, False]),
    "Gaussian peak": (gaussian_peak, np.linspace(0, 10, 40), [4.0, 6.0, 1.2], 0.05, [True, True, True]),
    "logistic": (logistic, np.linspace(0, 20, 30), [10.0, 0.8, 8.0], 0.2, [True, True, True]),
}


def starts(truth, signed, g):
    truth = np.asarray(truth)
    magnitude = np.abs(truth) * 10 ** g.uniform(-DECADES, DECADES, (N_STARTS, truth.size))
    sign = np.where(np.asarray(signed) & (g.random((N_STARTS, truth.size)) < 0.5), -1.0, 1.0)
    return magnitude * sign * np.sign(truth)


def fit_all(model, x, y, x0s):
    """Final cost and reported success of every method from every start."""
    residual = jax.jit(lambda p, x, y: model(p, x) - y)
    jacobian = jax.jit(jax.jacfwd(residual))
    f = lambda p: np.asarray(residual(p, x, y))  # noqa: E731
    J = lambda p: np.asarray(jacobian(p, x, y))  # noqa: E731
    out = {m: ([], []) for m in METHODS}
    for x0 in x0s:
        for method in ("lm", "gn", "trf"):
            res = ff.least_squares(residual, jnp.asarray(x0), (jnp.asarray(x), jnp.asarray(y)), method=method)
            out[f"fitfleet {method}"][0].append(float(res.cost))
            out[f"fitfleet {method}"][1].append(bool(res.success))
        for method in ("lm", "trf"):
            try:
                with warnings.catch_warnings(), np.errstate(all="ignore"):
                    warnings.simplefilter("ignore")
                    res = scipy_least_squares(f, x0, jac=J, method=method)
                cost, success = float(res.cost), bool(res.status > 0)
            except (ValueError, np.linalg.LinAlgError):  # trf's SVD of a non-finite Jacobian
                cost, success = np.inf, False
            out[f"scipy {method}"][0].append(cost)
            out[f"scipy {method}"][1].append(success)
    return {m: (np.array(c), np.array(s)) for m, (c, s) in out.items()}


ROBUST_LOSSES = ("soft_l1", "huber", "cauchy", "arctan")
ROBUST_TRUTH = np.array([0.5, 2.0, -1.0])


def robust_data(seed):
    """scipy's ``gen_data`` from the ``least_squares`` docstring, seeded."""
    t = np.linspace(0, 10, 15)
    g = np.random.default_rng(seed)
    error = 0.1 * g.standard_normal(t.size)
    error[g.integers(0, t.size, 3)] *= 10
    return t, ROBUST_TRUTH[0] + ROBUST_TRUTH[1] * np.exp(ROBUST_TRUTH[2] * t) + error


def robust_rows():
    residual = jax.jit(lambda p, t, y: p[0] + p[1] * jnp.exp(p[2] * t) - y)
    jacobian = jax.jit(jax.jacfwd(residual))
    g = np.random.default_rng(100)
    x0s = [np.ones(3), np.array([1.0, 1.0, 0.0])]
    x0s += list(ROBUST_TRUTH * 10 ** g.uniform(-1, 1, (6, 3)) * np.where(g.random((6, 3)) < 0.5, -1, 1))
    methods = ("fitfleet lm", "fitfleet gn", "fitfleet trf", "scipy trf")
    rows = []
    for loss in ROBUST_LOSSES:
        reached = {m: 0 for m in methods}
        from_ones = {m: 0 for m in methods}
        n = 0
        for seed in range(10):
            t, y = robust_data(seed)
            costs = {m: [] for m in methods}
            for x0 in x0s:
                for method in ("lm", "gn", "trf"):
                    res = ff.least_squares(residual, jnp.asarray(x0), (t, y), method=method, loss=loss, f_scale=0.1)
                    costs[f"fitfleet {method}"].append(float(res.cost))
                try:
                    with warnings.catch_warnings(), np.errstate(all="ignore"):
                        warnings.simplefilter("ignore")
                        out = scipy_least_squares(
                            lambda p: np.asarray(residual(p, t, y)), x0, jac=lambda p: np.asarray(jacobian(p, t, y)),
                            method="trf", loss=loss, f_scale=0.1,
                        )  # fmt: skip
                    costs["scipy trf"].append(float(out.cost))
                except (ValueError, np.linalg.LinAlgError):
                    costs["scipy trf"].append(np.inf)
            best = np.nanmin([np.nanmin(c) for c in costs.values()])
            for m, c in costs.items():
                hit = np.nan_to_num(np.array(c), nan=np.inf) <= best * (1 + RTOL)
                reached[m] += int(np.sum(hit))
                from_ones[m] += int(hit[0])
            n += len(x0s)
        rows.append([loss, *(f"{reached[m] / n:.2f} ({from_ones[m]}/10)" for m in methods)])
        print(loss, rows[-1], flush=True)
    return methods, rows


def finite_start(model, x, x0):
    r = model(jnp.asarray(x0), x)
    J = jax.jacfwd(model)(jnp.asarray(x0), x)
    return bool(jnp.all(jnp.isfinite(r)) & jnp.all(jnp.isfinite(J)))


def main():
    out_path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "starts.md"
    t0 = time.perf_counter()
    rows, totals, n_total = [], {m: 0 for m in METHODS}, 0
    elsewhere_rows = []
    for seed, (label, (model, x, truth, noise, signed)) in enumerate(MODELS.items()):
        g = np.random.default_rng(seed)
        y = np.asarray(model(jnp.asarray(truth), x)) + noise * g.standard_normal(x.size)
        x0s = [x0 for x0 in starts(truth, signed, g) if finite_start(model, x, x0)]
        results = fit_all(model, x, y, x0s)
        costs = np.stack([c for c, _ in results.values()])
        best = np.nanmin(costs)
        reached = {m: np.nan_to_num(c, nan=np.inf) <= best * (1 + RTOL) for m, (c, _) in results.items()}
        elsewhere = {m: int(np.sum(s & ~reached[m])) for m, (_, s) in results.items()}
        rows.append([label, str(len(x0s)), f"{best:.6g}", *(f"{np.mean(reached[m]):.2f}" for m in METHODS)])
        elsewhere_rows.append([label, *(str(elsewhere[m]) for m in METHODS)])
        for m in METHODS:
            totals[m] += int(np.sum(reached[m]))
        n_total += len(x0s)
        print(label, len(x0s), {m: round(float(np.mean(v)), 3) for m, v in reached.items()}, elsewhere, flush=True)
    robust_methods, robust = robust_rows()
    lines = [
        "# Robustness from poor starts: starts over six decades",
        "",
        "Command: `python benchmarks/starts.py`  ",
        f"Machine: {platform.machine()}, jax {jax.__version__}, scipy {scipy.__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {time.perf_counter() - t0:.0f} s.",
        "",
        f"Fraction of starts per model (each parameter {10.0**-DECADES:g}..{10.0**DECADES:g} times the truth, "
        f"log-uniform, random signs where meaningful) whose final cost is within a relative {RTOL:g} of the "
        "lowest any method found on that model. Models, methods and the rules: see the script's docstring.",
        "",
        "| model | starts | best cost | " + " | ".join(METHODS) + " |",
        "|---|---|---|" + "---|" * len(METHODS),
        *("| " + " | ".join(r) + " |" for r in rows),
        f"| **all** | {n_total} | | " + " | ".join(f"**{totals[m] / n_total:.2f}**" for m in METHODS) + " |",
        "",
        "Runs that reported success at a cost other than the best (local minima, or false successes):",
        "",
        "| model | " + " | ".join(METHODS) + " |",
        "|---|" + "---|" * len(METHODS),
        *("| " + " | ".join(r) + " |" for r in elsewhere_rows),
        "",
        "## Robust losses: scipy's robust-regression example",
        "",
        f"Fraction of {10 * 8} fits per loss (10 data sets, 8 starts each) within a relative {RTOL:g} of the "
        "lowest cost any method found for the data set; in brackets, of the 10 fits from `x0 = ones`. "
        "Setup: see the script's docstring.",
        "",
        "| loss | " + " | ".join(robust_methods) + " |",
        "|---|" + "---|" * len(robust_methods),
        *("| " + " | ".join(r) + " |" for r in robust),
        "",
    ]
    out_path.write_text("\n".join(lines))
    print("wrote", out_path, f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
