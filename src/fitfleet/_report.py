"""Text reports: ``Result.summary()``, ``Uncertainty.summary()`` and
``MultiStartResult.summary()``, after lmfit's ``fit_report``.

Parameters appear under the user's names in the user's order (a dict's keys as written:
``Result.names`` and ``Result.order``).  A report says what the numbers cannot: a failed
fit (its uncertainties are NaN), parameters the data do not determine (infinite
variance), parameters whose relative standard error exceeds ``MAX_RSE`` (practically
non-identifiable, the rule of :func:`fitfleet.identifiability`), parameters on a bound
(their Wald interval ignores the bound: profile them), and strongly correlated pairs.
"""

import math
import warnings

import numpy as np

from ._status import MESSAGES, Status, is_success

MAX_RSE = 1.0  # identifiability's default: a standard error as large as the parameter
STRONG_CORRELATION = 0.99


def uncertainty_table(u, params=None, names=None):
    """Lines of the estimates table of one fit's :class:`Uncertainty`."""
    if np.ndim(u.rss) != 0:
        raise ValueError("summary() is for a single fit; index a batched Uncertainty first.")
    p = _flat(u.estimate if params is None else params)
    names = _names(names if names is not None else u.names, p.size)
    order = list(u.order) if u.order is not None and len(u.order) == p.size else list(range(p.size))
    se, ci = np.asarray(u.stderr, np.float64), np.asarray(u.ci, np.float64)
    log = np.zeros(p.size, bool) if u.log_scale is None else np.asarray(u.log_scale, bool)
    undetermined = np.asarray(u.undetermined, bool)
    pct = f"{100 * u.level:g}%"
    width = max(5, *(len(s) for s in names))
    lines = [f"{'param':<{width}}  {'estimate':>12}  {'stderr':>12}  {'rel.err':>11}  {pct + ' lower':>12}  {pct + ' upper':>12}"]
    for j in order:
        note = []
        if undetermined[j]:
            note.append("undetermined")
        if log[j]:
            note.append("log scale")
        rel = _relative(se[j], p[j])
        line = f"{names[j]:<{width}}  {p[j]:>12.4g}  {se[j]:>12.4g}  {rel:>11}  {ci[j, 0]:>12.4g}  {ci[j, 1]:>12.4g}"
        lines.append(line + (f"  ({', '.join(note)})" if note else ""))
    lines.append(
        f"dof = {u.dof}, residual sd = {float(u.residual_sd):.4g}, rms = {float(u.rms):.4g}, "
        f"AIC = {float(u.aic):.4g}, BIC = {float(u.bic):.4g}"
    )
    if not bool(u.success):
        lines.append("the fit did not succeed: its parameter uncertainties are NaN")
    return lines


def result_summary(res, absolute_sigma=False, level=0.95, min_correlation=0.1):
    """lmfit-style report of one fit (see :meth:`Result.summary`)."""
    from ._uncertainty import uncertainty

    if np.ndim(res.status) != 0:
        raise ValueError(
            "summary() is for a single fit; pick one first, e.g. "
            "jax.tree_util.tree_map(lambda a: a[i], res) (repr(res) summarises a batch)."
        )
    with warnings.catch_warnings():  # the report lists them itself
        warnings.simplefilter("ignore")
        u = uncertainty(res, absolute_sigma=absolute_sigma, level=level)
    code = Status(int(res.status))
    m, n, dof = u.n_obs, u.n_params, u.dof
    rss = float(u.rss)
    lines = ["[[Fit Statistics]]"]
    lines.append(f"    status             = {'success' if code.success else 'FAILED'} ({int(code)}): {MESSAGES[code]}")
    lines.append(f"    steps              = {int(res.n_steps)} (function evaluations {int(res.n_fev)}, Jacobian evaluations {int(res.n_jev)})")
    lines.append(f"    data points        = {m}")
    lines.append(f"    variables          = {n}")
    lines.append(f"    chi-square         = {rss:.6g}")
    lines.append(f"    reduced chi-square = {rss / dof if dof > 0 else math.inf:.6g}")
    lines.append(f"    Akaike info crit   = {float(u.aic):.6g}")
    lines.append(f"    Bayesian info crit = {float(u.bic):.6g}")
    if res.loss != "linear":
        f_scale = 1.0 if res.f_scale is None else float(res.f_scale)
        lines.append(f"    loss               = {res.loss} (f_scale {f_scale:g}), cost {float(res.cost):.6g}")
    quantile = "normal quantile (absolute_sigma)" if absolute_sigma else f"Student t, {dof} dof"
    lines.append(f"[[Variables]] (stderr, relative error and {100 * level:g}% Wald interval, {quantile})")
    lines += ["    " + line for line in uncertainty_table(u)[:-1] if not line.startswith("the fit did not")]
    names = res.flat_names()
    order = res.display_order()
    lines += _correlations(np.asarray(u.corr, np.float64), names, order, min_correlation)
    notes = _warnings(res, u, names, order)
    if notes:
        lines.append("[[Warnings]]")
        lines += ["    - " + note for note in notes]
    return "\n".join(lines)


