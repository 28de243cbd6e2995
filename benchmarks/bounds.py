"""Bounded and log-scaled fits from awkward starts: fitfleet against scipy's ``trf``.

A zoo of small models (an exponential decay with offset, Michaelis-Menten, two
exponentials, a Hill curve), each fitted to 40 noisy data sets, under three settings:

- ``lower 0``: every parameter bounded below by 0, about half the starts exactly on that
  bound (an amplitude or a rate starting at 0), the others within a decade of the truth;
- ``box``: every parameter in [0, 10], a third of the starts on a bound;
- ``log``: ``log_scale`` (positive parameters), starts within 1.5 decades of the truth.

Each fit is run by fitfleet's LM, GN and TRF (default tolerances; TRF enforces bounds
itself, so in the ``log`` setting, where an optimum may sit at 0 which ``log p`` cannot
reach, it gets the plain bounds ``[0, ∞)`` instead of ``log_scale``) and by scipy's
``least_squares(method="trf")`` with its default ``x_scale=1`` and with
``x_scale="jac"`` (exact Jacobians, finite-difference free; a start on a bound moved
inside by 1e-10, as scipy requires).  A method *reaches the best* when its cost is
within a relative 1e-6 of the lowest cost any of them found; the table gives how often.
Several of these problems have more than one local minimum, so no method reaches the
best every time.

    python benchmarks/bounds.py            # writes benchmarks/results/bounds.md
"""

import platform
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # a benchmark script is a user: its choice

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
from scipy.optimize import least_squares as scipy_least_squares  # noqa: E402

import fitfleet as ff  # noqa: E402

N_DATA = 40
T = np.linspace(0.1, 6.0, 25)
RTOL = 1e-6


def exp_offset(xp, p, t):
    return p[0] * xp.exp(-p[1] * t) + p[2]


def michaelis_menten(xp, p, t):
    return p[0] * t / (p[1] + t)


def two_exponentials(xp, p, t):
    return p[0] * xp.exp(-p[1] * t) + p[2] * xp.exp(-p[3] * t)


def hill(xp, p, t):
    return p[0] * t ** p[2] / (p[1] ** p[2] + t ** p[2])


MODELS = {  # model, truth sampler
    "exponential + offset": (exp_offset, lambda g: [g.uniform(0.5, 3), 10 ** g.uniform(-1.5, 0.7), g.choice([0, 0.05, 0.3])]),
    "Michaelis-Menten": (michaelis_menten, lambda g: [g.uniform(0.5, 3), 10 ** g.uniform(-1, 1)]),
    "two exponentials": (two_exponentials, lambda g: [g.uniform(0.5, 2), 10 ** g.uniform(-1, 0), g.uniform(0.5, 2), 10 ** g.uniform(0.2, 1)]),
    "Hill": (hill, lambda g: [g.uniform(0.5, 3), g.uniform(0.5, 4), g.uniform(0.5, 4)]),
}


def setting(kind, truth, g):
    """(x0, lower, upper, fitfleet options) for one data set."""
    n = truth.size
    if kind == "lower 0":
        lo, hi = np.zeros(n), np.full(n, np.inf)
        x0 = np.where(g.random(n) < 0.5, 0.0, truth * 10 ** g.uniform(-1, 1, n))
        return x0, lo, hi, dict(bounds=(lo, hi))
    if kind == "box":
        lo, hi = np.zeros(n), np.full(n, 10.0)
        x0 = np.where(g.random(n) < 0.3, g.choice([0.0, 10.0], n), g.uniform(0, 10, n))
        return x0, lo, hi, dict(bounds=(lo, hi))
    lo, hi = np.full(n, 0.0), np.full(n, np.inf)
    x0 = np.maximum(truth, 0.05) * 10 ** g.uniform(-1.5, 1.5, n)
    return x0, lo, hi, dict(log_scale=True)


def run(model, draw, kind, seed):
    g = np.random.default_rng(seed)
    fitfleet_residual = jax.jit(lambda p, t, y: model(jnp, p, t) - y)
    jac = jax.jit(jax.jacfwd(lambda p: model(jnp, p, T)))  # scipy's exact Jacobian, compiled once
    costs = {name: [] for name in ("fitfleet LM", "fitfleet GN", "fitfleet TRF", "scipy trf", "scipy trf, x_scale='jac'")}
    for _ in range(N_DATA):
        truth = np.array(draw(g), float)
        y = model(np, truth, T) + 0.01 * g.standard_normal(T.size)
        x0, lo, hi, options = setting(kind, truth, g)
        for method in ("lm", "gn", "trf"):
            if method == "trf" and kind == "log":
                options = dict(bounds=(lo, hi))
            res = ff.least_squares(fitfleet_residual, jnp.asarray(x0), (jnp.asarray(T), jnp.asarray(y)), method=method, **options)
            costs[f"fitfleet {method.upper()}"].append(float(res.cost) if bool(res.success) else np.inf)
        inside = np.clip(x0, lo + 1e-10, np.where(np.isfinite(hi), hi - 1e-10, np.inf))
        for name, x_scale in (("scipy trf", 1.0), ("scipy trf, x_scale='jac'", "jac")):
            try:
                with np.errstate(all="ignore"):
                    out = scipy_least_squares(
                        lambda p: model(np, p, T) - y, inside, jac=lambda p: np.asarray(jac(p)), bounds=(lo, hi),
                        method="trf", x_scale=x_scale,
                    )  # fmt: skip
                cost = float(out.cost) if out.status > 0 and np.isfinite(out.cost) else np.inf
            except (ValueError, np.linalg.LinAlgError):  # a non-finite residual or Jacobian
                cost = np.inf
            costs[name].append(cost)
    costs = {name: np.array(c) for name, c in costs.items()}
    best = np.min(np.stack(list(costs.values())), axis=0)
    return {name: np.mean(c <= best * (1 + RTOL) + 1e-15) for name, c in costs.items()}



def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "bounds.md"
    kinds = ("lower 0", "box", "log")
    rows, totals = [], None
    t0 = time.perf_counter()
    for seed, (label, (model, draw)) in enumerate(MODELS.items()):
        for k, kind in enumerate(kinds):
            reached = run(model, draw, kind, 100 * seed + k)
            totals = {n: (totals or {}).get(n, 0) + v * N_DATA for n, v in reached.items()}
            rows.append([label, kind, *(f"{v:.2f}" for v in reached.values())])
            print(label, kind, reached, flush=True)
    names = list(totals)
    n_total = N_DATA * len(rows)
    lines = [
        "# Bounded and log-scaled fits from awkward starts",
        "",
        "Command: `python benchmarks/bounds.py`  ",
        f"Machine: {platform.machine()}, jax {jax.__version__}, scipy {scipy.__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {time.perf_counter() - t0:.0f} s.",
        "",
        f"Fraction of {N_DATA} fits per row whose cost is within a relative {RTOL:g} of the lowest any "
        "method found (a failed fit counts as not reaching it). Settings and methods: see the "
        "script's docstring.",
        "",
        "| model | setting | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
        *("| " + " | ".join(map(str, r)) + " |" for r in rows),
        f"| **all {n_total} fits** | | " + " | ".join(f"**{totals[n] / n_total:.2f}**" for n in names) + " |",
        "",
    ]
    out.write_text("\n".join(lines))
    print("wrote", out)


if __name__ == "__main__":
    main()
