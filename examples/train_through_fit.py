"""A fit inside a training loop: learn a noise model through the fit.

Enzyme-kinetics experiments measure the velocity ``v`` at 16 substrate concentrations
``S`` and fit the Michaelis-Menten model ``v = Vmax·S/(Km + S)``.  The measurement noise
is heteroscedastic (large at low ``S``, near the detection limit), but nobody told the
analyst how: unweighted least squares wastes the precise points on the noisy ones.

Here a small equinox network ``σ_θ(S)`` supplies the weights (``sigma=`` of the fit) and
is trained, by optax's Adam, to minimise the relative error of the *fitted* parameters
on simulated experiments whose true parameters are known.  The loss depends on ``θ``
only through the fits ``p*(θ)``, so every training step differentiates through a batch
of 256 fits: fitfleet's implicit adjoint gives ``dp*/dσ`` for one extra linear solve
per fit, with no unrolling of the solver.

Expected outcome: within ~50 steps the outer loss falls from near that of unweighted
fitting (0.013) to that of the oracle weights, the true σ (0.0025).  The learned
``σ_θ(S)`` has the trend of the true profile (noisy at low ``S``, precise at high
``S``) but not its exact shape: the loss is flat in the directions that barely move
the fitted parameters, and fits ignore the overall scale of σ, so it is only plotted
up to a constant factor.

Failed fits: ``grad_on_failure="zero"`` makes a failed fit (if any) contribute no
gradient, and the loss averages over successful fits only.

Run:  python examples/train_through_fit.py [--steps 300] [--out DIR]
(needs matplotlib; writes train_through_fit.png next to this file or into DIR)
"""

import argparse
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

import fitfleet as ff

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SUBSTRATE = jnp.geomspace(0.5, 60.0, 16)
BATCH = 256
TOLERANCES = dict(ftol=1e-6, xtol=1e-6, gtol=1e-6)  # float32: above round-off


def true_sigma(S):
    return 0.2 + 2.5 * jnp.exp(-S / 4.0)


def michaelis_menten(p, S, v):
    return p[0] * S / (p[1] + S) - v


def simulate(key, n):
    """``n`` experiments: true (Vmax, Km) and noisy velocities at SUBSTRATE."""
    k_vmax, k_km, k_noise = jax.random.split(key, 3)
    params = jnp.stack([jax.random.uniform(k_vmax, (n,), minval=20, maxval=40),
                        jax.random.uniform(k_km, (n,), minval=2, maxval=10)], axis=1)  # fmt: skip
    clean = params[:, :1] * SUBSTRATE / (params[:, 1:] + SUBSTRATE)
    return params, clean + true_sigma(SUBSTRATE) * jax.random.normal(k_noise, clean.shape)


def start(v):
    """A data-driven start: Vmax from the largest velocity, Km from the half-way point."""
    vmax = jnp.max(v)
    km = SUBSTRATE[jnp.argmin(jnp.abs(v - vmax / 2))]
    return jnp.stack([vmax, km])


class NoiseModel(eqx.Module):
    mlp: eqx.nn.MLP

    def __init__(self, key):
        self.mlp = eqx.nn.MLP(1, 1, width_size=16, depth=2, activation=jnp.tanh, key=key)

    def __call__(self, S):
        """σ(S) > 0, from log S scaled to about [-1, 1]."""
        feature = (jnp.log(S) - 1.7) / 2.3
        return jnp.exp(jax.vmap(self.mlp)(feature[:, None])[:, 0])


def fit_all(sigma, V):
    one = lambda v: ff.least_squares(  # noqa: E731
        michaelis_menten, start(v), (SUBSTRATE, v), sigma=sigma, grad_on_failure="zero", **TOLERANCES
    )
    return jax.vmap(one)(V)


def parameter_error(sigma, true, V):
    """Mean squared relative error of the fitted (Vmax, Km), over successful fits."""
    res = fit_all(sigma, V)
    err = jnp.sum(((res.params - true) / true) ** 2, axis=1)
    ok = res.success
    return jnp.sum(jnp.where(ok, err, 0.0)) / jnp.maximum(jnp.sum(ok), 1), jnp.mean(ok)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent))
    opts = parser.parse_args()

    key_net, key_val, key_train = jax.random.split(jax.random.PRNGKey(0), 3)
    model = NoiseModel(key_net)
    optimiser = optax.adam(3e-3)
    opt_state = optimiser.init(eqx.filter(model, eqx.is_inexact_array))
    val_true, val_V = simulate(key_val, 4096)

    @eqx.filter_jit
    def train_step(model, opt_state, key):
        true, V = simulate(key, BATCH)
        loss_fn = lambda m: parameter_error(m(SUBSTRATE), true, V)  # noqa: E731
        (loss, converged), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model)
        updates, opt_state = optimiser.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, loss, converged

    validate_jit = jax.jit(parameter_error)  # data as arguments, not baked-in constants
    validate = lambda sigma: validate_jit(sigma, val_true, val_V)  # noqa: E731
    uniform = float(validate(jnp.ones_like(SUBSTRATE))[0])
    oracle = float(validate(true_sigma(SUBSTRATE))[0])
    print(f"validation loss (4096 experiments): unweighted {uniform:.5f}, oracle weights {oracle:.5f}")

    train_losses, val_steps, val_losses = [], [], []
    t0 = time.perf_counter()
    for step, key in enumerate(jax.random.split(key_train, opts.steps)):
        model, opt_state, loss, converged = train_step(model, opt_state, key)
        train_losses.append(float(loss))
        if step % 25 == 0 or step == opts.steps - 1:
            val_steps.append(step)
            val_losses.append(float(validate(model(SUBSTRATE))[0]))
            print(f"step {step:4d}  train {float(loss):.5f}  validation {val_losses[-1]:.5f}  converged {float(converged):.3f}")
    elapsed = time.perf_counter() - t0
    print(f"{opts.steps} steps of {BATCH} differentiated fits in {elapsed:.1f} s (including compilation)")

    learned = np.array(model(SUBSTRATE))
    true = np.asarray(true_sigma(SUBSTRATE))
    learned *= np.exp(np.mean(np.log(true)) - np.mean(np.log(learned)))  # only the shape is identifiable

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    steps = np.arange(len(train_losses))
    smooth = np.convolve(train_losses, np.ones(10) / 10, mode="valid")
    ax1.plot(steps, train_losses, color="0.8", lw=0.8, label="training batch")
    ax1.plot(steps[9:], smooth, color="C0", label="training (10-step mean)")
    ax1.plot(val_steps, val_losses, "o-", color="C1", ms=4, label="validation")
    ax1.axhline(uniform, color="C3", ls="--", label="unweighted fits")
    ax1.axhline(oracle, color="C2", ls="--", label="oracle weights (true σ)")
    ax1.set_yscale("log")
    ax1.set_xlabel("training step (Adam)")
    ax1.set_ylabel("mean squared relative error of (Vmax, Km)")
    ax1.set_title("outer loss, through 256 fits per step")
    ax1.legend(fontsize=8)
    ax2.plot(SUBSTRATE, true, "k-", label="true σ(S)")
    ax2.plot(SUBSTRATE, learned, "o--", color="C1", label="learned σ_θ(S), rescaled")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("substrate S")
    ax2.set_ylabel("noise standard deviation")
    ax2.set_title("learned noise model (shape only: fits ignore σ's scale)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = pathlib.Path(opts.out) / "train_through_fit.png"
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
