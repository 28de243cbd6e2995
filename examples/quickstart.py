"""Quickstart: fit the Michaelis-Menten model v = Vmax·S / (Km + S) to noisy data.

The same residual is fitted by Levenberg-Marquardt, Gauss-Newton and Adam (an optax
gradient baseline) through the one front door, ``fitfleet.least_squares``.

Run:  python examples/quickstart.py
"""

import time

import jax

# Precision is the user's choice; fitfleet follows the dtype of the start point.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fitfleet as ff  # noqa: E402

VMAX, KM, NOISE_SD = 29.0, 6.0, 0.5


def michaelis_menten(params, substrate, velocity):
    vmax, km = params
    return vmax * substrate / (km + substrate) - velocity


def main():
    rng = np.random.default_rng(0)
    substrate = jnp.linspace(0.1, 30.0, 40)
    velocity = VMAX * substrate / (KM + substrate) + NOISE_SD * jnp.asarray(rng.normal(size=40))
    start = jnp.array([10.0, 10.0])

    print(f"Michaelis-Menten, true Vmax={VMAX}, Km={KM}, noise sd {NOISE_SD}, start {start.tolist()}\n")
    print(f"{'method':8} {'Vmax':>9} {'Km':>8} {'cost':>10} {'steps':>6} {'first call':>11} {'2nd call':>9}  status")
    for method, options in (("lm", {}), ("gn", {}), ("adam", dict(learning_rate=0.05, max_steps=20_000))):
        timings = []
        for _ in range(2):  # the first call compiles, the second only runs
            t0 = time.perf_counter()
            res = ff.least_squares(michaelis_menten, start, (substrate, velocity), method=method, **options)
            res.params.block_until_ready()
            timings.append(time.perf_counter() - t0)
        vmax, km = np.asarray(res.params)
        print(
            f"{method:8} {vmax:9.4f} {km:8.4f} {float(res.cost):10.5f} {int(res.n_steps):6d} "
            f"{timings[0]:10.3f}s {timings[1] * 1e3:7.2f}ms  {res.message}"
        )


if __name__ == "__main__":
    main()