def _correlations(corr, names, order, min_correlation):
    pairs = []
    for a, i in enumerate(order):
        for j in order[a + 1 :]:
            c = corr[i, j]
            if np.isfinite(c) and abs(c) > min_correlation:
                pairs.append((abs(c), f"    C({names[i]}, {names[j]}) = {c:+.4f}"))
    if not pairs:
        return []
    head = f"[[Correlations]] (unreported correlations are < {min_correlation:.3f} in magnitude)"
    return [head] + [line for _, line in sorted(pairs, key=lambda x: -x[0])]


def _warnings(res, u, names, order):
    notes = []
    if not bool(u.success):
        notes.append(f"the fit did not succeed ({Status(int(res.status)).name.lower()}): its uncertainties are NaN; refit before reading them")
    und = np.asarray(u.undetermined, bool)
    if und.any():
        listed = ", ".join(names[j] for j in order if und[j])
        notes.append(f"undetermined by the data (variance inf): {listed}; see fitfleet.identifiability")
    rse = np.abs(np.asarray(u.stderr, np.float64) / np.asarray(u.estimate, np.float64))
    poor = [j for j in order if not und[j] and bool(u.success) and rse[j] > MAX_RSE]
    if poor:
        listed = ", ".join(f"{names[j]} ({100 * rse[j]:.3g}%)" for j in poor)
        notes.append(f"relative standard error above {100 * MAX_RSE:g}%, practically non-identifiable: {listed}; profile them")
    on_bound = [j for j in order if at_bound(res, j)]
    if on_bound:
        listed = ", ".join(names[j] for j in on_bound)
        notes.append(f"on a bound: {listed}; the Wald interval ignores the bound there (use fitfleet.profile)")
    corr = np.asarray(u.corr, np.float64)
    strong = [(names[i], names[j]) for a, i in enumerate(order) for j in order[a + 1 :] if abs(corr[i, j]) > STRONG_CORRELATION]
    if strong:
        notes.append("nearly redundant (|correlation| > 0.99): " + ", ".join(f"{a} and {b}" for a, b in strong))
    if u.dof <= 0:
        notes.append(f"{u.dof} degrees of freedom: the error scale cannot be estimated")
    return notes


def at_bound(res, j):
    """Whether flat parameter ``j`` of one fit sits on a bound the Result recorded
    (within √eps·max(1, |bound|); a ``log_scale`` parameter's lower bound 0 only
    restates positivity)."""
    if res.bounds is None:
        return False
    p = _flat(res.params)
    tol = math.sqrt(np.finfo(p.dtype if np.issubdtype(p.dtype, np.floating) else np.float64).eps)
    log = res.log_scale is not None and bool(res.log_scale[j])
    for bound in res.bounds:
        values = np.asarray(bound, np.float64).ravel()
        b = float(values[j] if values.size == p.size else values[0])
        if np.isfinite(b) and not (log and b <= 0) and abs(float(p[j]) - b) <= tol * max(1.0, abs(b)):
            return True
    return False


