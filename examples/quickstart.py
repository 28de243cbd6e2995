"""Quickstart: fit the Michaelis-Menten model v = Vmax·S / (Km + S) to noisy data.

The same residual is fitted by Levenberg-Marquardt, Gauss-Newton and Adam (an optax
gradient baseline) through the one front door, ``fitfleet.least_squares``; the Result
reports its values, uncertainties, and (with ``history=True``) the path each method
took.  With matplotlib installed (the ``plot`` extra) it draws the fit with its 95%
confidence band and residuals, and the three paths across the cost landscape of (Vmax,
Km), into ``quickstart.png`` (non-interactive: nothing is shown on screen).

Run:  python examples/quickstart.py [--out DIR]
"""

import argparse
import pathlib
import time

import jax

# Precision is the user's choice; fitfleet follows the dtype of the start point.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fitfleet as ff  # noqa: E402

VMAX, KM, NOISE_SD = 29.0, 6.0, 0.5
METHODS = (("lm", {}), ("gn", {}), ("adam", dict(learning_rate=0.05, max_steps=20_000)))


def model(params, substrate):
    return params["vmax"] * substrate / (params["km"] + substrate)


def michaelis_menten(params, substrate, velocity):
    return model(params, substrate) - velocity


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent))
    out = pathlib.Path(parser.parse_args().out)

    rng = np.random.default_rng(0)
    substrate = jnp.linspace(0.1, 30.0, 40)
    velocity = model({"vmax": VMAX, "km": KM}, substrate) + NOISE_SD * jnp.asarray(rng.normal(size=40))
    start = {"vmax": 10.0, "km": 10.0}

    print(f"Michaelis-Menten, true Vmax={VMAX}, Km={KM}, noise sd {NOISE_SD}, start {start}\n")
    print(f"{'method':8} {'Vmax':>9} {'Km':>8} {'cost':>10} {'steps':>6} {'first call':>11} {'2nd call':>9}  status")
    fits = {}
    for method, options in METHODS:
        timings = []
        for _ in range(2):  # the first call compiles, the second only runs
            t0 = time.perf_counter()
            res = ff.least_squares(
                michaelis_menten, start, (substrate, velocity), method=method, sigma=NOISE_SD, history=True, **options
            )
            jax.block_until_ready(res)
            timings.append(time.perf_counter() - t0)
        fits[method] = res
        print(
            f"{method:8} {float(res.params['vmax']):9.4f} {float(res.params['km']):8.4f} {float(res.cost):10.5f} "
            f"{int(res.n_steps):6d} {timings[0]:10.3f}s {timings[1] * 1e3:7.2f}ms  {res.message}"
        )

    print("\nThe Levenberg-Marquardt fit, as the Result prints itself:")
    print(fits["lm"])
    u = ff.uncertainty(fits["lm"], absolute_sigma=True)
    for i in fits["lm"].display_order():
        name = fits["lm"].names[i]
        print(f"  {name:5} 95% interval [{float(u.ci[i, 0]):.3f}, {float(u.ci[i, 1]):.3f}]")
    draw(fits, substrate, velocity, start, out)


def draw(fits, substrate, velocity, start, out):
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        from matplotlib.figure import Figure

        import fitfleet.plot
    except ImportError:
        print("\n(matplotlib is not installed: pip install 'fitfleet[plot]' to draw the fit)")
        return
    fig = Figure(figsize=(12, 5), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1.0, 1.1])
    fitfleet.plot.fit(fits["lm"], model, substrate, velocity, NOISE_SD, band=True, fig=left)
    left.axes[0].set_ylabel("velocity v")
    left.axes[1].set_xlabel("substrate S")
    left.axes[0].set_title("Levenberg-Marquardt fit, 95% confidence band")
    ax = right.add_subplot()
    fitfleet.plot.landscape(
        michaelis_menten, (substrate, velocity), list(fits.values()), labels=list(fits), names=["Km", "Vmax"],
        limits=((0.0, 15.0), (5.0, 40.0)), ax=ax,
    )  # fmt: skip
    ax.plot(start["km"], start["vmax"], "ko", ms=6, label="start")
    ax.legend(fontsize="small")
    ax.set_title("each method's path on the cost landscape")
    path = out / "quickstart.png"
    fig.savefig(path, dpi=110)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
