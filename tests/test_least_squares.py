"""Core tests of ``fitfleet.least_squares`` (issue #2; the NIST suite lives elsewhere).

References are independent of fitfleet: scipy's ``least_squares`` (``lm`` = MINPACK,
``trf``), closed forms (``numpy.linalg.lstsq``), published optima, and hand-written
Jacobians in ``problems.py``.  Strict float64 comparisons run inside the ``x64``
fixture; nothing here touches global JAX configuration.
"""

from __future__ import annotations

import doctest
import functools
import importlib
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

import fitfleet as ff
from fitfleet import _problem, _tracing
import problems
from conftest import count_compilations

SUCCESS_CODES = {ff.Status.GTOL, ff.Status.FTOL, ff.Status.XTOL}  # the documented successes


# --------------------------------------------------------------------------- helpers

class Traced:
    """Wrap a residual and count how often JAX traces (or calls) it."""

    def __init__(self, fun):
        self.fun = fun
        self.count = 0

    def __call__(self, *args):
        self.count += 1
        return self.fun(*args)


@functools.cache
def _jitted(fun):
    return jax.jit(fun)


def scipy_fit(prob, method, **kwargs):
    """scipy's fit of a zoo problem in float64 with its analytic Jacobian (call inside x64)."""
    args = prob.jnp_args()
    f, j = _jitted(prob.fun), _jitted(prob.jac)
    options = dict(ftol=1e-15, xtol=1e-15, gtol=1e-15)
    options.update(kwargs)
    return scipy.optimize.least_squares(
        lambda p: np.asarray(f(jnp.asarray(p), *args)),
        np.asarray(prob.x0, np.float64),
        jac=lambda p: np.asarray(j(jnp.asarray(p), *args)),
        method=method,
        **options,
    )


def standard_errors(jac, cost):
    jac = np.asarray(jac, np.float64)
    m, n = jac.shape
    return np.sqrt(np.diag(np.linalg.inv(jac.T @ jac)) * 2.0 * cost / (m - n))


def assert_within_se(params, reference, se, k=1e-5):
    """``params`` (array or pytree) within ``k`` standard errors of ``reference``."""
    got = np.asarray(ravel_pytree(params)[0], np.float64)
    err = np.abs(got - np.asarray(reference)) / se
    assert np.all(err <= k), f"off by {err.max():.2e} standard errors (allowed {k:.0e}): {got} vs {reference}"


def half_sum_squares(fun, params, args):
    r = np.asarray(fun(params, *args), np.float64)
    return 0.5 * float(np.sum(r * r))


def assert_consistent_status(res, expected):
    """``status``, ``success`` and ``message`` agree with each other and with ``expected``."""
    code = ff.Status(int(res.status))
    assert code == expected, f"expected {expected.name}, got {code.name}: {res.message}"
    assert bool(res.success) == (expected in SUCCESS_CODES)
    assert res.message == expected.message
    assert isinstance(res.message, str)


def messages_of(exc_info):
    e = exc_info.value
    return "\n".join([str(e), *getattr(e, "__notes__", [])])


STRICT = dict(ftol=1e-12, xtol=1e-12, gtol=1e-12)


# --------------------------------------------------------------------------- scipy agreement


