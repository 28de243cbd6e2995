"""Which data points drive a fit?  Influence ``dp*/dy`` on real data.

NIST's Chwirut2 data set (real measurements: ultrasonic sensor response against metal
distance, 54 points) is fitted with the model ``y = exp(−b1·x) / (b2 + b3·x)``.  The
influence of point ``i`` on parameter ``k`` is the derivative of the fitted ``b_k``
with respect to the measured ``y_i``.  ``jax.jacrev`` of the fit gives the whole
(3 × 54) matrix in three reverse passes, each one linear solve at the solution
(fitfleet's implicit adjoint), without refitting anything.

Shown, in units that compare across parameters: the change of ``b_k``, in standard
errors, when ``y_i`` moves by one residual standard deviation ``s``:

    influence_ki = (∂b_k/∂y_i) · s / SE(b_k).

Check: replacing a point by its fitted value moves the parameters by about
``(∂b/∂y_i) · (ŷ_i − y_i)``; the 54 actual refits (one vmapped call) are plotted
against that first-order prediction.  Also printed: the leverages ``∂ŷ_i/∂y_i``, whose
sum is the effective number of parameters (3 for a linear model; here the curvature of
the model adds a little).

Run:  python examples/influence.py [--out DIR]
(needs matplotlib; writes influence.png next to this file or into DIR; reads the NIST
file from tests/data/nist through tests/nist.py)
"""

import argparse
import pathlib
import sys

import jax

# NIST problems are certified to 10 digits: fit in float64.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

import fitfleet as ff  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import nist  # noqa: E402

TIGHT = dict(ftol=1e-12, xtol=1e-12, gtol=1e-12)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent))
    opts = parser.parse_args()

    prob = nist.load("Chwirut2")
    residual = prob.residual()  # y - model(b, x)
    x, y = jnp.asarray(prob.x), jnp.asarray(prob.y)
    start = jnp.asarray(prob.start1)

    def fit(y):
        return ff.least_squares(residual, start, (x, y), **TIGHT)

    res = fit(y)
    b = res.params
    print(f"Chwirut2: {res.message}; b = {np.asarray(b)}")
    print(f"  certified b = {prob.certified}, max relative difference {np.max(np.abs(b / prob.certified - 1)):.1e}")

    influence = jax.jacrev(lambda y: fit(y).params)(y)  # (3, 54): ∂b_k/∂y_i
    m, n = y.size, b.size
    s = float(jnp.sqrt(2 * res.cost / (m - n)))
    se = np.sqrt(np.diag(s**2 * np.linalg.inv(np.asarray(res.jac.T @ res.jac))))
    standardized = np.asarray(influence) * s / se[:, None]

    model_jac = -np.asarray(res.jac)  # residual = y - model
    leverage = np.einsum("ik,ki->i", model_jac, np.asarray(influence))
    print(f"  leverages: max {leverage.max():.3f} at x = {float(x[leverage.argmax()]):.3f}; sum {leverage.sum():.3f}")

    # Each point replaced by its fitted value, all 54 refits in one vmapped call.
    fitted_values = y - res.residual
    replaced = jax.vmap(lambda i: fit(y.at[i].set(fitted_values[i])).params)(jnp.arange(m))
    actual = (np.asarray(replaced) - np.asarray(b)) / se
    predicted = (np.asarray(influence) * -np.asarray(res.residual)).T / se
    scale = np.max(np.abs(actual))
    print(f"  refits vs first-order prediction: max difference {np.max(np.abs(actual - predicted)) / scale:.1%} "
          "of the largest change")  # fmt: skip

    top = np.argsort(-np.max(np.abs(standardized), axis=0))[:3]
    print("  most influential points (x, y): " + ", ".join(f"({float(x[i]):.3f}, {float(y[i]):.1f})" for i in top))

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    ax = axes[0]
    grid = jnp.linspace(x.min(), x.max(), 200)
    size = 15 + 120 * np.max(np.abs(standardized), axis=0) / np.max(np.abs(standardized))
    sc = ax.scatter(x, y, s=size, c=np.max(np.abs(standardized), axis=0), cmap="viridis", zorder=3)
    ax.plot(grid, prob.model(b, grid), "k-", lw=1, label="fit")
    for i in top:
        ax.annotate(f"  #{i}", (float(x[i]), float(y[i])), fontsize=8)
    fig.colorbar(sc, ax=ax, label="max |influence| over parameters (SE per s)")
    ax.set_xlabel("metal distance x")
    ax.set_ylabel("ultrasonic response y")
    ax.set_title("Chwirut2 (NIST, real data) and fit")
    ax.legend()

    ax = axes[1]
    order = np.argsort(np.asarray(x), kind="stable")
    for k in range(n):
        ax.plot(np.asarray(x)[order], standardized[k, order], "o-", ms=3, lw=0.8, label=f"b{k + 1}")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel("metal distance x of the data point")
    ax.set_ylabel("(∂b_k/∂y_i)·s / SE(b_k)")
    ax.set_title("influence of each point on each parameter")
    ax.legend()

    ax = axes[2]
    for k in range(n):
        ax.plot(predicted[:, k], actual[:, k], "o", ms=4, label=f"b{k + 1}")
    lim = 1.1 * scale
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8, label="equal")
    ax.set_xlabel("predicted change (∂b/∂y_i)(ŷ_i − y_i), in SE")
    ax.set_ylabel("actual change on refitting, in SE")
    ax.set_title("replace point i by its fitted value")
    ax.legend()

    fig.tight_layout()
    path = pathlib.Path(opts.out) / "influence.png"
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
