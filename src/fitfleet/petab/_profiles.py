"""Profile likelihoods of a PEtab problem's parameters: ``prob.profile(fit)``.

Each parameter is profiled by :func:`fitfleet.profile` (its adaptive grid, interval and
``verdict``: identifiable, practically non-identifiable (``bound``, ``open``, or
``one-sided`` when the optimum sits on a bound) or structurally non-identifiable
(``flat``)), on the estimation scale, with ``absolute_sigma=True``: the cost is the
negative log-likelihood up to a constant, so ``Δ = 2 (NLL(profiled) − NLL(optimum))``
and the 95% threshold is χ²₁(0.95) = 3.84, i.e. 1.92 in NLL.

One set of compiled programs serves every parameter.  :func:`fitfleet.profile` compiles
its refits per profiled index and per bounds (they are static), so here the parameters
are profiled in coordinates where both are the same for all of them: for parameter
``i`` the fit variables are

    z = exp((x_π − lower_π) / (upper_π − lower_π)) ∈ [1, e],   π = (i, the others in order),

fitted with ``log_scale`` and bounds ``[1, e]``, so that ``log z`` is the parameter's
position in its box, always profiled as index 0; the permutation ``π`` is an argument
of the residual (traced).  With ``log_scale`` fitfleet's bound transform acts on
``log z`` exactly as it acts on ``x`` in a direct fit (both boxes are affine images of
each other), so the refits are the same fits; and the adaptive grid walks on
``log z``, i.e. uniformly in ``x`` on the estimation scale, with its first offset
``min(σ/4, 0.23 box widths)`` (``σ`` the Wald standard error) and the whole box within
reach (the walk's 3-decade extent is 6.9 box widths), whatever ``x̂`` is.  The profiles
are returned in ``x``: values, estimate, interval and refitted parameters mapped back.
PEtab bounds are finite, which this needs.
"""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from .._multistart import MultiStartResult
from .._profile import profile as _profile
from .._result import Result

E = math.e


def profiles(prob, fit, names=None, *, progress=False, **options):
    """``{name: Profile}`` of ``prob`` at ``fit`` (see ``Problem.profile``)."""
    res = _one_fit(prob, fit)
    if names is None:
        names = list(prob.names)
    elif isinstance(names, str):
        names = [names]
    unknown = [name for name in names if name not in prob.names]
    if unknown:
        raise ValueError(f"`names`: {unknown} are not estimated parameters of the problem; they are {list(prob.names)}.")
    grids = options.pop("grid", None) or {}
    if not isinstance(grids, dict) or set(grids) - set(names):
        raise ValueError("`grid` must be a dict {name: values on the estimation scale} for some of the profiled `names`.")
    for option in ("absolute_sigma", "index", "bounds", "log_scale"):
        if option in options:
            raise TypeError(f"`{option}` is set by prob.profile (the cost is a negative log-likelihood, on the estimation scale).")
    lower, upper = np.asarray(prob.lower, np.float64), np.asarray(prob.upper, np.float64)
    if not (np.all(np.isfinite(lower)) and np.all(np.isfinite(upper)) and np.all(upper > lower)):
        raise ValueError("profiles need finite bounds with lower < upper for every estimated parameter (PEtab requires them).")
    # The refits stop as prob.fit's fits do (method, subspace, stopping tests, step budget:
    # ``Problem._options``), in the profile's own bounds.  With fitfleet's generic defaults
    # (Levenberg-Marquardt, ``ftol`` relative to a cost that holds a large constant)
    # Boehm's refits stopped early: near k_exp_homo's interval end their Δ was 0.4-0.7
    # above that of refits to tight tolerances, and its nine profiles took 191 s, not
    # 62.5 s (benchmarks/results/petab_summary.md, session 21).
    options = {k: v for k, v in prob._options(options).items() if k != "bounds"}
    width = upper - lower
    fun = _unit_box_residual(prob)
    out = {}
    for name in _bar(names, progress):
        i = prob.names.index(name)
        order = np.array([i] + [j for j in range(len(prob.names)) if j != i])
        perm = np.argsort(order)
        args = (perm, jnp.asarray(lower, res.cost.dtype), jnp.asarray(width, res.cost.dtype), *prob._data(res.cost))
        grid = None if name not in grids else np.exp((np.asarray(grids[name], np.float64) - lower[i]) / width[i])
        z_prof = _profile(fun, _to_unit_box(res, order, lower, width), args, index=0, grid=grid, absolute_sigma=True, **options)
        out[name] = _from_unit_box(z_prof, i, name, perm, lower, width)
    return out


def _one_fit(prob, fit):
    if isinstance(fit, MultiStartResult):
        fit = fit.best
    if isinstance(fit, Result):
        if np.ndim(fit.cost) != 0:
            raise ValueError("`fit` is a batch of fits: pass one (ms.best, or a MultiStartResult).")
        if np.shape(fit.params) != (len(prob.names),):
            raise ValueError(f"`fit` has parameters of shape {np.shape(fit.params)}; this problem has {len(prob.names)}.")
        return fit
    return prob.fit(fit)


def _unit_box_residual(prob):
    """``r(z, perm, lower, width, *data) = prob.fun(lower + width · log z[perm], *data)``."""
    return _UnitBox(prob.fun)


class _UnitBox:
    """The residual in ``z`` (module docstring); equal for equal ``fun`` (fitfleet.profile
    keys its compiled programs on it)."""

    def __init__(self, fun):
        self.fun = fun

    def __call__(self, z, perm, lower, width, *data):
        return self.fun(lower + width * jnp.log(z[perm]), *data)

    def __eq__(self, other):
        return type(other) is type(self) and other.fun == self.fun

    def __hash__(self):
        return hash((type(self), self.fun))


def _to_unit_box(res, order, lower, width):
    """The Result in ``z`` (module docstring), for parameter ``order[0]``."""
    x = np.asarray(res.params, np.float64)
    t = np.clip((x - lower) / width, 0.0, 1.0)[order]
    z = np.exp(t)
    dxdz = (width[order] / z).astype(np.asarray(res.jac).dtype)
    jac = np.asarray(res.jac)[:, order] * dxdz
    n = z.size
    return dataclasses.replace(
        res, params=z.astype(np.asarray(res.params).dtype), jac=jac, grad=np.asarray(res.grad)[order] * dxdz,
        names=None, order=None, bounds=((1.0,) * n, (E,) * n), log_scale=(True,) * n, sigma=None, history=None,
    )  # fmt: skip


def _from_unit_box(p, index, name, perm, lower, width):
    """A Profile in ``z`` mapped back to ``x`` (values, estimate, interval, parameters)."""

    def to_x(z, j):  # z > 0; -inf (an open lower end) stays -inf
        z = np.asarray(z, np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(z == -np.inf, -np.inf, lower[j] + width[j] * np.log(np.where(z == -np.inf, 1.0, z)))

    dtype = np.asarray(p.values).dtype
    z = np.asarray(p.params, np.float64)[:, perm]
    return dataclasses.replace(
        p, values=to_x(p.values, index).astype(dtype), estimate=to_x(p.estimate, index).astype(dtype),
        ci=to_x(p.ci, index).astype(dtype), params=to_x(z, np.arange(z.shape[1])).astype(dtype),
        index=index, name=name, log_scale=False,
    )  # fmt: skip


def _bar(names, progress):
    if not progress:
        return names
    try:
        from tqdm.auto import tqdm
    except ImportError as e:
        raise ImportError("progress=True needs tqdm: pip install 'fitfleet[progress]' (or pip install tqdm).") from e
    return tqdm(names, unit="parameter", desc="profiles")