@pytest.mark.parametrize("method", ["lm", "gn"])
@pytest.mark.parametrize("kind", sorted(problems.RANDOM_KINDS))
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(seed=st.integers(0, 2**32 - 1))
def test_matches_scipy_on_random_problems(x64, kind, method, seed):
    """Random truth, random noise, random start within 25% of the truth: our fit must
    land on scipy's minimum (both lm and trf), to a small fraction of a standard error."""
    prob = problems.sample(kind, np.random.default_rng(seed))
    res = ff.least_squares(prob.fun, prob.jnp_x0(), prob.jnp_args(), method=method, **STRICT)
    assert res.success, res.message
    params = np.asarray(res.params)
    for scipy_method in ("lm", "trf"):
        ref = scipy_fit(prob, scipy_method)
        assert ref.success
        se = standard_errors(ref.jac, ref.cost)
        assert np.all(np.abs(params - ref.x) <= 1e-5 * se), (scipy_method, params, ref.x, se)
        assert abs(float(res.cost) - ref.cost) <= 1e-11 * ref.cost, (scipy_method, float(res.cost), ref.cost)
    # The Result describes its own parameters.
    args = prob.jnp_args()
    np.testing.assert_allclose(res.residual, prob.fun(res.params, *args), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(res.jac, prob.jac(res.params, *args), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(res.grad, np.asarray(res.jac).T @ np.asarray(res.residual), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(res.cost), half_sum_squares(prob.fun, res.params, args), rtol=1e-12)


def test_default_tolerances_are_as_good_as_scipy_defaults(x64):
    """With every tolerance at its default (1e-8, as scipy's), the cost is as low as
    scipy's own default fit, to 1e-9 relative."""
    rng = np.random.default_rng(2024)
    for _ in range(5):
        prob = problems.sample("exp_decay", rng)
        res = ff.least_squares(prob.fun, prob.jnp_x0(), prob.jnp_args())
        assert res.success, res.message
        ref = scipy_fit(prob, "lm", ftol=1e-8, xtol=1e-8, gtol=1e-8)
        assert float(res.cost) <= ref.cost * (1 + 1e-9)


@pytest.mark.parametrize("method", ["lm", "gn"])
def test_linear_regression_closed_form(x64, method):
    prob = problems.linear_regression()
    res = ff.least_squares(prob.fun, prob.jnp_x0(), prob.jnp_args(), method=method)
    assert res.success, res.message
    np.testing.assert_allclose(res.params, prob.solution, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(res.cost), prob.cost, rtol=1e-12)


@pytest.mark.parametrize("method", ["lm", "gn"])
def test_rosenbrock_zero_residual(x64, method):
    prob = problems.rosenbrock_problem()
    res = ff.least_squares(prob.fun, prob.jnp_x0(), (), method=method)
    assert res.success, res.message
    np.testing.assert_allclose(res.params, prob.solution, rtol=1e-8)
    assert float(res.cost) <= 1e-20


def test_michaelis_menten_zero_residual(x64):
    prob = problems.michaelis_menten_exact()
    res = ff.least_squares(prob.fun, prob.jnp_x0(), prob.jnp_args())
    assert res.success, res.message
    np.testing.assert_allclose(res.params, prob.solution, rtol=1e-8)
    assert float(res.cost) <= 1e-20


def test_jennrich_sampson_large_residual(x64):
    """Large residual at the optimum: published minimum (MGH 1981) and scipy agree with us."""
    prob = problems.jennrich_sampson_problem()
    res = ff.least_squares(prob.fun, prob.jnp_x0(), prob.jnp_args(), **STRICT)
    assert res.success, res.message
    np.testing.assert_allclose(res.params, prob.solution, atol=1e-4)  # 4 published digits
    np.testing.assert_allclose(float(res.cost), prob.cost, rtol=5e-6)  # 6 published digits
    ref = scipy_fit(prob, "lm")
    np.testing.assert_allclose(res.params, ref.x, rtol=1e-6)
    np.testing.assert_allclose(float(res.cost), ref.cost, rtol=1e-12)


def test_gauss_newton_never_claims_success_away_from_a_minimum(x64):
    """On Jennrich-Sampson, Gauss-Newton runs into the rank-deficient line x1 = x2.
    Failing there is fine; reporting *success* at a point whose gradient is far from
    zero is not: a successful fit must be (close to) the minimum."""
    prob = problems.jennrich_sampson_problem()
    res = ff.least_squares(prob.fun, prob.jnp_x0(), prob.jnp_args(), method="gn")
    if res.success:
        J, r = np.asarray(res.jac), np.asarray(res.residual)
        cosine = np.max(np.abs(J.T @ r) / (np.linalg.norm(J, axis=0) * np.linalg.norm(r)))
        assert float(res.cost) <= prob.cost * (1 + 1e-4), (res.message, res.params, float(res.cost), cosine)


# --------------------------------------------------------------------------- jit and vmap


def _batch(n, seed=7):
    rng = np.random.default_rng(seed)
    probs = [problems.sample("exp_decay", rng) for _ in range(n)]
    t = jnp.asarray(probs[0].args[0])
    ys = jnp.asarray(np.stack([p.args[1] for p in probs]))
    p0s = jnp.asarray(np.stack([p.x0 for p in probs]))
    return t, ys, p0s


def test_jit_vmap_matches_python_loop(x64):
    t, ys, p0s = _batch(6)
    fit = jax.jit(jax.vmap(lambda y, p0: ff.least_squares(problems.exp_decay, p0, (t, y)).params))
    batched = np.asarray(fit(ys, p0s))
    assert batched.shape == (6, 3)
    loop = np.stack([np.asarray(ff.least_squares(problems.exp_decay, p0s[i], (t, ys[i])).params) for i in range(6)])
    np.testing.assert_allclose(batched, loop, rtol=1e-10, atol=1e-12)


def test_vmapped_fits_are_independent(x64):
    """Each fit in a batch keeps its own status and step count, as if fitted alone; a
    failed fit (NaN data) neither raises nor disturbs the others."""
    t, ys, p0s = _batch(4, seed=8)
    ys = ys.at[2, 5].set(jnp.nan)
    res = jax.jit(jax.vmap(lambda y, p0: ff.least_squares(problems.exp_decay, p0, (t, y))))(ys, p0s)
    singles = [ff.least_squares(problems.exp_decay, p0s[i], (t, ys[i])) for i in range(4)]
    for i, single in enumerate(singles):
        assert int(res.status[i]) == int(single.status)
        assert int(res.n_steps[i]) == int(single.n_steps)
        assert int(res.n_jev[i]) == int(single.n_jev)
        np.testing.assert_allclose(res.params[i], single.params, rtol=1e-10)
    assert int(res.status[2]) == ff.Status.NONFINITE_RESIDUAL
    assert len({int(n) for n in res.n_steps}) > 1  # the fits really ran for different lengths

    # Result.message of a batch is a list of strings; success is an array.
    messages = res.message
    assert isinstance(messages, list) and len(messages) == 4
    assert all(isinstance(m, str) for m in messages)
    assert messages == [ff.Status(int(c)).message for c in res.status]
    np.testing.assert_array_equal(np.asarray(res.success), [True, True, False, True])

    # A 2-d batch gives a nested list.
    grid = jax.tree_util.tree_map(lambda a: a.reshape((2, 2) + a.shape[1:]), res)
    assert grid.message == [messages[:2], messages[2:]]


def test_success_and_status_under_jit(x64):
    prob = problems.exp_decay_noisy()
    x0, (t, y) = prob.jnp_x0(), prob.jnp_args()

    @jax.jit
    def fit(y):
        res = ff.least_squares(problems.exp_decay, x0, (t, y))
        return res.success, res.status

    success, status = fit(y)
    assert bool(success) and ff.Status(int(status)) in SUCCESS_CODES
    success, status = fit(y.at[0].set(jnp.inf))
    assert not bool(success) and int(status) == ff.Status.NONFINITE_RESIDUAL


def test_tolerances_can_be_traced_and_vmapped(x64):
    """Tolerances and max_steps are arrays inside the solve: they can be jit arguments
    and vmapped; max_steps=k stops after exactly k steps."""
    prob = problems.exp_decay_noisy()
    x0, args = prob.jnp_x0(), prob.jnp_args()
    fit = jax.jit(jax.vmap(lambda k: ff.least_squares(problems.exp_decay, x0, args, max_steps=k)))
    res = fit(jnp.arange(4))
    np.testing.assert_array_equal(res.n_steps, np.arange(4))
    assert all(int(s) == ff.Status.MAX_STEPS for s in res.status)
    by_ftol = jax.jit(lambda f: ff.least_squares(problems.exp_decay, x0, args, ftol=f, xtol=0.0, gtol=0.0))
    loose, tight = by_ftol(1e-2), by_ftol(1e-12)
    assert int(loose.status) == int(tight.status) == ff.Status.FTOL
    assert int(loose.n_steps) < int(tight.n_steps)


# --------------------------------------------------------------------------- no recompilation

_TRACED_EXP_DECAY = Traced(problems.exp_decay)  # one function object: one compilation cache entry


def _warm(prob):
    res = ff.least_squares(_TRACED_EXP_DECAY, prob.jnp_x0(), prob.jnp_args())
    jax.block_until_ready(res)
    return res


def test_compilation_counter_sees_compilations(x64):
    """The counter used below must see a first compilation (else 'no compilations' is vacuous)."""
    prob = problems.exp_decay_noisy()
    fun = Traced(problems.exp_decay)  # a new function object: must compile
    with count_compilations() as names:
        jax.block_until_ready(ff.least_squares(fun, prob.jnp_x0(), prob.jnp_args()))
    assert names
    assert fun.count >= 2  # validation's abstract trace plus the solve's trace(s)


def test_new_data_of_same_shape_does_not_recompile(x64):
    prob = problems.exp_decay_noisy()
    first = _warm(prob)
    other = problems.sample("exp_decay", np.random.default_rng(99))
    x0, args = other.jnp_x0(), other.jnp_args()  # arrays made before counting
    traces = _TRACED_EXP_DECAY.count
    with count_compilations() as names:
        res = ff.least_squares(_TRACED_EXP_DECAY, x0, args)
        jax.block_until_ready(res)
    assert names == []
    assert _TRACED_EXP_DECAY.count - traces <= 1  # at most validation's abstract trace
    # It solved the new problem, not the old one.
    ref = scipy_fit(other, "trf")
    np.testing.assert_allclose(res.params, ref.x, rtol=1e-6)
    assert not np.allclose(res.params, first.params)


def test_fit_inside_jit_closing_over_its_inputs(x64):
    """Compiler options only apply to a top-level jit: a fit inside a user's jit, with
    traced inputs or closing over all of them, is part of the user's program."""
    prob = problems.exp_decay_noisy()
    x0, args = prob.jnp_x0(), prob.jnp_args()
    eager = ff.least_squares(problems.exp_decay, x0, args).params
    closed = jax.jit(lambda: ff.least_squares(problems.exp_decay, x0, args).params)()
    traced = jax.jit(lambda x0, args: ff.least_squares(problems.exp_decay, x0, args).params)(x0, args)
    np.testing.assert_allclose(closed, eager, rtol=1e-10)
    np.testing.assert_allclose(traced, eager, rtol=1e-10)


@pytest.mark.parametrize(
    "option, value",
    [
        ("ftol", 1e-3),
        ("ftol", 1e-12),
        ("xtol", 1e-4),
        ("gtol", 1e-5),
        ("max_steps", 3),
        ("max_steps", 1000),
        ("initial_damping", 10.0),
        ("settle", False),
        ("fatol", 1e-6),
        # Other Python/numpy scalar types for the same options: "0 disables", documented.
        ("ftol", 0),
        ("xtol", 0),
        ("gtol", np.float32(1e-6)),
        ("initial_damping", 1),
        ("max_steps", np.int64(7)),
    ],
)
def test_changing_tolerances_does_not_recompile(x64, option, value):
    prob = problems.exp_decay_noisy()
    _warm(prob)
    x0, args = prob.jnp_x0(), prob.jnp_args()
    with count_compilations() as names:
        res = ff.least_squares(_TRACED_EXP_DECAY, x0, args, **{option: value})
        jax.block_until_ready(res)
    assert names == [], f"{option}={value!r} recompiled: {names}"
    if option == "max_steps":
        assert int(res.n_steps) <= int(value)


def test_jit_wrapped_fit_does_not_retrace(x64):
    prob = problems.exp_decay_noisy()
    fun = Traced(problems.exp_decay)
    x0, (t, y) = prob.jnp_x0(), prob.jnp_args()
    fit = jax.jit(lambda y: ff.least_squares(fun, x0, (t, y)).params)
    jax.block_until_ready(fit(y))
    traces = fun.count
    y2 = y + 0.01
    with count_compilations() as names:
        jax.block_until_ready(fit(y2))
    assert names == [] and fun.count == traces


# --------------------------------------------------------------------------- pytrees


def test_pytree_parameters_match_flat(x64):
    prob = problems.two_exponentials()
    args = prob.jnp_args()
    x0_tree = jax.tree_util.tree_map(jnp.asarray, prob.x0)
    d = prob.x0["decay"]
    x0_flat = np.concatenate([d["amp"], d["rate"], [prob.x0["offset"]]])  # documented ravel order
    np.testing.assert_array_equal(ravel_pytree(x0_tree)[0], x0_flat)

    tree = ff.least_squares(problems.two_exponentials_tree, x0_tree, args, **STRICT)
    flat = ff.least_squares(problems.two_exponentials_flat, jnp.asarray(x0_flat), args, **STRICT)
    assert tree.success and flat.success

    assert jax.tree_util.tree_structure(tree.params) == jax.tree_util.tree_structure(x0_tree)
    for leaf, leaf0 in zip(jax.tree_util.tree_leaves(tree.params), jax.tree_util.tree_leaves(x0_tree)):
        assert leaf.shape == leaf0.shape and leaf.dtype == leaf0.dtype
    np.testing.assert_allclose(ravel_pytree(tree.params)[0], flat.params, rtol=1e-10)
    np.testing.assert_allclose(tree.cost, flat.cost, rtol=1e-12)
    np.testing.assert_allclose(tree.jac, flat.jac, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(tree.grad, flat.grad, rtol=1e-6, atol=1e-12)
    assert int(tree.status) == int(flat.status) and int(tree.n_steps) == int(flat.n_steps)

    # ... and the flat fit is the right answer.
    flat_prob = problems.Problem("flat", problems.two_exponentials_flat, x0_flat, prob.args, jac=problems.two_exponentials_flat_jac)
    ref = scipy_fit(flat_prob, "trf")
    np.testing.assert_allclose(flat.params, ref.x, rtol=1e-7)
    np.testing.assert_allclose(float(flat.cost), ref.cost, rtol=1e-11)


def _tuple_tree_linear(p, X, y):
    a, (b, d) = p
    return X @ jnp.concatenate([a, jnp.reshape(b, (1,)), d["c"]]) - y


def test_nested_tuple_list_pytree(x64):
    prob = problems.linear_regression()
    x0 = (jnp.zeros(1), [jnp.asarray(0.0), {"c": jnp.zeros(1)}])
    res = ff.least_squares(_tuple_tree_linear, x0, prob.jnp_args())
    assert res.success
    assert isinstance(res.params, tuple) and isinstance(res.params[1], list)
    assert res.params[1][0].shape == ()
    got = np.concatenate([res.params[0], [res.params[1][0]], res.params[1][1]["c"]])
    np.testing.assert_allclose(got, prob.solution, rtol=1e-10)


def test_matrix_shaped_residual_is_flattened(x64):
    prob = problems.exp_decay_noisy()
    args = prob.jnp_args()

    def grid_residual(p, t, y):
        return problems.exp_decay(p, t, y).reshape(8, 5)

    res = ff.least_squares(grid_residual, prob.jnp_x0(), args, **STRICT)
    ref = scipy_fit(prob, "lm")
    assert res.residual.shape == (40,) and res.jac.shape == (40, 3)
    np.testing.assert_allclose(res.params, ref.x, rtol=1e-7)


# --------------------------------------------------------------------------- Jacobians


def test_a_list_of_numbers_is_an_array_and_a_list_of_arrays_a_pytree(dtype):
    """As in scipy, x0=[1.0, 2.0] hands fun an array (so p**2 works); a list of arrays
    is a pytree, and comes back as one."""
    target = np.array([4.0, 9.0])
    res = ff.least_squares(lambda p: p**2 - target, [1.0, 1])
    assert isinstance(res.params, jax.Array) and res.params.dtype == dtype
    np.testing.assert_allclose(res.params, [2.0, 3.0], rtol=1e-5)
    res = ff.least_squares(lambda p: jnp.concatenate([p[0] ** 2 - 4.0, p[1] ** 2 - 9.0]), [jnp.ones(1), jnp.ones(1)])
    assert isinstance(res.params, list) and len(res.params) == 2
    np.testing.assert_allclose(np.concatenate(res.params), [2.0, 3.0], rtol=1e-5)
    batch = ff.fit_batch(lambda p, y: p**2 - y, [[1.0, 1.0], [1.0, 1.0]], ([[4.0, 9.0], [1.0, 16.0]],))
    np.testing.assert_allclose(batch.params, [[2.0, 3.0], [1.0, 4.0]], rtol=1e-5)


def test_user_jacobian_array_matches_autodiff(x64):
    prob = problems.exp_decay_noisy()
    x0, args = prob.jnp_x0(), prob.jnp_args()
    ref = scipy_fit(prob, "lm")
    se = standard_errors(ref.jac, ref.cost)
    auto = ff.least_squares(prob.fun, x0, args, **STRICT)
    user = ff.least_squares(prob.fun, x0, args, jac=problems.exp_decay_jac, **STRICT)
    assert auto.success and user.success
    assert_within_se(auto.params, ref.x, se)
    assert_within_se(user.params, ref.x, se)
    np.testing.assert_allclose(user.cost, auto.cost, rtol=1e-12)
    np.testing.assert_allclose(user.jac, problems.exp_decay_jac(user.params, *args), rtol=1e-12)
    np.testing.assert_allclose(auto.jac, problems.exp_decay_jac(auto.params, *args), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("form", ["pytree", "array"])
def test_user_jacobian_for_pytree_parameters(x64, form):
    prob = problems.two_exponentials()
    args = prob.jnp_args()
    x0 = jax.tree_util.tree_map(jnp.asarray, prob.x0)
    jac = {
        "pytree": problems.two_exponentials_tree_jac,  # leaves (m, *leaf.shape), as jax.jacfwd gives
        "array": problems.two_exponentials_tree_jac_array,  # (m, n) in ravel order
    }[form]
    if form == "pytree":  # the structure is exactly what the docs promise: jax.jacfwd's
        J = jax.jacfwd(problems.two_exponentials_tree)(x0, *args)
        assert jax.tree_util.tree_structure(J) == jax.tree_util.tree_structure(jac(x0, *args))
    d = prob.x0["decay"]
    flat = problems.Problem(
        "flat", problems.two_exponentials_flat, np.concatenate([d["amp"], d["rate"], [prob.x0["offset"]]]),
        prob.args, jac=problems.two_exponentials_flat_jac,
    )
    ref = scipy_fit(flat, "lm")
    se = standard_errors(ref.jac, ref.cost)
    auto = ff.least_squares(prob.fun, x0, args, **STRICT)
    user = ff.least_squares(prob.fun, x0, args, jac=jac, **STRICT)
    assert auto.success and user.success
    assert_within_se(auto.params, ref.x, se)
    assert_within_se(user.params, ref.x, se)
    np.testing.assert_allclose(user.cost, auto.cost, rtol=1e-11)
    np.testing.assert_allclose(user.jac, ref.jac, rtol=1e-6, atol=1e-9)
    # Same point, same Jacobian: the user's pytree is flattened in ravel_pytree order.
    at_start_user = ff.least_squares(prob.fun, x0, args, jac=jac, max_steps=0)
    at_start_auto = ff.least_squares(prob.fun, x0, args, max_steps=0)
    np.testing.assert_allclose(at_start_user.jac, at_start_auto.jac, rtol=1e-12, atol=1e-15)


def test_forward_and_reverse_mode_agree(x64):
    prob = problems.exp_decay_noisy()
    x0, args = prob.jnp_x0(), prob.jnp_args()
    ref = scipy_fit(prob, "lm")
    se = standard_errors(ref.jac, ref.cost)
    for mode in ("fwd", "rev"):
        res = ff.least_squares(prob.fun, x0, args, jac=mode, **STRICT)
        assert res.success, (mode, res.message)
        assert_within_se(res.params, ref.x, se)
        np.testing.assert_allclose(res.jac, prob.jac(res.params, *args), rtol=1e-12, atol=1e-15)
    # At the same point both modes give the same Jacobian, to round-off.
    at_start = [ff.least_squares(prob.fun, x0, args, jac=mode, max_steps=0) for mode in ("fwd", "rev")]
    np.testing.assert_allclose(at_start[0].jac, at_start[1].jac, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(at_start[0].jac, prob.jac(x0, *args), rtol=1e-13, atol=1e-16)


def _forward_only_exp(p, t, y):
    """Reverse mode cannot differentiate a while_loop with a dynamic trip count."""

    def body(carry):
        i, acc = carry
        return i + 1, acc + p[0] * jnp.exp(-p[1] * t)

    _, acc = jax.lax.while_loop(lambda c: c[0] < 1, body, (0, jnp.zeros_like(t)))
    return acc - y


@jax.custom_vjp
def _cube(x):
    return x**3


_cube.defvjp(lambda x: (x**3, x), lambda x, g: (3 * x**2 * g,))


def _reverse_only_sum_of_cubes(p, target):
    """Forward mode cannot differentiate a custom_vjp function."""
    return jnp.reshape(jnp.sum(_cube(p)) - target, (1,))


@pytest.mark.parametrize("m, mode", [(1, "rev"), (2, "fwd"), (10, "fwd")])  # n = 2: m == n is forward mode
def test_auto_jacobian_mode_follows_the_shape(x64, m, mode):
    t = jnp.linspace(0.0, 3.0, m)
    mode_of = lambda fun, x0, args: _tracing.choose_jacobian(fun, _problem.check(fun, x0, args, "auto")).jac  # noqa: E731
    assert mode_of(problems.exp_decay, jnp.array([1.0, 2.0, 0.0]), (t, jnp.exp(-t))) == ("fwd" if m >= 3 else "rev")
    assert mode_of(lambda p, t: p[0] * jnp.exp(-p[1] * t), jnp.array([1.0, 2.0]), (t,)) == mode


@pytest.mark.parametrize("m", [1, 2, 10])
def test_auto_jacobian_takes_forward_mode_where_reverse_cannot_work(x64, m):
    t = jnp.linspace(0.0, 3.0, m)
    y = 2.0 * jnp.exp(-1.0 * t)
    res = ff.least_squares(_forward_only_exp, jnp.array([1.0, 2.0]) if m > 1 else jnp.array([1.5, 1.0]), (t, y))
    assert res.success and float(res.cost) < 1e-20
    if m > 1:
        np.testing.assert_allclose(res.params, [2.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize("x0", [[1.0], [1.0, 2.0, 0.5]])  # n <= m, where forward mode is preferred, and n > m
def test_auto_jacobian_takes_reverse_mode_where_forward_cannot_work(x64, x0):
    res = ff.least_squares(_reverse_only_sum_of_cubes, jnp.array(x0), (8.0,))
    assert res.success
    assert float(res.cost) < 1e-20


@pytest.mark.parametrize(
    "fun, x0, args, jac",
    [(_forward_only_exp, [1.0, 2.0], (np.linspace(0.0, 3.0, 5), np.ones(5)), "rev"), (_reverse_only_sum_of_cubes, [1.0], (8.0,), "fwd")],
)
def test_a_jacobian_mode_that_cannot_work_is_a_clear_error_before_compiling(x64, fun, x0, args, jac):
    args = tuple(map(jnp.asarray, args))  # float64 here, under x64
    with count_compilations() as names, pytest.raises(ValueError, match=f"`jac='{jac}'`.*jac='auto'"):
        ff.least_squares(fun, jnp.array(x0), args, jac=jac)
    assert names == []


def test_user_jacobian_with_bounds_and_sigma(x64):
    """The user-Jacobian path whitens J and applies the bounds' chain rule like autodiff,
    and the weighted fit is scipy's weighted fit."""
    prob = problems.exp_decay_noisy()
    x0, (t, y) = prob.jnp_x0(), prob.jnp_args()
    sigma = jnp.asarray(np.random.default_rng(3).uniform(0.5, 2.0, t.shape))
    options = dict(sigma=sigma, bounds=([0.0, 0.0, -np.inf], [10.0, 5.0, np.inf]), **STRICT)
    auto = ff.least_squares(prob.fun, x0, (t, y), **options)
    user = ff.least_squares(prob.fun, x0, (t, y), jac=problems.exp_decay_jac, **options)
    assert auto.success and user.success
    np.testing.assert_allclose(user.params, auto.params, rtol=1e-7)
    np.testing.assert_allclose(user.jac, auto.jac, rtol=1e-6, atol=1e-10)
    # Bounds are inactive at this optimum, so it is scipy's unbounded weighted optimum.
    s = np.asarray(sigma)
    f, j = _jitted(prob.fun), _jitted(prob.jac)
    ref = scipy.optimize.least_squares(
        lambda p: np.asarray(f(jnp.asarray(p), t, y)) / s,
        prob.x0,
        jac=lambda p: np.asarray(j(jnp.asarray(p), t, y)) / s[:, None],
        method="lm",
        ftol=1e-15,
        xtol=1e-15,
        gtol=1e-15,
    )
    np.testing.assert_allclose(user.params, ref.x, rtol=1e-6)
    np.testing.assert_allclose(float(user.cost), ref.cost, rtol=1e-10)
    np.testing.assert_allclose(user.residual, ref.fun, atol=1e-8 * np.abs(ref.fun).max())


# --------------------------------------------------------------------------- precision


def _exp_decay_reference():
    """Float64 scipy optimum of the noisy exponential decay, computed in numpy only."""
    prob = problems.exp_decay_noisy()
    t, y = prob.args

    def f(p):
        return p[0] * np.exp(-p[1] * t) + p[2] - y

    def j(p):
        e = np.exp(-p[1] * t)
        return np.stack([e, -p[0] * t * e, np.ones_like(t)], axis=1)

    ref = scipy.optimize.least_squares(f, prob.x0, jac=j, method="lm", ftol=1e-15, xtol=1e-15, gtol=1e-15)
    return prob, ref


def _float32_reference(name):
    """(problem, float64 optimum params, cost) from sources independent of JAX's precision."""
    if name == "exp_decay":
        prob, ref = _exp_decay_reference()
        return prob, ref.x, ref.cost
    prob = {"michaelis_menten_exact": problems.michaelis_menten_exact, "linear": problems.linear_regression}[name]()
    return prob, prob.solution, prob.cost


@pytest.mark.parametrize("name", ["exp_decay", "michaelis_menten_exact", "linear"])
def test_float32_fit_succeeds_and_matches_float64(name):
    """In float32 (JAX's default precision) the fit converges, says so, and agrees with
    the float64 optimum to float32-appropriate accuracy, with the default tolerances."""
    prob, params, cost = _float32_reference(name)
    res = ff.least_squares(prob.fun, prob.jnp_x0(jnp.float32), prob.jnp_args(jnp.float32))
    assert res.params.dtype == jnp.float32
    np.testing.assert_allclose(res.params, params, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(res.cost), cost, rtol=1e-4, atol=1e-9)
    assert res.success, res.message


def test_output_dtype_follows_x0(dtype):
    prob, ref = _exp_decay_reference()
    res = ff.least_squares(prob.fun, prob.jnp_x0(dtype), prob.jnp_args(dtype))
    for name in ("params", "cost", "residual", "jac", "grad"):
        assert getattr(res, name).dtype == jnp.dtype(dtype), name
    # default tolerances (ftol = 1e-8): the cost agrees to ~1e-12, the parameters to ~1e-7
    rtol = 1e-4 if dtype == "float32" else 1e-6
    np.testing.assert_allclose(res.params, ref.x, rtol=rtol)


def test_float32_start_with_float64_enabled_fits_in_float32(x64):
    """x0's dtype sets the precision, even with float64 data and x64 on."""
    prob, ref = _exp_decay_reference()
    res = ff.least_squares(prob.fun, prob.jnp_x0(jnp.float32), prob.jnp_args())
    for name in ("params", "cost", "residual", "jac", "grad"):
        assert getattr(res, name).dtype == jnp.float32, name
    np.testing.assert_allclose(res.params, ref.x, rtol=1e-4)


def test_integer_start_becomes_float(x64):
    prob = problems.linear_regression()
    res = ff.least_squares(prob.fun, jnp.zeros(3, dtype=jnp.int32), prob.jnp_args())
    assert res.params.dtype == jnp.float64
    np.testing.assert_allclose(res.params, prob.solution, rtol=1e-10)


# --------------------------------------------------------------------------- status codes


def _shift(p):
    return p - 2.0


def _inf_jac_after_first_step(p):
    """Right derivative at the start, inf once the parameter has moved past 0.5."""
    return jnp.where(p > 0.5, jnp.inf, 1.0)[:, None] * jnp.eye(1, dtype=p.dtype)


def _wrong_sign_jac(p):
    """The negated Jacobian: every proposed step goes uphill and is rejected."""
    return -jnp.eye(1, dtype=p.dtype)


def _sqrt_residual(p):
    return jnp.sqrt(p) - 1.0


def _jump_away(p, y):
    """The cost jumps up as soon as p leaves 1: a line search shrinks to round-off."""
    return p - y + jnp.where(p == 1.0, 0.0, 3.0)


def _one_parameter_unused(p, x, y):
    return p[0] * x - y  # p[1] does not affect the residual: JᵀJ is singular


def _cubic(p):
    return p**3 - 1.0


def _status_cases():
    """(id, build) pairs; build() -> (fun, x0, args, options, expected, check(res))."""
    lin = problems.linear_regression()
    exp = problems.exp_decay_noisy()
    rb = problems.rosenbrock_problem()
    t, y = exp.args

    def exp_ref():
        return scipy_fit(exp, "lm")

    cases = {
        "gtol": lambda: (
            lin.fun, lin.x0, lin.args, dict(ftol=0.0, xtol=0.0), ff.Status.GTOL,
            lambda r: np.testing.assert_allclose(r.params, lin.solution, rtol=1e-10),
        ),
        "gtol-at-start": lambda: (
            lin.fun, lin.solution, lin.args, {}, ff.Status.GTOL,
            lambda r: (int(r.n_steps) == 0) or pytest.fail("should stop before any step"),
        ),
        "ftol": lambda: (
            exp.fun, exp.x0, exp.args, dict(xtol=0.0, gtol=0.0), ff.Status.FTOL,
            lambda r: np.testing.assert_allclose(float(r.cost), exp_ref().cost, rtol=1e-8),
        ),
        "xtol": lambda: (
            exp.fun, exp.x0, exp.args, dict(ftol=0.0, gtol=0.0), ff.Status.XTOL,
            lambda r: np.testing.assert_allclose(r.params, exp_ref().x, rtol=1e-6),
        ),
        "max_steps": lambda: (
            rb.fun, rb.x0, (), dict(max_steps=2), ff.Status.MAX_STEPS,
            lambda r: (int(r.n_steps) == 2) or pytest.fail("n_steps"),
        ),
        "max_steps-zero": lambda: (
            rb.fun, rb.x0, (), dict(max_steps=0), ff.Status.MAX_STEPS,
            lambda r: np.testing.assert_array_equal(r.params, rb.x0),
        ),
        "max_steps-adam": lambda: (
            exp.fun, exp.x0, exp.args, dict(method="adam", max_steps=3), ff.Status.MAX_STEPS,
            lambda r: (int(r.n_steps) == 3) or pytest.fail("n_steps"),
        ),
        "nonfinite-residual-nan-data": lambda: (
            exp.fun, exp.x0, (t, np.where(np.arange(t.size) == 3, np.nan, y)), {}, ff.Status.NONFINITE_RESIDUAL,
            lambda r: np.testing.assert_array_equal(r.params, exp.x0),
        ),
        "nonfinite-residual-nan-start": lambda: (
            exp.fun, np.array([1.0, np.nan, 0.0]), exp.args, {}, ff.Status.NONFINITE_RESIDUAL,
            lambda r: (int(r.n_steps) == 0) or pytest.fail("n_steps"),
        ),
        "nonfinite-residual-inf-data-gn": lambda: (
            exp.fun, exp.x0, (t, np.where(np.arange(t.size) == 0, np.inf, y)), dict(method="gn"),
            ff.Status.NONFINITE_RESIDUAL, lambda r: None,
        ),
        "nonfinite-residual-nan-start-adam": lambda: (
            exp.fun, np.array([1.0, np.nan, 0.0]), exp.args, dict(method="adam"), ff.Status.NONFINITE_RESIDUAL,
            lambda r: (int(r.n_steps) == 0) or pytest.fail("n_steps"),
        ),
        "nonfinite-residual-sgd-diverges": lambda: (
            # Finite at the start; a too-large learning rate overflows the cost mid-fit.
            _cubic, np.array([10.0]), (), dict(method="sgd", learning_rate=1.0, max_steps=50),
            ff.Status.NONFINITE_RESIDUAL,
            lambda r: (int(r.n_steps) >= 1 and np.isfinite(float(r.cost)) and np.all(np.isfinite(r.params)))
            or pytest.fail(f"params {r.params}, cost {r.cost}, n_steps {r.n_steps}"),
        ),
        "nonfinite-jacobian-at-start": lambda: (
            _sqrt_residual, np.zeros(1), (), {}, ff.Status.NONFINITE_JACOBIAN,
            lambda r: (int(r.n_steps) == 0) or pytest.fail("n_steps"),
        ),
        "nonfinite-jacobian-at-accepted-point": lambda: (
            _shift, np.zeros(1), (), dict(jac=_inf_jac_after_first_step), ff.Status.NONFINITE_JACOBIAN,
            # stopped at the accepted point, which is where the Jacobian is inf
            lambda r: (int(r.n_steps) >= 1 and float(r.params[0]) > 0.5 and not np.all(np.isfinite(r.jac)))
            or pytest.fail(f"params {r.params}, n_steps {r.n_steps}"),
        ),
        "step-failed-gn-line-search-collapsed": lambda: (
            _jump_away, np.ones(1), (2.0,), dict(method="gn", ftol=0.0, xtol=0.0, gtol=1e-12), ff.Status.STEP_FAILED,
            lambda r: np.testing.assert_array_equal(r.params, np.ones(1)),
        ),
        "step-failed-lm-every-step-rejected": lambda: (
            _shift, np.ones(1), (), dict(jac=_wrong_sign_jac, ftol=0.0, xtol=0.0, gtol=1e-12), ff.Status.STEP_FAILED,
            lambda r: (np.all(np.asarray(r.params) == 1.0) and int(r.n_jev) == 1 and int(r.n_steps) >= 1)
            or pytest.fail(f"params {r.params}, n_jev {r.n_jev}"),
        ),
        "step-failed-lm-every-step-rejected-from-zero": lambda: (
            _shift, np.zeros(1), (), dict(jac=_wrong_sign_jac, ftol=0.0, xtol=0.0, gtol=1e-12), ff.Status.STEP_FAILED,
            lambda r: (np.all(np.asarray(r.params) == 0.0) and int(r.n_jev) == 1 and int(r.n_steps) >= 1)
            or pytest.fail(f"params {r.params}, n_jev {r.n_jev}"),
        ),
    }
    return cases


STATUS_CASES = _status_cases()


@pytest.mark.parametrize("case", sorted(STATUS_CASES))
def test_status_codes_are_reached(x64, case):
    """Each status is reached by a problem built for it; the fit itself runs compiled
    and does not raise (see also test_success_and_status_under_jit and the vmap tests)."""
    fun, x0, args, options, expected, check = STATUS_CASES[case]()
    x0 = jnp.asarray(x0)
    args = tuple(jnp.asarray(a) for a in args)
    res = ff.least_squares(fun, x0, args, **options)
    assert_consistent_status(res, expected)
    check(res)


def test_failure_statuses_inside_jit_and_vmap(x64):
    """Failures inside a user's jit/vmap: per-fit codes, nothing raises."""
    lin = problems.linear_regression()
    X, y = lin.jnp_args()
    fit = jax.jit(jax.vmap(lambda y: ff.least_squares(_one_parameter_unused, jnp.ones(2), (X[:, 1], y), method="gn")))
    assert fit(jnp.stack([y, y.at[0].set(jnp.nan)])).message == [ff.Status.GTOL.message, ff.Status.NONFINITE_RESIDUAL.message]
    tolerances = dict(ftol=0.0, xtol=0.0, gtol=1e-12)
    fails = jax.jit(jax.vmap(lambda y: ff.least_squares(_jump_away, jnp.ones(1), (y,), method="gn", **tolerances)))
    res = fails(jnp.array([2.0, jnp.nan]))
    assert res.message == [ff.Status.STEP_FAILED.message, ff.Status.NONFINITE_RESIDUAL.message]
    np.testing.assert_array_equal(np.asarray(res.success), [False, False])


@pytest.mark.parametrize("method", ["lm", "gn"])
def test_singular_problem_fits_the_parameter_that_matters(x64, method):
    """A parameter the residual ignores makes JᵀJ singular: Levenberg-Marquardt's
    damping, and Gauss-Newton's solve that drops dependent directions, fit the other."""
    lin = problems.linear_regression()
    X, y = lin.jnp_args()
    res = ff.least_squares(_one_parameter_unused, jnp.ones(2), (X[:, 1], y), method=method)
    assert res.success, res.message
    x, yy = np.asarray(X[:, 1]), np.asarray(y)
    np.testing.assert_allclose(float(res.params[0]), float(x @ yy / (x @ x)), rtol=1e-8)
    assert float(res.params[1]) == 1.0  # never moved


def _damping_search(A, b, radius, guess=1e-3, search=True):
    # Jitted: an eager while_loop would compile anew on every call.
    return _jitted_damping_search(jnp.asarray(A), jnp.asarray(b), jnp.asarray(radius), jnp.asarray(guess), search)


@functools.partial(jax.jit, static_argnums=4)
def _jitted_damping_search(A, b, radius, guess, search):
    from fitfleet._solvers.levenberg_marquardt import trust_region_damping

    return trust_region_damping(A, b, radius, guess, search)


def test_damping_search_solves_the_trust_region_subproblem(x64):
    """Against the subproblem's analytic solution in A's eigenbasis: the Newton step
    when it fits, else a damped step of length within 10% of the radius."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        M = rng.normal(size=(6, 3))
        A, b = M.T @ M, rng.normal(size=3)
        newton = np.linalg.norm(np.linalg.solve(A, b))
        for radius in (0.01 * newton, 0.5 * newton, 2 * newton):
            damping, y = map(np.asarray, _damping_search(A, b, radius))
            np.testing.assert_allclose((A + damping * np.eye(3)) @ y, -b, rtol=1e-8, atol=1e-10)
            if radius > newton:
                assert damping == 0
            else:
                assert abs(np.linalg.norm(y) - radius) <= 0.1 * radius


def test_damping_search_stops_on_a_flat_step_length(x64):
    """The hard case: a direction of zero curvature in which b is (almost) zero.  ‖y(λ)‖
    stays far below the radius until λ is vanishingly small; the search stops there,
    with a valid damped step, rather than driving λ towards 0."""
    A = np.diag([1.0, 0.0])
    b = np.array([-1.0, 1e-80])
    damping, y = map(np.asarray, _damping_search(A, b, radius=10.0, guess=1.0))
    np.testing.assert_allclose((A + damping * np.eye(2)) @ y, -b, rtol=1e-12)
    assert np.linalg.norm(y) < 10.0
    assert damping > 1e-12, damping  # a few iterations from the guess, not ten


def test_damping_search_can_be_skipped(x64):
    damping, y = _damping_search(np.eye(2), np.ones(2), 0.1, search=False)
    assert float(damping) == 0 and not np.any(np.asarray(y))


@pytest.mark.parametrize("n", [5, 12])  # the unrolled factorisation (n <= 8) and the looped one
@pytest.mark.parametrize("rank", ["full", "deficient"])
def test_solve_semidefinite_solves_in_the_directions_that_are_determined(dtype, n, rank):
    from fitfleet._linalg import solve_semidefinite

    rng = np.random.default_rng(n)
    B = rng.standard_normal((3 * n, n))
    if rank == "deficient":
        B[:, 2] = B[:, 0] - 2 * B[:, 1]  # column 2 depends on earlier ones
        B[:, n - 1] = 0  # and the last is empty
    A = B.T @ B
    d = np.sqrt(np.where(np.diag(A) > 0, np.diag(A), 1))
    b = A @ rng.standard_normal(n)  # in A's range: A x = b is solvable
    x = np.asarray(jax.jit(solve_semidefinite)(jnp.asarray(A / np.outer(d, d), dtype), jnp.asarray(b / d, dtype))) / d
    rtol = 1e-9 if dtype == "float64" else 2e-3
    np.testing.assert_allclose(A @ x, b, rtol=rtol, atol=rtol * np.abs(b).max())
    if rank == "full":
        np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=100 * rtol)
    else:
        assert x[2] == 0 and x[n - 1] == 0  # dropped directions take no part


def test_status_enum_messages_and_success():
    assert {s for s in ff.Status if s.success} == SUCCESS_CODES
    assert len({s.message for s in ff.Status}) == len(ff.Status)
    assert all(isinstance(s.message, str) and s.message for s in ff.Status)


# --------------------------------------------------------------------------- bad input

_T = np.linspace(0.0, 5.0, 40)
_Y = 2.0 * np.exp(-_T) + 0.5
_X0 = np.array([1.0, 2.0, 0.0])
_LIN = problems.linear_regression()


def _python_branch(p, t, y):
    if p[0] > 0:  # Python control flow on a traced value
        return problems.exp_decay(p, t, y)
    return -problems.exp_decay(p, t, y)


BAD_INPUTS = [
    # id, fun, x0, args, options, exception, text the message must contain
    ("fun-not-callable", "exp_decay", _X0, (_T, _Y), {}, TypeError, "`fun`"),
    ("x0-wrong-shape", problems.linear, np.zeros(2), _LIN.args, {}, TypeError, "x0"),
    ("x0-empty", problems.exp_decay, np.zeros(0), (_T, _Y), {}, ValueError, "`x0`"),
    ("x0-empty-tree", problems.exp_decay, {}, (_T, _Y), {}, ValueError, "`x0`"),
    ("x0-complex", problems.exp_decay, _X0 + 0j, (_T, _Y), {}, ValueError, "`x0`"),
    ("x0-string", problems.exp_decay, "1, 2, 0", (_T, _Y), {}, TypeError, "`x0`"),
    ("x0-outside-bounds", problems.exp_decay, _X0, (_T, _Y), dict(bounds=(0.5, 10.0)), ValueError, "`x0`"),
    ("x0-nan-with-bounds", problems.exp_decay, np.array([1.0, np.nan, 0.0]), (_T, _Y), dict(bounds=(-5, 5)), ValueError, "`x0`"),
    ("x0-nonpositive-log-scale", problems.exp_decay, _X0, (_T, _Y), dict(log_scale=True), ValueError, "`x0`"),
    ("args-array", problems.exp_decay, _X0, _T, {}, TypeError, "`args`"),
    ("method-unknown", problems.exp_decay, _X0, (_T, _Y), dict(method="levenberg"), ValueError, "`method`"),
    ("method-none", problems.exp_decay, _X0, (_T, _Y), dict(method=None), ValueError, "`method`"),
    ("method-uppercase", problems.exp_decay, _X0, (_T, _Y), dict(method="LM"), ValueError, "`method`"),
    ("ftol-negative", problems.exp_decay, _X0, (_T, _Y), dict(ftol=-1e-8), ValueError, "`ftol`"),
    ("ftol-nan", problems.exp_decay, _X0, (_T, _Y), dict(ftol=np.nan), ValueError, "`ftol`"),
    ("xtol-inf", problems.exp_decay, _X0, (_T, _Y), dict(xtol=np.inf), ValueError, "`xtol`"),
    ("gtol-negative", problems.exp_decay, _X0, (_T, _Y), dict(gtol=-1.0), ValueError, "`gtol`"),
    ("gtol-nan", problems.exp_decay, _X0, (_T, _Y), dict(gtol=float("nan")), ValueError, "`gtol`"),
    ("ftol-string", problems.exp_decay, _X0, (_T, _Y), dict(ftol="1e-8"), TypeError, "`ftol`"),
    ("ftol-array", problems.exp_decay, _X0, (_T, _Y), dict(ftol=[1e-8, 1e-8]), TypeError, "`ftol`"),
    ("ftol-complex", problems.exp_decay, _X0, (_T, _Y), dict(ftol=1e-8j), TypeError, "`ftol`"),
    ("max_steps-negative", problems.exp_decay, _X0, (_T, _Y), dict(max_steps=-1), ValueError, "`max_steps`"),
    ("learning_rate-negative", problems.exp_decay, _X0, (_T, _Y), dict(method="adam", learning_rate=-0.1), ValueError, "`learning_rate`"),
    ("initial_damping-negative", problems.exp_decay, _X0, (_T, _Y), dict(initial_damping=-1.0), ValueError, "`initial_damping`"),
    ("residual-int", lambda p, t, y: jnp.arange(3), _X0, (_T, _Y), {}, TypeError, "`fun`"),
    ("residual-bool", lambda p, t, y: p > 0, _X0, (_T, _Y), {}, TypeError, "`fun`"),
    ("residual-complex", lambda p, t, y: problems.exp_decay(p, t, y) * (1 + 1j), _X0, (_T, _Y), {}, TypeError, "`fun`"),
    ("residual-tuple", lambda p, t, y: (p, p), _X0, (_T, _Y), {}, TypeError, "`fun`"),
    ("residual-dict", lambda p, t, y: {"r": p}, _X0, (_T, _Y), {}, TypeError, "`fun`"),
    ("residual-empty", lambda p, t, y: p[:0], _X0, (_T, _Y), {}, ValueError, "`fun`"),
    ("residual-python-branch", _python_branch, _X0, (_T, _Y), {}, TypeError, "fun(x0, *args)"),
    ("jac-wrong-shape", problems.exp_decay, _X0, (_T, _Y), dict(jac=lambda p, t, y: jnp.zeros((40, 4))), ValueError, "`jac`"),
    ("jac-transposed-size", problems.exp_decay, _X0, (_T, _Y), dict(jac=lambda p, t, y: jnp.zeros((3,))), ValueError, "`jac`"),
    ("jac-unknown-mode", problems.exp_decay, _X0, (_T, _Y), dict(jac="central"), ValueError, "`jac`"),
    ("bounds-reversed", problems.exp_decay, _X0, (_T, _Y), dict(bounds=(10.0, -10.0)), ValueError, "`bounds`"),
    ("bounds-equal", problems.exp_decay, _X0, (_T, _Y), dict(bounds=(1.0, 1.0)), ValueError, "`bounds`"),
    ("bounds-not-a-pair", problems.exp_decay, _X0, (_T, _Y), dict(bounds=(0.0,)), ValueError, "`bounds`"),
    ("bounds-wrong-length", problems.exp_decay, _X0, (_T, _Y), dict(bounds=(np.full(2, -5.0), 5.0)), ValueError, "`bounds"),
    ("bounds-nan", problems.exp_decay, _X0, (_T, _Y), dict(bounds=(np.nan, 10.0)), ValueError, "`bounds`"),
    ("sigma-wrong-length", problems.exp_decay, _X0, (_T, _Y), dict(sigma=np.ones(39)), ValueError, "`sigma`"),
    ("sigma-negative", problems.exp_decay, _X0, (_T, _Y), dict(sigma=-np.ones(40)), ValueError, "`sigma`"),
    ("sigma-zero", problems.exp_decay, _X0, (_T, _Y), dict(sigma=np.zeros(40)), ValueError, "`sigma`"),
    ("sigma-nan", problems.exp_decay, _X0, (_T, _Y), dict(sigma=np.full(40, np.nan)), ValueError, "`sigma`"),
    ("sigma-covariance-not-pd", problems.exp_decay, _X0, (_T, _Y), dict(sigma=-np.eye(40)), ValueError, "`sigma`"),
    ("loss-unknown", problems.exp_decay, _X0, (_T, _Y), dict(loss="l1"), ValueError, "`loss`"),
    ("f_scale-zero", problems.exp_decay, _X0, (_T, _Y), dict(loss="huber", f_scale=0.0), ValueError, "`f_scale`"),
    ("f_scale-negative", problems.exp_decay, _X0, (_T, _Y), dict(loss="huber", f_scale=-1.0), ValueError, "`f_scale`"),
    ("f_scale-nan", problems.exp_decay, _X0, (_T, _Y), dict(loss="huber", f_scale=np.nan), ValueError, "`f_scale`"),
    # issue 18 §1/§4: options that used to wrap, or pass silently
    ("max_steps-int64-wraps", problems.exp_decay, _X0, (_T, _Y), dict(max_steps=np.int64(2**32)), ValueError, "`max_steps`"),
    ("max_steps-overflows", problems.exp_decay, _X0, (_T, _Y), dict(max_steps=2**31), ValueError, "`max_steps`"),
    ("max_steps-fraction", problems.exp_decay, _X0, (_T, _Y), dict(max_steps=10.5), TypeError, "`max_steps`"),
    ("tolerances-all-zero", problems.exp_decay, _X0, (_T, _Y), dict(ftol=0.0, xtol=0.0, gtol=0.0), ValueError, "`ftol`"),
    ("bounds-infinite-reversed", problems.exp_decay, _X0, (_T, _Y), dict(bounds=(np.inf, -np.inf)), ValueError, "`bounds`"),
    ("sigma-covariance-not-symmetric", problems.exp_decay, _X0, (_T, _Y), dict(sigma=np.eye(40) + np.triu(np.full((40, 40), 0.01), 1)), ValueError, "symmetric"),
    ("log_scale-string", problems.exp_decay, np.ones(3), (_T, _Y), dict(log_scale="False"), TypeError, "`log_scale`"),
    ("jac-transposed", problems.exp_decay, _X0, (_T, _Y), dict(jac=lambda p, t, y: jnp.zeros((3, 40))), ValueError, "transposed"),
    ("jac-wrong-tree", problems.exp_decay, _X0, (_T, _Y), dict(jac=lambda p, t, y: (jnp.zeros((40, 2)), jnp.zeros((40, 1)))), ValueError, "`jac`"),
]


@pytest.mark.parametrize(
    "fun, x0, args, options, exception, text", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input_raises_clear_error_before_compiling(fun, x0, args, options, exception, text):
    traced = Traced(fun) if callable(fun) else fun
    with pytest.raises(exception) as info:
        ff.least_squares(traced, x0, args, **options)
    assert text in messages_of(info), messages_of(info)
    if callable(fun):
        # At most validation's abstract trace: the solve was never traced or compiled.
        assert traced.count <= 1


def test_traced_bounds_are_a_clear_error():
    """Bounds are compiled in (the Result records them): under jit they are refused by
    name, not by a conversion error from deep inside validation."""
    fit = lambda lo: ff.least_squares(problems.exp_decay, _X0, (_T, _Y), bounds=(lo, 10.0)).params  # noqa: E731
    with pytest.raises(ValueError, match="`bounds` must be concrete"):
        jax.jit(fit)(0.0)


# --------------------------------------------------------------------------- counts


def _counts_cases():
    lin = problems.linear_regression()
    exp = problems.exp_decay_noisy()
    rb = problems.rosenbrock_problem()
    return {
        "linear-lm": (lin, dict()),
        "linear-gn": (lin, dict(method="gn")),
        "exp_decay-lm": (exp, dict()),
        "rosenbrock-lm": (rb, dict()),
        "rosenbrock-gn": (rb, dict(method="gn")),
        "exp_decay-adam": (exp, dict(method="adam", learning_rate=0.05, max_steps=500)),
        "linear-lm-bounds": (lin, dict(bounds=(-10.0, 10.0))),
    }


COUNTS_CASES = _counts_cases()


@pytest.mark.parametrize("case", sorted(COUNTS_CASES))
def test_evaluation_counts_are_consistent(x64, case):
    prob, options = COUNTS_CASES[case]
    res = ff.least_squares(prob.fun, prob.jnp_x0(), prob.jnp_args(), **options)
    assert res.success, res.message
    n_steps, n_fev, n_jev = int(res.n_steps), int(res.n_fev), int(res.n_jev)
    counts = f"n_steps={n_steps}, n_fev={n_fev}, n_jev={n_jev}"
    # With bounds one more Jacobian is evaluated at the solution, in the user's parameters.
    extra = 1 if "bounds" in case else 0
    assert n_fev >= n_steps + 1, counts  # the start plus one trial point per step
    assert n_jev <= n_fev + extra, counts
    assert n_jev <= n_steps + 1 + extra, counts  # at most one Jacobian per accepted point
    if case.startswith("linear-") and "bounds" not in case:
        # A linear problem's model is exact: every step is accepted.
        assert n_jev == n_steps + 1


def _trajectory(prob, method):
    """Fits stopped after k = 0, 1, ... steps (max_steps is traced: no recompilation)."""
    x0, args = prob.jnp_x0(), prob.jnp_args()
    final = ff.least_squares(prob.fun, x0, args, method=method)
    runs = [ff.least_squares(prob.fun, x0, args, method=method, max_steps=k) for k in range(int(final.n_steps) + 1)]
    return final, runs


@pytest.mark.parametrize("prob", [problems.rosenbrock_problem(), problems.exp_decay_noisy()], ids=lambda p: p.name)
def test_lm_counts_one_jacobian_per_accepted_step(x64, prob):
    final, runs = _trajectory(prob, "lm")
    assert final.success
    accepted = 0
    for k, res in enumerate(runs):
        assert int(res.n_steps) == k
        if k > 0:
            moved = not np.array_equal(np.asarray(res.params), np.asarray(runs[k - 1].params))
            accepted += moved
            if moved:  # an accepted step decreases the cost
                assert float(res.cost) < float(runs[k - 1].cost)
            else:
                assert float(res.cost) == float(runs[k - 1].cost)
        assert int(res.n_jev) == 1 + accepted, k
    assert int(final.n_jev) == 1 + accepted
    np.testing.assert_array_equal(final.params, runs[-1].params)


def test_gauss_newton_line_search_decreases_cost_when_full_steps_overshoot(x64):
    t = np.linspace(0.0, 5.0, 40)
    prob = problems.Problem(
        "single_exponential", problems.single_exponential, np.array([10.0]), (t, np.exp(-1.0 * t))
    )
    # Independent check that the full Gauss-Newton step from the start overshoots.
    k0 = prob.x0[0]
    r = np.exp(-k0 * t) - prob.args[1]
    J = (-t * np.exp(-k0 * t))[:, None]
    full_step = -np.linalg.solve(J.T @ J, J.T @ r)
    cost = lambda k: 0.5 * np.sum((np.exp(-k * t) - prob.args[1]) ** 2)  # noqa: E731
    assert cost(k0 + full_step[0]) > cost(k0)

    final, runs = _trajectory(prob, "gn")
    assert final.success, final.message
    np.testing.assert_allclose(final.params, [1.0], rtol=1e-8)
    rejected = 0
    for k in range(1, len(runs)):
        before, after = float(runs[k - 1].cost), float(runs[k].cost)
        moved = not np.array_equal(np.asarray(runs[k].params), np.asarray(runs[k - 1].params))
        if moved:
            assert after < before, k  # every accepted step decreases the cost
        else:
            rejected += 1
            assert after == before
    assert rejected >= 1  # the line search did backtrack
    assert int(final.n_jev) < int(final.n_fev)


# --------------------------------------------------------------------------- optax methods


@pytest.mark.parametrize(
    "method, learning_rate", [("adam", 0.05), ("sgd", 0.01)]
)
def test_first_order_methods_reduce_the_cost(x64, method, learning_rate):
    prob, ref = _exp_decay_reference()
    x0, args = prob.jnp_x0(), prob.jnp_args()
    res = ff.least_squares(prob.fun, x0, args, method=method, learning_rate=learning_rate, max_steps=5000)
    start_cost = half_sum_squares(prob.fun, x0, args)
    assert float(res.cost) < start_cost
    assert res.success, res.message
    np.testing.assert_allclose(float(res.cost), ref.cost, rtol=1e-4)  # first order: approximately
    np.testing.assert_allclose(res.params, ref.x, rtol=2e-2)
    # Result fields are filled in as for the Newton methods.
    np.testing.assert_allclose(res.jac, prob.jac(res.params, *args), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(res.residual, prob.fun(res.params, *args), rtol=1e-10, atol=1e-14)


def test_optax_transformation_as_method(x64):
    prob, ref = _exp_decay_reference()
    x0, args = prob.jnp_x0(), prob.jnp_args()
    optimiser = optax.adam(0.05)
    own = ff.least_squares(prob.fun, x0, args, method=optimiser, max_steps=5000)
    named = ff.least_squares(prob.fun, x0, args, method="adam", learning_rate=0.05, max_steps=5000)
    assert own.success, own.message
    np.testing.assert_allclose(own.params, named.params, rtol=1e-9)
    assert int(own.n_steps) == int(named.n_steps)
    np.testing.assert_allclose(float(own.cost), ref.cost, rtol=1e-4)
    # Reusing the same transformation object with new data does not recompile.
    y2 = args[1] + 0.01
    with count_compilations() as names:
        jax.block_until_ready(ff.least_squares(prob.fun, x0, (args[0], y2), method=optimiser, max_steps=5000))
    assert names == []


def test_optax_chain_reduces_cost(x64):
    prob, _ = _exp_decay_reference()
    x0, args = prob.jnp_x0(), prob.jnp_args()
    chain = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.01, momentum=0.9))
    res = ff.least_squares(prob.fun, x0, args, method=chain, max_steps=300)
    assert float(res.cost) < 0.1 * half_sum_squares(prob.fun, x0, args)


# --------------------------------------------------------------------------- docstrings


def _fitfleet_modules():
    names = ["fitfleet"] + [m.name for m in pkgutil.walk_packages(ff.__path__, "fitfleet.")]
    return sorted(name for name in names if not name.endswith(".__main__"))  # a command line runs on import


def test_public_api_has_doctest_examples():
    """The front door, Result and Status carry runnable examples (so the test below bites)."""
    finder = doctest.DocTestFinder()
    for name in ("fitfleet", "fitfleet._least_squares", "fitfleet._result", "fitfleet._status"):
        tests = finder.find(importlib.import_module(name))
        assert sum(len(t.examples) for t in tests) > 0, name


@pytest.mark.parametrize("module", _fitfleet_modules())
def test_docstring_examples(module):
    """Every example in fitfleet's docstrings runs and prints what it says (default precision)."""
    mod = importlib.import_module(module)
    runner_result = doctest.testmod(mod, report=True, verbose=False, optionflags=doctest.ELLIPSIS)
    assert runner_result.failed == 0, f"{runner_result.failed} doctest failure(s) in {module}; see captured stdout"
