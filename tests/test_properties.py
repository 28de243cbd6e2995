"""Properties over random problems (issue 18, "What it must show"): a batch member never
changes because another member is poisoned, and a success is a promise.

The first-order optimality a success promises (also in ``docs/fitting_guide.md``):

    optimality = max_j  c_j · |g_j| / (‖J̃_j‖ · ‖r̃‖),        g = J̃ᵀr̃,

the gtol statistic in the user's parameters (``Result.jac``, ``Result.residual``; with a
robust loss ``r̃ = √ρ'·r``, ``J̃ = √ρ'·J``, the model the solvers minimise), projected
at bounds: ``c_j = min(1, d_j / max(|p_j|, 1))`` with ``d_j`` the distance from ``p_j``
to the bound the descent direction ``−g_j`` points at (Coleman and Li's scaling, in
relative units; 1 without bounds).  A column too small to move the residual at all
(``‖J̃_j‖·max(|p_j|, 1) <= √eps·‖r̃‖``, a parameter on a plateau) is not judged.

For GTOL and FTOL (and XTOL, in these problems) ``optimality <= max(gtol, 2√ftol)``: an
accepted undamped step δ with gain ratio > ¼ and ``F_old − F_new <= ftol·F_old`` has
``‖J̃δ‖² <= 2·predicted <= 8·ftol·F``, and ``|g_j| = |J̃_jᵀJ̃δ| <= ‖J̃_j‖·‖J̃δ‖``.
"""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fitfleet as ff
import problems
from fitfleet._losses import rho

BATCH = 4
GTOL = FTOL = 1e-8


def optimality(res, bounds):
    """See the module docstring; ``res`` is one fit."""
    J, r = np.asarray(res.jac, np.float64), np.asarray(res.residual, np.float64)
    p = np.ravel(np.asarray(res.params, np.float64))
    if res.loss != "linear":
        w = np.sqrt(np.asarray(rho(res.loss, jnp.asarray((r / float(res.f_scale)) ** 2))[1], np.float64))
        J, r = w[:, None] * J, w * r
    g = J.T @ r
    column, size = np.linalg.norm(J, axis=0), np.maximum(np.abs(p), 1)
    judged = column * size > np.sqrt(np.finfo(np.float64).eps) * np.linalg.norm(r)
    cosine = np.where(judged, np.abs(g) / np.where(judged, column * np.linalg.norm(r), 1), 0)
    if bounds is not None:
        lo, hi = bounds
        distance = np.where(g < 0, hi - p, p - lo)
        cosine = cosine * np.minimum(1, distance / size)
    return float(cosine.max(initial=0))


@settings(max_examples=10, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(sorted(problems.RANDOM_KINDS)),
    seed=st.integers(0, 2**31 - 1),
    spread=st.sampled_from([0.1, 0.5, 2.0]),
    method=st.sampled_from(["lm", "gn"]),
    loss=st.sampled_from(["linear", "soft_l1", "cauchy"]),
    bounded=st.booleans(),
    poisoned=st.lists(st.integers(0, BATCH - 1), min_size=1, max_size=2, unique=True),
)
def test_poisoned_members_change_nothing_else_and_successes_are_stationary(
    x64, kind, seed, spread, method, loss, bounded, poisoned
):
    rng = np.random.default_rng(seed)
    probs = [problems.sample(kind, rng, start_spread=spread) for _ in range(BATCH)]
    x = np.asarray(probs[0].args[0])
    y = np.stack([np.asarray(p.args[1]) for p in probs])
    x0 = np.stack([np.asarray(p.x0) for p in probs])
    options = dict(method=method, loss=loss, f_scale=0.1, gtol=GTOL, ftol=FTOL)
    box = None
    if bounded:  # a box around the starts that may or may not hold the optimum
        box = (x0.min(0) - np.abs(x0).max(0) - 0.5, x0.max(0) + 0.5 * np.abs(x0).max(0) + 0.1)
        options["bounds"] = box
    fun = problems.RANDOM_KINDS[kind][0]
    clean = ff.fit_batch(fun, x0, (x, y), shared_args=(0,), **options)

    dirty = y.copy()
    for i in poisoned:
        dirty[i, rng.integers(y.shape[1])] = rng.choice([np.nan, np.inf])
    hit = ff.fit_batch(fun, x0, (x, dirty), shared_args=(0,), **options)
    others = np.setdiff1d(np.arange(BATCH), poisoned)
    for a, b in zip(jax.tree_util.tree_leaves(clean), jax.tree_util.tree_leaves(hit)):
        np.testing.assert_array_equal(np.asarray(a)[others], np.asarray(b)[others])
    assert not np.any(np.asarray(hit.success)[poisoned])
    np.testing.assert_array_equal(np.asarray(hit.status)[poisoned], ff.Status.NONFINITE_RESIDUAL)

    for i in np.flatnonzero(np.asarray(clean.success)):
        one = jax.tree_util.tree_map(lambda a: a[i], clean)
        assert optimality(one, box) <= max(GTOL, 2 * np.sqrt(FTOL)), (i, one)
