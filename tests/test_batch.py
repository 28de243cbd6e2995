"""fit_batch: a batch equals its fits run one by one, whatever the engine does to run it.

References: ``least_squares`` on each member alone (itself checked against scipy in
test_least_squares.py), ``jax.vmap(least_squares)`` (one plain while loop, no
compaction), and a one-device run for the multi-device engine.  Both paths are tested
on CPU: the CPU path (host-driven rounds) and the accelerator path (one device program),
forced with ``ff.engine_settings(path="accelerator")``.
"""

import json
import logging
import math
import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fitfleet as ff
from conftest import count_compilations
from fitfleet import _tracing, _xla
from fitfleet._engine import host, programs, runtime
from fitfleet._solvers import levenberg_marquardt
from fitfleet._status import Status

T = np.linspace(0.0, 6.0, 24)
TIGHT = dict(ftol=1e-12, xtol=1e-12, gtol=1e-12)


def decay(p, t, y):
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y


def decay_data(n, seed=0, n_far=0):
    """n noisy decays with random amplitude/rate/offset; ``n_far`` starts far away."""
    rng = np.random.default_rng(seed)
    truth = np.stack([rng.uniform(1, 3, n), rng.uniform(0.3, 2, n), rng.uniform(-0.5, 0.5, n)], 1)
    y = truth[:, :1] * np.exp(-truth[:, 1:2] * T) + truth[:, 2:] + 0.01 * rng.normal(size=(n, T.size))
    x0 = truth * rng.uniform(0.8, 1.2, truth.shape)
    far = rng.choice(n, n_far, replace=False)
    x0[far] = [[50.0, 30.0, -20.0]]  # a rate of 30 flattens the model: many steps back
    return x0, y, far


def loop(x0, y, dtype, **options):
    """The reference: each fit alone."""
    return [ff.least_squares(decay, jnp.asarray(x0[i], dtype), (jnp.asarray(T, dtype), jnp.asarray(y[i], dtype)), **options) for i in range(len(x0))]


def tolerances(dtype):
    return TIGHT if dtype == "float64" else dict(ftol=1e-6, xtol=1e-6, gtol=1e-6)


