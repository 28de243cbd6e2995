"""Start sampling: each parameter's ``initializationPriorType`` (``Problem.sample_starts``),
by the inverse of its cumulative distribution, truncated to the parameter's bounds."""

import math
import statistics

import numpy as np
import petab.v1 as petab
from petab.v1 import C


def sample(u, kind, params, lo, hi, scale):
    """Inverse-CDF sampling of one parameter's initialization prior, truncated to its
    bounds ``lo``, ``hi`` (estimation scale), returned on the estimation scale."""
    to_scale = lambda p: np.asarray([petab.scale(float(v), scale) for v in np.atleast_1d(p)])  # noqa: E731
    lin_lo, lin_hi = petab.unscale(lo, scale), petab.unscale(hi, scale)
    if kind == C.PARAMETER_SCALE_UNIFORM:
        a, b = params or (lo, hi)
        return np.maximum(a, lo) + u * (np.minimum(b, hi) - np.maximum(a, lo))
    if kind == C.UNIFORM:
        a, b = max(params[0], lin_lo), min(params[1], lin_hi)
        return to_scale(a + u * (b - a))
    space = {C.PARAMETER_SCALE_NORMAL: "scale", C.PARAMETER_SCALE_LAPLACE: "scale", C.LOG_NORMAL: "ln", C.LOG_LAPLACE: "ln"}.get(kind, "lin")
    a, b = {"scale": (lo, hi), "ln": (math.log(lin_lo) if lin_lo > 0 else -math.inf, math.log(lin_hi)), "lin": (lin_lo, lin_hi)}[space]
    cdf, inverse = _laplace(*params) if "aplace" in kind else _normal(*params)
    z = inverse(cdf(a) + u * (cdf(b) - cdf(a)))
    return z if space == "scale" else to_scale(np.exp(z) if space == "ln" else z)


def _normal(mu, s):
    d = statistics.NormalDist(mu, s)
    clip = lambda p: min(max(p, 1e-300), 1 - 1e-16)  # noqa: E731
    return (lambda x: d.cdf(x) if np.isfinite(x) else float(x > 0)), np.vectorize(lambda p: d.inv_cdf(clip(p)))


def _laplace(mu, b):
    cdf = lambda x: 0.5 * math.exp((x - mu) / b) if x < mu else 1 - 0.5 * math.exp(-(x - mu) / b)  # noqa: E731
    inverse = lambda p: mu - b * np.sign(p - 0.5) * np.log1p(-2 * np.abs(p - 0.5))  # noqa: E731
    return cdf, inverse