def multistart_summary(ms, max_optima=10, offset=0.0, label="cost"):
    """The report of a multi-start (see :meth:`MultiStartResult.summary`); costs are
    shown as ``cost + offset`` under the name ``label``."""
    status = np.asarray(ms.results.status).ravel()
    cost = np.asarray(ms.results.cost, np.float64).ravel()
    n = ms.n_starts
    converged = int(np.sum(is_success(status)))
    codes, counts = np.unique(status, return_counts=True)
    exits = ", ".join(f"{k} {Status(int(c)).name.lower()}" for c, k in sorted(zip(codes, counts), key=lambda x: -x[1]))
    finite = np.isfinite(cost)
    lines = [f"[[Multi-start]] {n} starts, {converged} converged"]
    lines.append(f"    exits              = {exits}")
    if not finite.any():
        lines.append(f"    {'best ' + label:<18} = none finite")
        return "\n".join(lines)
    best = float(ms.best.cost)
    at_best = [o for o in ms.optima if o.cost - best <= ms.threshold]
    lines.append(f"    {'best ' + label:<18} = {best + offset:.6g}")
    lines.append(
        f"    best value found   = {ms.n_success} times ({label} within {ms.threshold:.3g} of the best: {_threshold_rule(ms)}), "
        f"success fraction p* = {ms.p_star:.3g}"
    )
    if len(at_best) > 1:
        lines.append(f"    at the best cost   = {len(at_best)} distinct parameter sets (optima marked * below)")
    needed = ms.starts_needed(0.99)
    lines.append(
        f"    starts needed      = {needed if needed != math.inf else 'unknown (p* = 0)'} for 99% (estimate from p*); "
        f"{n} starts find the best with probability {ms.prob_found():.3f}"
    )
    if ms.n_success <= 1:
        lines.append("    only one start reached the best cost: more starts (or another box) may find a better one")
    lines.append(f"[[Optima]] converged fits grouped by cost and parameters (rtol {ms.rtol:g})")
    lines.append(f"    {'optimum':>7}  {label:>12}  {'starts':>6}  {'fraction':>8}")
    for i, o in enumerate(ms.optima[:max_optima]):
        star = "  *" if o.cost - best <= ms.threshold else ""
        lines.append(f"    {i + 1:>7}  {o.cost + offset:>12.6g}  {o.n_starts:>6}  {o.fraction:>8.4f}{star}")
    if len(ms.optima) > max_optima:
        rest = ms.optima[max_optima:]
        lines.append(f"    {'...':>7}  {'':>12}  {sum(o.n_starts for o in rest):>6}  {'':>8}  ({len(rest)} more)")
    names, order = ms.best.flat_names(), ms.best.display_order()
    flat = _flat(ms.best.params)
    lines.append("[[Best parameters]]")
    lines.append("    " + ", ".join(f"{names[j]} = {flat[j]:.6g}" for j in order))
    return "\n".join(lines)


def _threshold_rule(ms):
    if ms.threshold_rule == "nll":
        return "χ²₁(95%)/2, the cost being a negative log-likelihood"
    if ms.threshold_rule == "relative":
        return f"relative {ms.rtol:g}"
    return "given"


def _relative(se, p):
    if not np.isfinite(se):
        return "inf" if se == np.inf else "nan"
    if p == 0:
        return "inf" if se > 0 else "0%"
    return f"{100 * se / abs(p):.3g}%"


def _flat(params):
    import jax

    leaves = jax.tree_util.tree_leaves(params)
    return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in leaves]) if leaves else np.zeros(0)


def _names(names, n):
    names = [f"p[{i}]" for i in range(n)] if names is None else list(names)
    if len(names) != n:
        raise ValueError(f"`names` has {len(names)} entries but there are {n} parameters.")
    return names
