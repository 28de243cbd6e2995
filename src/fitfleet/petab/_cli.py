"""The command line: ``python -m fitfleet.petab problem.yaml --starts 200 --out run/``.

Load the problem, run a multi-start (checkpointed, with a progress bar), profile the
parameters at the best fit, and write the results file, the summary and the plots
(``main``'s docstring and ``--help`` list the files and options).
"""

import argparse
import sys
import time
from pathlib import Path

DESCRIPTION = """\
Fit a PEtab problem with fitfleet: a multi-start from starts drawn in the parameter
bounds (the parameter table's initializationPriorType, default uniform on the
estimation scale), profile likelihoods of the parameters at the best fit, and a report.

Writes into OUT:
  results.npz     the multi-start (fitfleet.MultiStartResult.load reads it, no model
                  needed; MultiStartResult.load_info gives the problem's description)
  summary.txt     the text report: exits, best NLL, how often it was found (within
                  1.92 = chi2_1(95%)/2), optima, best fit, profile intervals and verdicts
  waterfall.png, parameters.png, profiles.png
  checkpoint.npz  the finished starts, committed chunk by chunk: run the same command
                  again after an interruption and it resumes (--restart: start afresh)

Computes in float64 (--float32 for single precision) and keeps compiled programs in
JAX's persistent compilation cache (~/.cache/fitfleet-jax; --no-cache to switch it
off), so a second run skips most compilation.
"""


def parser():
    p = argparse.ArgumentParser(prog="python -m fitfleet.petab", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("problem", help="the PEtab problem: its yaml file, or the folder holding it")
    p.add_argument("--starts", type=int, default=100, help="number of starts (default 100)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: fitfleet-<problem id>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the starts (default 0)")
    p.add_argument("--method", default=None, help="fitfleet method (default: fitfleet.petab's, trf)")
    p.add_argument("--max-steps", type=int, default=None, help="step budget per fit (default: fitfleet's)")
    p.add_argument("--no-check", action="store_true", help="do not check each fit's end against a finer ODE solve (multistart's check)")
    p.add_argument("--no-profiles", action="store_true", help="skip the profile likelihoods")
    p.add_argument("--profile", action="append", metavar="NAME", help="profile only this parameter (repeatable; default all)")
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint file (default OUT/checkpoint.npz)")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N", help="starts per committed chunk (default: a tenth, at least 32)")
    p.add_argument("--no-checkpoint", action="store_true", help="no checkpoint: an interrupted run starts over")
    p.add_argument("--restart", action="store_true", help="delete an existing checkpoint first")
    p.add_argument("--no-plots", action="store_true", help="write no plots")
    p.add_argument("--solver", default="Rodas5P", help="ODE solver class: fitfleet.petab.Rodas5P (default) or a diffrax one (e.g. Kvaerno5)")
    p.add_argument("--rtol", type=float, default=None, help="ODE relative tolerance (default: 1e-8, tightened by load's rule)")
    p.add_argument("--preequilibration", action="store_true", help="simulate pre-equilibration and time = inf measurements (load's option)")
    p.add_argument("--priors", action="store_true", help="add the objective priors, as pyPESTO does (load's option)")
    p.add_argument("--float32", action="store_true", help="single precision (default float64)")
    p.add_argument("--no-cache", action="store_true", help="do not use JAX's persistent compilation cache")
    p.add_argument("--quiet", action="store_true", help="no progress bars, no summary on the terminal")
    return p


def main(argv=None):
    """Run the command line (``argv``: its arguments, default ``sys.argv[1:]``)."""
    args = parser().parse_args(argv)
    if args.starts < 1:
        parser().error("--starts must be a positive integer")
    import diffrax
    import jax
    import numpy as np

    import fitfleet as ff

    from . import Rodas5P, load
    from ._checkpoint import CheckpointMismatch

    solver = Rodas5P if args.solver == "Rodas5P" else getattr(diffrax, args.solver, None)
    if not (isinstance(solver, type) and issubclass(solver, diffrax.AbstractSolver)):
        parser().error(f"--solver {args.solver!r} is neither Rodas5P nor a diffrax solver class (e.g. Kvaerno5, Tsit5)")
    if not args.no_cache:
        ff.enable_compilation_cache()
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))  # noqa: E731
    # The bars and plots are optional extras (progress, plot): without them, say so and go on.
    bars = not args.quiet and _have("tqdm")
    if not args.quiet and not bars:
        say("no progress bars: pip install tqdm (fitfleet[progress]) to see them")
    if not args.no_plots and not _have("matplotlib"):
        say("no plots: pip install matplotlib (fitfleet[plot]) to draw them")
        args.no_plots = True
    times = {}
    with jax.enable_x64(not args.float32):
        clock = time.perf_counter()
        try:
            prob = load(args.problem, solver=solver(), rtol=args.rtol, preequilibration=args.preequilibration, priors=args.priors)
        except (FileNotFoundError, NotImplementedError, ValueError) as error:  # the problem, not fitfleet: no traceback
            parser().exit(2, f"fitfleet.petab: cannot load {str(args.problem)!r}: {error}\n")
        times["load"] = time.perf_counter() - clock
        say(repr(prob))
        out = args.out or Path(f"fitfleet-{prob.path.stem}")
        out.mkdir(parents=True, exist_ok=True)
        checkpoint = None if args.no_checkpoint else (args.checkpoint or out / "checkpoint.npz")
        if checkpoint is not None and args.restart and checkpoint.exists():
            checkpoint.unlink()
        if checkpoint is not None and checkpoint.exists():
            say(f"resuming from the checkpoint {checkpoint}")
        options = {} if args.method is None else {"method": args.method}
        if args.max_steps is not None:
            options["max_steps"] = args.max_steps
        clock = time.perf_counter()
        try:
            ms = prob.multistart(args.starts, key=jax.random.key(args.seed), checkpoint=checkpoint,
                                 checkpoint_every=args.checkpoint_every, progress=bars, check=not args.no_check, **options)  # fmt: skip
        except CheckpointMismatch as error:  # the user's files, not fitfleet: no traceback
            parser().exit(2, f"fitfleet.petab: {error} (--restart starts afresh)\n")
        times["multi-start"] = time.perf_counter() - clock
        written = ["results.npz"] + ([checkpoint.name] if checkpoint is not None and checkpoint.parent == out and checkpoint.exists() else [])
        info = dict(prob.describe(np.asarray(ms.results.cost).dtype), seed=args.seed, options=options, check=not args.no_check, solver=args.solver, rtol=float(prob.model.rtol), state_scales=prob.state_scales.tolist())
        ms.save(out / "results.npz", info=info)
        profiles = None
        if not args.no_profiles:
            clock = time.perf_counter()
            profiles = prob.profile(ms, names=args.profile, progress=bars)
            times["profiles"] = time.perf_counter() - clock
        text = prob.summary(ms, profiles)
        if not args.no_plots:
            clock = time.perf_counter()
            written += [f"{name}.png" for name in prob.plots(ms, profiles, folder=out)]
            times["plots"] = time.perf_counter() - clock
        text += "\n[[Timing]] seconds, compilation included\n    " + ", ".join(f"{k} {v:.1f}" for k, v in times.items())
        (out / "summary.txt").write_text(text + "\n")
        written.append("summary.txt")
    if not args.quiet:
        print(text)
    say(f"wrote {', '.join(sorted(written))} to {out}/")
    return 0


def _have(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None
