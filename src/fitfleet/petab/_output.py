"""What a PEtab run reports: the text summary and the plots, from a multi-start and
profiles plus the problem's description (``Problem.describe()``, which a results file
keeps), so a saved run can be reported again without the model.

Values are negative log-likelihoods (``NLL = cost + offset``) and parameters are on
their estimation scale (labelled ``log10 k`` for a ``log10`` parameter); a start
succeeds within the multi-start's threshold (χ²₁(0.95)/2 = 1.92 in NLL).
"""

import math
from pathlib import Path

import numpy as np

from .._status import Status

_SCALE_LABEL = {"lin": "", "log": "ln ", "log10": "log10 "}


def summary(ms, info, profiles=None):
    """The text report: the problem, the multi-start (``MultiStartResult.summary`` in
    NLL), the best fit parameter by parameter, and the profiles' intervals and
    verdicts."""
    names, scales = info["names"], info["scales"]
    lines = [f"[[PEtab problem]] {info['problem']} ({info['yaml']})"]
    counts = {s: scales.count(s) for s in dict.fromkeys(scales)}
    lines.append(f"    parameters         = {len(names)} estimated, on their estimation scale ({', '.join(f'{s}: {k}' for s, k in counts.items())})")
    lines.append(f"    measurements       = {info['n_measurements']}")
    lines.append(f"    objective          = negative log-likelihood, NLL = cost + offset (offset {info['offset']:.10g})")
    if ms is not None:
        text = ms.summary(offset=info["offset"], label="NLL")
        lines += text.split("\n[[Best parameters]]")[0].splitlines()  # replaced by the table below
        lines += _best_fit(ms, info)
    if profiles:
        lines += _profile_table(profiles, info)
    return "\n".join(lines)


def _best_fit(ms, info):
    x = np.ravel(np.asarray(ms.best.params, np.float64))
    lower, upper = np.asarray(info["lower"]), np.asarray(info["upper"])
    width = max(len(n) for n in info["names"])
    lines = [f"[[Best fit]] NLL {float(ms.best.cost) + info['offset']:.10g}, status {Status(int(ms.best.status)).name.lower()}"]
    lines.append(f"    {'parameter':<{width}}  {'scale':<5}  {'value':>11}  {'lower':>9}  {'upper':>9}  {'linear value':>12}")
    for j, (name, scale) in enumerate(zip(info["names"], info["scales"])):
        linear = {"lin": x[j], "log": math.exp(x[j]), "log10": 10.0 ** x[j]}[scale]
        tol = math.sqrt(np.finfo(np.float64).eps) * max(1.0, abs(lower[j]), abs(upper[j]))
        note = "  (at lower bound)" if x[j] - lower[j] <= tol else "  (at upper bound)" if upper[j] - x[j] <= tol else ""
        lines.append(f"    {name:<{width}}  {scale:<5}  {x[j]:>11.6g}  {lower[j]:>9.4g}  {upper[j]:>9.4g}  {linear:>12.6g}{note}")
    return lines


def _profile_table(profiles, info):
    first = next(iter(profiles.values()))
    pct = f"{first.level:.0%}"
    width = max(9, *(len(n) for n in profiles))
    lines = [f"[[Profiles]] {pct} likelihood-ratio intervals on the estimation scale (Δ = 2 ΔNLL, threshold {float(first.threshold):.3g})"]
    lines.append(f"    {'parameter':<{width}}  {'estimate':>10}  {pct + ' lower':>10}  {pct + ' upper':>10}  verdict")
    for name, p in profiles.items():
        lo, hi = (float(v) for v in np.asarray(p.ci))
        lines.append(f"    {name:<{width}}  {float(p.estimate):>10.5g}  {lo:>10.5g}  {hi:>10.5g}  {p.verdict_text}")
    verdicts = [p.verdict_text.split(":")[0] for p in profiles.values()]
    tally = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
    lines.append("    " + "; ".join(f"{k} {v}" for v, k in tally.items()))
    return lines


def plots(ms, info, profiles=None, folder=None):
    """``{"waterfall": Figure, "parameters": Figure, "profiles": Figure}`` (those that
    the inputs allow), drawn by ``fitfleet.plot``; with ``folder``, each is also written
    there as ``<name>.png`` (and closed in pyplot)."""
    from .. import plot

    labels = [_SCALE_LABEL[s] + n for n, s in zip(info["names"], info["scales"])]
    figures = {}
    if ms is not None:
        ax = plot.waterfall(ms)
        cost = np.asarray(ms.results.cost, np.float64)
        best = float(np.min(cost[np.isfinite(cost)])) if np.isfinite(cost).any() else math.nan
        ax.set_ylabel(f"NLL − best + δ   (best NLL {best + info['offset']:.6g}, δ = {ms.threshold / 10:.2g})")
        ax.set_title(f"{info['problem']}: {ms.n_starts} starts")
        figures["waterfall"] = ax.figure
        ax = plot.parameters(ms, names=labels, lower=info["lower"], upper=info["upper"], log=False)
        ax.set_xlabel("parameter value (estimation scale)")
        for line in ax.get_lines():
            if line.get_label().startswith("best fit (cost"):
                line.set_label(f"best fit (NLL {best + info['offset']:.6g})")
        ax.legend(fontsize="small")
        figures["parameters"] = ax.figure
    if profiles:
        fig = plot.profile({labels[info["names"].index(name)]: p for name, p in profiles.items()})
        fig.suptitle(f"{info['problem']}: profile likelihoods")
        figures["profiles"] = fig
    if folder is not None:
        import matplotlib.pyplot as plt

        Path(folder).mkdir(parents=True, exist_ok=True)
        for name, fig in figures.items():
            fig.savefig(f"{folder}/{name}.png", dpi=120)
            plt.close(fig)
    return figures
