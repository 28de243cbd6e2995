"""Multi-start on a rugged problem: a damped oscillation, whose frequency and phase have
local optima.

``y = A·exp(−k·t)·cos(ω·t + φ)`` is fitted to 150 noisy points from 256 starts spread
over a box (Latin hypercube; the rates k and ω log-uniformly), each fit kept inside the
same box by ``bounds``.  A start near the wrong frequency settles into a local optimum:
a small oscillation at another frequency, often with the phase stuck on its bound.  Two
pictures tell the story (pyPESTO's standard pair):

- the waterfall: final costs sorted, as offsets from the best on a log axis; the starts
  under the threshold found the best optimum, each plateau above it is a local optimum,
  and starts that did not converge are marked by status;
- the parameters of all fits, one row per parameter with the bounds at its ends: the
  fits that found the best agree (red, the best), the others spread out.

The true values are A = 2, k = 0.2, ω = 6, φ = 0.6; noise sd 0.05.

Run:  python examples/multistart_plots.py [--out DIR]
(needs matplotlib; writes multistart.png next to this file or into DIR)
"""

import argparse
import math
import pathlib

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

import fitfleet as ff  # noqa: E402
import fitfleet.plot  # noqa: E402, F401

TRUE = [2.0, 0.2, 6.0, 0.6]
NAMES = ["A", "k", "ω", "φ"]
LOWER = [0.1, 0.01, 0.5, -math.pi]
UPPER = [5.0, 2.0, 20.0, math.pi]
LOG = [False, True, True, False]  # draw starts (and plot) k and ω on a log scale


def oscillation(p, t):
    return p[0] * jnp.exp(-p[1] * t) * jnp.cos(p[2] * t + p[3])


def residual(p, t, y):
    return (oscillation(p, t) - y) / 0.05


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent))
    opts = parser.parse_args()

    t = jnp.linspace(0.0, 10.0, 150)
    rng = np.random.default_rng(0)
    y = oscillation(jnp.array(TRUE), t) + 0.05 * jnp.asarray(rng.normal(size=t.size))
    ms = ff.multistart(residual, LOWER, UPPER, 256, (t, y), log_scale=LOG, bounds=(LOWER, UPPER), max_steps=200)
    print(ms.summary(max_optima=6))
    print("best fit:", ", ".join(f"{n} = {v:.4f}" for n, v in zip(NAMES, np.asarray(ms.best.params))))

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    ff.plot.waterfall(ms, ax=left)
    ff.plot.parameters(ms, n_best=ms.n_starts, names=NAMES, lower=LOWER, upper=UPPER, log=LOG, ax=right)
    path = pathlib.Path(opts.out) / "multistart.png"
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
