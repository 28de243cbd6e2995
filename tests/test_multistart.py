"""multistart and its samplers.

References: exact properties of the designs (every start inside the box, one start per
Latin-hypercube stratum, also in log space for log-uniform sampling; Sobol balance for
a power of two), a problem whose basins of attraction are known analytically, and
NIST's certified values.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import nist
import numpy as np
import pytest

import fitfleet as ff
from conftest import count_compilations
from fitfleet._samplers import to_box, unit_cube


def strata(u, n):
    """Per coordinate, the sorted stratum indices of n points in [0, 1)."""
    return np.sort(np.floor(u * n).astype(int), axis=0)


@pytest.mark.parametrize("sampler", ["uniform", "lhs", "sobol"])
def test_samplers_stay_in_the_box(sampler):
    if sampler == "sobol":
        pytest.importorskip("scipy")
    lo, hi = np.array([-2.0, 1e-3, -5.0]), np.array([3.0, 1e3, -1e-2])
    log = np.array([False, True, True])
    u = unit_cube(sampler, jax.random.key(3), 128, 3)
    x = to_box(u, lo, hi, log)
    assert u.shape == (128, 3) and np.all((u >= 0) & (u < 1))
    assert np.all((x >= lo) & (x <= hi))
    assert np.all(x[:, 2] < 0)  # a negative log-scale box keeps its sign


def test_log_box_edges_are_reached_quietly_and_kept_inside():
    # A linear parameter spanning [-1e3, 1e3] next to a log one: exp() must see only the
    # log coordinates (else it overflows, with a RuntimeWarning), and a start at the
    # box's edge stays inside it although exp(log(hi)) rounds.
    lo, hi = np.array([-1e3, 1e-7, -7e5]), np.array([1e3, 0.1, -3e-3])  # exp(log(0.1)) > 0.1
    log = np.array([False, True, True])
    edges = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]] + np.random.default_rng(0).uniform(0, 1, (64, 3)).tolist())
    with np.errstate(all="raise"):
        x = to_box(edges, lo, hi, log)
    assert np.all((x >= lo) & (x <= hi))
    np.testing.assert_allclose(x[:2], [lo, hi], rtol=1e-13)


def test_lhs_fills_every_stratum_and_log_scale_is_uniform_in_log():
    n = 240
    u = unit_cube("lhs", jax.random.key(0), n, 4)
    np.testing.assert_array_equal(strata(u, n), np.tile(np.arange(n)[:, None], (1, 4)))
    x = to_box(u, [1e-4] * 4, [1e2] * 4, np.ones(4, bool))
    # log-uniform: the decades [1e-4, 1e-3), ..., [1e1, 1e2) hold n/6 starts each (±1
    # for a start within round-off of a decade's edge).
    counts = np.stack([np.histogram(np.log10(x[:, j]), bins=6, range=(-4, 2))[0] for j in range(4)])
    assert np.all(np.abs(counts - n / 6) <= 1)
    np.testing.assert_array_equal(strata((np.log10(x) + 4) / 6, n), strata(u, n))


def test_sobol_is_balanced_for_a_power_of_two():
    pytest.importorskip("scipy")
    n = 256
    u = unit_cube("sobol", jax.random.key(1), n, 5)
    np.testing.assert_array_equal(strata(u, n), np.tile(np.arange(n)[:, None], (1, 5)))
    v = unit_cube("sobol", jax.random.key(2), n, 5)
    assert not np.allclose(u, v)  # a new key scrambles anew


def double_well(p):
    # p² = 1 has roots ±1; the small second residual makes +1 the better one (cost 0)
    # and -1 a local minimum (cost ≈ 2ε²).  Each damped Gauss-Newton step for p ≠ 0
    # keeps the sign of p (away from a sliver of width ~ε² at 0), so the basins are p > 0
    # and p < 0.
    return jnp.stack([p[0] ** 2 - 1.0, 1e-3 * (p[0] - 1.0)])


def test_p_star_on_known_basins(x64):
    ms = ff.multistart(double_well, -2.0, 3.0, n_starts=300, sampler="uniform", key=jax.random.key(7))
    starts = np.asarray(ms.starts)[:, 0]
    expected = np.mean(starts > 1e-5)  # fraction of starts in the basin of +1
    assert 0.4 < expected < 0.8
    assert ms.p_star == pytest.approx(expected, abs=1e-12)
    assert len(ms.optima) == 2
    best, other = ms.optima
    assert float(best.params[0]) == pytest.approx(1.0, abs=1e-8)
    assert float(other.params[0]) == pytest.approx(-1.0, abs=1e-5)
    assert best.n_starts + other.n_starts == 300
    assert other.cost == pytest.approx(2e-6, rel=1e-2)
    assert ms.prob_found(5) == pytest.approx(1 - (1 - expected) ** 5)
    assert ms.prob_found() == pytest.approx(1 - (1 - expected) ** 300)
    needed = ms.starts_needed(0.999)
    assert ms.prob_found(needed) >= 0.999 > ms.prob_found(needed - 1)
    # sorted by cost, and the best Result is the first
    assert np.all(np.diff(np.asarray(ms.results.cost)) >= 0)
    assert float(ms.best.cost) == float(ms.results.cost[0])


def _greedy_optima(cost, flat, rtol, eps):
    """The grouping rule, by brute force: in cost order, each fit joins the first earlier
    optimum it agrees with (cost and every parameter within rtol), else founds one."""
    cost_atol = eps * max(1.0, cost.max())
    leaders, members = [], []
    for j in np.argsort(cost, kind="stable"):
        for i, k in enumerate(leaders):
            scale = np.maximum(np.abs(flat[j]), np.abs(flat[k]))
            agree = cost[j] - cost[k] <= rtol * cost[j] + cost_atol and np.all(
                np.abs(flat[j] - flat[k]) <= rtol * scale + eps * max(1.0, scale.max())
            )
            if agree:
                members[i] += 1
                break
        else:
            leaders.append(j)
            members.append(1)
    return [cost[k] for k in leaders], members


def _clusters(rng, rtol):
    """Clusters of nearby fits (some closer than rtol in cost but not in parameters) and
    loners."""
    labels = rng.integers(0, 12, 300)
    # Within a cluster parameters agree to about rtol and costs straddle the rtol limit.
    flat = rng.uniform(0.5, 2.0, (12, 2))[labels] * (1 + 0.5 * rtol * rng.uniform(-1, 1, (300, 2)))
    cost = rng.uniform(1.0, 10.0, 12)[labels] * (1 + 1.5 * rtol * rng.uniform(0, 1, 300))
    flat[::7] = rng.uniform(0.5, 2.0, (43, 2))  # loners
    return cost, flat


def _plateau(rng, rtol):
    """A plateau: hundreds of fits of nearly equal cost, mostly with distinct parameters
    (starts that stopped at once), some of them repeated, and a few true optima."""
    flat = rng.uniform(0.5, 2.0, (400, 3))
    flat[200:] = flat[rng.integers(0, 200, 200)] * (1 + 0.3 * rtol * rng.uniform(-1, 1, (200, 3)))
    cost = 5.0 * (1 + 0.1 * rtol * rng.uniform(0, 1, 400))
    cost[::50] = rng.uniform(0.1, 1.0, 8)
    return cost, flat


@pytest.mark.parametrize("data", [_clusters, _plateau])
@pytest.mark.parametrize("rtol", [1e-3, 0.2, 2.0])
def test_optima_follow_the_grouping_rule(x64, rtol, data):
    """Against the rule written out by brute force."""
    cost, flat = data(np.random.default_rng(3), rtol)
    n, p = flat.shape
    results = ff.Result(
        params=jnp.asarray(flat), cost=jnp.asarray(cost), residual=jnp.zeros((n, 1)), jac=jnp.zeros((n, 1, p)),
        grad=jnp.zeros((n, p)), status=jnp.full(n, int(ff.Status.GTOL), jnp.int32), n_steps=jnp.zeros(n, jnp.int32),
        n_fev=jnp.zeros(n, jnp.int32), n_jev=jnp.zeros(n, jnp.int32),
    )  # fmt: skip
    ms = ff._multistart.summarise(results, jnp.asarray(flat), rtol)
    costs, counts = _greedy_optima(cost, flat, rtol, float(np.finfo(np.float64).eps))
    assert [o.n_starts for o in ms.optima] == counts
    np.testing.assert_array_equal([o.cost for o in ms.optima], costs)
    assert 1 < len(counts) < n if rtol < 1 else counts == [n]
    if data is _plateau and rtol < 0.01:
        assert len(counts) > 100 and max(counts) > 1  # many windows, some with several fits


def test_multistart_finds_nist_certified_optimum(x64):
    prob = nist.load("BoxBOD")
    fun = prob.residual()
    s1 = prob.start1
    lower, upper = np.abs(s1) / 30, np.abs(s1) * 30
    ms = ff.multistart(fun, lower, upper, 64, (prob.x, prob.y), log_scale=True, key=jax.random.key(0))
    assert np.min(nist.lre(np.asarray(ms.best.params), prob.certified)) >= 4
    assert 2 * float(ms.best.cost) == pytest.approx(prob.certified_rss, rel=1e-8)
    assert 0 < ms.p_star <= 1 and ms.optima[0].n_starts >= 1


def test_pytree_box_and_float32():
    def fun(p):
        return jnp.stack([p["a"] - 2.0, 10 * (p["b"][0] - p["a"] ** 2), p["b"][1] + 1.0])

    ms = ff.multistart(fun, {"a": 0.5, "b": [-1.0, -3.0]}, {"a": 3.0, "b": [8.0, 2.0]}, n_starts=16, ftol=1e-6, xtol=1e-6, gtol=1e-6)
    assert ms.results.params["a"].shape == (16,) and ms.results.params["a"].dtype == jnp.float32
    np.testing.assert_allclose(ms.best.params["a"], 2.0, rtol=1e-4)
    np.testing.assert_allclose(ms.best.params["b"], [4.0, -1.0], rtol=1e-4)


def test_seed_or_key_and_the_fields_of_every_start():
    def fun(p):
        return jnp.array([p[0] ** 2 - 1.0, 1e-2 * (p[0] - 1.0)])

    by_key = ff.multistart(fun, -3.0, 1.0, n_starts=8, key=jax.random.key(5))
    by_seed = ff.multistart(fun, -3.0, 1.0, n_starts=8, key=5)
    legacy = ff.multistart(fun, -3.0, 1.0, n_starts=8, key=jax.random.PRNGKey(5))
    for ms in (by_seed, legacy):
        np.testing.assert_array_equal(ms.starts, by_key.starts)
    # A batch's fields, start axis first and best first, as on ms.results.
    assert by_key.params is by_key.results.params and by_key.cost is by_key.results.cost
    assert by_key.success.shape == (8,) and float(by_key.cost[0]) == float(by_key.best.cost)
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        by_key.nonsense
    with pytest.raises(TypeError, match="`key` must be a jax.random key"):
        ff.multistart(fun, -3.0, 1.0, n_starts=8, key=np.random.default_rng(0))
    with pytest.raises(ValueError, match="`key`: a seed"):
        ff.multistart(fun, -3.0, 1.0, n_starts=8, key=-1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lower=[1.0, -1.0], upper=[2.0, 1.0], log_scale=True), "log_scale.*excludes 0"),
        (dict(lower=[1.0, 3.0], upper=[2.0, 1.0]), "must not exceed"),
        (dict(lower=[1.0, -np.inf], upper=[2.0, 1.0]), "finite"),
        (dict(lower=[1.0, 1.0], upper=[2.0, 2.0, 3.0]), "`lower` has 2 entries for 3 parameters"),
        (dict(lower=[1.0, 1.0], upper=[2.0, 2.0], sampler="grid"), "sampler"),
        (dict(lower=[1.0, 1.0], upper=[2.0, 2.0], n_starts=0), "n_starts"),
    ],
)
def test_bad_box_is_named(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ff.multistart(lambda p: p, **kwargs)


@pytest.mark.parametrize("options, match", [(dict(foo=1), "unexpected option"), (dict(method="newton"), "`method`"), (dict(ftol=-1.0), "`ftol`")])
def test_bad_options_are_named_before_anything_compiles(options, match):
    """Even the starts' sampling (which compiles jax.random's programs on a first call)
    waits until the options are known to be good."""
    with count_compilations() as compiled, pytest.raises((ValueError, TypeError), match=match):
        ff.multistart(lambda p: p, [1.0, 1.0], [2.0, 2.0], 4, key=np.random.default_rng(0).integers(2**31), **options)
    assert compiled == []


def test_summary_lists_optima_and_the_starts_needed(x64):
    cost, flat = _clusters(np.random.default_rng(4), 1e-3)
    n, p = flat.shape
    status = np.full(n, int(ff.Status.GTOL), np.int32)
    status[:5] = int(ff.Status.MAX_STEPS)
    results = ff.Result(
        params=jnp.asarray(flat), cost=jnp.asarray(cost), residual=jnp.zeros((n, 1)), jac=jnp.zeros((n, 1, p)),
        grad=jnp.zeros((n, p)), status=jnp.asarray(status), n_steps=jnp.zeros(n, jnp.int32),
        n_fev=jnp.zeros(n, jnp.int32), n_jev=jnp.zeros(n, jnp.int32),
    )  # fmt: skip
    ms = ff._multistart.summarise(results, jnp.asarray(flat))
    lines = ms.summary(max_optima=3).splitlines()
    assert lines[0] == f"[[Multi-start]] {n} starts, {n - 5} converged"
    assert lines[1].split("=")[1].strip() == f"{n - 5} gtol, 5 max_steps"  # exit reasons counted by status
    assert f"best value found   = {ms.n_success} times" in lines[3] and f"p* = {ms.p_star:.3g}" in lines[3]
    assert f"= {ms.starts_needed(0.99)} for 99%" in "\n".join(lines)
    table = lines.index(next(line for line in lines if line.startswith("[[Optima]]")))
    rows = lines[table + 2 : table + 5]
    assert [int(line.split()[2]) for line in rows] == [o.n_starts for o in ms.optima[:3]]
    assert f"({len(ms.optima) - 3} more)" in lines[table + 5]
    failed = ff._multistart.summarise(eqx.tree_at(lambda r: r.status, results, jnp.full(n, int(ff.Status.MAX_STEPS))), jnp.asarray(flat))
    # p* counts the starts that reached the best cost whatever their status; the optima
    # group converged fits only.
    assert failed.optima == [] and failed.p_star == ms.p_star and "0 converged" in failed.summary()
