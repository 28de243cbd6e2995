"""Calibrating an ODE model of cell signalling: Boehm et al. (2014), STAT5 dimerisation.

Eight species, nine parameters to estimate (six rate constants and the noise level of
each of the three observables, all positive and spanning decades: bounds [1e-5, 1e5],
fitted in log space), 48 measurements.  The model is stiff (nuclear import at a rate of
1e5 per minute against minutes-long signalling), so diffrax solves it with an implicit
method, and the Jacobian comes from forward-mode sensitivities (``diffrax.ForwardMode``).

The objective is the Gaussian negative log-likelihood with the noise levels σ_k estimated
too, which is a sum of squares once the log σ terms are written as residuals of their
own (a standard trick, e.g. Raue et al., Bioinformatics 2015, "Data2Dynamics"):

    NLL = Σ_i ½ ((y_i − h_i)/σ_k(i))²  +  Σ_k n_k log σ_k  +  (N/2) log 2π
        = ½‖r‖² + ½ Σ_k s_k² − Σ_k c_k + (N/2) log 2π,   s_k = √(2 (n_k log σ_k + c_k)),

with c_k a constant that keeps the square root real inside the bounds.

    python examples/boehm.py            # the fit from the nominal parameters (~15 s)
    python examples/boehm.py 16         # and a multi-start from 16 random points (minutes)

Data: ``examples/data/boehm/`` (PEtab benchmark collection; see its README).
"""

import csv
import math
import time
from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import fitfleet as ff

DATA = Path(__file__).resolve().parent / "data" / "boehm"
NAMES = (
    "Epo_degradation_BaF3", "k_exp_hetero", "k_exp_homo", "k_imp_hetero", "k_imp_homo", "k_phos",
    "sd_pSTAT5A_rel", "sd_pSTAT5B_rel", "sd_rSTAT5A_rel",
)  # fmt: skip
OBSERVABLES = ("pSTAT5A_rel", "pSTAT5B_rel", "rSTAT5A_rel")
RATIO, SPEC_C17 = 0.693, 0.107  # fixed parameters
CYT, NUC = 1.4, 0.45  # compartment volumes
LOWER, UPPER = 1e-5, 1e5
SOLVER = diffrax.Kvaerno4()  # implicit (the model is stiff); fewer rejected steps here than Kvaerno5
RTOL = 1e-8
NOMINAL_NLL = 138.22199693517703  # at the parameter table's nominal values
LITERATURE_BEST_NLL = 138.2219682


def load():
    """Measurement times (16,), data (3 observables, 16 times) and nominal parameters (9,)."""
    with open(DATA / "measurementData_Boehm_JProteomeRes2014.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    times = sorted({float(r["time"]) for r in rows})
    y = np.zeros((len(OBSERVABLES), len(times)))
    for r in rows:
        y[OBSERVABLES.index(r["observableId"]), times.index(float(r["time"]))] = float(r["measurement"])
    with open(DATA / "parameters_Boehm_JProteomeRes2014.tsv") as f:
        nominal = {r["parameterId"]: float(r["nominalValue"]) for r in csv.DictReader(f, delimiter="\t")}
    return np.asarray(times), y, np.asarray([nominal[name] for name in NAMES])


def rates(t, x, k):
    """The SBML model's reactions (concentrations; a reaction's rate is an amount per
    minute, divided by the volume of the compartment a species lives in)."""
    stat5a, stat5b, papb, papa, pbpb, nuc_papa, nuc_papb, nuc_pbpb = x
    epo_degradation, k_exp_hetero, k_exp_homo, k_imp_hetero, k_imp_homo, k_phos = k
    epo = 1.25e-7 * jnp.exp(-epo_degradation * t)
    v1 = CYT * epo * stat5a**2 * k_phos  # 2 STAT5A -> pApA
    v2 = CYT * epo * stat5a * stat5b * k_phos  # STAT5A + STAT5B -> pApB
    v3 = CYT * epo * stat5b**2 * k_phos  # 2 STAT5B -> pBpB
    v4, v5, v6 = CYT * k_imp_homo * papa, CYT * k_imp_hetero * papb, CYT * k_imp_homo * pbpb  # import
    v7, v8, v9 = NUC * k_exp_homo * nuc_papa, NUC * k_exp_hetero * nuc_papb, NUC * k_exp_homo * nuc_pbpb  # export
    return jnp.stack([
        (-2 * v1 - v2 + 2 * v7 + v8) / CYT,
        (-v2 - 2 * v3 + v8 + 2 * v9) / CYT,
        (v2 - v5) / CYT,
        (v1 - v4) / CYT,
        (v3 - v6) / CYT,
        (v4 - v7) / NUC,
        (v5 - v8) / NUC,
        (v6 - v9) / NUC,
    ])  # fmt: skip


def observe(times, k):
    """The three observables at ``times`` for the six rate constants ``k``, shape (3, T)."""
    x0 = jnp.zeros(8, k.dtype).at[0].set(207.6 * RATIO).at[1].set(207.6 * (1 - RATIO))
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(rates), SOLVER, t0=0.0, t1=times[-1], dt0=None, y0=x0, args=k,
        saveat=diffrax.SaveAt(ts=times), stepsize_controller=diffrax.PIDController(rtol=RTOL, atol=RTOL * 1e-2),
        adjoint=diffrax.ForwardMode(), max_steps=10_000, throw=False,
    )  # fmt: skip
    stat5a, stat5b, papb, papa, pbpb = solution.ys[:, :5].T
    c = SPEC_C17
    return jnp.stack([
        (100 * papb + 200 * papa * c) / (papb + stat5a * c + 2 * papa * c),
        -(100 * papb - 200 * pbpb * (c - 1)) / ((stat5b * (c - 1) - papb) + 2 * pbpb * (c - 1)),
        (100 * papb + 100 * stat5a * c + 200 * papa * c)
        / (2 * papb + stat5a * c + 2 * papa * c - stat5b * (c - 1) - 2 * pbpb * (c - 1)),
    ])  # fmt: skip


