"""Michaelis-Menten, the quickstart's fit, drawn: the fit with its confidence band and
residuals, and the paths of Levenberg-Marquardt, Gauss-Newton and Adam across the cost
landscape of (Vmax, Km).

The landscape is ``log10 ½‖r‖²`` on a grid of the two parameters (one vmapped call);
each method's path comes from ``Result.history`` (``history=True``).  Where this
version of fitfleet does not record histories yet, the paths are skipped (with a note)
and only each method's end point is drawn.

Run:  python examples/landscape.py [--out DIR]
(needs matplotlib; writes landscape.png next to this file or into DIR, and
history.png when histories are recorded)
"""

import argparse
import inspect
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

VMAX, KM, NOISE_SD = 29.0, 6.0, 0.5
METHODS = (("lm", {}), ("gn", {}), ("adam", dict(learning_rate=0.05, max_steps=20_000)))


def model(params, substrate):
    vmax, km = params
    return vmax * substrate / (km + substrate)


def michaelis_menten(params, substrate, velocity):
    return model(params, substrate) - velocity


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent))
    opts = parser.parse_args()

    rng = np.random.default_rng(0)
    substrate = jnp.linspace(0.1, 30.0, 40)
    velocity = model(jnp.array([VMAX, KM]), substrate) + NOISE_SD * jnp.asarray(rng.normal(size=40))
    start = jnp.array([10.0, 10.0])

    records = "history" in inspect.signature(ff.least_squares).parameters
    if not records:
        print("note: this fitfleet does not record histories (least_squares has no `history`): paths skipped, end points only.")
    fits = {}
    for method, options in METHODS:
        if records:
            options = dict(options, history=True)
        fits[method] = ff.least_squares(michaelis_menten, start, (substrate, velocity), method=method, **options)
        print(f"{method:5} Vmax = {float(fits[method].params[0]):.4f}  Km = {float(fits[method].params[1]):.4f}  "
              f"{int(fits[method].n_steps)} steps  {fits[method].message}")  # fmt: skip

    fig = Figure(figsize=(12, 5), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1.0, 1.1])
    ff.plot.fit(fits["lm"], model, substrate, velocity, NOISE_SD, band=True, fig=left)
    left.axes[0].set_ylabel("velocity v")
    left.axes[1].set_xlabel("substrate S")
    left.axes[0].set_title("Levenberg-Marquardt fit, 95% band")
    ax = right.add_subplot()
    ff.plot.landscape(michaelis_menten, (substrate, velocity), list(fits.values()), labels=list(fits), names=["Vmax", "Km"],
                      limits=((5.0, 40.0), (0.0, 15.0)), ax=ax)  # fmt: skip
    ax.plot(*start, "ko", ms=6, label="start")
    ax.legend(fontsize="small")
    ax.set_title("paths on the cost landscape" if records else "end points on the cost landscape (no histories)")
    path = pathlib.Path(opts.out) / "landscape.png"
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")

    if records and getattr(fits["lm"], "history", None) is not None:
        fig = Figure(figsize=(6, 6.5), layout="constrained")
        ff.plot.history(fits["lm"], names=["Vmax", "Km"], fig=fig)
        path = pathlib.Path(opts.out) / "history.png"
        fig.savefig(path, dpi=110)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