def test_batch_equals_loop_of_single_fits(dtype):
    x0, y, _ = decay_data(12)
    res = ff.fit_batch(decay, x0.astype(dtype), (T.astype(dtype), y.astype(dtype)), shared_args=(0,), **tolerances(dtype))
    singles = loop(x0, y, dtype, **tolerances(dtype))
    params = np.stack([np.asarray(r.params) for r in singles])
    rtol = 1e-9 if dtype == "float64" else 2e-3
    np.testing.assert_allclose(res.params, params, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(res.cost, [float(r.cost) for r in singles], rtol=rtol * 10)
    assert res.params.dtype == jnp.dtype(dtype)
    assert res.status.shape == (12,) and res.jac.shape == (12, T.size, 3)
    if dtype == "float64":
        assert res.status.tolist() == [int(r.status) for r in singles]
        assert res.n_steps.tolist() == [int(r.n_steps) for r in singles]
        # The same count as a fit alone (the batch's extra evaluations are uncounted).
        assert res.n_jev.tolist() == [int(r.n_jev) for r in singles]
        assert res.n_fev.tolist() == [int(r.n_fev) for r in singles]
    assert bool(jnp.all(res.success))


def test_compaction_equals_plain_vmapped_loop(x64, monkeypatch):
    """Rounds stop early and regroup the stragglers; every fit still takes exactly its own steps."""
    x0, y, far = decay_data(256, seed=1, n_far=5)
    # Default tolerances: with 1e-12 some fits stop on round-off, where FTOL or XTOL
    # (or one more step) can flip between two compilations of the same arithmetic.
    ff.fit_batch(decay, x0, (T, y), shared_args=(0,))  # compiles; the tail's program in the background
    ff.wait_for_compilation()
    left_running = []  # fits still running after each round
    ran = []  # which programs ran: the round's, and the tail's (its blocks of 16, then 4)
    original = host.Engine._programs

    def spy(self, *args):
        def watch(program, name):
            def call(*a):
                state, counts = program(*a)
                left_running.append(int(np.sum(counts)))
                ran.append(name)
                return state, counts

            return call

        programs, fresh = original(self, *args)
        rounds = {k: p._replace(future=host._done(watch(p.future.result(), k))) for k, p in programs.items() if k in ("round", "tail") and p}
        return {**programs, **rounds}, fresh

    monkeypatch.setattr(host.Engine, "_programs", spy)
    res = ff.fit_batch(decay, x0, (T, y), shared_args=(0,))
    plain = jax.vmap(lambda p, yy: ff.least_squares(decay, p, (jnp.asarray(T), yy)))(jnp.asarray(x0), jnp.asarray(y))
    # A round stopped early with a few fits (the stragglers, a few slower ones) still
    # running, and a later round, on fewer blocks, finished them.
    assert any(0 < n <= 256 // 8 for n in left_running) and left_running[-1] == 0
    assert "tail" in ran and host.TAILS[-1] < host.TAILS[0]
    assert int(jnp.min(res.n_steps[far])) > 2 * int(jnp.max(jnp.delete(res.n_steps, far)))
    np.testing.assert_array_equal(res.status, plain.status)
    np.testing.assert_array_equal(res.n_steps, plain.n_steps)
    np.testing.assert_allclose(res.params, plain.params, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(res.jac, plain.jac, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", pytest.param("float64", marks=pytest.mark.slow)], indirect=True)
def test_accelerator_path_equals_plain_vmapped_loop(dtype, monkeypatch):
    """The accelerator path (one device program: rounds, on-device sorting, a ladder of
    widths, LM's spectral damping search), forced on CPU: every fit takes its own steps,
    to the last few ulps of a plain loop with the same search, and to round-off of the
    solver's own (Cholesky) search."""
    x0, y, far = decay_data(256, seed=1, n_far=5)
    x0, y, t = x0.astype(dtype), y.astype(dtype), T.astype(dtype)
    with ff.engine_settings(path="accelerator"):
        res = ff.fit_batch(decay, x0, (t, y), shared_args=(0,))
    own = jax.vmap(lambda p, yy: ff.least_squares(decay, p, (jnp.asarray(t), yy)))(jnp.asarray(x0), jnp.asarray(y))
    monkeypatch.setattr(levenberg_marquardt, "trust_region_damping", levenberg_marquardt.spectral_damping)
    fresh = lambda *a: decay(*a)  # noqa: E731  (a new function: traced again, with the spectral search)
    plain = jax.vmap(lambda p, yy: ff.least_squares(fresh, p, (jnp.asarray(t), yy)))(jnp.asarray(x0), jnp.asarray(y))
    assert int(jnp.min(res.n_steps[far])) > 2 * int(jnp.max(jnp.delete(res.n_steps, far)))  # stragglers
    np.testing.assert_array_equal(res.success, plain.success)
    np.testing.assert_array_equal(res.success, own.success)
    if dtype == "float32":  # a fit stopping on round-off may meet FTOL in one compilation, XTOL in another
        np.testing.assert_allclose(res.params, plain.params, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(res.params, own.params, rtol=1e-5, atol=1e-5)
        return
    for reference in (plain, own):
        np.testing.assert_array_equal(res.status, reference.status)
        np.testing.assert_array_equal(res.n_steps, reference.n_steps)
        np.testing.assert_array_equal(res.n_jev, reference.n_jev)
    # A width's compilation may reorder a reduction (LAPACK's eigh, here): a few ulps of
    # the parameters, more of a small cost (a residual of noise cancels most of y).
    np.testing.assert_array_max_ulp(res.params, plain.params, maxulp=8)
    np.testing.assert_allclose(res.cost, plain.cost, rtol=1e-12)
    np.testing.assert_allclose(res.params, own.params, rtol=1e-12)
    np.testing.assert_allclose(res.cost, own.cost, rtol=1e-10)


def test_accelerator_path_synchronises_once_per_call(x64):
    """The accelerator path launches one program and reads nothing back, however many
    fits and rounds; the CPU path reads back a count per round.  (Shapes shared with the
    tests above, where they need not differ, so that little compiles again.)"""
    x0, y, _ = decay_data(256, seed=12)
    x0_far, y_far, far = decay_data(1024, seed=12, n_far=10)
    counts, results = {}, {}
    for name, path, start, data in (
        ("easy", "accelerator", x0, y), ("stragglers", "accelerator", x0_far, y_far),
        ("stragglers", "cpu", *decay_data(256, seed=1, n_far=5)[:2]),
    ):  # fmt: skip
        with ff.engine_settings(path=path):
            ff.fit_batch(decay, start, (T, data), shared_args=(0,))  # compiles
            with runtime.counting() as c:
                results[name, path] = jax.block_until_ready(ff.fit_batch(decay, start, (T, data), shared_args=(0,)))
        counts[name, path] = c
    steps = np.asarray(results["stragglers", "accelerator"].n_steps)
    assert steps[far].min() > 3 * np.median(steps)  # the stragglers needed later rounds
    assert counts["easy", "accelerator"] == counts["stragglers", "accelerator"]
    assert counts["stragglers", "accelerator"].fetches == 0 and counts["stragglers", "accelerator"].launches == 1
    assert counts["stragglers", "cpu"].fetches >= 2  # a count per round and part
    # A slightly smaller batch is padded to the same program: nothing compiles, and the
    # padding and the Results' trimming take a launch each at most.
    with ff.engine_settings(path="accelerator"), count_compilations() as compiled, runtime.counting() as c:
        fewer = jax.block_until_ready(ff.fit_batch(decay, x0_far[:1000], (T, y_far[:1000]), shared_args=(0,)))
    assert "run" not in compiled and c.launches <= 3 and c.fetches == 0  # "run": the device program
    np.testing.assert_array_equal(fewer.params, results["stragglers", "accelerator"].params[:1000])


def test_caches_clear_and_background_compilation_can_be_turned_off(x64):
    x0, y, _ = decay_data(40, seed=13, n_far=2)
    t3, y3 = np.concatenate([T, T[-1:] + 0.5]), np.concatenate([y, y[:, -1:]], 1)  # shapes no other test uses
    with ff.engine_settings(background=False):
        res = ff.fit_batch(decay, x0, (t3, y3), shared_args=(0,))
    assert not runtime._background  # nothing left running: the tail compiled before the call returned
    assert all(p["tail"].future.done() for p in host._EXECUTABLES.values() if p["tail"] is not None)
    assert host._EXECUTABLES and programs._STEPS and _tracing._TRACED
    ff.clear_caches()
    assert not host._EXECUTABLES and not programs._STEPS and not _tracing._TRACED
    assert not any(jitted.cache_info().currsize for jitted in _xla._JITTED)
    again = ff.fit_batch(decay, x0, (t3, y3), shared_args=(0,))
    np.testing.assert_array_equal(again.params, res.params)
    with pytest.raises(ValueError, match="`path`"):
        with ff.engine_settings(path="gpu"):
            pass


@pytest.mark.parametrize(
    "name, value",
    [("xla_fitfleet_no_such_option", True), ("xla_backend_optimization_level", "high")],
    ids=["unknown option", "refused value"],
)
def test_compiler_options_xla_rejects_are_dropped(monkeypatch, name, value):
    """XLA rejects a compilation with an option it does not know, or with a value it
    refuses (an enum renamed between versions); cpu_options() drops the option it names
    and keeps the others."""
    monkeypatch.setattr(_xla, "CPU_OPTIONS", {**_xla.CPU_OPTIONS, name: value})
    _xla.cpu_options.cache_clear()
    try:
        options = _xla.cpu_options()
    finally:
        _xla.cpu_options.cache_clear()
    assert name not in options
    assert options == {k: v for k, v in _xla.cpu_options().items() if k != name} != {}


def test_chunks_equal_one_chunk_and_progress(x64, capsys):
    pytest.importorskip("tqdm")
    x0, y, _ = decay_data(12, seed=2, n_far=2)
    whole = ff.fit_batch(decay, x0, (T, y), shared_args=(0,))
    chunked = ff.fit_batch(decay, x0, (T, y), shared_args=(0,), chunk_size=5, progress=True)
    assert "12/12" in capsys.readouterr().err
    for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(chunked)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_nan_member_keeps_its_own_status(dtype):
    x0, y, _ = decay_data(12, seed=3)
    bad = y.copy()
    bad[4, 7] = np.nan
    res = ff.fit_batch(decay, x0.astype(dtype), (T.astype(dtype), bad.astype(dtype)), shared_args=(0,))
    ref = ff.fit_batch(decay, x0.astype(dtype), (T.astype(dtype), y.astype(dtype)), shared_args=(0,))
    assert int(res.status[4]) == Status.NONFINITE_RESIDUAL
    others = np.arange(12) != 4
    np.testing.assert_array_equal(np.asarray(res.params)[others], np.asarray(ref.params)[others])
    np.testing.assert_array_equal(np.asarray(res.status)[others], np.asarray(ref.status)[others])


def test_a_failed_member_is_not_evaluated_at_every_step(x64):
    """Under vmap every fit of a block computes a step; a finished fit's lane steps from
    a running fit's state (``programs.batched_step``), so the point where a fit failed,
    perhaps the slowest of all to evaluate (an ODE solve failing at its step budget), is
    not evaluated again at each of the others' steps.  Same results as without it."""
    seen = []

    def model(p, t, y):
        jax.debug.callback(lambda q: seen.append(np.array(q)), p)
        return jnp.where(p[0] > 100, jnp.nan, decay(p, t, y))

    x0, y, _ = decay_data(8, seed=3, n_far=3)
    x0[0, 0] = 1e3
    res = ff.fit_batch(model, x0, (T, y), shared_args=(0,))
    ref = ff.fit_batch(decay, x0[1:], (T, y[1:]), shared_args=(0,))
    assert int(res.status[0]) == Status.NONFINITE_RESIDUAL and int(np.max(ref.n_steps)) >= 10
    np.testing.assert_array_equal(np.asarray(res.params)[1:], np.asarray(ref.params))
    at_failed_start = sum(q[0] == 1e3 for q in seen)
    assert at_failed_start <= 3  # its start and its Result, not once per step


def checked_decay(p, t, y):
    """``decay`` with a run-time check on the data (equinox's ``error_if``, a host
    callback): under ``vmap`` one member's check raises for the whole batch."""
    return eqx.error_if(decay(p, t, y), jnp.any(y > 100), "bad data")


def checked_decay_and_start(p, t, y):
    """``checked_decay`` that also refuses a NaN start (the bisection's fillers)."""
    return eqx.error_if(checked_decay(p, t, y), jnp.any(jnp.isnan(p)), "NaN parameters")


@pytest.mark.parametrize("method", ["trf", "lm", "gn"])
def test_a_model_that_may_raise_is_evaluated_once_per_trial_point(x64, method):
    """A model that may raise (``Problem.may_raise``) is checked at a point before its
    Jacobian is taken there; at an accepted trial point that check reuses the trial's
    residual, so such a fit evaluates the model as often as an unchecked one, plus the
    check of its start (three or four more evaluations on this fit before)."""
    x0, y, _ = decay_data(1, seed=2)
    args = (jnp.asarray(T), jnp.asarray(y[0]))
    counts = []
    for model in (decay, checked_decay):
        calls = []

        def counted(p, t, y, model=model):
            jax.debug.callback(lambda: calls.append(1))
            return model(p, t, y)

        res = ff.least_squares(counted, jnp.asarray(x0[0]), args, method=method)
        jax.effects_barrier()
        assert res.success and int(res.n_jev) >= 3
        counts.append(len(calls))
    assert counts[1] == counts[0] + 1


@pytest.mark.parametrize(
    "path, model",
    [
        pytest.param("cpu", checked_decay, id="cpu-data"),
        pytest.param("accelerator", checked_decay_and_start, id="accelerator-data-and-nan"),
        pytest.param("cpu", checked_decay_and_start, id="cpu-data-and-nan", marks=pytest.mark.slow),
        pytest.param("accelerator", checked_decay, id="accelerator-data", marks=pytest.mark.slow),
    ],
)
def test_a_raising_member_is_isolated(x64, path, model):
    """Members whose data make the model raise get MODEL_RAISED at their start, as a fit
    alone does; the others get exactly what they get in a batch without them, also where
    the bisection's NaN-started fillers raise too."""
    x0, y, _ = decay_data(10, seed=14)
    bad = y.copy()
    bad[[2, 7]] = 1000.0
    good = np.setdiff1d(np.arange(10), [2, 7])
    with ff.engine_settings(path=path):
        res = ff.fit_batch(model, x0, (T, bad), shared_args=(0,))
        ref = ff.fit_batch(model, x0[good], (T, y[good]), shared_args=(0,))
    assert np.asarray(res.status)[[2, 7]].tolist() == [Status.MODEL_RAISED] * 2
    np.testing.assert_array_equal(np.asarray(res.params)[[2, 7]], x0[[2, 7]])
    assert np.asarray(res.n_steps)[[2, 7]].tolist() == [0, 0]
    alone = ff.least_squares(checked_decay, jnp.asarray(x0[2]), (jnp.asarray(T), jnp.asarray(bad[2])))
    assert int(alone.status) == Status.MODEL_RAISED
    for name in ("params", "cost", "jac", "status", "n_steps", "n_fev", "n_jev"):
        np.testing.assert_array_equal(np.asarray(getattr(res, name))[good], np.asarray(getattr(ref, name)), err_msg=name)
    i = good[0]
    one = ff.least_squares(checked_decay, jnp.asarray(x0[i]), (jnp.asarray(T), jnp.asarray(y[i])))
    np.testing.assert_allclose(res.params[i], one.params, rtol=1e-9)
    assert int(res.status[i]) == int(one.status) and int(res.n_steps[i]) == int(one.n_steps)


def test_options_pass_through_per_fit_sigma_bounds_loss(x64):
    x0, y, _ = decay_data(6, seed=4)
    rng = np.random.default_rng(4)
    sigma = rng.uniform(0.5, 2.0, y.shape)
    y[:, 3] += 1.0  # an outlier, so the robust loss matters
    options = dict(bounds=([0.0, 0.0, -1.0], [10.0, 5.0, 1.0]), loss="soft_l1", f_scale=0.1, **TIGHT)
    res = ff.fit_batch(decay, x0, (T, y), shared_args=(0,), sigma=sigma, **options)
    for i in range(6):
        one = ff.least_squares(decay, jnp.asarray(x0[i]), (jnp.asarray(T), jnp.asarray(y[i])), sigma=sigma[i], **options)
        np.testing.assert_allclose(res.params[i], one.params, rtol=1e-9)
        np.testing.assert_allclose(res.jac[i], one.jac, rtol=1e-9, atol=1e-12)
        assert int(res.status[i]) == int(one.status)


def test_pytree_params_and_all_args_batched(x64):
    x0, y, _ = decay_data(12, seed=5)

    def fun(p, t, y):
        return p["a"] * jnp.exp(-p["k"] * t) + p["c"] - y

    tb = np.broadcast_to(T, y.shape)
    res = ff.fit_batch(fun, {"a": x0[:, 0], "k": x0[:, 1], "c": x0[:, 2]}, (tb, y))
    ref = ff.fit_batch(decay, x0, (T, y), shared_args=(0,))
    np.testing.assert_allclose(np.stack([res.params["a"], res.params["k"], res.params["c"]], 1), ref.params, rtol=1e-10)


@pytest.mark.parametrize("case", ["thread-local option", "no trace context"])
def test_tail_follows_the_callers_tracing_configuration(x64, monkeypatch, case):
    """The tail's program is traced on a background thread: where the caller set a
    thread-local option it cannot reproduce there, or where JAX does not say what the
    caller's configuration is (``_xla``'s fallback), there is no tail program, and the
    round's program finishes the stragglers (same fits)."""
    x0, y, far = decay_data(64, seed=8, n_far=3)
    extra = 3 if case == "thread-local option" else 4  # (the caches test uses one more point)
    t2 = np.concatenate([T, T[-1] + 0.25 * np.arange(1, extra + 1)])  # shapes no other test compiles
    y2 = np.concatenate([y, np.repeat(y[:, -1:], extra, 1)], 1)
    if case == "no trace context":
        monkeypatch.setattr(_xla, "trace_context", lambda: None)
        res = ff.fit_batch(decay, x0, (t2, y2), shared_args=(0,))
    else:
        with jax.default_matmul_precision("highest"):
            res = ff.fit_batch(decay, x0, (t2, y2), shared_args=(0,))
    ff.wait_for_compilation()
    tails = [p["tail"] for p in host._EXECUTABLES.values() if p["tail"] is not None]
    assert any(t.future.result() is None for t in tails)
    plain = jax.vmap(lambda p, yy: ff.least_squares(decay, p, (jnp.asarray(t2), yy)))(jnp.asarray(x0), jnp.asarray(y2))
    assert int(jnp.min(res.n_steps[far])) > 2 * int(jnp.max(jnp.delete(res.n_steps, far)))
    np.testing.assert_array_equal(res.status, plain.status)
    np.testing.assert_allclose(res.params, plain.params, rtol=1e-12, atol=1e-12)


def test_programs_compiled_from_shapes_serve_later_calls(x64, caplog):
    """A first call compiles what runs after the fits (the parts' join, multi-start's
    sort) from shapes, in the background; that is only useful if the calls with real
    arrays then find those programs compiled."""
    from fitfleet import _xla

    take_rows = _xla.filter_jit(lambda tree, rows: jax.tree_util.tree_map(lambda a: a[rows], tree))
    tree = {"a": np.arange(14.0).reshape(7, 2), "b": np.arange(7, dtype=np.int32)}
    rows = np.array([6, 0, 3, 1, 2, 5, 4, 0, 1])  # shapes no other test compiles
    shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
    joined = [{"a": jax.ShapeDtypeStruct((7, 2), tree["a"].dtype)}] * 3
    take_rows.lower(shapes, rows).compile()
    programs.concatenate_on_device.lower(joined, 20).compile()
    parts = [{"a": jax.device_put(tree["a"])}] * 3
    # log_compiles, not conftest's count_compilations: this thread's compilations only
    # (earlier tests may leave a tail's compilation running in the background).
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        out = take_rows(tree, rows)
        cat = programs.concatenate_on_device(parts, 20)
        jax.block_until_ready((out, cat))
    assert [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()] == []
    np.testing.assert_array_equal(out["b"], tree["b"][rows])
    assert cat["a"].shape == (20, 2)


def test_no_recompile_on_second_call(x64, caplog):
    """New data, and even a slightly smaller batch (padded to the same programs), reuse
    what the first call compiled."""
    x0, y, _ = decay_data(12, seed=6, n_far=1)
    ff.fit_batch(decay, x0, (T, y), shared_args=(0,))
    x0b, yb, _ = decay_data(11, seed=7, n_far=1)
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        res = ff.fit_batch(decay, x0b, (T, yb), shared_args=(0,))
        jax.block_until_ready(res)
    compiles = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    assert compiles == []


def test_under_jit_falls_back_to_vmapped_loop(x64):
    x0, y, _ = decay_data(4, seed=8)
    jitted = jax.jit(lambda x0, y: ff.fit_batch(decay, x0, (jnp.asarray(T), y), shared_args=(0,)).params)
    eager = ff.fit_batch(decay, x0, (T, y), shared_args=(0,)).params
    np.testing.assert_allclose(jitted(x0, y), eager, rtol=1e-10)


def test_gradient_through_fit_batch_matches_single_fits(x64):
    x0, y, _ = decay_data(3, seed=9)

    def batch_loss(y):
        return jnp.sum(ff.fit_batch(decay, x0, (jnp.asarray(T), y), shared_args=(0,), **TIGHT).params[:, 1])

    def single_loss(y):
        return sum(ff.least_squares(decay, jnp.asarray(x0[i]), (jnp.asarray(T), y[i]), **TIGHT).params[1] for i in range(3))

    try:
        expected = jax.grad(single_loss)(jnp.asarray(y))
    except Exception as e:  # the core's implicit differentiation is a separate issue
        pytest.skip(f"least_squares is not reverse-differentiable here: {type(e).__name__}")
    np.testing.assert_allclose(jax.grad(batch_loss)(jnp.asarray(y)), expected, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x0=np.ones((3, 3)), args=(T, np.ones((4, T.size))), shared_args=0), r"args\[1\].*leading batch axis of size 3"),
        (dict(x0=np.ones((3, 3)), args=(T, np.ones((3, T.size)))), r"args\[0\].*shared_args"),
        (dict(x0=np.ones((3, 3)), args=(T, np.ones((3, T.size))), shared_args=(5,)), "shared_args"),
        (dict(x0=np.float64(1.0), args=(T, np.ones((3, T.size))), shared_args=(0,)), "leading batch axis"),
        (dict(x0={"a": np.ones(3), "b": np.ones(4)}, args=(T, np.ones((3, T.size))), shared_args=(0,)), r"sizes \[3, 4\]"),
        (dict(x0=np.ones((3, 3)), args=(T, np.ones((3, T.size))), shared_args=(0,), chunk_size=0), "chunk_size"),
        (dict(x0=np.ones((3, 3)), args=(T, np.ones((3, T.size))), shared_args=(True, False)), "indices of the shared arguments"),
        (dict(x0=np.ones((3, 3)), args=(T, np.ones((3, T.size))), shared_args=(0,), sigma=-np.ones((3, T.size))), "sigma"),
        (
            dict(x0=np.array([[1.0, 1, 0], [1, 9, 0]]), args=(T, np.ones((2, T.size))), shared_args=(0,), bounds=(0.0, 5.0)),
            r"outside `bounds` in rows \[1\]",
        ),
    ],
)
def test_bad_input_is_named_before_compiling(kwargs, match):
    x0 = kwargs.pop("x0")
    args = kwargs.pop("args")
    with pytest.raises((ValueError, TypeError), match=match):
        ff.fit_batch(decay, x0, args, **kwargs)


MULTI_DEVICE = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, {tests!r})
    import fitfleet as ff
    from test_batch import T, decay, decay_data
    assert len(jax.devices()) == 4, jax.devices()
    x0, y, _ = decay_data(70, seed=11, n_far=3)
    many = ff.fit_batch(decay, x0, (T, y), shared_args=(0,))
    chunked = ff.fit_batch(decay, x0, (T, y), shared_args=(0,), chunk_size=30)
    one = ff.fit_batch(decay, x0, (T, y), shared_args=(0,), devices=jax.devices()[:1])
    with ff.engine_settings(path="accelerator"):
        accelerator = ff.fit_batch(decay, x0, (T, y), shared_args=(0,))
    diff = lambda a, b: max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    print(json.dumps(dict(sharded=diff(many, one), chunked=diff(chunked, one), accelerator=diff(accelerator, one),
                          steps=np.asarray(one.n_steps).tolist(), n_shards=len(many.params.sharding.device_set))))
    """
)


@pytest.mark.slow  # a process of its own, compiling everything again
def test_multi_device_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    script = MULTI_DEVICE.format(tests=os.path.dirname(__file__))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["n_shards"] == 4
    assert max(report["steps"]) > 2 * sorted(report["steps"])[35]  # stragglers were present
    assert report["sharded"] <= 1e-12 and report["chunked"] <= 1e-12 and report["accelerator"] <= 1e-12


LAPACK_IN_PARTS = textwrap.dedent(
    """
    import json
    import jax, numpy as np, jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    import fitfleet as ff
    from fitfleet._engine import host, runtime

    rng = np.random.default_rng(0)
    report = dict(cores=runtime.cores())
    for n in (14, 40):  # LM's step: LAPACK's Cholesky (and triangular solves) for n > 8
        basis = np.polynomial.chebyshev.chebvander(np.linspace(-1, 1, 2 * n + 2), n - 1)
        def model(p, y, basis=basis):
            return jnp.asarray(basis) @ p + 0.1 * jnp.sin(p[0]) - y
        y = rng.normal(size=(256, n)) @ basis.T + 0.01 * rng.normal(size=(256, 2 * n + 2))
        host._EXECUTABLES.clear()
        res = ff.fit_batch(model, np.zeros((256, n)), (y,), chunk_size=256)
        (programs,) = host._EXECUTABLES.values()
        fine = [ff.least_squares(model, jnp.zeros(n), (row,)) for row in y[:3]]
        report[n] = dict(
            success=bool(np.all(res.success)), serial=programs["serial"], block=programs["round"].blocks[0],
            error=float(max(np.max(np.abs(np.asarray(res.params[i]) - np.asarray(f.params))) for i, f in enumerate(fine))),
        )
    print(json.dumps(report))
    """
)


def test_steps_that_call_lapack_do_not_deadlock_the_cpu_parts():
    # jaxlib splits a large batched LAPACK call over XLA's thread pool and waits for it on
    # a pool thread: two parts doing so at once, one per core, hung forever
    # (_xla.lapack_split_ratio).  The engine narrows its blocks where that keeps the calls
    # unsplit, and runs the parts one after the other where it cannot.
    out = subprocess.run([sys.executable, "-c", LAPACK_IN_PARTS], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for n in ("14", "40"):
        assert report[n]["success"] and report[n]["error"] < 1e-10, report
    # n = 14: the triangular solves of 32 fits (32 * 14^3 flops as counted) split, of 16
    # do not; n = 40: 16 * 40^3 still split.
    assert report["14"]["block"] == 16 and not report["14"]["serial"], report
    assert report["40"]["serial"], report


def test_blocks_narrow_to_keep_lapack_calls_unsplit():
    """The widest power-of-two block at which calls of ``ratio`` times the split work at
    width 64 fall below it (work proportional to the block): at most 4 times narrower,
    and not below 4 fits."""
    assert host._unsplit_block(64, 0.5) is None  # no split: keep the block
    assert host._unsplit_block(64, 1.0) == 32
    assert host._unsplit_block(64, 3.4) == 16  # 32 * 3.4 >= 64 > 16 * 3.4
    assert host._unsplit_block(64, 4.0) is None  # 16 * 4 = 64: it would still split
    assert host._unsplit_block(8, 1.14) == 4  # Bruno's ODE step in blocks of 8
    assert host._unsplit_block(4, 1.5) is None  # no narrower than 4
    assert host._unsplit_block(64, math.inf) is None  # an unknown kernel: never narrowed


def test_lapack_calls_that_jaxlib_may_split_are_found(x64):
    lower = lambda f, *a: _xla.filter_jit(f).lower(*a)  # noqa: E731
    lu = lambda a: jax.scipy.linalg.lu_factor(a)  # noqa: E731
    assert _xla.lapack_split_ratio(lower(lu, jnp.ones((64, 8, 8)))) < 1  # an implicit ODE step's LU: 64·8³ flops
    assert _xla.lapack_split_ratio(lower(lu, jnp.ones((64, 40, 40)))) >= 1  # 64·40³ = 4e6 flops: jaxlib splits it
    assert _xla.lapack_split_ratio(lower(jnp.linalg.svd, jnp.ones((2, 20, 9)))) >= 1  # any batched SVD
    assert _xla.lapack_split_ratio(lower(lambda a: jnp.sin(a) @ a, jnp.ones((12, 12)))) < 1
