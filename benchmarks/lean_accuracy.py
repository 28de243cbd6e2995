"""Do the lean LM prototypes (``lean_lm.py``) keep fitfleet's accuracy and robustness?

For each damping search (``current``: the solver's own), fitfleet's ``least_squares``
(``method="lm"``, default tolerances) on the three suites the LM step answers to:

- NIST StRD, 27 problems x 2 starts (``benchmarks/nist.py``): mean and worst LRE, runs
  with LRE >= 4;
- Moré-Garbow-Hillstrom, 47 problems x 3 starts (``benchmarks/mgh.py``): runs reaching
  the lowest cost any variant or scipy (``lm``, ``trf``) found (relative 1e-6, or zero to
  round-off);
- bounds from awkward starts, 480 fits (``benchmarks/bounds.py``): fits reaching the
  lowest cost any variant or scipy ``trf`` found;

and the mean steps per fit on each.

    python benchmarks/lean_accuracy.py        # prints a table (about 10 minutes on 2 cores)
"""

import math
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy.optimize import least_squares as scipy_least_squares  # noqa: E402

import fitfleet as ff  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE)]  # tests first: its nist and mgh modules
import bounds  # noqa: E402
import lean_lm  # noqa: E402
import mgh  # noqa: E402
import nist  # noqa: E402

REL, ZERO, ZERO_CAP = 1e-6, 1e-20, 1e-12  # as benchmarks/mgh.py


def nist_runs():
    out = {}
    for name in nist.NAMES:
        prob = nist.load(name)
        fun = prob.residual()
        for k, start in enumerate((prob.start1, prob.start2)):
            res = ff.least_squares(fun, jnp.asarray(start, jnp.float64), (prob.x, prob.y))
            out[name, k] = (nist.lre(np.asarray(res.params), prob.certified), int(res.n_steps))
    return out


def mgh_runs():
    out = {}
    for prob in mgh.PROBLEMS:
        for factor in (1, 10, 100):
            res = ff.least_squares(prob.fun, jnp.asarray(prob.start(factor), jnp.float64))
            out[prob.name, factor] = (float(res.cost), int(res.n_steps))
    return out


def mgh_scipy():
    out = {}
    for prob in mgh.PROBLEMS:
        fun = jax.jit(prob.fun)
        jac = jax.jit(jax.jacfwd(prob.fun))
        for factor in (1, 10, 100):
            x0 = np.asarray(prob.start(factor), np.float64)
            costs = []
            for method in ("lm", "trf"):
                try:
                    with np.errstate(all="ignore"):
                        r = scipy_least_squares(lambda p: np.asarray(fun(p)), x0, jac=lambda p: np.asarray(jac(p)), method=method, ftol=1e-8, xtol=1e-8, gtol=1e-8)
                    costs.append(float(r.cost))
                except Exception:
                    costs.append(math.inf)
            r0 = np.asarray(fun(x0))
            out[prob.name, factor] = (min(costs), 0.5 * float(r0 @ r0))
    return out


def bounds_runs(with_scipy=False):
    out = {}
    for seed, (label, (model, draw)) in enumerate(bounds.MODELS.items()):
        for k, kind in enumerate(("lower 0", "box", "log")):
            g = np.random.default_rng(100 * seed + k)
            residual = jax.jit(lambda p, t, y, model=model: model(jnp, p, t) - y)
            jac = jax.jit(jax.jacfwd(lambda p, model=model: model(jnp, p, bounds.T)))
            for i in range(bounds.N_DATA):
                truth = np.array(draw(g), float)
                y = model(np, truth, bounds.T) + 0.01 * g.standard_normal(bounds.T.size)
                x0, lo, hi, options = bounds.setting(kind, truth, g)
                if with_scipy:
                    inside = np.clip(x0, lo + 1e-10, np.where(np.isfinite(hi), hi - 1e-10, np.inf))
                    best = math.inf
                    for x_scale in (1.0, "jac"):
                        try:
                            with np.errstate(all="ignore"):
                                r = scipy_least_squares(lambda p: model(np, p, bounds.T) - y, inside, jac=lambda p: np.asarray(jac(p)), bounds=(lo, hi), method="trf", x_scale=x_scale)
                            best = min(best, float(r.cost) if r.status > 0 else math.inf)
                        except (ValueError, np.linalg.LinAlgError):
                            pass
                    out[label, kind, i] = (best, 0)
                else:
                    res = ff.least_squares(residual, jnp.asarray(x0), (jnp.asarray(bounds.T), jnp.asarray(y)), **options)
                    out[label, kind, i] = (float(res.cost) if bool(res.success) else math.inf, int(res.n_steps))
    return out


def main():
    variants = sys.argv[1].split(",") if len(sys.argv) > 1 else list(lean_lm.VARIANTS)
    results = {}
    for variant in variants:
        t0 = time.perf_counter()
        lean_lm.fresh()
        with lean_lm.use(variant):
            results[variant] = (nist_runs(), mgh_runs(), bounds_runs())
        print(f"{variant}: {time.perf_counter() - t0:.0f} s", flush=True)
    scipy_mgh, scipy_bounds = mgh_scipy(), bounds_runs(with_scipy=True)
    rows = []
    for variant, (n, m, b) in results.items():
        lre = np.array([v[0] for v in n.values()])
        reached_m = 0
        for key, (cost, _) in m.items():
            best = min([results[v][1][key][0] for v in results] + [scipy_mgh[key][0]])
            start = scipy_mgh[key][1]
            zero = min(ZERO * max(1.0, start), ZERO_CAP) if math.isfinite(start) else ZERO_CAP
            reached_m += math.isfinite(cost) and (cost <= best + REL * abs(best) or cost <= zero)
        reached_b = 0
        for key, (cost, _) in b.items():
            best = min([results[v][2][key][0] for v in results] + [scipy_bounds[key][0]])
            reached_b += cost <= best * (1 + REL) + 1e-15
        steps = lambda runs: np.mean([v[1] for v in runs.values()])  # noqa: E731
        rows.append(
            f"| {variant} | {lre.mean():.2f} | {lre.min():.1f} | {int(np.sum(lre >= 4))}/{lre.size} | {steps(n):.1f} "
            f"| {reached_m}/{len(m)} ({reached_m / len(m):.2f}) | {steps(m):.1f} | {reached_b}/{len(b)} ({reached_b / len(b):.2f}) | {steps(b):.1f} |"
        )
    print("| damping search | NIST mean LRE | worst | LRE ≥ 4 | steps | MGH reached best | steps | bounds reached best | steps |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
