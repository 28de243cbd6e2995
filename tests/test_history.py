"""Fit histories and verbose output (issue 21): the recorded path is the path taken."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fitfleet as ff
from conftest import count_compilations

S = jnp.linspace(0.1, 30.0, 20)
V = 29.0 * S / (6.0 + S) + 0.3 * jnp.sin(S)


def michaelis_menten(p, S, v):
    return p[0] * S / (p[1] + S) - v


@pytest.mark.parametrize("method", ["lm", "gn", "adam"])
def test_history_is_the_path_taken(x64, method):
    options = dict(learning_rate=0.05, max_steps=300) if method == "adam" else {}
    res = ff.least_squares(michaelis_menten, jnp.array([10.0, 10.0]), (S, V), method=method, history=True, **options)
    h = res.history
    length = int(h.length)
    assert length == int(res.n_steps) + 1  # the start and every step
    params, cost = np.asarray(h.params[:length]), np.asarray(h.cost[:length])
    np.testing.assert_array_equal(params[0], [10.0, 10.0])
    np.testing.assert_allclose(params[-1], res.params, rtol=1e-12)
    recomputed = [0.5 * float(jnp.sum(michaelis_menten(jnp.asarray(p), S, V) ** 2)) for p in params]
    np.testing.assert_allclose(cost, recomputed, rtol=1e-10)
    if method != "adam":
        assert np.all(np.diff(cost) <= 1e-12 * cost[:-1])  # Newton-type steps never raise the cost
    assert np.all(np.isnan(np.asarray(h.cost[length:])))
    damping = np.asarray(h.damping[1:length])
    assert np.all(np.isfinite(damping)) if method == "lm" else np.all(np.isnan(damping))


def test_history_cap_and_batch_agree_with_single_fits(x64):
    starts = jnp.array([[10.0, 10.0], [40.0, 1.0], [5.0, 30.0]])
    batch = ff.fit_batch(michaelis_menten, starts, (S, jnp.stack([V] * 3)), shared_args=(0,), history=4)
    assert batch.history.params.shape == (3, 4, 2)
    for i in range(3):
        one = ff.least_squares(michaelis_menten, starts[i], (S, V), history=4)
        np.testing.assert_allclose(batch.history.params[i], one.history.params, rtol=1e-12, equal_nan=True)
        assert int(batch.history.length[i]) == min(4, int(one.n_steps) + 1)
    with pytest.raises(ValueError, match="history=k"):
        ff.fit_batch(michaelis_menten, starts, (S, jnp.stack([V] * 3)), shared_args=(0,), history=True)


def test_history_under_vmap_and_without_recompiling(x64):
    fit = lambda v: ff.least_squares(michaelis_menten, jnp.array([10.0, 10.0]), (S, v), history=20)  # noqa: E731
    data = jnp.stack([V, 1.1 * V])
    vmapped = jax.vmap(fit)(data)
    for i in range(2):
        np.testing.assert_allclose(vmapped.history.cost[i], fit(data[i]).history.cost, rtol=1e-12, equal_nan=True)
    fit(V)
    with count_compilations() as compiled:
        fit(0.9 * V)
    assert not compiled


def test_verbose_prints_a_line_per_step_and_a_report(x64, capfd):
    res = ff.least_squares(michaelis_menten, jnp.array([10.0, 10.0]), (S, V), verbose=2)
    out = capfd.readouterr().out
    step_lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(step_lines) == int(res.n_steps)
    assert "Result: success" in out
    ff.least_squares(michaelis_menten, jnp.array([10.0, 10.0]), (S, V))
    assert capfd.readouterr().out == ""
    with pytest.raises(ValueError, match="`verbose`"):
        ff.least_squares(michaelis_menten, jnp.array([10.0, 10.0]), (S, V), verbose=3)


def test_compile_notice_speaks_once_per_new_program(x64, capfd):
    previous = ff.set_compile_notice(0.0)  # any compilation counts as long
    try:
        fun = lambda p, S, v: p[0] * S / (p[1] + S) - v  # noqa: E731  (a new function: a new program)
        ff.least_squares(fun, jnp.array([10.0, 10.0]), (S, V))
        assert capfd.readouterr().err.count("fitfleet: compiling") == 1
        ff.least_squares(fun, jnp.array([10.0, 10.0]), (S, 1.1 * V))  # compiled already
        assert "fitfleet: compiling" not in capfd.readouterr().err
        ff.set_compile_notice(None)
        ff.least_squares(lambda p, S, v: p[0] * S / (p[1] + S) - v, jnp.array([10.0, 10.0]), (S, V))
        assert "fitfleet: compiling" not in capfd.readouterr().err
    finally:
        ff.set_compile_notice(previous)
    with pytest.raises(ValueError, match="`seconds`"):
        ff.set_compile_notice(-1)


def test_progress_bar_counts_the_steps(x64, capfd):
    res = ff.least_squares(michaelis_menten, jnp.array([10.0, 10.0]), (S, V), progress=True)
    err = capfd.readouterr().err
    assert "fitfleet" in err and f"{int(res.n_steps)}/" in err


def test_profile_progress_bar_counts_the_refits(x64, capfd):
    """The bar advances by the refits each round of the default grid really ran: at the
    end it shows the profile's points plus the refit of the optimum."""
    fit = ff.least_squares(michaelis_menten, jnp.array([10.0, 10.0]), (S, V))
    prof = ff.profile(michaelis_menten, fit, (S, V), index=1, progress=True)
    err = capfd.readouterr().err
    assert "refit" in err and f"{prof.values.shape[0] + 1}/" in err
    quiet = ff.profile(michaelis_menten, fit, (S, V), index=1)
    assert capfd.readouterr().err == "" and np.array_equal(quiet.values, prof.values)
