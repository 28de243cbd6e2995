"""Profile likelihoods, the sloppiness spectrum and the correlations of a fit whose data
cannot pin down both parameters.

Michaelis-Menten, ``v = Vmax·S / (Km + S)``, measured only at substrate concentrations
below Km (S from 0.2 to 3, Km = 6): the data show the initial slope Vmax/Km well and
the saturation barely, so Vmax and Km are strongly correlated and neither is bounded
above by the data.  The pictures:

- the profile of each parameter (the other refitted at every grid point, 41 points up
  to 4 times the estimate) against χ²₁(95%) = 3.84: each is bounded below, and stays
  under the threshold to the end of the grid above, so the upper end is open (the
  symmetric Wald interval of ``uncertainty`` even reaches negative Km);
- the spectrum of JᵀJ in log-parameters: a stiff direction (the ratio Vmax/Km) and a
  sloppy one hundreds of times weaker, with the share of each parameter in each;
- the correlation matrix (near +1).

The data have known errors (sd 0.8), so the profiles use ``absolute_sigma=True``.

Run:  python examples/profile_plots.py [--out DIR]
(needs matplotlib; writes profile.png next to this file or into DIR)
"""

import argparse
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

VMAX, KM, SD = 29.0, 6.0, 0.8
NAMES = ["Vmax", "Km"]


def michaelis_menten(p, s):
    return p[0] * s / (p[1] + s)


def residual(p, s, v):
    return (michaelis_menten(p, s) - v) / SD


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent))
    opts = parser.parse_args()

    s = jnp.linspace(0.2, 3.0, 12)
    rng = np.random.default_rng(2)
    v = michaelis_menten(jnp.array([VMAX, KM]), s) + SD * jnp.asarray(rng.normal(size=s.size))
    res = ff.least_squares(residual, jnp.array([10.0, 1.0]), (s, v), log_scale=True)  # both rates positive
    u = ff.uncertainty(res, absolute_sigma=True)
    print(u.summary(res.params, NAMES))

    profiles = {}
    for i, name in enumerate(NAMES):
        estimate = float(res.params[i])
        grid = jnp.geomspace(0.25 * estimate, 4.0 * estimate, 41)  # wide: to see where it stays open
        profiles[name] = ff.profile(residual, res, (s, v), index=i, grid=grid, absolute_sigma=True, log_scale=True)  # as fitted
        lo, hi = np.asarray(profiles[name].ci)
        wald = np.asarray(u.ci[i])
        print(f"profile of {name}: 95% likelihood-ratio interval [{lo:.4g}, {hi:.4g}] (Wald: [{wald[0]:.4g}, {wald[1]:.4g}])")

    fig = Figure(figsize=(10, 8), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 0.9])
    ff.plot.profile(profiles, fig=top, ncols=2)
    left, right = bottom.subfigures(1, 2, width_ratios=[1.4, 1.0])
    ff.plot.spectrum(ff.identifiability(res, log_params=True), names=NAMES, fig=left)
    ff.plot.correlation(u, names=NAMES, ax=right.add_subplot())
    path = pathlib.Path(opts.out) / "profile.png"
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
