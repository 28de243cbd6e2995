"""Starting points for multi-start: ``n`` points in the box ``[lower, upper]``.

Every sampler first draws points in the unit cube and then maps each coordinate to its
interval, linearly or, with ``log_scale``, log-uniformly (``|p|`` uniform in
``[log|lo|, log|hi|]``, the sign of the box kept), so a rate constant spanning decades
gets as many starts per decade.

- ``"uniform"``: independent uniform points.
- ``"lhs"``: Latin hypercube: each coordinate's ``n`` equal strata hold exactly one point,
  so even a few starts cover every parameter's whole range.
- ``"sobol"``: a scrambled Sobol sequence (scipy's ``qmc.Sobol``), the most even cover;
  ``n`` a power of two keeps its balance properties.

Reference: M. D. McKay, R. J. Beckman, W. J. Conover, "A comparison of three methods for
selecting values of input variables" (1979); A. B. Owen, "Scrambling Sobol' and
Niederreiter-Xing points" (1998).
"""

import warnings

import jax
import numpy as np

SAMPLERS = ("uniform", "lhs", "sobol")


def unit_cube(sampler, key, n, d):
    """``n`` points in ``[0, 1)^d`` as a float64 numpy array.

    Drawn on the host by numpy, seeded from the JAX ``key``: the designs are a few
    thousand numbers, not worth compiling a program for.
    """
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    if sampler == "uniform":
        return rng.random((n, d))
    if sampler == "lhs":
        strata = np.argsort(rng.random((n, d)), axis=0)  # a random permutation per column
        return (strata + rng.random((n, d))) / n
    if sampler == "sobol":
        try:
            from scipy.stats import qmc
        except ImportError as e:  # pragma: no cover - scipy is in the dev extra
            raise ImportError('sampler="sobol" needs scipy; install scipy or use sampler="lhs".') from e
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # n not a power of two: documented above
            return qmc.Sobol(d, scramble=True, seed=rng).random(n)
    raise ValueError(f"`sampler` must be one of {SAMPLERS}; got {sampler!r}.")


def to_box(u, lower, upper, log):
    """Map unit-cube points ``u`` (n, d) to the box, log-uniformly where ``log``."""
    lo, hi = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    sign = np.where(log, np.sign(lo), 1.0)
    a = np.where(log, np.log(np.where(log, np.abs(lo), 1)), lo)
    b = np.where(log, np.log(np.where(log, np.abs(hi), 1)), hi)
    t = a + (b - a) * u
    x = np.where(log, sign * np.exp(np.where(log, t, 0.0)), t)  # exp only where log: no overflow warnings
    return np.clip(x, lo, hi)  # exp(log(hi)) may round just past hi


def check_box(lower, upper, log, n):
    """Validate a sampling box of ``n`` flat parameters; return flat float64 arrays."""
    lo = np.broadcast_to(np.asarray(lower, np.float64), (n,)) if np.ndim(lower) == 0 else np.asarray(lower, np.float64)
    hi = np.broadcast_to(np.asarray(upper, np.float64), (n,)) if np.ndim(upper) == 0 else np.asarray(upper, np.float64)
    log = np.broadcast_to(np.asarray(log, bool), (n,))
    if lo.shape != (n,) or hi.shape != (n,):
        raise ValueError(f"`lower` and `upper` must hold one value per parameter ({n}); got {lo.shape} and {hi.shape}.")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError("`lower` and `upper` must be finite: starts are drawn inside the box.")
    if np.any(lo > hi):
        raise ValueError(f"`lower` must not exceed `upper`; it does at flat index {np.flatnonzero(lo > hi).tolist()}.")
    bad = log & ~(((lo > 0) & (hi > 0)) | ((lo < 0) & (hi < 0)))
    if np.any(bad):
        raise ValueError(
            f"`log_scale` needs a box that excludes 0 (both bounds positive or both negative); "
            f"it does not at flat index {np.flatnonzero(bad).tolist()}."
        )
    return lo, hi, log
