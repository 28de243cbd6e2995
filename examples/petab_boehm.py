"""A PEtab problem from file to identifiability: Boehm et al. (2014), STAT5 dimerisation.

Eight species, nine parameters to estimate (six rate constants and the noise level of
each of the three observables, on log10 scales within [1e-5, 1e5]), 48 measurements, a
stiff ODE.  ``fitfleet.petab`` reads the PEtab files (SBML model, tables) and builds the
negative log-likelihood as a sum of squares; nothing is transcribed by hand.  The cells
(``# %%``) run top to bottom as a script, or one by one in an editor that knows them:

1. load the problem and check the NLL at the nominal parameters against the published
   value (AMICI, 138.22199693517703);
2. fit from the nominal parameters (the literature's optimum is 138.2219682);
3. a multi-start from random points in the bounds, checkpointed (run it again and the
   finished starts are skipped), with its text summary and results file;
4. profile likelihoods at the best fit, with verdicts (three parameters by default,
   ``--all-profiles`` for all nine, which takes far longer): the
   literature reports k_exp_hetero and k_imp_homo practically non-identifiable (they
   end on their bounds) and the other seven identifiable;
5. the waterfall, parameter and profile plots.

Run:  python examples/petab_boehm.py [--starts 4] [--out DIR] [--all-profiles]   (8.4 min on 2
busy shared cores, 7.6 CPU-minutes;
the same path from the shell: python -m fitfleet.petab PROBLEM.yaml --starts 8 --out DIR)

Data: ``examples/data/boehm/`` (PEtab benchmark collection; see its README).
Needs the ``petab`` extra (and ``plot``, ``progress`` for the plots and bars).
"""

import argparse
import pathlib
import time

import jax

# Precision is the user's choice: stiff ODE solves at tight tolerances need float64.
jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import fitfleet as ff  # noqa: E402
import fitfleet.petab  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
PUBLISHED_NOMINAL_NLL = 138.22199693517703  # AMICI at the parameter table's nominal values
LITERATURE_BEST_NLL = 138.2219682

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--starts", type=int, default=4, help="multi-start size (default 4)")
parser.add_argument("--out", type=pathlib.Path, default=HERE / "petab_boehm_out", help="output folder")
parser.add_argument("--all-profiles", action="store_true", help="profile all nine parameters (default: three; tens of minutes)")
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)

# %% 1. Load: tables by petab, the SBML model by libsbml into sympy, then JAX; a pilot
# ODE solve sets each state's absolute tolerance (fitfleet.petab._tolerances).
clock = time.perf_counter()
prob = ff.petab.load(HERE / "data" / "boehm" / "Boehm_JProteomeRes2014.yaml")
print(prob)
print("estimated parameters (log10 scale):", ", ".join(prob.names))
nll = float(prob.nll(prob.nominal))
print(f"NLL at the nominal parameters: {nll:.10f} (published {PUBLISHED_NOMINAL_NLL:.10f}, "
      f"relative difference {abs(nll - PUBLISHED_NOMINAL_NLL) / PUBLISHED_NOMINAL_NLL:.1e}); {time.perf_counter() - clock:.1f} s")  # fmt: skip

# %% 2. One fit from the nominal parameters (trust-region reflective within the bounds).
clock = time.perf_counter()
res = prob.fit(prob.nominal)
print(f"\nfit from nominal: NLL {float(res.cost) + prob.offset:.7f} (literature {LITERATURE_BEST_NLL}), "
      f"status {ff.Status(int(res.status)).name.lower()}, {time.perf_counter() - clock:.1f} s with compilation")  # fmt: skip

# %% 3. Multi-start: starts uniform on the estimation scale within the bounds (the
# parameter table's initializationPriorType), fitted as one batch, committed to the
# checkpoint chunk by chunk.  The summary counts how often the best value was found.
clock = time.perf_counter()
ms = prob.multistart(args.starts, key=jax.random.key(0), checkpoint=args.out / "checkpoint.npz", progress=True)
print(f"\n{args.starts} starts in {time.perf_counter() - clock:.1f} s with compilation")
ms.save(args.out / "results.npz", info=prob.describe())  # MultiStartResult.load reads it back, no model needed
again = ff.MultiStartResult.load(args.out / "results.npz")
assert np.array_equal(np.asarray(again.results.cost), np.asarray(ms.results.cost))

# %% 4. Profiles at the best of the fit from nominal and the
# multi-start, with verdicts (Δ = 2 ΔNLL against χ²₁(0.95) = 3.84).
best = res if float(res.cost) <= float(ms.best.cost) else ms
clock = time.perf_counter()
# A Boehm profile point is a refit through a stiff ODE; by default three parameters: the
# two the literature calls non-identifiable and one identifiable rate.
names = None if args.all_profiles else ["k_exp_hetero", "k_imp_homo", "k_phos"]
profiles = prob.profile(best, names, progress=True)
print(f"profiles in {time.perf_counter() - clock:.1f} s with compilation\n")
for name, p in profiles.items():
    print(f"  {name:<22} {p.verdict_text}")
text = prob.summary(ms, profiles)
(args.out / "summary.txt").write_text(text + "\n")
print("\n" + text)

# %% 5. Plots: waterfall of the multi-start, its parameters, the profiles.
figures = prob.plots(ms, profiles, folder=args.out)
print(f"\nwrote {', '.join(sorted(f'{k}.png' for k in figures))}, results.npz, summary.txt to {args.out}/")