def _offset(n_per_observable):
    """c_k: n_k log σ_k + c_k >= n_k > 0 for every σ_k inside the bounds."""
    return n_per_observable * (1 - math.log(LOWER))


def residual(p, times, y):
    """Whitened residuals of the 48 measurements, then the three log σ residuals s_k."""
    k, sigma = p[:6], p[6:]
    r = (y - observe(times, k)) / sigma[:, None]
    n = y.shape[1]
    s = jnp.sqrt(2 * (n * jnp.log(sigma) + _offset(n)))
    return jnp.concatenate([r.ravel(), s])


def nll(cost, y):
    """The negative log-likelihood from fitfleet's cost ½‖r‖² of ``residual``."""
    n_obs, n = y.shape
    return cost - n_obs * _offset(n) + 0.5 * y.size * math.log(2 * math.pi)


def main(n_starts=0):
    jax.config.update("jax_enable_x64", True)  # a script is a user: stiff ODEs want float64
    times, y, nominal = load()
    args = (jnp.asarray(times), jnp.asarray(y))
    at_nominal = 0.5 * float(jnp.sum(residual(jnp.asarray(nominal), *args) ** 2))
    print(f"NLL at the nominal parameters: {nll(at_nominal, y):.10f} (PEtab: {NOMINAL_NLL})")

    lower, upper = np.full(len(NAMES), LOWER), np.full(len(NAMES), UPPER)
    options = dict(bounds=(lower, upper), log_scale=True)  # fit log p, inside the box
    t0 = time.perf_counter()
    res = ff.least_squares(residual, jnp.asarray(nominal), args, **options)
    print(f"fit from the nominal parameters ({time.perf_counter() - t0:.0f} s with compilation, "
          f"{int(res.n_steps)} steps): NLL {nll(float(res.cost), y):.7f} (literature best: {LITERATURE_BEST_NLL})")  # fmt: skip
    print(f"\n{'parameter':22} {'fitted':>11}")
    for name, value in zip(NAMES, np.asarray(res.params)):
        at_bound = min(abs(math.log10(value / LOWER)), abs(math.log10(value / UPPER))) < 0.01
        print(f"{name:22} {value:11.4g}" + ("  on its bound: practically non-identifiable" if at_bound else ""))

    if n_starts:
        # Slow: from random starts in a box of ten decades many fits crawl for their
        # whole step budget along the directions the data do not determine.
        t0 = time.perf_counter()
        ms = ff.multistart(residual, lower, upper, n_starts, args, log_scale=True, fit_log_scale=True,
                           bounds=(lower, upper), key=jax.random.key(0))  # fmt: skip
        print(f"\n{n_starts} starts log-uniform in the box, {time.perf_counter() - t0:.0f} s: "
              f"best NLL {nll(ms.best.cost, y):.7f}")  # fmt: skip
        print(ms.summary(max_optima=5))


if __name__ == "__main__":
    import sys

    main(n_starts=int(sys.argv[1]) if len(sys.argv) > 1 else 0)
